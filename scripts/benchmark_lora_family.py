#!/usr/bin/env python
"""LoRA initialisations and LoRA+ on the default experiment, 3 seeds each, compared by `llmft report`.

    python scripts/benchmark_lora_family.py [--dir /tmp/lora_family] [--rows 4000] [override ...]

For each seed in turn (so a cut-short run still has every variant for the seeds it finished), two
multiruns, one after another (the timings do not share the cores with each other):
`llmft train -m seed=S +strategy=lora strategy.init=INITS` and
`llmft train seed=S +strategy=lora_plus`, every variant at its defaults on MiniLM and the
tweets (data.max_train_samples=ROWS; 0: all 12,000), all 1,908 test tweets. Then `llmft report`
on the folder (seed-grouped: mean ± std) and a short table of test accuracy and train seconds
from the runs' results.json. A rerun with the same --dir skips the completed runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lora_family"))
    parser.add_argument("--rows", type=int, default=4000, help="data.max_train_samples (0: all 12,000)")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--inits", default="default,gaussian,pissa,olora,eva,corda")
    parser.add_argument("--no-lora-plus", action="store_true")
    args, overrides = parser.parse_known_args()
    env = {**os.environ, **ENV}
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print(f"{cpu}; folder {args.dir}", flush=True)
    rows = [f"data.max_train_samples={args.rows}"] if args.rows else []
    sweeps = [("inits", ["+strategy=lora", f"strategy.init={args.inits}"])]
    if not args.no_lora_plus:
        sweeps.append(("lora_plus", ["+strategy=lora_plus"]))
    code = 0
    for seed in args.seeds.split(","):
        for name, variant in sweeps:
            start = time.monotonic()
            cmd = ["llmft", "train", "-m", f"seed={seed}", *variant, *rows, "print_config=false",
                   f"hydra.sweep.dir={args.dir / f'seed{seed}' / name}", *overrides]
            print(" ".join(cmd), flush=True)
            code = subprocess.run(cmd, env=env).returncode or code
            print(f"seed {seed} {name}: {time.monotonic() - start:.0f} s wall", flush=True)
    code = code or subprocess.run(["llmft", "report", str(args.dir)], env=env).returncode
    print_table(args.dir)
    return code


def print_table(folder: Path) -> None:
    """variant -> test accuracy mean ± std and train seconds mean over the seeds found."""
    runs = defaultdict(list)
    for path in sorted(folder.rglob("results.json")):
        r = json.loads(path.read_text())
        if r.get("status") != "completed":
            continue
        strategy = yaml.safe_load((path.parent / "config.yaml").read_text())["strategy"]
        runs[f"{strategy['name']} init={strategy['init']}"].append((r["eval"]["accuracy"], r["train"]["runtime_s"]))
    print("| variant | test accuracy | seeds | train s |\n|---|---|---|---|")
    for name, got in sorted(runs.items()):
        acc = [a for a, _ in got]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        print(f"| {name} | {statistics.mean(acc):.4f} ± {sd:.4f} | {' / '.join(f'{a:.4f}' for a in acc)} "
              f"| {statistics.mean(t for _, t in got):.0f} |")


if __name__ == "__main__":
    sys.exit(main())
