#!/usr/bin/env python
"""Training speed knobs measured, not just passed through: peak memory and tokens/s of SmolLM2 SFT
with full fine-tuning vs LoRA, each with and without gradient checkpointing, LoRA under
torch.compile, and both with the full logits instead of the chunked loss (`train.loss_chunk_tokens=0`;
fused AdamW is every run's optimizer: `train.optim=adamw`).

    python scripts/benchmark_speed_knobs.py [--steps 12] [--batch-size 8] [--keep DIR] [override ...]

The chats are benchmark_packing.py's (tweets asked for k at a time, k long-tailed). Every row is
a real `llmft train` (from one snapshot of the tree) of the same steps on the same batches; peak
memory is the process's peak resident set (results.json "memory"; on a GPU: peak allocated).
Targets: LoRA's peak <= 0.6 x full fine-tuning's; gradient checkpointing: the memory it saves
and the time it costs. A row whose results.json exists under --keep DIR is not run again.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_packing import chats, run, snapshot, tweets  # noqa: E402  (the same chats, the same runner)

ROWS = {  # name -> overrides
    "full": ["+strategy=full", "train.lr=2e-5"],
    "full + gradient checkpointing": ["+strategy=full", "train.lr=2e-5", "hardware.gradient_checkpointing=true"],
    "lora": ["+strategy=lora", "train.lr=1e-3"],
    "lora + gradient checkpointing": ["+strategy=lora", "train.lr=1e-3", "hardware.gradient_checkpointing=true"],
    "lora + torch.compile": ["+strategy=lora", "train.lr=1e-3", "hardware.compile=true"],
    # the default rows compute the loss in chunks (train.loss_chunk_tokens=null); these hold the full logits
    "full + plain loss": ["+strategy=full", "train.lr=2e-5", "train.loss_chunk_tokens=0"],
    "lora + plain loss": ["+strategy=lora", "train.lr=1e-3", "train.loss_chunk_tokens=0"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names")
    parser.add_argument("--keep", help="data and run folders go here (and are reused by a second call)")
    args, overrides = parser.parse_known_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-knobs-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = chats(args.steps * args.batch_size + 32, seed=0, pool=tweets())
    train_file, eval_file = root / "train.jsonl", root / "eval.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:-32]))
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows[-32:]))
    common = ["model=smollm2", "data=jsonl_sft", f"data.train_file={train_file}", f"data.eval_file={eval_file}",
              f"data.max_length={args.max_length}", f"train.max_steps={args.steps}",
              f"train.batch_size={args.batch_size}", "train.logging_steps=4", "train.retention.report=false",
              "generate.max_examples=1", "generate.max_new_tokens=1", *overrides]
    tree = snapshot()
    results = {}
    try:
        for name in args.rows.split(","):
            folder = root / name.replace(" + ", "-").replace(" ", "_").replace(".", "")
            results[name] = r = run(tree, folder, [*common, *ROWS[name]])
            t, memory = r["train"], r["memory"]
            print(f"{name:<32} runtime {t['runtime_s']:7.1f} s  tokens/s {t['tokens_per_s']:8.1f}  "
                  f"peak {memory.get('peak_gpu_mb', memory['peak_rss_mb']):8.0f} MB  "
                  f"eval loss {r['eval']['loss']:.4f}  MFU {t.get('mfu')}", flush=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)

    def peak(name):
        memory = results[name]["memory"]
        return memory.get("peak_gpu_mb", memory["peak_rss_mb"])

    print("\n| row | tokens/s | x | peak MB | x | eval loss |\n|---|---|---|---|---|---|")
    for name in results:
        base = "full" if name.startswith("full") else "lora"
        if base not in results:
            base = name
        t = results[name]["train"]
        print(f"| {name} | {t['tokens_per_s']:.0f} | {t['tokens_per_s'] / results[base]['train']['tokens_per_s']:.2f} "
              f"| {peak(name):.0f} | {peak(name) / peak(base):.2f} | {results[name]['eval']['loss']:.4f} |")
    if "full" in results and "lora" in results:
        print(f"\nLoRA peak / full peak: {peak('lora') / peak('full'):.2f} (target <= 0.6)")
    if "full + plain loss" in results and "lora + plain loss" in results:
        print(f"with the full logits (train.loss_chunk_tokens=0): "
              f"{peak('lora + plain loss') / peak('full + plain loss'):.2f}")
    print(f"{args.steps} steps of batch {args.batch_size}, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}); run folders: {root}")


if __name__ == "__main__":
    main()
