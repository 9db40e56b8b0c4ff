"""Experiment trackers: ``logger=wandb|mlflow|tensorboard|csv``, or several (``'logger=[wandb,csv]'``).
Each has a start and a finish here (``TRACKERS``); runtime/trainer.py's start_tracker /
finish_tracker run them on rank 0. The step metrics reach them through the libraries' own
writers: the Trainer's WandbCallback and MLflowCallback (``report_to``, configured by their
environment variables, set for this process and restored at the finish), transformers'
TensorBoardCallback (given its writer: ``report_to`` would build one without ``purge_step``), and
``CsvLog`` (transformers has no CSV writer). The finish adds the final eval metrics as
``final/<metric>`` at the last step.

A rerun in the same folder continues each tracker's run: wandb and MLflow by the id the folder
keeps (wandb_run_id, mlflow_run_id); TensorBoard in the same folder, where its own ``purge_step``
hides what an interrupted attempt logged past the kept step; metrics.csv cut at that step.
The kept step is the last one metrics.jsonl kept (run_dir.RunDir.start cut it at the checkpoint
the run resumes from; all of it when the run only re-evaluates; none on a fresh start).
What a tracker records of the config is ``redact.redacted(cfg)`` (secrets as ``${oc.env:...}``).
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from transformers import TrainerCallback

from llmft.core.errors import UserError

INSTALL = "pip install 'llmft[trackers]'"


@dataclass
class Tracker:
    """One open tracker of the current run: what its finish needs."""

    name: str
    path: Path  # the run folder
    kept_step: int  # the last step metrics.jsonl kept: an interrupted attempt's later steps are dropped
    callbacks: list = field(default_factory=list)  # TrainerCallbacks of the training Trainer
    state: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)  # variables set for this run -> their values before (None: unset)

    def setenv(self, **values: str) -> None:
        for key, value in values.items():
            self.env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def restore_env(self) -> None:
        for key, value in self.env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_OPEN: list[Tracker] = []  # the trackers this process opened for the run now training


def start(cfg, run_path: Path) -> list[str]:
    """Open every selected tracker; returns the Trainer's ``report_to``."""
    finish(None)  # a run before this one in the process (a stage) that did not finish its own
    run_path, report_to = Path(run_path), []
    kept = kept_step(run_path / "metrics.jsonl")
    for name, (open_tracker, _) in TRACKERS.items():
        section = cfg.logger.get(name)
        if section is None:
            continue
        tracker = Tracker(name, run_path, kept)
        try:
            report_to += open_tracker(cfg, section, tracker)
        except BaseException:
            tracker.restore_env()
            finish(None)  # the ones opened before it
            raise
        _OPEN.append(tracker)
    return report_to


def callbacks() -> list:
    """The open trackers' callbacks for the training Trainer (none on ranks other than 0)."""
    return [callback for tracker in _OPEN for callback in tracker.callbacks]


def finish(results: dict | None) -> None:
    """Final metrics (results.json's eval section) into every open tracker, then close them;
    ``results`` None: the run did not complete."""
    final, step = {}, 0
    if results is not None:
        final = {f"final/{k}": v for k, v in results["eval"].items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        step = int((results.get("train") or {}).get("steps") or 0)
    while _OPEN:
        tracker = _OPEN.pop(0)
        try:
            TRACKERS[tracker.name][1](tracker, final if results is not None else None, step)
        finally:
            tracker.restore_env()


def kept_step(metrics_file: Path) -> int:
    steps = []
    for line in metrics_file.read_text().splitlines() if metrics_file.is_file() else []:
        try:
            steps.append(int(json.loads(line).get("step", 0)))
        except (ValueError, TypeError, AttributeError):
            continue  # a line cut by a kill (kept as it is when the run only re-evaluates)
    return max(steps, default=0)


def run_name(cfg) -> str:
    return cfg.get("experiment") or cfg.strategy.name


# ------------------------------------------------------------------------------------- wandb
def start_wandb(cfg, section, tracker: Tracker) -> list[str]:
    try:
        import wandb
    except ImportError:
        raise UserError("logger=wandb needs the wandb package: pip install wandb") from None
    import secrets
    import sys

    from llmft.core.redact import redacted, scrub_text, secret_values

    tracker.setenv(WANDB_MODE=section.mode, WANDB_SILENT=os.environ.get("WANDB_SILENT", "true"))
    id_file = tracker.path / "wandb_run_id"  # a resumed run logs into the same wandb run
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    argv, known = sys.argv, secret_values(cfg)
    sys.argv = [scrub_text(a, known) for a in argv]  # wandb records the command line (its metadata's args)
    try:
        wandb.init(
            id=run_id,
            resume="allow",
            project=section.project,
            entity=section.entity,
            tags=list(section.tags),
            name=run_name(cfg),
            dir=str(tracker.path),
            config=redacted(cfg),  # secrets read from the environment stay ${oc.env:...}
        )  # the Trainer's WandbCallback finds this run and logs into it
    finally:
        sys.argv = argv
    return ["wandb"]


def finish_wandb(tracker: Tracker, final: dict | None, step: int) -> None:
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return
    if final:
        wandb.run.summary.update(final)
    wandb.finish(exit_code=0 if final is not None else 1)


# ------------------------------------------------------------------------------------ mlflow
def start_mlflow(cfg, section, tracker: Tracker) -> list[str]:
    """The run is made (or found again) here, with llmft's config as its params; the Trainer's
    MLflowCallback then logs into it (MLFLOW_RUN_ID) and ends it when training ends."""
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise UserError(f"logger=mlflow needs the mlflow package: {INSTALL}") from None
    from urllib.parse import urlparse

    uri = section.tracking_uri or (tracker.path / "mlruns").absolute().as_uri()
    if urlparse(uri).scheme in ("", "file"):  # mlflow 3 refuses its file store unless asked for
        tracker.setenv(MLFLOW_ALLOW_FILE_STORE="true")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(section.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(section.experiment)
    id_file = tracker.path / "mlflow_run_id"  # a resumed run logs into the same MLflow run
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    if run_id:
        try:
            if client.get_run(run_id).info.experiment_id != experiment_id:
                run_id = None  # another experiment (logger.mlflow.experiment changed): a new run
        except MlflowException:
            run_id = None  # not in this store (another tracking_uri)
    if not run_id:
        run_id = client.create_run(experiment_id, run_name=run_name(cfg)).info.run_id
    id_file.write_text(run_id + "\n")
    log_params(client, run_id, cfg)
    tracker.state.update(client=client, run_id=run_id)
    # MLFLOW_MAX_LOG_PARAMS=0: the callback's own params (TrainingArguments) would refuse a resume that
    # changed a logging knob (MLflow never changes a param); llmft's config above holds them all.
    tracker.setenv(MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME=section.experiment, MLFLOW_RUN_ID=run_id,
                   MLFLOW_MAX_LOG_PARAMS="0")
    return ["mlflow"]


def log_params(client, run_id: str, cfg) -> None:
    """The config as dotted params, secrets redacted; a resumed run adds only keys not logged yet
    (MLflow refuses to change a param: a resume may change a key the fingerprint leaves out)."""
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
    from transformers.utils import flatten_dict

    from llmft.core.redact import redacted

    logged = client.get_run(run_id).data.params
    params = [Param(key, str(value)[:MAX_PARAM_VAL_LENGTH])
              for key, value in flatten_dict(redacted(cfg), delimiter=".").items() if key not in logged]
    for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=params[i:i + MAX_PARAMS_TAGS_PER_BATCH])


def finish_mlflow(tracker: Tracker, final: dict | None, step: int) -> None:
    import time

    import mlflow
    from mlflow.entities import Metric

    client, run_id = tracker.state["client"], tracker.state["run_id"]
    status = "FINISHED" if final is not None else "FAILED"
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:  # training stopped before the callback ended it
        mlflow.end_run(status)
    if final:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in final.items()])
    client.set_terminated(run_id, status)


# ------------------------------------------------------------------------------- tensorboard
def start_tensorboard(cfg, section, tracker: Tracker) -> list[str]:
    try:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback
    except ImportError:
        raise UserError(f"logger=tensorboard needs the tensorboard package: {INSTALL}") from None
    folder = tracker.path / "tensorboard"
    # a rerun: TensorBoard hides what the interrupted attempt logged after the kept step (its purge_step)
    purge = tracker.kept_step + 1 if folder.is_dir() else None
    tracker.setenv(TENSORBOARD_LOGGING_DIR=str(folder))  # the callback's writer after training (an eval's loss)
    callback = TensorBoardCallback(SummaryWriter(str(folder), purge_step=purge))
    tracker.callbacks.append(callback)
    tracker.state.update(folder=folder, callback=callback)
    return []


def finish_tensorboard(tracker: Tracker, final: dict | None, step: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    callback = tracker.state["callback"]
    if callback.tb_writer is not None:
        callback.tb_writer.close()
    if final:
        writer = SummaryWriter(str(tracker.state["folder"]))
        for key, value in final.items():
            writer.add_scalar(key, value, step)
        writer.close()


# --------------------------------------------------------------------------------------- csv
def start_csv(cfg, section, tracker: Tracker) -> list[str]:
    tracker.callbacks.append(CsvLog(tracker.path / "metrics.csv", tracker.kept_step))
    return []


def finish_csv(tracker: Tracker, final: dict | None, step: int) -> None:
    if final:
        tracker.callbacks[0].add({"step": step, **final})


class CsvLog(TrainerCallback):
    """RUN/metrics.csv: a row per Trainer log, as metrics.jsonl (step, epoch, then the logged keys),
    and a row of final/<metric>. A key seen for the first time widens the header: the file is
    rewritten whole; otherwise a row is appended. A rerun keeps the rows up to ``kept_step`` (not
    an earlier final row: the final metrics come again)."""

    def __init__(self, path: Path, kept_step: int = 0):
        self.path, self.header, self.rows = path, ["step", "epoch"], []
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self.header = list(dict.fromkeys([*self.header, *(reader.fieldnames or [])]))
                self.rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= kept_step
                             and not any(r.get(k) for k in self.header if k.startswith("final/"))]
        self._write_all()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.add({"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs})

    def add(self, row: dict) -> None:
        self.rows.append(row)
        new = [k for k in row if k not in self.header]
        if new:
            self.header += new
            self._write_all()
        else:
            with self.path.open("a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, self.header, restval="").writerow(row)

    def _write_all(self) -> None:
        from llmft.runtime.ownership import atomic_write

        text = io.StringIO()
        writer = csv.DictWriter(text, self.header, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.path, text.getvalue())


TRACKERS: dict[str, tuple[Callable, Callable]] = {
    "wandb": (start_wandb, finish_wandb),
    "mlflow": (start_mlflow, finish_mlflow),
    "tensorboard": (start_tensorboard, finish_tensorboard),
    "csv": (start_csv, finish_csv),
}
