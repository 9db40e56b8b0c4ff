"""The command table (every ``llmft COMMAND``: what it does, the module that runs it, its Hydra
config) and the usage text, which lists each config group's options from configs/ itself.
Only ``os`` is imported (no pathlib, dataclasses or textwrap: each costs milliseconds), so
``llmft --help`` stays instant."""
from __future__ import annotations

import os


class Command:
    def __init__(self, help: str, module: str | None, config: str | None = None, trains: bool = False,
                 loads_saved: bool = False, entry: str | None = None):
        self.help = help
        self.module = module  # llmft/commands/<module>.py, main(cfg, run_path); None: not a Hydra command
        self.entry = entry  # not a Hydra command: the module whose main(args) runs it
        self.config = config  # configs/<config>.yaml; None: the command's own name
        self.trains = trains  # a training run: cli/launch.py decides where it executes
        self.loads_saved = loads_saved  # reads a saved model/: its trust_remote_code is top-level (train's: model.*)


COMMANDS = {
    "train": Command("fine-tune a model and evaluate it on the held-out split", "train", trains=True),
    "eval": Command("re-evaluate a saved model or adapter: llmft eval model_dir=RUN/model", "evaluate",
                    loads_saved=True),
    "predict": Command("label new inputs: llmft predict model_dir=RUN/model predict.input_file=X.jsonl", "predict",
                       loads_saved=True),
    "export": Command("merge an adapter or convert: llmft export model_dir=RUN/model [export.format=bf16|fp16|int8]",
                      "export", loads_saved=True),
    # a training run (config train.yaml) whose model learns from a teacher
    "distill": Command("train a smaller student on a teacher: llmft distill teacher=RUN/model student.layers=3",
                       "train", config="train", trains=True),
    "bench-infer": Command("fp32 vs bf16 vs int8 (and students): size, accuracy, latency, throughput", "bench_infer",
                           loads_saved=True),
    "merge-adapters": Command("combine LoRA adapters: llmft merge-adapters inputs=[A/model,B/model] weights=[0.5,0.5] "
                              "method=linear|ties|dare_ties", "merge_adapters", loads_saved=True),
    "prune": Command("remove heads, FFN channels or small weights: llmft prune model_dir=RUN/model "
                     "prune.method=heads|ffn|magnitude prune.amount=0.3", "prune", loads_saved=True),
    "report": Command("compare runs: llmft report DIR (a multirun or outputs folder) -> report.md, report.png", None,
                      entry="llmft.commands.report"),
    "check": Command("a dry run of llmft train (same overrides, -m too): sizes, memory, data, steps, SLURM jobs; "
                     "writes nothing", None, entry="llmft.cli.check"),
    "reproduce": Command("rerun a run's recorded config into a new folder: llmft reproduce RUN [overrides]", None,
                         entry="llmft.cli.reproduce"),
}
# the groups the usage text lists, as typed on the command line
GROUPS = ("model", "data", "+strategy", "hardware", "logger", "experiment", "hparams_search")


def config_dir() -> str:
    """The Hydra tree: packaged inside the wheel as llmft/configs, or ./configs in a checkout."""
    here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # llmft/
    for candidate in (os.path.join(here, "configs"), os.path.join(os.path.dirname(here), "configs")):
        if os.path.isfile(os.path.join(candidate, "train.yaml")):
            return candidate
    raise RuntimeError(f"llmft's configs/ folder is missing next to {here}; reinstall llmft")


def config_name(command: str) -> str:
    return COMMANDS[command].config or command


def usage() -> str:
    root = config_dir()
    groups = "\n".join(
        f"  {group}=" + "|".join(sorted(name[:-5] for name in os.listdir(os.path.join(root, group.lstrip("+")))
                                        if name.endswith(".yaml")))
        for group in GROUPS)
    commands = "\n".join(f"  {name:<15} {c.help}" for name, c in COMMANDS.items())
    return f"""usage: llmft COMMAND [OVERRIDE ...] [-m] [--cfg job] [--help]

commands:
{commands}

With no overrides, `llmft train` runs the default experiment: full fine-tuning of MiniLM-L6 on
12,000 sentiment-labelled tweets, evaluated on 1,908 held-out ones (a few minutes on a CPU).

overrides (Hydra syntax; `llmft COMMAND --help` lists every key):
{groups}
  hydra/launcher=slurm  seed=1 train.lr=3e-4 train.epochs=2 train.batch_size=16 data.max_train_samples=2000
  train.class_weights=balanced train.retention.l2sp=0.01 train.distill.teacher=RUN
  train.early_stopping.patience=3 train.eval_steps=100 train.lr_scheduler=cyclic train.neftune_alpha=5
  hydra.run.dir=PATH                     where the run folder goes
flags:
  -m                                     sweep: llmft train -m +strategy=full,lora train.lr=1e-4,3e-4
  --cfg job                              print the composed config and exit
  llmft COMMAND --help                   every config group and option for that command
"""
