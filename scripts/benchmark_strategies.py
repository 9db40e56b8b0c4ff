#!/usr/bin/env python
"""Every weight-training strategy at its own defaults on the default experiment, one after another.

    python scripts/benchmark_strategies.py --keep DIR [--strategies lora,dora,...] [override ...]

Runs `llmft train +strategy=X` (plus any overrides, none for the README table) through the real
CLI for each strategy, one at a time so the timings do not share the cores, and prints a
Markdown table: accuracy, macro-F1, the majority-class baseline, trainable parameters, training
time and peak memory. A strategy whose results.json exists under DIR is not run again, so an
interrupted benchmark continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

STRATEGIES = ("full", "lora", "dora", "adapter", "ia3", "bitfit", "freeze", "gradual_unfreeze", "llrd",
              "prompt_tuning", "p_tuning", "qlora", "prefix")


def run(strategy: str, run_dir: Path, overrides: list[str]) -> dict | str:
    results = run_dir / "results.json"
    if not results.is_file():
        cmd = ["llmft", "train", f"+strategy={strategy}", "print_config=false", f"hydra.run.dir={run_dir}", *overrides]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(results.read_text())


def row(strategy: str, r: dict | str) -> str:
    if isinstance(r, str):
        return f"| {strategy} | | | | | | | | {r[:160]} |"
    e, p, t = r["eval"], r["params"], r["train"] or {}
    lr = r.get("config", {}).get("lr", "")
    flags = ", ".join(r.get("warnings", []))
    return (f"| {strategy} | {lr} | {e['accuracy']:.4f} | {e['macro_f1']:.4f} | {p['trainable']:,} | "
            f"{p['trainable_pct']:.2f} | {t.get('runtime_s', 0):.0f} | {r['memory']['peak_rss_mb']:,.0f} | {flags} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--keep", help="run folders go here (and are reused by a second call)")
    args, overrides = parser.parse_known_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp())
    print("| strategy | lr | accuracy | macro-F1 | trainable params | % | train s | peak RSS MB | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for strategy in args.strategies.split(","):
        r = run(strategy, root / strategy, overrides)
        if not isinstance(r, str):
            import yaml

            r["config"] = yaml.safe_load((root / strategy / "config.yaml").read_text())["train"]
        print(row(strategy, r), flush=True)
    baseline = next((json.loads(f.read_text())["baseline"] for f in sorted(root.glob("*/results.json"))), None)
    if baseline:
        print(f"\nmajority-class baseline: {json.dumps(baseline)}")


if __name__ == "__main__":
    sys.exit(main())
