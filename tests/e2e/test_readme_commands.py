"""Every `llmft ...` command README.md and docs/*.md show composes and validates as written
(test_docs_commands.py runs them).

Each command is read out of the pages (code blocks, and inline spans that carry arguments), split
as the shell splits it, and checked as the CLI checks it before any work starts: overrides
normalized, typed secrets refused, every sweep value composed and validated (cli/app.py
preflight). It runs from a folder that holds what its placeholders name, laid out as the
commands write it: RUN/ and outputs/train/<run>/ (a finished run: config.yaml, model/),
RUN/onnx-int8 (export's default folder for that format), two LoRA runs RUN_A/ RUN_B/, a student,
the input files, a sweep folder multirun/train/<time>/. `llmft report` runs for real on that sweep.
Loading and training are not repeated here (test_train, test_export_report, ... run them).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_rows, write_csv
from llmft.cli.table import COMMANDS
from llmft.core.errors import UserError

README = REPO / "README.md"


def pages() -> list[Path]:
    """README.md, then each docs/ page in the order the README's map (## Documentation) links it."""
    text = README.read_text(encoding="utf-8")
    linked = re.findall(r"\]\((docs/[\w.-]+\.md)\)", text[text.index("\n## Documentation"):])
    return [README, *dict.fromkeys(REPO / link for link in linked)]


RUN_NAME = "2026-01-01_00-00-00"  # <run> and <time>: a run or sweep folder named as Hydra names them
# what a README placeholder stands for, in the folder the commands run from (see workspace())
PLACEHOLDERS = {"<run>": RUN_NAME, "<time>": RUN_NAME, "<fp32 run>": "RUN", "<student run>": "STUDENT_RUN",
                "+strategy=X": "+strategy=dora"}  # X: any strategy (test_config.py composes each one)
# inline spans that elide the arguments they share with a fuller command ("llmft eval ... KEY=V"):
# checked with the README's own arguments in place of "..."
ELIDED = {
    "llmft eval ... hardware.device_map=auto": "llmft eval model_dir=RUN/model hardware.device_map=auto",
    "llmft predict ... predict.backend=onnxruntime":
        "llmft predict model_dir=RUN/onnx-int8 predict.input_file=inputs.jsonl predict.backend=onnxruntime",
}
# Commands checked with a stand-in for what a test machine lacks (nothing is submitted or run):
STAND_INS = {
    "hydra/launcher=slurm": "preflight asks sinfo for the partition and needs sbatch on PATH: stand-ins for "
                            "both (partitions cpu, gpu); hardware=gpu_zero3 validates without a GPU",
}
# Commands another test runs as written, not repeated here
ELSEWHERE = {
    "llmft train --help": "Hydra's help composes every group option (~10 s): "
                          "test_config.py::test_hydra_help_lists_the_groups runs it",
}

FENCE = re.compile(r"^```(\S*)\s*$")
SHELL_BLOCKS = ("bash", "sh", "shell", "console", "")
FILE_LINE = re.compile(r"^\s*(printf|echo)\s.*>\s*(\S+)\s*$")  # a shell line that writes a file the docs use


def file_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of each `printf ... > FILE` / `echo ... > FILE` line of a page's shell blocks."""
    found, block = [], None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            block = fence.group(1) if block is None else None
        elif block in SHELL_BLOCKS and FILE_LINE.match(line):
            found.append((number, line.strip()))
    return found


def readme_commands(text: str) -> dict[str, list[int]]:
    """{command as written: its README lines}: every `llmft ...` line of a bash/sh/untyped code
    block (a trailing backslash continues it; `pip ... && llmft train` gives `llmft train`, a
    `# comment` is dropped) and every inline `llmft ...` span with arguments (`llmft eval` alone
    names a command; a span may wrap onto the next line)."""
    found: dict[str, list[int]] = {}
    lines, prose, block, i = text.splitlines(), [], None, 0
    while i < len(lines):
        line, number = lines[i], i + 1
        fence = FENCE.match(line)
        if fence or block is not None:
            prose.append("")  # code is not prose: no inline spans from it
            if fence:
                block = fence.group(1) if block is None else None
            elif block in SHELL_BLOCKS and re.search(r"(^|&&|;)\s*llmft\s", line):
                while line.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                    prose.append("")
                words = shlex.split(line, comments=True)
                parts, part = [], []
                for word in [*words, "&&"]:
                    if word in ("&&", ";", "||"):
                        parts.append(part)
                        part = []
                    else:
                        part.append(word)
                for part in parts:
                    if part[:1] == ["llmft"]:
                        found.setdefault(" ".join(part), []).append(number)
            i += 1
            continue
        prose.append(line)
        i += 1
    body = "\n".join(prose)
    for match in re.finditer(r"`(llmft(?:\s[^`]*)?)`", body):
        span = " ".join(match.group(1).split())
        words = span.split()
        if len(words) == 1 or (len(words) == 2 and words[1] in COMMANDS):
            continue  # names llmft, or a command
        found.setdefault(span, []).append(body.count("\n", 0, match.start()) + 1)
    return found


def as_run(command: str) -> list[list[str]]:
    """The argv (after `llmft`) of each way to run ``command``: placeholders filled in, "..."
    from ELIDED, ``key=a|b|c`` alternatives one run each."""
    command = ELIDED.get(command, command)
    assert "..." not in command, f"`{command}` elides its arguments: add the full command to ELIDED"
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    left = re.findall(r"<[^>]*>", command)
    assert not left, f"`{command}`: README placeholder {left[0]} means nothing here: add it to PLACEHOLDERS"
    runs = [[]]
    for word in shlex.split(command)[1:]:
        key, sep, value = word.partition("=")
        options = [f"{key}={v}" for v in value.split("|")] if sep and "|" in value else [word]
        runs = [[*run, option] for run in runs for option in options]
    return runs


def documented_commands() -> dict[str, list[str]]:
    """{command as written: the "page:line"s showing it} over README.md and docs/*.md."""
    found: dict[str, list[str]] = {}
    for page in pages():
        for command, lines in readme_commands(page.read_text(encoding="utf-8")).items():
            found.setdefault(command, []).extend(f"{page.relative_to(REPO)}:{line}" for line in lines)
    return found


COMMANDS_IN_README = documented_commands()


def check_args(argv: list[str]) -> None:
    """What `llmft COMMAND ARGS` checks before Hydra starts (cli/__init__.py main, cli/app.py
    _run): raises UserError as the CLI would print it."""
    from llmft.cli import normalize_overrides
    from llmft.cli.app import _INFO_FLAGS, check_typed_secrets, config_dir_of, overrides_of, preflight
    from llmft.cli.validate import register_configs

    if argv[0] in ("-h", "--help", "help", "-V", "--version"):
        from llmft.cli import main

        assert main(argv) == 0
        return
    command, args = argv[0], normalize_overrides(argv[1:], argv[0])
    if command not in COMMANDS:
        raise UserError(f"unknown command '{command}'; choose one of: {', '.join(COMMANDS)}")
    if command == "reproduce":  # reruns a finished run folder, not a Hydra config: test_docs_commands.py runs it
        return
    if command == "check":  # a dry run of train: it composes and validates what train would
        command = "train"
    assert COMMANDS[command].module is not None, "llmft report runs for real (test_the_readme_report_runs)"
    register_configs()
    typed = overrides_of(args)
    check_typed_secrets(typed)
    assert not any(a in _INFO_FLAGS for a in args), "Hydra's help: see ELSEWHERE"
    key = (command, tuple(typed), "-m" in args or "--multirun" in args, config_dir_of(args), os.getcwd())
    if key not in _CHECKED:  # `llmft train` and `llmft train --cfg job` compose the same config
        try:
            preflight(command, list(key[1]), sweep=key[2], config_dir_arg=key[3])
            _CHECKED[key] = None
        except UserError as err:
            _CHECKED[key] = err
    if _CHECKED[key] is not None:
        raise _CHECKED[key]


_CHECKED: dict[tuple, UserError | None] = {}


# -------------------------------------------------------------------------------- the folder
def safetensors(path: Path, shapes: dict[str, tuple]) -> None:
    """A whole safetensors file (numpy: no torch here)."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({name: np.zeros(shape, dtype=np.float32) for name, shape in shapes.items()}, str(path))


def composed_config(overrides: list[str]) -> dict:
    """The config a training run with ``overrides`` writes to its config.yaml."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from llmft.cli.table import config_dir
    from llmft.cli.validate import register_configs

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3", job_name="train"):
        cfg = compose("train", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def finished_run(run: Path, config: dict, strategy: str, base: Path) -> Path:
    """A run folder as `llmft train` leaves it: .llmft-run, config.yaml, model/ (weights, llmft.json)."""
    from llmft.runtime.ownership import mark_run_folder

    model = run / "model"
    model.mkdir(parents=True)
    mark_run_folder(run, "train")
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "strategy": {**config["strategy"], "name": strategy}}))
    meta = {"task": "classification", "labels": config["data"]["labels"], "crf": False, "strategy": strategy,
            "base_model": str(base), "trust_remote_code": False, "revision": None, "fingerprint": "0" * 16,
            "training": {}}
    (model / "llmft.json").write_text(json.dumps(meta))
    if strategy == "lora":
        (model / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none", "use_dora": False,
            "base_model_name_or_path": str(base), "target_modules": ["query", "value"]}))
        safetensors(model / "adapter_model.safetensors",
                    {"base_model.model.encoder.layer.0.attention.self.query.lora_A.weight": (8, 16)})
    else:
        (model / "config.json").write_text((base / "config.json").read_text())
        safetensors(model / "model.safetensors", {"bert.embeddings.word_embeddings.weight": (32, 16)})
    return run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The folder the README's commands run from (see the module docstring)."""
    from llmft.commands.export import MARKER, output_folder

    root = tmp_path_factory.mktemp("readme")
    base = root / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": 32, "hidden_size": 16,
        "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 128}))
    safetensors(base / "model.safetensors", {"embeddings.word_embeddings.weight": (32, 16)})
    data = root / "data"
    data.mkdir()
    train = write_csv(data / "train.csv", make_rows(30, seed=1))
    eval_ = write_csv(data / "eval.csv", make_rows(9, seed=2))
    config = composed_config(["model=hf", f"model.name_or_path={base}", "data=csv", f"data.train_file={train}",
                              f"data.eval_file={eval_}", "data.max_length=64"])
    # LoRA runs: README's RUN covers both (export merges an adapter; distill, bench-infer and a
    # format export merge it first); a distilled student is a plain model
    for name in ("RUN", "RUN_A", "RUN_B", f"outputs/train/{RUN_NAME}"):
        finished_run(root / name, config, "lora", base)
    finished_run(root / "STUDENT_RUN", config, "full", base)
    run = root / "RUN"
    # what `llmft export model_dir=RUN/model export.format=onnx-int8` writes, where it writes it
    onnx = output_folder(None, run / "model", "onnx-int8", root / "outputs" / "export" / RUN_NAME)
    onnx.mkdir()
    (onnx / MARKER).write_text("")
    (onnx / "model.onnx").write_bytes(b"\x08\x07")
    (onnx / "config.json").write_text((base / "config.json").read_text())
    meta = json.loads((run / "model" / "llmft.json").read_text())
    (onnx / "llmft.json").write_text(json.dumps({**meta, "strategy": "full", "format": "onnx-int8",
                                                 "source": str(run / "model")}))
    # what `llmft export model_dir=RUN/model` (a merged full model) and `llmft prune model_dir=RUN/merged
    # prune.method=heads|ffn prune.amount=0.5 prune.finetune_steps=100` write
    for name in ("merged", "pruned-heads-0.5-ft100", "pruned-ffn-0.5-ft100"):
        shutil.copytree(root / "STUDENT_RUN" / "model", run / name)
        (run / name / MARKER).write_text("")
    for page in pages():  # the files the pages' printf lines write (predict inputs, a regression CSV)
        for _, line in file_lines(page.read_text(encoding="utf-8")):
            subprocess.run(["bash", "-c", line], cwd=root, check=True)
    sweep = root / "multirun" / "train" / RUN_NAME  # a finished `llmft train -m +strategy=full,lora`
    for job, (strategy, accuracy) in enumerate([("full", 0.75), ("lora", 0.5)]):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"+strategy={strategy}"]))
        (sweep / str(job) / "results.json").write_text(json.dumps({
            "status": "completed", "strategy": strategy, "primary_metric": "accuracy",
            "eval": {"accuracy": accuracy}, "params": {"trainable": 1000, "trainable_pct": 100.0},
            "train": {"runtime_s": 1.0}}))
    slurm_stand_ins(root)
    return root


def slurm_stand_ins(root: Path) -> Path:
    """SLURM stand-ins in root/bin: sbatch is never called before a run; sinfo lists the partitions
    the docs name (whether or not the local test cluster of pytest --slurm is up)."""
    bin_ = root / "bin"
    if not bin_.exists():
        bin_.mkdir()
        (bin_ / "sbatch").write_text("#!/bin/sh\necho 'sbatch: not a cluster' >&2\nexit 1\n")
        (bin_ / "sinfo").write_text("#!/bin/sh\nprintf 'cpu*\\ngpu\\n'\n")
        for tool in ("sbatch", "sinfo"):
            (bin_ / tool).chmod(0o755)
    return bin_


@pytest.fixture
def in_workspace(workspace, monkeypatch) -> Path:
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("PATH", f"{workspace / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    return workspace


# ----------------------------------------------------------------------------------- tests
def test_the_readme_commands_are_found():
    """The reader finds the README's first run and the pages' commands (so an empty list cannot pass)."""
    for command in ("llmft train", "llmft train -m +strategy=full,lora",
                    "llmft predict model_dir=outputs/train/<run>/model predict.input_file=new.jsonl",
                    "llmft merge-adapters inputs=[RUN_A/model,RUN_B/model] weights=[0.5,0.5] method=linear|ties|dare_ties",
                    "llmft bench-infer model_dir=RUN/model students=[STUDENT_RUN/model]",
                    "llmft train -m hydra/launcher=slurm hydra.launcher.partition=gpu hardware=gpu_zero3 "
                    "+strategy=lora train.lr=1e-4,3e-4",
                    "llmft report multirun/train/<time>", "llmft train --help"):
        assert command in COMMANDS_IN_README, command
    reports = [c for c in COMMANDS_IN_README if c.startswith("llmft report")]
    assert reports == ["llmft report multirun/train/<time>"], reports  # the one test_the_readme_report_runs runs
    for listed in (ELIDED, ELSEWHERE):  # no stale entries
        assert set(listed) <= set(COMMANDS_IN_README), set(listed) - set(COMMANDS_IN_README)
    assert as_run("llmft merge-adapters inputs=[A] method=linear|ties") == [
        ["merge-adapters", "inputs=[A]", "method=linear"], ["merge-adapters", "inputs=[A]", "method=ties"]]


CHECKED = sorted((c for c in COMMANDS_IN_README if not c.startswith("llmft report") and c not in ELSEWHERE),
                 key=lambda c: [int(n) if n.isdigit() else n for n in re.split(r"(\d+)", COMMANDS_IN_README[c][0])])


@pytest.mark.parametrize("command", CHECKED, ids=[COMMANDS_IN_README[c][0] for c in CHECKED])
def test_a_readme_command_composes_and_validates(command, in_workspace):
    """As written (placeholders filled in): composes, every sweep value validates."""
    where = f"{', '.join(COMMANDS_IN_README[command])}: `{command}`"
    where += "".join(f" ({why})" for key, why in STAND_INS.items() if key in command)
    for argv in as_run(command):
        try:
            check_args(argv)
        except UserError as err:
            pytest.fail(f"{where}\n  llmft: error: {err}")


@pytest.mark.parametrize("written, broken, named", [
    ("predict.input_file=new.jsonl", "predict.inputfile=new.jsonl", "predict.inputfile: no such key"),
    ("llmft eval model_dir=outputs/train/<run>/model", "llmft eval model_dir=outputs/train/<run>/modle",
     f"model_dir=outputs/train/{RUN_NAME}/modle: no such folder"),
])
def test_a_broken_readme_command_fails(written, broken, named, workspace, monkeypatch):
    """Fault injection on a copy of README.md: the broken command is caught, naming what broke."""
    text = README.read_text(encoding="utf-8")
    assert written in text
    [command] = set(readme_commands(text.replace(written, broken, 1))) - set(COMMANDS_IN_README)
    monkeypatch.chdir(workspace)
    with pytest.raises(UserError, match=re.escape(named)):
        for argv in as_run(command):
            check_args(argv)
    with pytest.raises(AssertionError, match="<model>"):  # a placeholder nothing stands for
        as_run("llmft eval model_dir=<model>")


def test_the_readme_report_runs(in_workspace):
    """`llmft report multirun/train/<time>` on a finished two-run sweep: report.md and report.png."""
    from llmft.cli import main

    [argv] = as_run("llmft report multirun/train/<time>")
    assert main(argv) == 0
    sweep = in_workspace / "multirun" / "train" / RUN_NAME
    report = (sweep / "report.md").read_text()
    assert "0.7500" in report and "0.5000" in report and "lora" in report, report
    assert (sweep / "report.png").stat().st_size > 0


@pytest.mark.parametrize("argv, key", [(["bench-infer", "variants=[fp32,int8]"], "model_dir"),
                                       (["merge-adapters", "weights=[0.5,0.5]"], "inputs")])
def test_a_command_without_its_model_folder_says_which_key(argv, key, in_workspace):
    """Not a traceback from reading the missing value before validation names it."""
    with pytest.raises(UserError, match=f"^{key} is required: add {key}=VALUE"):
        check_args(argv)


@pytest.mark.parametrize("argv, expected", [
    (["eval", "model_dir=RUN/modle"], "model_dir=RUN/modle: no such folder"),
    (["bench-infer", "model_dir=RUN/model", "students=[STUDENT_RUN/modle]"],
     "students[0]=STUDENT_RUN/modle: no such folder"),
])
def test_a_misspelt_model_folder_is_refused_before_the_run_starts(argv, expected, in_workspace):
    """Before Hydra makes the command's run folder (a README path that no longer exists fails here too)."""
    with pytest.raises(UserError, match=re.escape(expected)):
        check_args(argv)
