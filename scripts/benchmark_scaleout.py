#!/usr/bin/env python
"""One process against 2-process DeepSpeed ZeRO-2 and ZeRO-3, on the same work.

    python scripts/benchmark_scaleout.py [--steps 40] [--hardware cpu,cpu_zero2,cpu_zero3] [override ...]

Each hardware config trains the default experiment (MiniLM on the tweets) for the same number of
optimizer steps at the same global batch (the 1-process run gets batch 2x, so every side sees
the same examples), through the real CLI, then evaluates on the same 400 held-out tweets.
Prints, per config: training time, wall time (start-up, DeepSpeed op builds and evaluation
included), peak resident memory of every rank, accuracy, and training time relative to the
1-process baseline measured in the same invocation.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def run(hardware: str, steps: int, batch: int, overrides: list[str], root: Path) -> dict:
    run_dir = root / hardware
    world = 1 if hardware == "cpu" else 2
    cmd = ["llmft", "train", f"hardware={hardware}", f"train.max_steps={steps}",
           f"train.batch_size={batch * 2 // world}", "data.max_eval_samples=400", "train.logging_steps=10",
           "print_config=false", f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{hardware} failed:\n{proc.stderr[-3000:]}")
    return json.loads((run_dir / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16, help="per process on the 2-process runs")
    parser.add_argument("--hardware", default="cpu,cpu_zero2,cpu_zero3")
    args, overrides = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {hw: run(hw, args.steps, args.batch_size, overrides, Path(tmp)) for hw in args.hardware.split(",")}
    base = next(iter(rows.values()))["train"]["runtime_s"]
    print(f"{args.steps} steps of {2 * args.batch_size} examples (global batch), MiniLM on the tweets\n")
    print("| hardware | processes | train s | x 1 process | wall s | peak RSS per rank (MB) | accuracy |")
    print("|---|---|---|---|---|---|---|")
    for hw, r in rows.items():
        ranks = r["memory"].get("per_rank") or [r["memory"]]
        rss = " / ".join(f"{m['peak_rss_mb']:.0f}" for m in ranks)
        t = r["train"]["runtime_s"]
        print(f"| {hw} | {r['hardware']['world_size']} | {t:.1f} | {t / base:.2f} | {r['wall_time_s']:.1f} | "
              f"{rss} | {r['eval']['accuracy']:.3f} |")


if __name__ == "__main__":
    main()
