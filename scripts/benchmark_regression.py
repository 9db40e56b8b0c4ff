#!/usr/bin/env python
"""Regression on real tweets: MiniLM predicting the human-rated sentiment intensity of a tweet.

    python scripts/benchmark_regression.py [--keep DIR] [--epochs 3] [--scales none,standard] [override ...]

The data: VADER's gold standard (Hutto & Gilbert, ICWSM 2014; MIT licence), 4,200 tweets each
with the mean of 20 raters' scores from -4 (extremely negative) to +4. It ships on PyPI inside
the vaderSentiment 3.3.2 source archive (additional_resources/, not in the wheel), fetched here
with `pip download --no-binary` into a cache folder. Split once with a fixed seed into train /
validation / test CSV files (80 / 10 / 10 %). llmft trains through the real CLI (`data=csv
data.task=regression`, defaults plus the overrides), once per data.label_scale. Prints MSE, MAE,
Pearson, Spearman and R^2 on the test tweets next to the mean predictor's.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

SDIST = "vaderSentiment==3.3.2"
MEMBER = "hutto_ICWSM_2014/tweets_GroundTruth.txt"


def gold_tweets(cache: Path) -> list[tuple[str, float]]:
    archive = next(cache.glob("vaderSentiment-3.3.2.tar.gz"), None)
    if archive is None:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST,
                        "-d", str(cache), "-q"], check=True)
        archive = next(cache.glob("vaderSentiment-3.3.2.tar.gz"))
    with tarfile.open(archive) as outer:
        inner = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner)) as data:
        text = data.extractfile(MEMBER).read().decode("utf-8")
    rows = []
    for line in text.splitlines():
        if line.strip():
            _, score, tweet = line.split("\t", 2)
            rows.append((tweet.strip(), float(score)))
    return rows


def write_splits(root: Path, rows: list, seed: int = 1234) -> dict:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n = len(order) // 10
    parts = {"test": order[:n], "validation": order[n:2 * n], "train": order[2 * n:]}
    files = {}
    for name, index in parts.items():
        files[name] = root / f"{name}.csv"
        with files[name].open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows([rows[i][0], repr(rows[i][1])] for i in index)
    return files


def vader_scores(test: Path) -> tuple[float, float] | None:
    """Pearson and Spearman of VADER's lexicon scorer on the test tweets, where vaderSentiment is
    installed (its authors built it with these tweets in view: a reference, not a baseline)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        return None
    from scipy.stats import pearsonr, spearmanr

    with test.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    analyzer = SentimentIntensityAnalyzer()
    scores = [analyzer.polarity_scores(r["text"])["compound"] for r in rows]
    gold = [float(r["label"]) for r in rows]
    return float(pearsonr(scores, gold).statistic), float(spearmanr(scores, gold).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="keep the splits and runs here")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "llmft-vader")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--scales", default="none,standard")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="llmft-regression-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = gold_tweets(args.cache)
    files = write_splits(root, rows)
    print(f"{len(rows)} tweets: " + ", ".join(f"{k} {sum(1 for _ in v.open()) - 1}" for k, v in files.items()))
    table = []
    for scale in args.scales.split(","):
        run_dir = root / f"run-{scale}"
        cmd = ["llmft", "train", "model=minilm", "data=csv", "data.task=regression",
               f"data.train_file={files['train']}", f"data.validation_file={files['validation']}",
               f"data.eval_file={files['test']}", "data.max_length=64", f"data.label_scale={scale}",
               f"train.epochs={args.epochs}", "print_config=false", f"hydra.run.dir={run_dir}", *args.overrides]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"llmft failed:\n{proc.stderr[-3000:]}")
        results = json.loads((run_dir / "results.json").read_text())
        table.append((scale, results, time.perf_counter() - started))
    base = table[0][1]["baseline"]
    print("| predictor | MSE | MAE | Pearson | Spearman | R^2 | wall s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| mean of the train scores ({base['mean_prediction']:.3f}) | {base['mean_mse']:.4f} | "
          f"{base['mean_mae']:.4f} | - | - | {base['mean_r2']:.4f} | |")
    vader = vader_scores(files["test"])
    if vader:  # VADER's own rule-based score (-1..1): comparable by correlation only
        print(f"| VADER's rule-based compound score | - | - | {vader[0]:.4f} | {vader[1]:.4f} | - | |")
    for scale, results, seconds in table:
        e, v = results["eval"], results["validation"]
        print(f"| MiniLM, data.label_scale={scale} | {e['mse']:.4f} | {e['mae']:.4f} | {e['pearson']:.4f} | "
              f"{e['spearman']:.4f} | {e['r2']:.4f} | {seconds:.0f} |  (validation r2 {v['r2']:.4f})")


if __name__ == "__main__":
    main()
