#!/usr/bin/env python
"""Fault injection: kill -9 a training run at random moments, rerun the same command, and check
that it ends with exactly the uninterrupted run's metrics and a complete folder.

    python scripts/fault_injection.py [--trials 20] [--mode single|zero2] [--out DIR] [--seed 0]
                                      [--signal TERM|USR2|both [--moments start-up,evaluation]]

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

With --signal, each trial sends SIGTERM or SIGUSR2 (preemption, SLURM's time-limit warning; `both`
draws one per trial) to llmft instead of SIGKILL, at the moments above or

    start-up     a random time after the start, before the first logged training step (config,
                 data and model loading)

A signal trial passes when the run either completes by itself (exit 0) with the uninterrupted
run's metrics, or exits 128+signal with its one "stopped by" line and the same command then
completes with them; nothing is lost either way (the folder checks above).

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
# signal trials: start-up and the final evaluation as often as training itself
SIGNAL_MOMENTS = ("start-up", "step", "checkpoint", "final-save", "evaluation", "early")
SIGNAL_WEIGHTS = (0.25, 0.25, 0.1, 0.12, 0.18, 0.1)
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


def trained(run_dir: Path) -> bool:
    """A training step is logged (start-up is over)."""
    metrics = run_dir / "metrics.jsonl"
    return metrics.is_file() and bool(metrics.read_text().strip())


def kill_at(cmd: list[str], run_dir: Path, moment: str, rng: random.Random, checkpoint_steps: list[int],
            timeout: float = 900) -> str | None:
    """Run until ``moment`` and SIGKILL the process group; None when the run ended first.
    "checkpoint" aims at the save of a random checkpoint after the first (so it tests a resume)."""
    return interrupt_at(cmd, run_dir, moment, rng, checkpoint_steps, signal.SIGKILL, timeout)[0]


def interrupt_at(cmd: list[str], run_dir: Path, moment: str, rng: random.Random, checkpoint_steps: list[int],
                 signum: int, timeout: float = 900, start_up_s: float = 5.0) -> tuple[str | None, int, str]:
    """kill_at with any signal: (the moment it landed in, or None; llmft's exit code; its stderr).
    A signal other than SIGKILL goes to llmft alone (as SLURM's to a job step's task), which is
    then left to stop by itself. "start-up" fires within ``start_up_s`` seconds of the start."""
    log = run_dir.with_name(run_dir.name + ".stderr")
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, env=environment(), start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=err)
    deadline, fire_at, seen = time.time() + timeout, None, None
    aimed = run_dir / "checkpoints" / f"checkpoint-{rng.choice(checkpoint_steps[1:] or checkpoint_steps)}"
    if moment == "start-up":
        fire_at = time.time() + rng.uniform(0.5, start_up_s)
    try:
        while proc.poll() is None and time.time() < deadline:
            now = state(run_dir)
            if moment == "checkpoint" and now == "checkpoint" and not aimed.is_dir():
                now = "step"  # an earlier checkpoint than the one aimed at: let it finish
            if moment == "step" and now == "step" and fire_at is None:
                fire_at = time.time() + rng.uniform(0.0, 2.5)
            if moment == "early" and fire_at is None and (run_dir / "metrics.jsonl").is_file():
                fire_at = time.time() + rng.uniform(0.0, 1.0)  # training started (or about to)
            if (now == moment and moment not in ("step", "early", "start-up")) or (fire_at and time.time() >= fire_at):
                seen = "start-up" if moment == "start-up" and not trained(run_dir) else state(run_dir)
                if signum == signal.SIGKILL:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    os.kill(proc.pid, signum)
                proc.wait(timeout=timeout)
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return seen, proc.returncode, log.read_text()


def stop_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("llmft: stopped by")]


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


def reference_run(fixtures: dict, out: Path, mode: str, steps: int, save_steps: int) -> float:
    """The uninterrupted run (once per OUT); returns its start-up time: seconds from the start to
    its first logged training step."""
    reference, timing = out / "reference", out / "reference_start_up_s.json"
    if not (reference / "results.json").is_file() or not timing.is_file():
        shutil.rmtree(reference, ignore_errors=True)
        started, first = time.time(), None
        proc = subprocess.Popen(command(fixtures, reference, mode, steps, save_steps), env=environment(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            if first is None and trained(reference):
                first = time.time() - started
            time.sleep(0.01)
        if proc.returncode:
            raise SystemExit(f"the uninterrupted run failed (exit {proc.returncode}): {reference}")
        timing.write_text(json.dumps(first or time.time() - started) + "\n")
    return float(json.loads(timing.read_text()))


def run_signal_trials(trials: int, mode: str, out: Path, kind: str = "both", seed: int = 0,
                      fixtures: dict | None = None, steps: int = 400, save_steps: int = 40,
                      moments: tuple[str, ...] = SIGNAL_MOMENTS) -> list[dict]:
    """Trials that send SIGTERM / SIGUSR2 (``kind``: TERM, USR2 or both) instead of SIGKILL, at
    moments drawn from ``moments``."""
    weights = [w for m, w in zip(SIGNAL_MOMENTS, SIGNAL_WEIGHTS) if m in moments]
    moments = [m for m in SIGNAL_MOMENTS if m in moments]
    out.mkdir(parents=True, exist_ok=True)
    fixtures = fixtures or build_fixtures(out / "fixtures")
    start_up_s = reference_run(fixtures, out, mode, steps, save_steps)
    reference = out / "reference"
    rng = random.Random(seed)
    rows = []
    for trial in range(trials):
        run_dir = out / f"signal-{trial}"
        cmd = command(fixtures, run_dir, mode, steps, save_steps)
        signum = getattr(signal, "SIG" + (rng.choice(("TERM", "USR2")) if kind == "both" else kind))
        for _ in range(3):
            moment = rng.choices(moments, weights)[0]
            shutil.rmtree(run_dir, ignore_errors=True)
            landed, code, stderr = interrupt_at(cmd, run_dir, moment, rng, list(range(save_steps, steps, save_steps)),
                                                signum, start_up_s=start_up_s)
            if landed is not None:
                break
        row = {"trial": trial, "aimed_at": moment, "moment": landed or "missed (ran to the end)",
               "signal": signal.Signals(signum).name, "exit": code}
        lines = stop_lines(stderr)
        if landed == "start-up" and any(" at step " in line for line in lines):  # before the first logged step
            row["moment"] = "early"  # but training had begun: its save says so
        if code == 0:
            row["outcome"] = "finished first, exit 0"
        else:
            one_line = code == 128 + signum and len(lines) == 1
            row["outcome"] = (f"exit {code}, one line: {lines[0][len('llmft: '):].split(';')[0]}" if one_line
                              else f"exit {code}, {len(lines)} stop lines: {stderr.strip().splitlines()[-1:]}")
            rerun = subprocess.run(cmd, env=environment(), capture_output=True, text=True)
            if rerun.returncode:
                row.update(identical=False, detail=f"rerun exit {rerun.returncode}: {rerun.stderr.strip().splitlines()[-1:]}")
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            results = json.loads((run_dir / "results.json").read_text())
            row["rerun"] = ("re-evaluated model/" if results.get("reevaluated")
                            else f"resumed from step {results['train']['resumed_from_step']}")
            if not one_line:
                row["detail"] = "no single stop line"
        identical, why = compare(run_dir, reference)
        problems = complete(run_dir)
        ok = identical and not problems and "detail" not in row
        row.update(identical=ok, detail="; ".join([row.get("detail", ""), why, *problems]).strip("; "))
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "signal_trials.json").write_text(json.dumps({"mode": mode, "steps": steps, "save_steps": save_steps,
                                                        "start_up_s": start_up_s, "trials": rows}, indent=2) + "\n")
    return rows


def signal_table(rows: list[dict], mode: str) -> str:
    lines = [f"| {mode} trial | signal during | signal | outcome | identical to uninterrupted |",
             "|---|---|---|---|---|"]
    for r in rows:
        outcome = r["outcome"] + (f"; rerun {r['rerun']}" if r.get("rerun") else "")
        lines.append(f"| {r['trial']} | {r['moment']} | {r['signal']} | {outcome} | "
                     f"{'yes' if r['identical'] else 'NO: ' + str(r.get('detail'))} |")
    finished = sum(r["exit"] == 0 for r in rows)
    lines.append(f"\n{mode} signals: {sum(r['identical'] for r in rows)}/{len(rows)} identical; {finished} finished "
                 f"by themselves, {len(rows) - finished} stopped and completed by the rerun")
    return "\n".join(lines)


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
    parser.add_argument("--signal", choices=("TERM", "USR2", "both"), default=None,
                        help="send this signal (both: one drawn per trial) instead of SIGKILL")
    parser.add_argument("--moments", default=",".join(SIGNAL_MOMENTS),
                        help=f"signal trials: draw from these moments only (of {','.join(SIGNAL_MOMENTS)})")
    args = parser.parse_args()
    if args.signal:
        rows = run_signal_trials(args.trials, args.mode, args.out / args.mode, args.signal, args.seed,
                                 steps=args.steps, save_steps=args.save_steps,
                                 moments=tuple(m for m in args.moments.split(",") if m in SIGNAL_MOMENTS))
        print(signal_table(rows, args.mode))
    else:
        rows = run_trials(args.trials, args.mode, args.out / args.mode, args.seed, steps=args.steps,
                          save_steps=args.save_steps)
        print(table(rows, args.mode))
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
