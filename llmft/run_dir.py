"""The run folder: every run leaves one that describes itself.

    config.yaml         the resolved config (Hydra's own composed config is in .hydra/)
    metrics.jsonl       one line per logged training step, whatever the logger
    predictions.jsonl   one line per eval example: input, gold label, prediction
    deepspeed.json      the DeepSpeed config the hardware group rendered (ZeRO runs)
    results.json        eval metrics, baseline, train figures, parameter counts; written last,
                        atomically: a run without it did not complete
    model/              the trained model or adapter (see models.py)
    checkpoints/        checkpoint-N every train.save_steps (a rerun in this folder resumes
                        from the newest complete one)
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from transformers import TrainerCallback

RESULTS = "results.json"
CHECKPOINT_DONE = ".complete"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.model_dir = self.path / "model"
        self.checkpoints = self.path / "checkpoints"
        self.metrics_file = self.path / "metrics.jsonl"
        self.results_file = self.path / RESULTS

    def start(self, cfg, resume_step: int = 0, deepspeed: dict | None = None) -> None:
        """Forget results of an earlier run in the same folder (keeping the metrics logged up to
        the checkpoint a resumed run starts from), then write the config (and the DeepSpeed
        config the hardware rendered)."""
        from omegaconf import OmegaConf

        self.results_file.unlink(missing_ok=True)
        kept = ""
        if resume_step and self.metrics_file.is_file():
            lines = self.metrics_file.read_text().splitlines(keepends=True)
            kept = "".join(line for line in lines if json.loads(line).get("step", 0) <= resume_step)
        _atomic_write(self.metrics_file, kept)
        _atomic_write(self.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        if deepspeed is not None:
            _atomic_write(self.path / "deepspeed.json", json.dumps(deepspeed, indent=2) + "\n")

    def resume_checkpoint(self, resume: str, world_size: int, zero_stage: int) -> Path | None:
        """The checkpoint ``train.resume`` names (auto: the newest complete one; never: none),
        checked against this run's world size where DeepSpeed's shards depend on it."""
        from llmft.errors import UserError

        if str(resume).lower() in ("never", "false"):
            return None
        if str(resume).lower() in ("auto", "true"):
            checkpoint = self.latest_checkpoint()
        else:
            checkpoint = Path(resume)
            if not (checkpoint / "trainer_state.json").is_file():
                raise UserError(f"train.resume={resume}: not a checkpoint folder (no trainer_state.json)")
        if checkpoint is None:
            return None
        marker = checkpoint / CHECKPOINT_DONE
        saved = json.loads(marker.read_text() or "{}") if marker.is_file() else {}
        if zero_stage > 0 and saved.get("world_size", world_size) != world_size:
            raise UserError(f"{checkpoint} holds ZeRO shards of {saved['world_size']} processes; this run has "
                            f"{world_size}. Resume with the same hardware (world size {saved['world_size']}), "
                            f"or start over with train.resume=never")
        return checkpoint

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint that finished saving (a kill mid-save leaves no marker)."""
        if not self.checkpoints.is_dir():
            return None
        done = [p for p in self.checkpoints.glob("checkpoint-*") if (p / CHECKPOINT_DONE).is_file()]
        return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)

    def write_predictions(self, records: list[dict]) -> None:
        lines = "".join(dumps(r) + "\n" for r in records)
        _atomic_write(self.path / "predictions.jsonl", lines)

    def write_results(self, results: dict) -> None:
        """The last write of a run. Also drops the Trainer's output folder if nothing was saved there."""
        if self.checkpoints.is_dir() and not any(self.checkpoints.iterdir()):
            self.checkpoints.rmdir()
        _atomic_write(self.results_file, dumps(results, indent=2) + "\n")

    def write_failure(self, reason: str, **details) -> None:
        """results.json of a run that stopped on an error it diagnosed (status "failed", never read
        as complete)."""
        _atomic_write(self.results_file, dumps({"status": "failed", "reason": reason, **details}, indent=2) + "\n")

    def callbacks(self) -> list:
        return [MetricsLog(self.metrics_file), MarkCompleteCheckpoints(), *SaveOnPreemption.if_managed()]


class MetricsLog(TrainerCallback):
    """Appends every Trainer log (loss, lr, grad norm, ...) to metrics.jsonl on the main process."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
        with self.path.open("a") as f:
            f.write(dumps(record) + "\n")


class MarkCompleteCheckpoints(TrainerCallback):
    """Marks a checkpoint complete once the Trainer has written all of it (on_save comes after)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():  # the world size: ZeRO shards only load into as many processes
                (folder / CHECKPOINT_DONE).write_text(json.dumps({"world_size": args.world_size}))


class SaveOnPreemption(TrainerCallback):
    """On SLURM's preemption / time-limit signal: finish the step, save a checkpoint, then hand
    over to the job manager's own handler (submitit's requeues the job; the rerun resumes).

    Active where such a handler is installed (a submitit job). Every rank learns of the signal
    at the same step (one all-reduce per step) because a DeepSpeed save needs all of them."""

    def __init__(self, signum, handler):
        self.signum, self.handler = signum, handler
        self.caught = False
        signal.signal(signum, self._catch)

    @classmethod
    def if_managed(cls) -> list:
        signum = getattr(signal, os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
        handler = signal.getsignal(signum)
        if "SLURM_JOB_ID" not in os.environ or not callable(handler) or handler is signal.default_int_handler:
            return []
        return [cls(signum, handler)]

    def _catch(self, signum, frame):
        self.caught = True

    def _anyone_caught(self) -> bool:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.caught
        import torch

        flag = torch.tensor([int(self.caught)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._anyone_caught():
            self.caught = True
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        if self.caught:  # the checkpoint is complete (MarkCompleteCheckpoints ran first)
            self.handler(self.signum, None)  # submitit: requeue and exit (rank 0); others carry on until killed


def read_results(run_dir: str | Path) -> dict | None:
    """A run folder's results.json, or None when the run did not complete (none, or "failed")."""
    path = Path(run_dir) / RESULTS
    results = json.loads(path.read_text()) if path.is_file() else None
    return results if results is not None and results.get("status") == "completed" else None


def finite_json(value):
    """``value`` with every non-finite float as the string "nan", "inf" or "-inf": JSON has no
    NaN, and a bare NaN (what json.dumps writes by default) breaks strict readers."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    """Strict JSON for everything a run writes (allow_nan=False after finite_json)."""
    return json.dumps(finite_json(value), allow_nan=False, ensure_ascii=False, **kwargs)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
