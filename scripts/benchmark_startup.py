#!/usr/bin/env python
"""Start-up: wall time from process start to the first training step of `llmft train experiment=smoke`.

    python scripts/benchmark_startup.py [--base DIR] [--repeats 3] [--out DIR] [override ...]

Each run is `llmft train experiment=smoke` in a fresh interpreter, started through a small
launcher that times transformers' own step hook (CallbackHandler.on_step_begin / on_step_end,
which every Trainer subclass reaches) and exits once the first step has ended: the parent takes
the clock before it starts the process, the launcher writes the elapsed times at the first
step's begin and end, and the CPU seconds (user + system) the process had used by the begin:
on a machine whose cores other work shares, wall time grows with the load, CPU time much less.
With --base DIR (a checkout of another commit, e.g. a git worktree), runs
alternate between DIR and this tree (PYTHONPATH picks the package; both use this venv), best of
--repeats each, and one `python -X importtime` run of each side gives the slowest imports.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}

# Run inside the child: patch the step hooks once transformers.trainer_callback loads (a
# post-import hook, so nothing is imported earlier than llmft itself would), then run the CLI.
LAUNCHER = r"""
import importlib.abc, importlib.machinery, os, sys, time, json
T0 = float(os.environ["STARTUP_T0"]); OUT = os.environ["STARTUP_OUT"]; marks = {}

def patch(module):
    handler = module.CallbackHandler
    begin, end = handler.on_step_begin, handler.on_step_end
    def on_step_begin(self, args, state, control):
        if "first_step_begin_s" not in marks:
            marks["first_step_begin_s"], marks["first_step_begin_cpu_s"] = time.time() - T0, sum(os.times()[:2])
        return begin(self, args, state, control)
    def on_step_end(self, args, state, control):
        marks["first_step_end_s"] = time.time() - T0
        marks["modules"] = sorted(m for m in sys.modules if "." not in m)
        with open(OUT, "w") as f:
            json.dump(marks, f)
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(0)
    handler.on_step_begin, handler.on_step_end = on_step_begin, on_step_end

class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "transformers.trainer_callback":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            patch(module)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Hook())
from llmft.cli import main
sys.argv = ["llmft", *sys.argv[1:]]
sys.exit(main())
"""


def one_run(tree: Path, overrides: list[str], work: Path, tag: str, importtime: bool = False) -> dict:
    out = work / f"{tag}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, **ENV, "PYTHONPATH": str(tree), "STARTUP_OUT": str(out)}
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", LAUNCHER, "train",
           "experiment=smoke", "print_config=false", f"hydra.run.dir={work / tag}", *overrides]
    env["STARTUP_T0"] = repr(time.time())
    proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    if not out.is_file():
        raise SystemExit(f"{tree}: no first step (exit {proc.returncode}): {proc.stderr[-2000:]}")
    marks = json.loads(out.read_text())
    if importtime:
        marks["importtime"] = slowest_imports(proc.stderr)
    return marks


def slowest_imports(stderr: str, top: int = 12) -> list[tuple[str, float]]:
    """The top-level imports (those no other import started: the ones code asked for) by
    cumulative seconds."""
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            _, cumulative, name = line.split(":", 1)[1].split("|")
            if not name[1:].startswith(" "):  # depth 0
                rows.append((name.strip(), int(cumulative) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, help="another checkout to compare with (e.g. a git worktree of the baseline)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, help="folder for the runs (default: a temporary one)")
    ap.add_argument("overrides", nargs="*", help="extra `llmft train` overrides")
    a = ap.parse_args()
    work = a.out or Path(tempfile.mkdtemp(prefix="llmft-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    sides = {"base": a.base.resolve(), "now": REPO} if a.base else {"now": REPO}
    runs = {k: [] for k in sides}
    for i in range(a.repeats):
        for name, tree in sides.items():  # alternate: drift in the machine's load hits both sides
            marks = one_run(tree, a.overrides, work, f"{name}{i}")
            runs[name].append(marks)
            print(f"{name} #{i}: first step begins {marks['first_step_begin_s']:.2f} s "
                  f"({marks['first_step_begin_cpu_s']:.2f} CPU s), ends {marks['first_step_end_s']:.2f} s", flush=True)
    report = {}
    for name, tree in sides.items():
        best = min(runs[name], key=lambda m: m["first_step_begin_s"])
        traced = one_run(tree, a.overrides, work, f"{name}-importtime", importtime=True)
        report[name] = {"first_step_begin_s": best["first_step_begin_s"],
                        "first_step_end_s": min(m["first_step_end_s"] for m in runs[name]),
                        "first_step_begin_cpu_s": min(m["first_step_begin_cpu_s"] for m in runs[name]),
                        "heavy_modules_loaded": [m for m in ("bitsandbytes", "deepspeed", "galore_torch", "peft", "trl",
                                                             "onnx", "onnxruntime", "wandb", "mlflow", "sklearn",
                                                             "matplotlib", "datasets", "tensorboard")
                                                 if m in best["modules"]],
                        "slowest_imports_s": traced["importtime"]}
        print(f"\n{name} ({tree}): best of {a.repeats}: first step begins {report[name]['first_step_begin_s']:.2f} s, "
              f"ends {report[name]['first_step_end_s']:.2f} s; CPU s by the begin {report[name]['first_step_begin_cpu_s']:.2f}")
        print(f"  loaded by then: {', '.join(report[name]['heavy_modules_loaded'])}")
        for module, seconds in report[name]["slowest_imports_s"]:
            print(f"  {seconds:6.2f} s  {module}")
    if "base" in report:
        ratio = report["now"]["first_step_begin_s"] / report["base"]["first_step_begin_s"]
        cpu = report["now"]["first_step_begin_cpu_s"] / report["base"]["first_step_begin_cpu_s"]
        print(f"\nnow / base, to the first step's begin: wall {ratio:.3f} ({(ratio - 1) * 100:+.1f} %), "
              f"CPU {cpu:.3f} ({(cpu - 1) * 100:+.1f} %)")
        report["ratio_first_step_begin"], report["ratio_first_step_begin_cpu"] = ratio, cpu
    (work / "startup.json").write_text(json.dumps(report, indent=1))
    print(f"written: {work / 'startup.json'}")


if __name__ == "__main__":
    main()
