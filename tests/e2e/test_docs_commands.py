"""Every `llmft ...` command README.md and docs/*.md show runs as written, page by page.

The pages run in the order the README's map links them (README.md first), each command in page
order, all in one folder: a command that names a run folder (`outputs/train/<run>`, `RUN`) finds
the one an earlier command made, and a file a command reads must have been written by an earlier
step of the docs (a `printf ... > FILE` line of a shell block runs too). Nothing else is provided:
a documented `predict.input_file=new.jsonl` that the docs never create fails here as it fails for
a reader.

Small-data overrides keep it to a few minutes: a training run gets a tiny model in place of the
configured one (MiniLM -> a 4-layer BERT of width 32, SmolLM2 -> a tiny chat Llama), 16 training
and 8 eval rows of the same data, 2 steps; a search 2 trials; bench-infer a few timed examples.
Placeholders: `<run>` is the newest `outputs/train/` folder, `<time>` the newest
`multirun/train/` one, `RUN` (and `<fp32 run>`) a tiny LoRA run made first, `RUN_A`/`RUN_B` copies
of it, `STUDENT_RUN` (`<student run>`) the folder of the last `llmft distill`. A command shown
twice runs once. Commands that cannot run here are composed and validated only (VALIDATE_ONLY,
each with its reason). The commands run in one Python process through `llmft.cli.main` (the
console script's entry point), so torch is imported once.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, cli_env, make_rows
from test_readme_commands import (ELIDED, ELSEWHERE, STAND_INS, check_args, file_lines, pages, readme_commands,
                                  slurm_stand_ins)
from llmft.core.errors import UserError

README = REPO / "README.md"
DOCS = REPO / "docs"

# Composed and validated only: what this machine cannot run, or what another test runs.
VALIDATE_ONLY = {
    "hydra/launcher=slurm": "submits to a SLURM cluster (test_slurm.py does, with pytest --slurm); "
                            "validated with stand-ins for sinfo and sbatch",
    "hardware=cpu_zero3": "starts two DeepSpeed ranks, each importing torch and DeepSpeed again; "
                          "test_distributed.py trains with cpu_zero3",
    "predict.compile=true": "torch.compile on a CPU compiles for minutes (prediction itself is run: docs/inference.md:17)",
    "variants=[fp32,int8,onnx,onnx-int8]": "exports twice more through ONNX, the slowest step here; "
                                           "test_onnx.py::test_bench_infer_onnx_rows runs these variants",
    **ELSEWHERE,
}
# Small-data overrides (see the module docstring): key -> value, replacing a value the command gives
TRAIN_SMALL = {"train.max_steps": "2", "data.max_train_samples": "16", "data.max_eval_samples": "8"}
BENCH_SMALL = {"latency_examples": "4", "throughput_examples": "8", "batch_size": "4"}
SEARCH_SMALL = {"hydra.sweeper.n_trials": "2"}


def page_steps(page: Path) -> list[dict]:
    """The page's steps in order: its `llmft` commands (readme_commands) and file-writing shell lines."""
    text = page.read_text(encoding="utf-8")
    steps = [{"kind": "llmft", "command": c, "line": lines[0]} for c, lines in readme_commands(text).items()]
    steps += [{"kind": "shell", "command": line, "line": number} for number, line in file_lines(text)]
    for step in steps:
        step["where"] = f"{page.relative_to(REPO)}:{step['line']}"
    return sorted(steps, key=lambda s: s["line"])


STEPS = [step for page in pages() for step in page_steps(page)]


def validate_only(command: str) -> str | None:
    if command.startswith("llmft check "):  # a dry run: runs here, a SLURM launcher's too (nothing submitted)
        return None
    return next((why for key, why in VALIDATE_ONLY.items() if key in command), None)


# the README's predict with an input no step writes: the runner must fail it as a reader's shell would
CONTROL = {"kind": "llmft", "where": "control", "line": 0,
           "command": "llmft predict model_dir=outputs/train/<run>/model predict.input_file=never-written.jsonl"}


def step_id(step: dict) -> str:
    return f"{step['where']} {step['command'][:60]}"


RUN = [s for s in STEPS if not validate_only(s["command"])]
ONLY = [s for s in STEPS if validate_only(s["command"])]


# ------------------------------------------------------------- the driver (a subprocess of its own)
def with_values(argv: list[str], values: dict[str, str]) -> list[str]:
    """``argv`` with each key of ``values`` set to its value (replacing the command's own)."""
    out = [a for a in argv if a.split("=", 1)[0] not in values]
    return [*out, *(f"{k}={v}" for k, v in values.items())]


def newest(folder: Path) -> Path:
    runs = sorted(p for p in folder.glob("????-??-??_??-??-??") if p.is_dir())
    if not runs:
        raise LookupError(f"no run in {folder} yet: an earlier command on the page should make one")
    return runs[-1]


def expand(command: str, made: dict, models: dict | None) -> list[list[str]]:
    """The argv (after `llmft`) of each run of ``command``: placeholders bound to the folders
    earlier steps made, ``key=a|b`` alternatives one run each, small-data overrides added (none
    without ``models``: the command as written)."""
    command = ELIDED.get(command, command)
    bound = {"<run>": lambda: newest(Path("outputs/train")).name, "<time>": lambda: newest(Path("multirun/train")).name,
             "<fp32 run>": lambda: "RUN", "<student run>": lambda: made["distill"],
             "STUDENT_RUN": lambda: made["distill"], "+strategy=X": lambda: "+strategy=dora"}
    for placeholder, value in bound.items():
        if placeholder in command:
            command = command.replace(placeholder, value())
    runs = [[]]
    for word in shlex.split(command)[1:]:
        key, sep, value = word.partition("=")
        options = [f"{key}={v}" for v in value.split("|")] if sep and "|" in value else [word]
        runs = [[*run, option] for run in runs for option in options]
    return [small(argv, models) for argv in runs] if models else runs


def small(argv: list[str], models: dict) -> list[str]:
    command, args = argv[0], argv[1:]
    if command in ("train", "distill", "check") and not any(a in ("--help", "--cfg", "-h") for a in args):
        args = with_values(args, TRAIN_SMALL)
        if command in ("train", "check") and not any(a.startswith(("model.name_or_path=", "model=hf")) for a in args):
            tiny = models["chat_llama"] if "model=smollm2" in args else models["bert"]
            args = with_values(args, {"model.name_or_path": tiny})
        if any(a.startswith("hparams_search=") for a in args):
            args = with_values(args, SEARCH_SMALL)
    elif command == "bench-infer":
        args = with_values(args, BENCH_SMALL)
    return [command, *args]


def cpu_seconds() -> float:
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def drive(plan_file: str, first: int = 0) -> None:
    """Run the plan's steps here (the docs' folder), each one's output to its own log; write
    outcome.json: per step, the argv run, the exit code, the seconds (logs/<first + i>.log)."""
    from llmft.cli import main

    plan = json.loads(Path(plan_file).read_text())
    models, outcome, made, seen = plan["models"], [], {}, set()
    saved = os.dup(1), os.dup(2)
    last_start = 0
    for index, step in enumerate(plan["steps"]):
        record = {"where": step["where"], "runs": [], "code": 0, "seconds": 0.0}
        outcome.append(record)
        log = Path(f"logs/{first + index}.log")
        log.parent.mkdir(exist_ok=True)
        if step["kind"] == "shell":
            proc = subprocess.run(["bash", "-c", step["command"]], capture_output=True, text=True)
            log.write_text(proc.stdout + proc.stderr)
            record.update(code=proc.returncode, runs=[step["command"]])
            continue
        try:
            runs = expand(step["command"], made, models)
        except (LookupError, KeyError) as err:
            log.write_text(f"placeholder: {err!r}\n")
            record["code"] = "unbound"
            continue
        for argv in runs:
            if tuple(argv) in seen:  # shown twice: runs once
                continue
            seen.add(tuple(argv))
            while int(time.time()) == last_start:  # Hydra names run folders by the second
                time.sleep(0.05)
            last_start = int(time.time())
            before = {p for d in ("outputs", "multirun") for p in Path(d).glob("*/*")}
            started, cpu = time.perf_counter(), cpu_seconds()
            with log.open("a") as out:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                try:
                    code = main(list(argv))
                except SystemExit as stop:
                    code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                except BaseException as err:  # noqa: BLE001 -- a traceback is a failed step, the next ones run
                    import traceback

                    traceback.print_exc()
                    code = f"raised {type(err).__name__}"
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os.dup2(saved[0], 1)
                    os.dup2(saved[1], 2)
            record["runs"].append(argv)
            record["seconds"] += round(time.perf_counter() - started, 1)
            record["cpu_s"] = round(record.get("cpu_s", 0) + cpu_seconds() - cpu, 1)
            if code not in (0, None):
                record["code"] = code
            new = sorted({p for d in ("outputs", "multirun") for p in Path(d).glob("*/*")} - before)
            if argv[0] == "distill" and new:
                made["distill"] = str(new[-1])
        Path("outcome.json").write_text(json.dumps(outcome, indent=1))
    Path("outcome.json").write_text(json.dumps(outcome, indent=1))


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_bert4(tmp_path_factory) -> Path:
    """A BERT with 4 blocks (`llmft distill ... student.layers=3` takes 3 of them), width 32."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert4")
    words = sorted({w for row in make_rows(300, seed=0) for w in row["text"].split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory, tiny_bert4, tiny_chat_llama) -> tuple[Path, list[dict]]:
    """The folder the docs' commands ran in, and each step's outcome."""
    root = tmp_path_factory.mktemp("docs")
    models = {"bert": str(tiny_bert4), "chat_llama": str(tiny_chat_llama)}
    setup = {"kind": "llmft", "where": "setup: RUN", "line": 0,
             "command": "llmft train +strategy=lora seed=1 hydra.run.dir=RUN"}
    run = [setup, *RUN, CONTROL]
    (root / "plan.json").write_text(json.dumps({"models": models, "steps": run}))
    # this file and tests/conftest.py (which it imports) both on the path of the driving process
    script = ("import sys; sys.path[:0] = sys.argv[1].split('|'); import test_docs_commands as t; "
              "t.drive_with_copies(sys.argv[2])")
    env = {**cli_env(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # `llmft check` with a SLURM launcher reads the partitions: the documented ones, whether or not
    # the local test cluster (pytest --slurm) is up; sbatch fails (check never calls it)
    env["PATH"] = f"{slurm_stand_ins(root)}{os.pathsep}{env.get('PATH', os.environ.get('PATH', ''))}"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, f"{Path(__file__).parent}|{REPO / 'tests'}", "plan.json"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=900)
    print(f"\ndocs commands: {time.perf_counter() - started:.0f} s wall")
    for step, result in zip(run, json.loads((root / "outcome.json").read_text()) if (root / "outcome.json").exists() else []):
        print(f"  {result['seconds']:6.1f} s ({result.get('cpu_s', 0):5.1f} s cpu)  exit {result['code']}  "
              f"{step['where']}  {step['command'][:70]}")
    assert (root / "outcome.json").exists(), proc.stderr[-3000:]
    outcome = json.loads((root / "outcome.json").read_text())
    return root, outcome  # outcome[0]: the setup; outcome[i + 1]: RUN[i]; outcome[-1]: CONTROL


def drive_with_copies(plan_file: str) -> None:
    """drive(), with RUN_A and RUN_B copied from RUN once the setup step made it."""
    plan = json.loads(Path(plan_file).read_text())
    setup, rest = plan["steps"][:1], plan["steps"][1:]
    Path("setup.json").write_text(json.dumps({**plan, "steps": setup}))
    drive("setup.json")
    first = json.loads(Path("outcome.json").read_text())
    for name in ("RUN_A", "RUN_B"):
        if Path("RUN/model").is_dir():
            shutil.copytree("RUN", name)
    Path("rest.json").write_text(json.dumps({**plan, "steps": rest}))
    drive("rest.json", first=1)
    Path("outcome.json").write_text(json.dumps(first + json.loads(Path("outcome.json").read_text()), indent=1))


# --------------------------------------------------------------------------------------- tests
def test_every_page_is_linked_and_its_links_resolve():
    """Each docs/ page is in the README's map; every relative link names a file that exists and,
    with #anchor, a heading of that file (GitHub's slugs)."""
    linked = set(pages())
    assert set(DOCS.glob("*.md")) <= linked, set(DOCS.glob("*.md")) - linked
    for page in linked:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            assert path.exists(), f"{page.name}: link to {target}: no such file"
            if anchor:
                assert anchor in anchors(path), f"{page.name}: link to {target}: no such heading in {path.name}"


def anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#+\s+(.*)$", page.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_ci_runs_the_readme_test_command():
    """.ci/run's test line is the README's test command, character for character."""
    readme = README.read_text(encoding="utf-8")
    [command] = re.findall(r'^pip install -e "\.\[test\]" && pytest.*$', readme, flags=re.M)
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == command, (ci[-1], command)
    assert command in (DOCS / "testing.md").read_text(encoding="utf-8")


def test_the_pages_commands_are_found():
    """The reader finds the README's first run and the inference page's commands (so an empty
    list cannot pass), and every allow-list entry still names a documented command."""
    found = {s["command"] for s in STEPS}
    for command in ("llmft train", "llmft eval model_dir=outputs/train/<run>/model",
                    "llmft predict model_dir=outputs/train/<run>/model predict.input_file=new.jsonl",
                    "llmft merge-adapters inputs=[RUN_A/model,RUN_B/model] weights=[0.5,0.5] method=linear|ties|dare_ties",
                    "llmft bench-infer model_dir=RUN/model students=[STUDENT_RUN/model]"):
        assert command in found, command
    assert any(s["kind"] == "shell" and s["command"].endswith("> new.jsonl") for s in STEPS)
    for key in VALIDATE_ONLY:
        assert any(key in c for c in found), f"VALIDATE_ONLY[{key!r}] names no documented command"


@pytest.mark.parametrize("step", RUN, ids=[step_id(s) for s in RUN])
def test_a_documented_command_runs(step, docs_folder):
    """Exit 0 (a shell step: the file it writes is there)."""
    root, outcome = docs_folder
    index = RUN.index(step) + 1
    assert outcome[0]["code"] == 0, f"the setup run RUN failed: {outcome[0]}"
    assert index < len(outcome), f"{step['where']}: the driver stopped before this step"
    result = outcome[index]
    if result["code"] != 0:
        log = root / "logs" / f"{index}.log"
        tail = log.read_text()[-3000:] if log.exists() else ""
        pytest.fail(f"{step['where']}: `{step['command']}` ran as {result['runs']}: exit {result['code']}\n{tail}")


@pytest.mark.parametrize("step", ONLY, ids=[step_id(s) for s in ONLY])
def test_a_documented_command_that_cannot_run_here_validates(step, docs_folder, monkeypatch):
    """Composes and validates in the folder the other commands ran in (STAND_INS for SLURM)."""
    root, _ = docs_folder
    command = step["command"]
    if command in ELSEWHERE:
        pytest.skip(ELSEWHERE[command])
    monkeypatch.chdir(root)
    monkeypatch.setenv("PATH", f"{slurm_stand_ins(root)}{os.pathsep}{os.environ.get('PATH', '')}")
    where = f"{step['where']}: `{command}` ({validate_only(command)})"
    where += "".join(f" ({why})" for key, why in STAND_INS.items() if key in command)
    for argv in expand(command, {"distill": "STUDENT_RUN"}, None):
        try:
            check_args(argv)
        except UserError as err:
            pytest.fail(f"{where}\n  llmft: error: {err}")


def test_an_input_file_the_docs_never_write_fails_its_command(docs_folder):
    """The failure a reader meets (`predict.input_file=new.jsonl` that no step wrote) fails here too:
    the runner provides no input file of its own."""
    root, outcome = docs_folder
    assert len(outcome) == len(RUN) + 2, "the driver stopped early"
    assert outcome[-1]["code"] == 2, outcome[-1]
    log = (root / "logs" / f"{len(RUN) + 1}.log").read_text()
    assert "llmft: error: predict.input_file" in log and "never-written.jsonl" in log, log[-2000:]
