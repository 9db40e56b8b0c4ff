#!/usr/bin/env python
"""Three seeds of full fine-tuning, LoRA and the bottleneck adapter, compared by `llmft report`.

    python scripts/benchmark_seeds.py [--dir /tmp/seeds] [--rows 4000] [override ...]

One multirun, `llmft train -m seed=1,2,3 +strategy=full,lora,adapter data.max_train_samples=ROWS`
on the default experiment (MiniLM, tweets, all 1,908 test tweets), runs one after another so the
timings do not share the cores, then `llmft report` on the sweep folder (seed-grouped: mean ± std,
the 95 % CI and whether each config differs from the best by more than the seed spread). A rerun
with the same --dir resumes: completed runs are skipped by the run folders themselves.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/seeds"))
    parser.add_argument("--rows", type=int, default=4000, help="data.max_train_samples")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--strategies", default="full,lora,adapter")
    parser.add_argument("--source", type=Path, help="train with the llmft tree here (e.g. `git archive HEAD` "
                        "unpacked: a checkout edited while the sweep runs); the report uses the installed one")
    args, overrides = parser.parse_known_args()
    sweep = args.dir / f"rows{args.rows}"
    env = {**os.environ, **ENV}
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print(f"{cpu}; sweep folder {sweep}", flush=True)
    start = time.monotonic()
    cmd = ["llmft", "train", "-m", f"seed={args.seeds}", f"+strategy={args.strategies}",
           f"data.max_train_samples={args.rows}", "print_config=false", f"hydra.sweep.dir={sweep}", *overrides]
    print(" ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env={**env, "PYTHONPATH": str(args.source.resolve())} if args.source else env)
    print(f"sweep: exit {proc.returncode}, {time.monotonic() - start:.0f} s wall", flush=True)
    report = subprocess.run(["llmft", "report", str(sweep)], env=env)
    return proc.returncode or report.returncode


if __name__ == "__main__":
    sys.exit(main())
