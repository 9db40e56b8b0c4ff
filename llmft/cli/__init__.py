"""``llmft COMMAND [overrides]``: the console script. Imports stay light so --help is instant;
Hydra and the command's module load only once a command runs (see app.py)."""
from __future__ import annotations

import sys

COMMANDS = {
    "train": "fine-tune a model and evaluate it on the held-out split",
    "eval": "re-evaluate a saved model or adapter: llmft eval model_dir=RUN/model",
    "predict": "label new inputs: llmft predict model_dir=RUN/model predict.input_file=X.jsonl",
    "export": "merge an adapter or convert: llmft export model_dir=RUN/model [export.format=bf16|fp16|int8]",
    "distill": "train a smaller student on a teacher: llmft distill teacher=RUN/model student.layers=3",
    "bench-infer": "fp32 vs bf16 vs int8 (and students): size, accuracy, latency, throughput",
    "report": "compare runs: llmft report DIR (a multirun or outputs folder) -> report.md, report.png",
}

USAGE = f"""usage: llmft COMMAND [OVERRIDE ...] [-m] [--cfg job] [--help]

commands:
{chr(10).join(f"  {name:<11} {text}" for name, text in COMMANDS.items())}

With no overrides, `llmft train` runs the default experiment: full fine-tuning of MiniLM-L6 on
12,000 sentiment-labelled tweets, evaluated on 1,908 held-out ones (a few minutes on a CPU).

overrides (Hydra syntax):
  model=minilm|hf  data=tweet_sentiment|csv|hub  +strategy=full|lora (or strategy=...)
  hardware=cpu|gpu|cpu_zero2|cpu_zero3|gpu_zero2|gpu_zero3|gpu_zero3_offload|multinode
  logger=none|wandb  experiment=tweets_lora|smoke  hparams_search=optuna  hydra/launcher=slurm
  seed=1 train.lr=3e-4 train.epochs=2 train.batch_size=16 data.max_train_samples=2000 ...
  train.class_weights=balanced train.retention.l2sp=0.01 train.distill.teacher=RUN
  train.early_stopping.patience=3 train.eval_steps=100 train.lr_scheduler=cyclic
  hydra.run.dir=PATH                     where the run folder goes
flags:
  -m                                     sweep: llmft train -m +strategy=full,lora train.lr=1e-4,3e-4
  --cfg job                              print the composed config and exit
  llmft COMMAND --help                   every config group and option for that command
"""


# commands that load a saved model/: their trust_remote_code is top-level (train's is model.*)
SAVED_MODEL_COMMANDS = ("eval", "predict", "export", "bench-infer")


def normalize_overrides(args: list[str], command: str = "train") -> list[str]:
    """``+strategy=X`` means ``strategy=X``: strategy has a default (full), and users type both.
    ``export.KEY=V`` means ``KEY=V`` (the export command's keys are top-level), and so does
    ``model.trust_remote_code=V`` for the commands that load a saved model (users type both)."""
    out = []
    for a in args:
        if a.startswith("model.trust_remote_code=") and command in SAVED_MODEL_COMMANDS:
            a = a[len("model."):]
        elif a.startswith("+strategy="):
            a = "strategy=" + a[len("+strategy="):]
        elif a.startswith("export."):
            a = a[len("export."):]
        elif a.startswith(("teacher=", "student.layers=")):  # llmft distill's short keys
            key, value = a.split("=", 1)
            a = f"train.distill.{'teacher' if key == 'teacher' else 'student_layers'}={value}"
        elif a.startswith("student.name_or_path="):
            out.append("model=hf")
            a = "model.name_or_path=" + a.split("=", 1)[1]
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        from llmft import __version__

        print(f"llmft {__version__}")
        return 0
    command, args = argv[0], normalize_overrides(argv[1:], argv[0])
    if command not in COMMANDS:
        print(f"llmft: error: unknown command '{command}'; choose one of: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    if command == "report":  # not a Hydra command: it reads finished runs
        from llmft.commands.report import main as report

        return report(argv[1:])
    from llmft.cli.app import run

    return run(command, args)


if __name__ == "__main__":
    sys.exit(main())
