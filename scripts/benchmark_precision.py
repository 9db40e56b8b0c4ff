#!/usr/bin/env python
"""Training in fp32 against bf16 (autocast), alternating, in one invocation; and what
hardware.precision=auto picks on this machine.

    python scripts/benchmark_precision.py [--experiments default,sft] [--rounds 2] [--keep DIR]
        [--train 512] [--eval 500] [--steps 16] [--sft-steps 4] [--sft-batch 8] [--sft-length 256]
        [--sft-eval 32] [override ...]

Two experiments, each a real `llmft train` (from one snapshot of the tree) per precision, the
precisions alternating (fp32, bf16, fp32, bf16, ...) so that load from other processes falls on
both alike:
  default  the default experiment (MiniLM on the tweets) on the first --train tweets for --steps
           steps at batch 32, scored on --eval held-out tweets: accuracy, macro-F1, eval loss
  sft      SmolLM2-135M-Instruct + LoRA SFT on benchmark_packing.py's chats, --sft-steps steps of
           --sft-batch chats cut at --sft-length tokens, scored on --sft-eval chats: eval loss
Prints the CPU, its bf16 flags (avx512_bf16, amx_bf16), what auto resolves to and why, then per
experiment and precision: training tokens/s (the mean over rounds), its ratio to fp32, and the
quality figures. A CPU without bf16 instructions refuses hardware.precision=bf16; here the bf16
runs are started with llmft's capability probe answering yes, so torch runs bf16 emulated (they
are marked so). The MFU peak probe of such a bf16 run is slow once (cached after).
A run whose results.json exists under --keep DIR is not run again.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_packing import chats, snapshot, tweets  # noqa: E402  (the same chats, the same code snapshot)

# the CLI with the CPU bf16 probe forced on: measures bf16 on a CPU that would refuse it
FORCED_BF16 = ("import sys; from llmft.runtime import hf_private; hf_private.cpu_has_bf16 = lambda: True; "
               "from llmft.cli import main; sys.argv = ['llmft', *sys.argv[1:]]; main()")


def cpu_facts() -> dict:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", text)
    flags = (re.search(r"Flags:\s*(.+)", text) or [None, ""])[1].split()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
    return {"model": model[1].strip() if model else "?", "flags": {f: f in flags for f in wanted}}


def run(tree: Path, run_dir: Path, overrides: list[str], forced_bf16: bool) -> dict:
    results = run_dir / "results.json"
    if not results.is_file():
        env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
        entry = ["-c", FORCED_BF16] if forced_bf16 else ["-m", "llmft.cli"]
        cmd = [sys.executable, *entry, "train", "print_config=false", f"hydra.run.dir={run_dir}", *overrides]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(results.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", default="default,sft")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train", type=int, default=512, help="default experiment: train tweets")
    parser.add_argument("--eval", type=int, default=500, help="default experiment: held-out tweets")
    parser.add_argument("--steps", type=int, default=16, help="default experiment: steps of batch 32")
    parser.add_argument("--sft-steps", type=int, default=4, help="SmolLM2 SFT: steps")
    parser.add_argument("--sft-batch", type=int, default=8)
    parser.add_argument("--sft-length", type=int, default=256, help="SmolLM2 SFT: data.max_length")
    parser.add_argument("--sft-eval", type=int, default=32, help="SmolLM2 SFT: held-out chats")
    parser.add_argument("--keep", help="data and run folders go here (and are reused by a second call)")
    args, overrides = parser.parse_known_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-precision-"))
    root.mkdir(parents=True, exist_ok=True)

    import torch

    from llmft.runtime.hf_private import cpu_has_bf16
    from llmft.runtime.precision import device_choice

    cpu = cpu_facts()
    auto, why = device_choice(type("HW", (), {"accelerator": "cpu", "precision": "auto"})())
    native = cpu_has_bf16()
    print(f"CPU: {cpu['model']}; flags: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; hardware.precision=auto -> {auto} ({why})",
          flush=True)

    experiments = {}
    if "default" in args.experiments:
        experiments["default"] = [f"data.max_train_samples={args.train}", f"data.max_eval_samples={args.eval}",
                                  f"train.max_steps={args.steps}", "train.retention.report=false"]
    if "sft" in args.experiments:
        rows = chats(args.sft_steps * args.sft_batch + args.sft_eval, seed=0, pool=tweets())
        train_file, eval_file = root / "train.jsonl", root / "eval.jsonl"
        train_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:-args.sft_eval]))
        eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows[-args.sft_eval:]))
        experiments["sft"] = ["model=smollm2", "+strategy=lora", "train.lr=1e-3", "data=jsonl_sft",
                              f"data.train_file={train_file}", f"data.eval_file={eval_file}",
                              f"data.max_length={args.sft_length}", f"train.max_steps={args.sft_steps}",
                              f"train.batch_size={args.sft_batch}", "train.logging_steps=1",
                              "train.retention.report=false", "generate.max_examples=1", "generate.max_new_tokens=1"]
    tree = snapshot()
    precisions = args.precisions.split(",")
    table = {}
    for name, common in experiments.items():
        for i in range(args.rounds):
            for p in precisions:  # alternating: fp32, bf16, fp32, bf16
                forced = p == "bf16" and not native
                r = run(tree, root / name / f"{p}-{i}", [*common, f"hardware.precision={p}", *overrides], forced)
                table.setdefault((name, p), []).append(r)
                t, e = r["train"], r["eval"]
                print(f"{name} {p} round {i}: {t['tokens_per_s']:.0f} tokens/s, {t['runtime_s']:.1f} s, "
                      f"eval loss {e.get('loss', float('nan')):.4f}, accuracy {e.get('accuracy', float('nan')):.4f}",
                      flush=True)

    print("\n| experiment | precision | train tokens/s | x fp32 | train s | accuracy | macro-F1 | eval loss |")
    print("|---|---|---|---|---|---|---|---|")
    for name in experiments:
        base = None
        for p in precisions:
            runs = table[(name, p)]
            speed = sum(r["train"]["tokens_per_s"] for r in runs) / len(runs)
            base = base or speed
            e = runs[-1]["eval"]
            label = p + (" (emulated: no bf16 instructions)" if p == "bf16" and not native else "")
            seconds = sum(r["train"]["runtime_s"] for r in runs) / len(runs)
            print(f"| {name} | {label} | {speed:.0f} | {speed / base:.3f} | {seconds:.1f} | "
                  f"{e.get('accuracy', float('nan')):.4f} | {e.get('macro_f1', float('nan')):.4f} | "
                  f"{e.get('loss', float('nan')):.4f} |")
    print(f"\nrounds: {args.rounds}; runs in {root}")


if __name__ == "__main__":
    main()
