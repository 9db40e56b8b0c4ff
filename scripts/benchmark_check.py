#!/usr/bin/env python
"""`llmft check`: its wall time, and its memory estimate per rank against the peak each rank measures.

    python scripts/benchmark_check.py [--steps 10] [--models minilm,smollm2] [--stages 2,3]

Part 1 times `llmft check` (through the real CLI) on the default experiment and on
`hardware=cpu_zero3 model=smollm2`, next to `llmft train --cfg job` (start-up and composition only)
timed in the same invocation. Part 2 trains each model under 2-process CPU ZeRO-2 and ZeRO-3 for a
few steps (small max_length and train set), then runs `llmft check --json` with the same overrides:
each rank's peak resident memory (results.json memory.per_rank) against check's per-rank figure and
its terms. Writes only under a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
       "TOKENIZERS_PARALLELISM": "false"}
MB = 2**20


def llmft(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run(["llmft", *args], capture_output=True, text=True, env=ENV, cwd=cwd)
    if proc.returncode != 0:
        sys.exit(f"llmft {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--stages", default="2,3")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print(cpu)
    with tempfile.TemporaryDirectory(prefix="benchmark-check-") as tmp:
        root = Path(tmp)
        if not args.skip_timing:
            _, cfg_s = llmft("train", "--cfg", "job", cwd=root)
            print(f"\nllmft train --cfg job: {cfg_s:.1f} s (start-up and composition)")
            print("| command | wall s | x `train --cfg job` |\n|---|---|---|")
            for extra in ([], ["hardware=cpu_zero3", "model=smollm2"]):
                _, s = llmft("check", *extra, cwd=root)
                print(f"| llmft check {' '.join(extra)} | {s:.1f} | {s / cfg_s:.1f} |")
            assert not any(root.iterdir()), "check wrote into its working directory"
        print(f"\n{args.steps} steps, batch 8 per rank, data.max_length=32, 2,000 train tweets, 200 eval tweets")
        print("| model | ZeRO | check per rank (MB) | measured peak RSS per rank (MB) | error | check's terms (MB) |")
        print("|---|---|---|---|---|---|")
        for model in args.models.split(","):
            for stage in args.stages.split(","):
                overrides = [f"model={model}", f"hardware=cpu_zero{stage}", f"train.max_steps={args.steps}",
                             "train.batch_size=8", "data.max_length=32", "data.max_train_samples=2000",
                             "data.max_eval_samples=200", "print_config=false"]
                run_dir = root / f"{model}-zero{stage}"
                llmft("train", *overrides, f"hydra.run.dir={run_dir}", cwd=root)
                results = json.loads((run_dir / "results.json").read_text())
                proc, _ = llmft("check", *overrides, "--json", cwd=root)
                facts = json.loads(proc.stdout)["points"][0]
                estimate = facts["memory"]["per_rank_bytes"] / MB
                peaks = [r["peak_rss_mb"] for r in results["memory"]["per_rank"]]
                errors = " / ".join(f"{(estimate - p) / p * 100:+.0f} %" for p in peaks)
                terms = ", ".join(f"{t['name']} {t['bytes'] / MB:.0f}" for t in facts["memory"]["terms"])
                steps_ok = "" if facts["steps"]["steps"] == results["train"]["steps"] else " (STEPS DIFFER)"
                print(f"| {model} | {stage} | {estimate:.0f} | {' / '.join(f'{p:.0f}' for p in peaks)} | {errors} | "
                      f"{terms}{steps_ok} |", flush=True)


if __name__ == "__main__":
    main()
