#!/usr/bin/env python
"""ONNX Runtime against PyTorch for inference, on one trained model, in one bench-infer run.

    python scripts/benchmark_onnx.py [--model-dir RUN/model] [--steps 200] [--keep DIR] [override ...]

Without --model-dir it first trains MiniLM on the tweets for --steps steps through the real CLI
(``llmft train model=minilm data=tweet_sentiment train.max_steps=N``), then runs ``llmft
bench-infer variants=[fp32,int8,onnx,onnx-fused,onnx-int8]`` on it (and bf16 where this CPU has
native bf16: AVX512-BF16 or AMX; elsewhere torch emulates it, ~4x slower than fp32): accuracy on
the whole held-out split, latency p50 at batch 1 over 100 single tweets, throughput at batch 32
over 512. Prints the CPU's name and flags, the table with each variant's ratios against fp32
PyTorch measured in the same run, bench-infer's pick (the fastest within 0.01 accuracy of fp32)
and whether the targets hold (onnx-int8: >= 2x fp32 throughput at batch 32, a lower p50 at batch
1, accuracy within 0.01; the pick: >= 2.5x). Threads: torch's default (every core), unless
OMP_NUM_THREADS says otherwise; ONNX Runtime uses as many.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def llmft(*args: str) -> None:
    proc = subprocess.run(["llmft", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"llmft {args[0]} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--model-dir", help="a trained classifier's model/ folder (default: train one)")
    parser.add_argument("--steps", type=int, default=200, help="training steps when training one")
    parser.add_argument("--variants", help="default: fp32,int8,onnx,onnx-fused,onnx-int8 (+ bf16 on a bf16 CPU)")
    parser.add_argument("--keep", help="keep the run folders under this directory")
    args, overrides = parser.parse_known_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp())
    model_dir = args.model_dir
    if not model_dir:
        llmft("train", "model=minilm", "data=tweet_sentiment", f"train.max_steps={args.steps}", "print_config=false",
              f"hydra.run.dir={root / 'train'}", *overrides)
        model_dir = str(root / "train" / "model")
    import torch  # noqa: F401  (describe reports torch's CPU capability once it is loaded)

    from llmft.runtime.cpu_features import describe

    cpu = describe()
    variants = args.variants or ",".join(["fp32", *(["bf16"] if cpu["bf16"] else []), "int8", "onnx", "onnx-fused",
                                          "onnx-int8"])
    print(f"CPU: {cpu['name']}, {cpu['machine']}, torch {cpu['torch_capability']}; flags: {' '.join(cpu['flags'])}")
    bench = root / "bench"
    llmft("bench-infer", f"model_dir={model_dir}", f"variants=[{variants}]", "latency_examples=100",
          "batch_size=32", "throughput_examples=512", f"hydra.run.dir={bench}")
    results = json.loads((bench / "results.json").read_text())
    rows = {r["variant"]: r for r in results["variants"]}
    base = rows["fp32"]
    metric = "macro_f1" if "macro_f1" in base else results["primary_metric"]
    print((bench / "inference_report.md").read_text().splitlines()[2])
    print(f"| variant | size MB | accuracy | d accuracy | {metric} | p50 ms (b=1) | x fp32 p50 | ex/s (b=32) | x fp32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['size_mb']:.1f} | {r['accuracy']:.4f} | {r['accuracy'] - base['accuracy']:+.4f} | "
              f"{r[metric]:.4f} | {r['latency_p50_ms']:.2f} | {base['latency_p50_ms'] / r['latency_p50_ms']:.2f} | "
              f"{r['throughput_ex_s']:.1f} | {r['throughput_ex_s'] / base['throughput_ex_s']:.2f} |")
    if "onnx-int8" in rows:
        q = rows["onnx-int8"]
        checks = {"throughput >= 2x fp32 (b=32)": q["throughput_ex_s"] >= 2 * base["throughput_ex_s"],
                  "p50 below fp32 (b=1)": q["latency_p50_ms"] < base["latency_p50_ms"],
                  "accuracy within 0.01": abs(q["accuracy"] - base["accuracy"]) <= 0.01}
        print("onnx-int8 targets: " + ", ".join(f"{k}: {'met' if ok else 'NOT met'}" for k, ok in checks.items()))
    fastest = results["fastest"]
    print(f"fastest within {fastest['accuracy_tolerance']} {fastest['metric']} of fp32: {fastest['variant']} "
          f"({fastest['throughput_x']:.2f}x fp32, {fastest['metric']} {fastest['metric_delta']:+.4f}); "
          f"target >= 2.5x: {'met' if fastest['throughput_x'] >= 2.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
