"""The run folder: every run leaves one that describes itself. What it holds (config.yaml,
results.json, model/, checkpoints/, stages/, export folders, replaced/, ...) is listed once, in
runtime/layout.py.

Every file is written whole (a temp file beside it, flushed, renamed, the folder flushed) and
never through a link; a checkpoint is marked complete only once its files are on disk, and
train.save_total_limit deletes older checkpoints only after the newest is marked.

Every run is identified by its config fingerprint (``fingerprint``): results.json, model/llmft.json
and each checkpoint's marker carry it, so a rerun resumes, skips or re-evaluates only what the
same config produced.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import time
from pathlib import Path

from transformers import TrainerCallback

from llmft.core.config import flatten
from llmft.core.errors import UserError
from llmft.runtime.preemption import PREEMPTION
from llmft.runtime.ownership import atomic_write, fsync_tree
from llmft.runtime.layout import STAGED_OUTPUTS, artifacts
from llmft.runtime.results import failure

log = logging.getLogger(__name__)

RESULTS = "results.json"
CHECKPOINT_DONE = ".complete"
CHECKPOINT_NAME = re.compile(r"checkpoint-\d+")  # what the Trainer names its checkpoint folders
# Keys that change how a run is watched or saved, not what it computes (a resume may change them).
NOT_FINGERPRINTED = ("print_config", "logger", "train.resume", "train.save_steps", "train.save_total_limit",
                     "train.logging_steps", "hardware.dataloader_workers", "hardware.master_port",
                     "hardware.collective_timeout_s", "hardware.lock")
# stage folders (RUN/stages/<name>) this process started, by their run folder: that run's stages/
# and soft_labels.jsonl are its own when its last stage takes the folder (set_aside_other_runs)
_STAGED_HERE: set = set()


def fingerprint(cfg) -> dict:
    """{"fingerprint": 16 hex digits, "config": {dotted key: value}} of everything that changes
    what a run computes (secrets shown as their interpolation; see redact.py): the config's values
    and what its input files hold ("data.train_file#sha256", a local model folder's, a hub
    dataset's revision: core/digest.py), so a rewritten input is another config, never a finished run."""
    from llmft.core.digest import input_digests
    from llmft.core.redact import redacted

    flat = {k: v for k, v in flatten(redacted(cfg)).items()
            if not any(k == n or k.startswith(n + ".") for n in NOT_FINGERPRINTED)}
    flat.update(input_digests(cfg))
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"fingerprint": digest, "config": flat}


def config_difference(saved: dict, current: dict, limit: int = 4) -> str:
    """'train.lr 0.0001 -> 0.0003, ...' for the keys that differ between two fingerprints' configs."""
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    text = ", ".join(f"{k} {saved.get(k)} -> {current.get(k)}" for k in keys[:limit])
    return text + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "") if keys else "unknown keys"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.fingerprint: str | None = None
        self.model_dir = self.path / "model"
        self.checkpoints = self.path / "checkpoints"
        self.metrics_file = self.path / "metrics.jsonl"
        self.results_file = self.path / RESULTS

    def start(self, cfg, resume_step: int = 0, deepspeed: dict | None = None, keep_metrics: bool = False,
              fingerprint: str | None = None) -> None:
        """Forget a failed result of an earlier run in the same folder (a completed one of this
        config stays until the new one replaces it atomically), keep the metrics logged up to the
        checkpoint a resumed run starts from (all of them when the run only re-evaluates), then
        write the config (secrets as their interpolation) and the DeepSpeed config."""
        from llmft.core.redact import to_yaml

        self.fingerprint = fingerprint
        if self.path.parent.name == "stages":
            _STAGED_HERE.add(self.path.parent.parent.resolve())
        if read_results(self.path) is None:
            self.results_file.unlink(missing_ok=True)
        if not keep_metrics:
            kept = ""
            if resume_step and self.metrics_file.is_file():
                lines = self.metrics_file.read_text().split("\n")
                kept = "".join(line + "\n" for line in lines
                               if line.strip() and json.loads(line).get("step", 0) <= resume_step)
            atomic_write(self.metrics_file, kept)
        atomic_write(self.path / "config.yaml", to_yaml(cfg))
        if deepspeed is not None:
            atomic_write(self.path / "deepspeed.json", json.dumps(deepspeed, indent=2) + "\n")

    def resume_checkpoint(self, resume: str, ident: dict, world_size: int, zero_stage: int) -> Path | None:
        """The checkpoint ``train.resume`` names (auto: the newest complete one; never: none). Only
        a checkpoint-N folder with llmft's completion marker of this very config, ZeRO stage and
        world size, whose files are whole; anything else is refused in one line. auto takes none
        when the folder holds another config's completed run (results.json): it is moved aside whole."""
        mode = str(resume).lower()
        if mode in ("never", "false"):
            return None
        how = ("choose another hydra.run.dir, or pass train.resume=never to start over "
               f"(what is in {self.path} is moved to {self.path / 'replaced'})")
        if mode in ("auto", "true"):
            done = read_results(self.path)
            if done is not None and done.get("fingerprint") != ident["fingerprint"]:
                return None  # another config's finished run: set_aside_other_runs moves it, checkpoints too
            checkpoint, key = self.latest_checkpoint(), "train.resume"
            if checkpoint is None:
                return None
        else:
            checkpoint, key = Path(resume).expanduser(), f"train.resume={resume}"
            use = ("give a checkpoint-N folder an llmft run saved (RUN/checkpoints/checkpoint-N), or "
                   "train.resume=auto (a rerun in the same run folder resumes by itself) or never")
            if not checkpoint.is_dir():
                raise UserError(f"{key}: no such folder; {use}")
            if not CHECKPOINT_NAME.fullmatch(checkpoint.name):
                raise UserError(f"{key}: not a checkpoint-N folder; {use}")
            how = "resume with the config that saved it, or pass train.resume=never to start over"
        saved = read_marker(checkpoint)
        if saved is None:
            raise UserError(f"{key}: {checkpoint} has no readable llmft completion marker ({CHECKPOINT_DONE}): "
                            f"llmft did not save it, or its save was cut off. Resume from a complete checkpoint "
                            f"(train.resume=auto takes the newest in this run folder), or {how}")
        if saved.get("zero_stage", zero_stage) != zero_stage or (
                zero_stage > 0 and saved.get("world_size", world_size) != world_size):
            raise UserError(f"train.resume: {checkpoint} was saved with ZeRO stage {saved.get('zero_stage', zero_stage)} "
                            f"on {saved.get('world_size', world_size)} processes; this run has stage {zero_stage} on "
                            f"{world_size}. Resume with that hardware, or {how}")
        if saved["fingerprint"] != ident["fingerprint"]:
            raise UserError(f"train.resume: {checkpoint} was saved by another config "
                            f"({config_difference(saved.get('config', {}), ident['config'])}); {how}")
        cut = cut_files(checkpoint)
        if cut:
            raise UserError(f"train.resume: {checkpoint} is marked complete but {cut[0]} is cut short or damaged"
                            f"{f' (+{len(cut) - 1} more)' if len(cut) > 1 else ''}; move that checkpoint away "
                            f"(train.resume=auto then takes the one before it), or {how}")
        return checkpoint

    def set_aside_other_runs(self, resume: str, ident: dict) -> str | None:
        """Rank 0, before anything is written: with train.resume=never, or when what this folder
        holds came from another config, move all of it (layout.artifacts) to replaced/<time>/
        (nothing is deleted). The last stage of a staged run keeps the stages/ and soft_labels.jsonl
        this run just wrote. Returns where it went (None: nothing to move)."""
        self.set_aside_unreadable_results()
        own = STAGED_OUTPUTS if self.path.resolve() in _STAGED_HERE else ()
        _STAGED_HERE.discard(self.path.resolve())
        present = [name for name in artifacts(self.path) if name not in own]
        if not present:
            return None
        leftover = self.path / f".{self.model_dir.name}.tmp"
        leftover.unlink() if leftover.is_symlink() else shutil.rmtree(leftover, ignore_errors=True)
        if str(resume).lower() not in ("never", "false"):
            owners = {self.folder_fingerprint(name) for name in (RESULTS, "model")} - {None}
            if not owners or owners == {ident["fingerprint"]}:
                return None
        target = self._replaced_folder()
        for name in present:
            os.rename(self.path / name, target / name)
        log.warning("%s held the files of another run (another config, or train.resume=never): moved to %s",
                    self.path, target)
        return str(target)

    def set_aside_unreadable_results(self) -> None:
        """An empty or cut-off results.json (a crash while the disk filled, a hand edit) means "not
        complete": moved to replaced/<time>/ with one warning, so the rerun carries on (a complete
        model/ of this config is then only evaluated)."""
        if not self.results_file.is_file() or _results_readable(self.results_file):
            return
        target = self._replaced_folder()
        os.rename(self.results_file, target / RESULTS)
        log.warning("%s could not be read (empty or cut off): not a completed run; moved to %s",
                    self.results_file, target)

    def _replaced_folder(self) -> Path:
        target = self.path / "replaced" / time.strftime("%Y-%m-%d_%H-%M-%S")
        target = target.with_name(f"{target.name}_{os.getpid()}") if target.exists() else target
        target.mkdir(parents=True)
        return target

    def folder_fingerprint(self, name: str) -> str | None:
        """The fingerprint results.json or model/ was written under ("legacy" when it has none;
        "foreign" for a model/ without llmft.json: llmft did not write it)."""
        path = self.results_file if name == RESULTS else self.model_dir / "llmft.json"
        if name != RESULTS and os.path.lexists(self.model_dir) and (self.model_dir.is_symlink() or not path.is_file()):
            return "foreign"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text()).get("fingerprint") or "legacy"
        except ValueError:
            return "unreadable"

    def complete_model(self, ident: dict) -> dict | None:
        """model/'s metadata when it holds the finished model of this config (a rerun evaluates it
        instead of training again), else None."""
        if self.folder_fingerprint("model") != ident["fingerprint"]:
            return None
        meta = json.loads((self.model_dir / "llmft.json").read_text())
        return meta if "training" in meta else None

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint that finished saving (a kill mid-save leaves no marker)."""
        if not self.checkpoints.is_dir():
            return None
        done = [p for p in self.checkpoints.glob("checkpoint-*")
                if CHECKPOINT_NAME.fullmatch(p.name) and (p / CHECKPOINT_DONE).is_file()]
        return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)

    def write_predictions(self, records: list[dict]) -> None:
        lines = "".join(dumps(r) + "\n" for r in records)
        atomic_write(self.path / "predictions.jsonl", lines)

    def write_results(self, results: dict) -> None:
        """The last write of a run. Also drops the Trainer's output folder if nothing was saved there."""
        if self.checkpoints.is_dir() and not any(self.checkpoints.iterdir()):
            self.checkpoints.rmdir()
        atomic_write(self.results_file, dumps(results, indent=2) + "\n")

    def write_failure(self, reason: str, **details) -> None:
        """results.json of a run that stopped on an error it diagnosed (status "failed", never read
        as complete)."""
        record = failure(reason, self.fingerprint, **details)
        atomic_write(self.results_file, dumps(record, indent=2) + "\n")

    def callbacks(self, ident: dict, zero_stage: int) -> list:
        return [MetricsLog(self.metrics_file), MarkCompleteCheckpoints(ident, zero_stage)]


def read_marker(checkpoint: Path) -> dict | None:
    """A checkpoint's completion marker, or None when it has none llmft wrote (absent, not JSON,
    or without the fingerprint every marker carries)."""
    try:
        saved = json.loads((checkpoint / CHECKPOINT_DONE).read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and isinstance(saved.get("fingerprint"), str) else None


def cut_files(folder: Path) -> list[str]:
    """The files of a checkpoint that end before their own structure says they do (a copy or a
    disk that cut them; the marker came first): a safetensors file shorter than its header's
    tensors, a torch.save archive without its closing directory."""
    import zipfile

    from llmft.core.paths import safetensors_problem

    cut = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".safetensors":
            whole = safetensors_problem(path) is None
        elif path.suffix in (".pt", ".pth", ".bin"):
            whole = zipfile.is_zipfile(path)
        else:
            continue
        if not whole:
            cut.append(str(path.relative_to(folder)))
    return cut


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
    """Marks a checkpoint complete once the Trainer has written all of it (on_save comes after),
    with what a resume must match: the config fingerprint, the ZeRO stage and the world size
    (ZeRO shards only load into as many processes)."""

    def __init__(self, ident: dict, zero_stage: int):
        self.marker = {"fingerprint": ident["fingerprint"], "zero_stage": zero_stage, "config": ident["config"]}

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                fsync_tree(folder)  # on disk before the marker says it is complete
                # precision: what a resumed hardware.precision=auto run keeps (runtime/precision.py)
                precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
                atomic_write(folder / CHECKPOINT_DONE, dumps({**self.marker, "world_size": args.world_size,
                                                              "precision": precision}))
                prune_checkpoints(folder.parent, args.save_total_limit, state.best_model_checkpoint)


def prune_checkpoints(folder: Path, limit: int | None, best: str | None = None) -> list[Path]:
    """train.save_total_limit, applied once the newest checkpoint is marked complete (the Trainer's
    own rotation, which deletes before the marker is written, is off: runtime/trainer.py): keep the
    newest ``limit`` complete checkpoints and the best one (early stopping reloads it); delete older
    ones, and unmarked leftovers older than the newest complete one. Returns what was deleted."""
    if not limit or limit <= 0 or not folder.is_dir():
        return []

    def step(path: Path) -> int:
        tail = path.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    found = sorted((p for p in folder.glob("checkpoint-*") if p.is_dir() and step(p) >= 0), key=step)
    complete = [p for p in found if (p / CHECKPOINT_DONE).is_file()]
    if not complete:
        return []
    keep = {p.name for p in complete[-limit:]} | ({Path(best).name} if best else set())
    newest = step(complete[-1])
    gone = [p for p in found if p.name not in keep and step(p) < newest]
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone


class Preempted(Exception):
    """Training stopped at a step boundary on SIGTERM / SIGUSR2 after saving a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; checkpoint saved: {checkpoint}. "
                         f"Rerun the same command to resume from it")
        self.signum, self.exit_code = signum, 128 + signum


class SaveOnPreemption(TrainerCallback):
    """SIGTERM (preemption, scancel, the time limit) or SIGUSR2 (SLURM's warning before the time
    limit: ``--signal=B:USR2@120``): finish the step, save a checkpoint, stop training (the recipe
    then raises ``Preempted``; the rerun resumes). Under submitit its own handler runs after the
    save (it requeues the job); elsewhere a USR2 inside a SLURM job requeues it with
    ``scontrol requeue``. A second signal of the same kind while saving takes its default action.
    The command's own handlers (runtime/preemption.py) hand the signals over for the loop and take
    them back after it: a signal caught after the last step (nothing left to save at) lets the
    run finish instead.

    Every rank learns of the signal at the same step, because a DeepSpeed save needs all of them:
    one all-reduce of a flag per step, on the Trainer's device (NCCL reduces only CUDA tensors)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

    def __init__(self):
        self.caught: int | None = None  # the signal number
        self.previous: dict = {}
        self.checkpoint: Path | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._catch) for s in self.SIGNALS}
            self.caught = PREEMPTION.training() or self.caught  # one held while an earlier stage finished

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
        if self.checkpoint is not None:  # saved and stopped: Preempted is on its way out
            PREEMPTION.phase = "stopping"
            return
        late, self.caught = self.caught, None  # caught after the last step: training is done
        PREEMPTION.finishing("saving model/ and the final evaluation", "save", pending=late)

    def _catch(self, signum, frame):
        if self.caught == signum:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.caught = signum

    def flag_tensor(self, device):
        import torch

        return torch.tensor([self.caught or 0], device=device)

    def _anyone_caught(self, args) -> int:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.caught or 0
        flag = self.flag_tensor(args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        caught = self._anyone_caught(args)
        if caught:
            self.caught = caught
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        if not self.caught:
            return
        # the checkpoint is complete (MarkCompleteCheckpoints ran first), on every rank once all get here
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        self.checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        control.should_training_stop = True
        # submitit: its handler requeues and exits (rank 0; others carry on until killed); else scontrol
        PREEMPTION.pass_on(self.caught, state.is_world_process_zero, fallback=self.previous)


def read_results(run_dir: str | Path) -> dict | None:
    """A run folder's results.json, or None when the run did not complete (none, or "failed")."""
    path = Path(run_dir) / RESULTS
    results = _results_readable(path) if path.is_file() else None
    return results if results is not None and results.get("status") == "completed" else None


def _results_readable(path: Path) -> dict | None:
    """results.json's record, or None when it is empty, cut off or not a record."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None


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
