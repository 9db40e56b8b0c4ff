"""Where a training run executes: in this process, as a rank of a process group (joined from
SLURM), or by spawning this node's ranks (runtime/distributed.py does the starting); and which
points of a sweep are already done."""
from __future__ import annotations

import sys


def train(command: str, cfg, run_dir: str, overrides: list[str], sweep: bool) -> float | None:
    """One training run: in this process, as a rank of a process group (joined from SLURM), or by
    spawning this node's ranks. Returns the primary metric (what an Optuna sweep maximizes).

    In a sweep, a point whose folder already holds a completed run of the same config (the same
    fingerprint: values and what the input files hold) is not run again; one of other values or
    inputs is run (the old one is moved aside)."""
    from llmft.runtime import distributed
    from llmft.runtime.run_dir import fingerprint, read_results

    done = read_results(run_dir)
    if sweep and done is not None and str(cfg.train.resume).lower() != "never":
        if done.get("fingerprint") == fingerprint(cfg)["fingerprint"]:
            print(f"llmft: {run_dir} is complete; skipped (train.resume=never reruns it)", file=sys.stderr)
            return primary(done)
        print(f"llmft: {run_dir} holds a completed run of other values or input files; running this point "
              f"(the old run moves to {run_dir}/replaced)", file=sys.stderr)
    if distributed.needs_ranks(cfg.hardware) and not distributed.is_launched():
        if distributed.slurm_mode(cfg.hardware) == "join":
            distributed.join_slurm(cfg.hardware)
        else:
            distributed.spawn(command, overrides, run_dir, cfg.hardware)
            return primary(read_results(run_dir))
    if distributed.is_launched():
        distributed.set_rank_env(cfg.hardware)
    from llmft.runtime.run_dir import Preempted

    try:
        from llmft.commands.train import main

        results = main(cfg, run_dir)
    except Preempted:
        distributed.leave()  # every rank stopped at the same step: close the group before exiting
        raise
    distributed.leave()  # after success only: a failed rank must not wait for the others at a barrier
    return primary(results)


def primary(results: dict | None) -> float | None:
    """The value a sweep selects on: the primary metric on the validation split (never on "eval",
    the held-out split the run reports)."""
    if not results or results.get("status") != "completed" or not results.get("validation"):
        return None
    value = results["validation"].get(results.get("primary_metric"))
    return float(value) if isinstance(value, (int, float)) else None
