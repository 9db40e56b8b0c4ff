#!/usr/bin/env python
"""Training in fp32 against bf16 (autocast), on the same run, in one invocation.

    python scripts/benchmark_precision.py [--precisions fp32,bf16] [override ...]

Each precision trains the default experiment (or whatever the overrides make of it) through the
real CLI with hardware.precision set, then evaluates on the same held-out split. Prints training
tokens/s, its ratio to the first precision, wall time, accuracy and macro-F1 (or the task's
primary metric). On this project's CPU (AVX512-BF16 and AMX) bf16 matmuls run at 4x fp32.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--keep", help="keep the run folders under this directory")
    args, overrides = parser.parse_known_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp())
    rows = {}
    for precision in args.precisions.split(","):
        run_dir = root / precision
        cmd = ["llmft", "train", f"hardware.precision={precision}", "print_config=false",
               f"hydra.run.dir={run_dir}", *overrides]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{precision} failed:\n{proc.stderr[-3000:]}")
        rows[precision] = json.loads((run_dir / "results.json").read_text())
    first = next(iter(rows.values()))["train"]["tokens_per_s"]
    metric = next(iter(rows.values()))["primary_metric"]
    second = "macro-F1" if "macro_f1" in next(iter(rows.values()))["eval"] else metric
    print(f"| precision | train tokens/s | x first | train s | wall s | accuracy | {second} |")
    print("|---|---|---|---|---|---|---|")
    for precision, r in rows.items():
        t, e = r["train"], r["eval"]
        print(f"| {precision} | {t['tokens_per_s']:.0f} | {t['tokens_per_s'] / first:.2f} | {t['runtime_s']:.0f} | "
              f"{r['wall_time_s']:.0f} | {e.get('accuracy', float('nan')):.4f} | "
              f"{e.get('macro_f1', e.get(metric, float('nan'))):.4f} |")


if __name__ == "__main__":
    main()
