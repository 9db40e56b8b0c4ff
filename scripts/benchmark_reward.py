#!/usr/bin/env python
"""Reward models on the tweet preference pairs: held-out pairwise accuracy vs the baselines.

    python scripts/benchmark_reward.py [--data /tmp/prefdata] [--out /tmp/rewardbench]
        [--runs minilm,smollm2-lora] [--epochs 3] [override ...]

The pairs: /tmp/prefdata/{train,eval}.jsonl as scripts/benchmark_preference.py builds them (800
train / 300 held-out pairs from the default experiment's tweets: prompt the tweets' prompting
template, chosen the gold label word, rejected a wrong one drawn with a fixed seed); built here
the same way (its build_preference_set) when missing. Each run is `llmft train ... data=csv
data.task=reward` through the real CLI on the train pairs, evaluated on the held-out pairs:
pairwise accuracy (chosen scored above rejected), mean margin and loss from results.json, next to
the length and majority baselines it reports. Prints a markdown table with train seconds and the
CPU. Writes only under --out (and --data when it builds the pairs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "TOKENIZERS_PARALLELISM": "false"}
RUNS = {  # name -> overrides
    "minilm": ["model=minilm"],
    "smollm2-lora": ["model=smollm2", "+strategy=lora"],
}


def pairs(data: Path) -> dict:
    files = {"train": data / "train.jsonl", "eval": data / "eval.jsonl"}
    if not all(p.is_file() for p in files.values()):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from benchmark_preference import build_preference_set

        files = build_preference_set(data)
    return files


def cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/prefdata"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/rewardbench"))
    parser.add_argument("--runs", default="minilm")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    files = pairs(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **OFFLINE}
    table = []
    for name in args.runs.split(","):
        run_dir = args.out / name
        cmd = ["llmft", "train", *RUNS[name], "data=csv", "data.task=reward", f"data.train_file={files['train']}",
               f"data.eval_file={files['eval']}", f"train.epochs={args.epochs}", "train.resume=never",
               "print_config=false", f"hydra.run.dir={run_dir}", *args.overrides]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"{name}: llmft failed:\n{proc.stderr[-3000:]}")
        results = json.loads((run_dir / "results.json").read_text())
        table.append((name, results, time.perf_counter() - started))
        (args.out / f"{name}.json").write_text(json.dumps(results, indent=2))
    print(f"CPU: {cpu()}; pairs: {sum(1 for _ in files['train'].open())} train, "
          f"{sum(1 for _ in files['eval'].open())} held-out")
    base = table[0][1]["baseline"]
    print("| scorer | held-out pairwise accuracy | mean margin | eval loss | train s | wall s |")
    print("|---|---|---|---|---|---|")
    majority = base.get("majority_accuracy")
    print(f"| majority: the label word chosen more often in train | "
          f"{'null: ' + base.get('majority_note', '') if majority is None else f'{majority:.4f}'} | | | | |")
    print(f"| length: the longer completion in tokens ({base['length_ties']} ties of "
          f"{table[0][1]['num_eval_examples']}, each half) | {base['length_accuracy']:.4f} | | | | |")
    for name, results, seconds in table:
        e = results["eval"]
        print(f"| {name} ({results['params']['trainable']:,} trainable) | {e['accuracy']:.4f} | {e['margin']:.3f} | "
              f"{e['loss']:.4f} | {results['train']['runtime_s']:.0f} | {seconds:.0f} |")
    for name, results, _ in table:
        if results["warnings"]:
            print(f"{name} warnings: {results['warnings']}")


if __name__ == "__main__":
    main()
