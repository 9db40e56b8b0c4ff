#!/usr/bin/env python
"""Structured pruning of the default MiniLM tweets model: accuracy and bench-infer throughput.

    python scripts/benchmark_prune.py --keep DIR [--rows 2000] [--steps 20] [--finetune 0.5] [--eval-rows 400]

Trains `model=minilm data=tweet_sentiment` once (on --rows training tweets, 1 epoch; reused if
DIR/run holds it), then `llmft prune` with prune.method=heads|ffn at amount 0.3 and 0.5 (importance
on --importance-batches training batches), and at the --finetune amounts again with --steps
recovery fine-tuning steps (batch 32), then one `llmft bench-infer` (variants=[fp32], the pruned
folders as its students=[...]) over the first --eval-rows tweets of the test split (0: all 1,908):
accuracy, latency at batch 1 (--latency-examples) and throughput at batch 32 (--throughput-examples)
of every model in one run. Prints a
Markdown table (also DIR/summary.md). Runs already under DIR are reused.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
       "TOKENIZERS_PARALLELISM": "false"}


def llmft(*args: str) -> None:
    script = Path(sys.executable).with_name("llmft")
    proc = subprocess.run([str(script) if script.exists() else "llmft", *args], capture_output=True, text=True, env=ENV)
    if proc.returncode != 0:
        raise SystemExit(f"llmft {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-3:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", required=True, help="folder for the runs (reused when present)")
    parser.add_argument("--rows", type=int, default=2000, help="training tweets of the source model")
    parser.add_argument("--steps", type=int, default=20, help="recovery fine-tuning steps")
    parser.add_argument("--finetune", type=float, nargs="*", default=[0.5], help="amounts also fine-tuned")
    parser.add_argument("--importance-batches", type=int, default=4)
    parser.add_argument("--eval-rows", type=int, default=400, help="test tweets bench-infer scores (0: all)")
    parser.add_argument("--latency-examples", type=int, default=30)
    parser.add_argument("--throughput-examples", type=int, default=256)
    args = parser.parse_args()
    root = Path(args.keep).resolve()
    run = root / "run"
    if not (run / "results.json").is_file():
        llmft("train", "model=minilm", "data=tweet_sentiment", f"data.max_train_samples={args.rows}",
              "print_config=false", f"hydra.run.dir={run}")
    pruned = []
    for method in ("heads", "ffn"):
        for amount in (0.3, 0.5):
            for steps in (0, args.steps) if amount in args.finetune else (0,):
                name = f"pruned-{method}-{amount:g}" + (f"-ft{steps}" if steps else "")
                if not (run / name / "llmft.json").is_file():
                    llmft("prune", f"model_dir={run / 'model'}", f"prune.method={method}", f"prune.amount={amount}",
                          f"prune.finetune_steps={steps}", f"prune.importance_batches={args.importance_batches}",
                          "check_examples=64", f"hydra.run.dir={root / 'prune' / name}")
                pruned.append(run / name)
    bench = root / "bench"
    if not (bench / "results.json").is_file():
        llmft("bench-infer", f"model_dir={run / 'model'}", "variants=[fp32]",
              f"students=[{','.join(str(p) for p in pruned)}]", f"hydra.run.dir={bench}",
              f"latency_examples={args.latency_examples}", f"throughput_examples={args.throughput_examples}",
              *([f"data.max_eval_samples={args.eval_rows}"] if args.eval_rows else []))
    rows = json.loads((bench / "results.json").read_text())["variants"]
    source_params = json.loads((pruned[0] / "llmft.json").read_text())["pruned"]["parameters_before"]
    lines = ["| model | parameters | size MB | accuracy | d accuracy | p50 ms (b=1) | ex/s (b=32) | x fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        folder = run / "model" if row["variant"] == "fp32" else next(p for p in pruned if row["variant"] == f"pruned ({p.name})")
        meta = json.loads((folder / "llmft.json").read_text()).get("pruned", {})
        count = meta.get("parameters_after", source_params)
        lines.append(f"| {folder.name} | {count / 1e6:.2f}M | {row['size_mb']:.1f} | {row['accuracy']:.4f} | "
                     f"{row['metric_delta']:+.4f} | {row['latency_p50_ms']:.2f} | {row['throughput_ex_s']:.1f} | "
                     f"{row['throughput_x']:.2f} |")
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    table = "\n".join(lines) + f"\n\n{cpu}; torch threads: bench-infer's inference_report.md\n"
    (root / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
