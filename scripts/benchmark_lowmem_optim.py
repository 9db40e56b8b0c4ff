#!/usr/bin/env python
"""GaLore and APOLLO against AdamW: SmolLM2 full fine-tuning (SFT), the same steps, batches and
seed; peak memory, the optimizer state's size, eval loss and time.

    python scripts/benchmark_lowmem_optim.py [--steps 16] [--batch-size 2] [--eval 32] [--rank 128]
        [--keep DIR] [override ...]

Measured (docs/measurements.md): --steps 4 --eval 8 --max-length 96.

The chats are benchmark_packing.py's (tweets asked for k at a time). Every row is a real
`llmft train` (from one snapshot of the tree) that writes one checkpoint at its last step: the
size of that checkpoint's optimizer.pt is the optimizer state (AdamW: two fp32 moments per
parameter; GaLore / APOLLO: two rank-r moments per projected matrix, plus its projection). Peak
memory is the process's peak resident set (results.json "memory"; on a GPU: peak allocated).
A row whose results.json exists under --keep DIR is not run again.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_packing import chats, run, snapshot, tweets  # noqa: E402  (the same chats, the same runner)

ROWS = {"adamw": ["train.optim=adamw"], "galore_adamw": ["train.optim=galore_adamw"],
        "apollo_adamw": ["train.optim=apollo_adamw"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--eval", type=int, default=32, help="held-out chats")
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--lr", default="1e-4")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names")
    parser.add_argument("--keep", help="data and run folders go here (and are reused by a second call)")
    args, overrides = parser.parse_known_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-lowmem-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = chats(args.steps * args.batch_size + args.eval, seed=0, pool=tweets())
    train_file, eval_file = root / "train.jsonl", root / "eval.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:-args.eval]))
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows[-args.eval:]))
    common = ["model=smollm2", "+strategy=full", "data=jsonl_sft", f"data.train_file={train_file}",
              f"data.eval_file={eval_file}", f"data.max_length={args.max_length}", f"train.max_steps={args.steps}",
              f"train.batch_size={args.batch_size}", f"train.lr={args.lr}", "train.logging_steps=4",
              f"train.save_steps={args.steps}", f"train.optim_rank={args.rank}", "train.retention.report=false",
              "generate.max_examples=1", "generate.max_new_tokens=1", "seed=0", *overrides]
    tree = snapshot()
    results, state_mb = {}, {}
    try:
        for name in args.rows.split(","):
            folder = root / name
            results[name] = r = run(tree, folder, [*common, *ROWS[name]])
            optimizer = next(folder.rglob(f"checkpoint-{args.steps}/optimizer.pt"), None)
            state_mb[name] = optimizer.stat().st_size / 2**20 if optimizer else float("nan")
            print(f"{name:<14} runtime {r['train']['runtime_s']:7.1f} s  peak {peak(r):8.0f} MB  "
                  f"optimizer state {state_mb[name]:7.0f} MB  eval loss {r['eval']['loss']:.4f}", flush=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)

    base = "adamw" if "adamw" in results else next(iter(results))
    print("\n| optimizer | peak MB | x | optimizer state MB | x | eval loss | train s | x |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        b = results[base]
        print(f"| {name} | {peak(r):,.0f} | {peak(r) / peak(b):.2f} | {state_mb[name]:,.0f} | "
              f"{state_mb[name] / state_mb[base]:.2f} | {r['eval']['loss']:.4f} | {r['train']['runtime_s']:.0f} | "
              f"{r['train']['runtime_s'] / b['train']['runtime_s']:.2f} |")
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print(f"\n{args.steps} steps of batch {args.batch_size}, max_length {args.max_length}, lr {args.lr}, "
          f"rank {args.rank}, {args.eval} eval chats; {cpu}; run folders: {root}")


def peak(r: dict) -> float:
    memory = r["memory"]
    return memory.get("peak_gpu_mb", memory["peak_rss_mb"])


if __name__ == "__main__":
    main()
