#!/usr/bin/env python
"""Dropout and L1 in the overfitting regime: MiniLM on 1,000 training tweets for 3 epochs.

    python scripts/benchmark_regularization.py [--out DIR] [--train 1000] [--test N] [--epochs 3]
                                               [--variants own,dropout,l1] [--l1 1e-6] [--l1-pretrained 1e-4]
                                               [override ...]

The default experiment's tweets (data=tweet_sentiment) split as it splits them: its train split
capped at ``--train`` rows (data.max_train_samples) and its held-out tweets (the first ``--test``; default all 1,908) are
written to CSVs once, so every variant trains on the same rows and is scored on the same test tweets. Each variant is one `llmft train`
(3 epochs, the default experiment otherwise); its train accuracy is `llmft eval` of the trained
model with the training CSV as the eval split (dropout off, as at test time). Prints one markdown
row per variant: test accuracy and macro-F1, train accuracy, the train-test gap; writes
OUT/regularization.json.

    own             the model's own dropout (MiniLM: 0.1 hidden, attention and head)
    dropout         model.dropout=0.3
    l1              train.l1=--l1 (towards 0)
    l1_pretrained   train.l1=--l1-pretrained train.l1_to=pretrained
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def environment() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline",
                TOKENIZERS_PARALLELISM="false")


def write_splits(root: Path, n_train: int, n_test: int | None) -> tuple[Path, Path]:
    """The default experiment's train split (capped at n_train) and held-out tweets, as CSVs."""
    from hydra import compose, initialize_config_dir

    from llmft.cli.app import config_dir
    from llmft.cli.validate import register_configs
    from llmft.data.files import load_splits
    from llmft.tasks import build_task

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.max_train_samples={n_train}"])
    task = build_task(cfg.data)
    splits = load_splits(cfg.data, task)
    files = {}
    if n_test is not None:
        splits["eval"] = splits["eval"].select(range(min(n_test, len(splits["eval"]))))
    for name in ("train", "eval"):
        files[name] = root / f"{name}.csv"
        with files[name].open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for row in splits[name]:
                writer.writerow([row["text"], task.labels[row["labels"]]])
    return files["train"], files["eval"]


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=environment())
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", help="run folders and CSVs here (default: a new temporary folder)")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, help="the first N held-out tweets (default: all)")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--variants", default="own,dropout,l1")
    parser.add_argument("--l1", type=float, default=1e-6)
    parser.add_argument("--l1-pretrained", type=float, default=1e-4)
    args, overrides = parser.parse_known_args()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="regularization-"))
    root.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = root / "train.csv", root / "eval.csv"
    if not (train_csv.is_file() and test_csv.is_file()):
        train_csv, test_csv = write_splits(root, args.train, args.test)
    variants = {"own": [], "dropout": ["model.dropout=0.3"], "l1": [f"train.l1={args.l1}"],
                "l1_pretrained": [f"train.l1={args.l1_pretrained}", "train.l1_to=pretrained"]}
    data = ["data=csv", f"data.train_file={train_csv}", f"data.eval_file={test_csv}", "data.labels=[negative,neutral,positive]",
            "data.max_length=64"]
    rows = {}
    for name in args.variants.split(","):
        run_dir, train_eval = root / name, root / f"{name}-train-eval"
        if not (run_dir / "results.json").is_file():
            run(["llmft", "train", *data, f"train.epochs={args.epochs}", *variants[name], "print_config=false",
                 f"hydra.run.dir={run_dir}", *overrides])
        if not (train_eval / "results.json").is_file():
            run(["llmft", "eval", f"model_dir={run_dir / 'model'}", *data[:2], f"data.eval_file={train_csv}",
                 *data[3:], "print_config=false", f"hydra.run.dir={train_eval}"])
        result = json.loads((run_dir / "results.json").read_text())
        train_acc = json.loads((train_eval / "results.json").read_text())["eval"]["accuracy"]
        test = result["eval"]
        l1 = [r["loss/l1"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if "loss/l1" in r]
        rows[name] = {"overrides": variants[name], "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
                      "train_accuracy": train_acc, "gap": round(train_acc - test["accuracy"], 4),
                      "final_loss": result["train"]["final_loss"], "steps": result["train"]["steps"],
                      "loss_l1_first_last": [l1[0], l1[-1]] if l1 else None,
                      "dropout_keys": result.get("techniques", {}).get("dropout"),
                      "train_runtime_s": result["train"]["runtime_s"]}
        print(json.dumps({name: rows[name]}), flush=True)
    (root / "regularization.json").write_text(json.dumps({"train_rows": args.train, "epochs": args.epochs,
                                                          "variants": rows}, indent=2) + "\n")
    print("| variant | test accuracy | test macro-F1 | train accuracy | train - test |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        label = " ".join(r["overrides"]) or "model's own dropout (0.1)"
        print(f"| {label} | {r['test_accuracy']:.4f} | {r['test_macro_f1']:.4f} | {r['train_accuracy']:.4f} | "
              f"{r['gap']:+.4f} |")
    print(f"(run folders: {root})")


if __name__ == "__main__":
    main()
