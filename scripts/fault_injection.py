#!/usr/bin/env python
"""Fault injection: kill -9 a training run at random moments, rerun the same command, and check
that it ends with exactly the uninterrupted run's metrics and a complete folder.

    python scripts/fault_injection.py [--trials 20] [--mode single|zero2] [--out DIR] [--seed 0]

Each trial draws a moment, starts `llmft train` (its own process group, as a SLURM job step),
watches the run folder and sends SIGKILL to the whole group when the moment comes:

    step         a random time after the first complete checkpoint (most trials)
    checkpoint   while a checkpoint-N folder exists without its completion marker
    final-save   while model/ is being written (.model.tmp exists)
    evaluation   after model/ is complete, before results.json
    early        before any checkpoint: tests a restart, not a resume (counted apart)

then runs the same command again, uninterrupted. A trial passes when results.json's eval and
validation metrics and predictions.jsonl equal the reference run's exactly and the folder is
complete (results.json "completed", model/ present, no temp folder, every checkpoint marked).
A moment the run passed before the watcher saw it is drawn again (at most 3 times).

Uses a tiny BERT and tiny data built on the fly (--model/--train-file/... to use others);
`--mode zero2` runs DeepSpeed ZeRO-2 on two CPU processes. Prints a markdown table and writes
OUT/fault_injection.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

MOMENTS = ("step", "checkpoint", "final-save", "evaluation", "early")
WEIGHTS = (0.45, 0.2, 0.15, 0.12, 0.08)
WORDS = {"negative": "awful bad hate terrible worst angry", "neutral": "table monday report train paper window",
         "positive": "great love happy wonderful best nice"}
FILLER = "the a today my was this it so and we".split()


def build_fixtures(root: Path) -> dict:
    """A tiny BERT (random weights, a word-level vocabulary) and labelled CSVs."""
    import csv

    from transformers import BertConfig, BertModel, BertTokenizerFast

    rng = random.Random(0)

    def rows(n):
        out = []
        for i in range(n):
            label = list(WORDS)[i % 3]
            words = rng.sample(FILLER, 4) + rng.sample(WORDS[label].split(), 2)
            rng.shuffle(words)
            out.append({"text": " ".join(words), "label": label})
        return out

    files = {}
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", 192), ("validation", 30), ("eval", 30)):
        files[name] = root / f"{name}.csv"
        with files[name].open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows(n))
    model = root / "tiny-bert"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(FILLER) | {w for v in WORDS.values() for w in v.split()})]
    model.mkdir(parents=True, exist_ok=True)
    (model / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(model / "vocab.txt")).save_pretrained(model)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64)
    BertModel(config).save_pretrained(model)  # a backbone: the task head is new, as with MiniLM
    return {"model": model, **files}


def command(fixtures: dict, run_dir: Path, mode: str, steps: int, save_steps: int) -> list[str]:
    script = Path(sys.executable).with_name("llmft")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "llmft.cli"]
    return [*cmd, "train", "model=hf", f"model.name_or_path={fixtures['model']}", "data=csv",
            f"data.train_file={fixtures['train']}", f"data.validation_file={fixtures['validation']}",
            f"data.eval_file={fixtures['eval']}", "data.max_length=32", f"train.max_steps={steps}",
            f"train.save_steps={save_steps}", "train.save_total_limit=2", "train.batch_size=8", "train.lr=5e-3",
            "train.logging_steps=5", "print_config=false", f"hydra.run.dir={run_dir}",
            *(["hardware=cpu_zero2", "hardware.nproc_per_node=2"] if mode == "zero2" else [])]


def environment() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline",
               TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def state(run_dir: Path) -> str:
    """What the folder shows right now (the moment a kill lands in)."""
    if (run_dir / ".model.tmp").exists():
        return "final-save"
    if (run_dir / "model").is_dir() and not (run_dir / "results.json").is_file():
        return "evaluation"
    checkpoints = list((run_dir / "checkpoints").glob("checkpoint-*"))
    if any(not (c / ".complete").is_file() for c in checkpoints):
        return "checkpoint"
    return "step" if checkpoints else "early"


def kill_at(cmd: list[str], run_dir: Path, moment: str, rng: random.Random, checkpoint_steps: list[int],
            timeout: float = 900) -> str | None:
    """Run until ``moment`` and SIGKILL the process group; None when the run ended first.
    "checkpoint" aims at the save of a random checkpoint after the first (so it tests a resume)."""
    proc = subprocess.Popen(cmd, env=environment(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, fire_at = time.time() + timeout, None
    aimed = run_dir / "checkpoints" / f"checkpoint-{rng.choice(checkpoint_steps[1:] or checkpoint_steps)}"
    try:
        while proc.poll() is None and time.time() < deadline:
            now = state(run_dir)
            if moment == "checkpoint" and now == "checkpoint" and not aimed.is_dir():
                now = "step"  # an earlier checkpoint than the one aimed at: let it finish
            if moment == "step" and now == "step" and fire_at is None:
                fire_at = time.time() + rng.uniform(0.0, 2.5)
            if moment == "early" and fire_at is None and (run_dir / "metrics.jsonl").is_file():
                fire_at = time.time() + rng.uniform(0.0, 1.0)  # training started (or about to)
            if (now == moment and moment not in ("step", "early")) or (fire_at and time.time() >= fire_at):
                seen = state(run_dir)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return seen
            time.sleep(0.002)
        return None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def complete(run_dir: Path) -> list[str]:
    """What is wrong with a finished folder (empty: complete)."""
    problems = []
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").is_file() else {}
    if results.get("status") != "completed":
        problems.append("results.json not completed")
    if not (run_dir / "model" / "llmft.json").is_file():
        problems.append("model/ incomplete")
    if (run_dir / ".model.tmp").exists():
        problems.append(".model.tmp left")
    if any(not (c / ".complete").is_file() for c in (run_dir / "checkpoints").glob("checkpoint-*")):
        problems.append("unmarked checkpoint left")
    return problems


def compare(run_dir: Path, reference: Path) -> tuple[bool, str]:
    got, want = (json.loads((d / "results.json").read_text()) for d in (run_dir, reference))
    same = got["eval"] == want["eval"] and got["validation"] == want["validation"]
    same_predictions = (run_dir / "predictions.jsonl").read_bytes() == (reference / "predictions.jsonl").read_bytes()
    if same and same_predictions:
        return True, ""
    diffs = [f"{k}: {got['eval'].get(k)} vs {v}" for k, v in want["eval"].items() if got["eval"].get(k) != v]
    return False, "; ".join(diffs) or "predictions differ"


def run_trials(trials: int, mode: str, out: Path, seed: int = 0, fixtures: dict | None = None,
               steps: int = 400, save_steps: int = 40) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    fixtures = fixtures or build_fixtures(out / "fixtures")
    reference = out / "reference"
    if not (reference / "results.json").is_file():
        shutil.rmtree(reference, ignore_errors=True)
        subprocess.run(command(fixtures, reference, mode, steps, save_steps), env=environment(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rng = random.Random(seed)
    rows = []
    for trial in range(trials):
        run_dir = out / f"trial-{trial}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = command(fixtures, run_dir, mode, steps, save_steps)
        moment, killed = None, None
        for _ in range(3):
            moment = rng.choices(MOMENTS, WEIGHTS)[0]
            shutil.rmtree(run_dir, ignore_errors=True)
            killed = kill_at(cmd, run_dir, moment, rng, list(range(save_steps, steps, save_steps)))
            if killed is not None:
                break
        rerun = subprocess.run(cmd, env=environment(), capture_output=True, text=True)
        row = {"trial": trial, "aimed_at": moment, "killed_in": killed or "missed (ran to the end)",
               "rerun_exit": rerun.returncode}
        if rerun.returncode == 0:
            results = json.loads((run_dir / "results.json").read_text())
            row["resumed_from"] = ("re-evaluated model/" if results.get("reevaluated")
                                   else results["train"]["resumed_from_step"])
            identical, why = compare(run_dir, reference)
            problems = complete(run_dir)
            row.update(identical=identical and not problems, detail="; ".join([why, *problems]).strip("; "))
        else:
            row.update(resumed_from=None, identical=False, detail=rerun.stderr.strip().splitlines()[-1:])
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "fault_injection.json").write_text(json.dumps({"mode": mode, "steps": steps, "save_steps": save_steps,
                                                          "trials": rows}, indent=2) + "\n")
    return rows


def table(rows: list[dict], mode: str) -> str:
    lines = [f"| {mode} trial | killed during | rerun resumed from | identical to uninterrupted |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['trial']} | {r['killed_in']} | {r['resumed_from']} | "
                     f"{'yes' if r['identical'] else 'NO: ' + str(r.get('detail'))} |")
    restarts = [r for r in rows if r["resumed_from"] == 0]
    lines.append(f"\n{mode}: {sum(r['identical'] for r in rows)}/{len(rows)} identical; "
                 f"{len(rows) - len(restarts)} resumed from a checkpoint or re-evaluated model/, "
                 f"{len(restarts)} killed before the first complete checkpoint (a restart, counted apart)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--mode", choices=("single", "zero2"), default="single")
    parser.add_argument("--out", type=Path, default=Path("outputs/fault_injection"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--save-steps", type=int, default=40)
    args = parser.parse_args()
    rows = run_trials(args.trials, args.mode, args.out / args.mode, args.seed, steps=args.steps,
                      save_steps=args.save_steps)
    print(table(rows, args.mode))
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
