"""The trackers in process (runtime/trackers.py): the logger group's sections compose alone and
together, the old one-tracker keys are refused in one line naming the new key, and each writer
(metrics.csv, TensorBoard, the MLflow file store) holds the logged steps and final metrics, and
drops what an interrupted attempt logged past the kept step when the run continues."""
from __future__ import annotations

import csv
import json
import os
from types import SimpleNamespace

import pytest
from conftest import refused

from llmft.runtime import trackers


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmft.cli.app import config_dir
    from llmft.cli.validate import register_configs

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


# ------------------------------------------------------------------------------ the config
@pytest.mark.parametrize("overrides, on", [
    ([], set()),
    (["logger=none"], set()),
    (["logger=wandb"], {"wandb"}),
    (["logger=csv"], {"csv"}),
    (["logger=[wandb,tensorboard]"], {"wandb", "tensorboard"}),
    (["logger=[mlflow,tensorboard,csv,wandb]", "logger.wandb.mode=online"], {"wandb", "mlflow", "tensorboard", "csv"}),
])
def test_each_selected_tracker_has_its_section_and_the_others_are_off(overrides, on):
    logger = compose(*overrides).logger
    assert {name for name in trackers.TRACKERS if logger[name] is not None} == on
    if "wandb" in on:  # a later group file does not reset an earlier one's section
        assert logger.wandb.project == "llmft"
        assert logger.wandb.mode == ("online" if "logger.wandb.mode=online" in overrides else "offline")
    if "mlflow" in on:
        assert logger.mlflow.experiment == "llmft" and logger.mlflow.tracking_uri is None


@pytest.mark.parametrize("overrides, expected", [
    (["logger.mode=online"], "logger.mode: each tracker's settings have their own section now; use logger.wandb.mode"),
    (["logger=wandb", "logger.project=mine"], "logger.project: each tracker's settings have their own section now; "
                                              "use logger.wandb.project"),
    (["logger=wandb", "logger.entity=team"], "use logger.wandb.entity"),
    (["logger=mlflow", "logger.tracking_uri=http://localhost:5000"], "use logger.mlflow.tracking_uri"),
    (["logger.name=wandb"], "logger.name: each tracker's settings have their own section now; use logger=NAME"),
    (["logger=tensorboard", "logger.wandb.mode=online"],
     "logger.wandb.mode: the wandb tracker is off; select it: logger=wandb (several: 'logger=[wandb,NAME]')"),
    (["logger.mlflow.experiment=mine"], "logger.mlflow.experiment: the mlflow tracker is off; select it: logger=mlflow"),
    (["logger=[wandb,csv]", "logger.wandb.mode=loud"], "logger.wandb.mode='loud' is not one of: offline, online, disabled"),
    (["logger=[wandb,nope]"], "logger=nope: no such option"),
    (["logger=csv", "logger.csv.path=x.csv"], "logger.csv.path: no such key in logger.csv"),
    (["logger=mlflow", "logger.mlflow.experiment=' '"], "logger.mlflow.experiment: must not be empty"),
    (["logger=mlflow", "logger.mlflow.tracking_uri=''"], "logger.mlflow.tracking_uri: must not be empty"),
    (["logger=wandb", "logger.wandb.project=''"], "logger.wandb.project: must not be empty"),
])
def test_old_and_misplaced_logger_keys_are_refused_in_one_line(overrides, expected, tmp_path):
    assert expected in refused("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}")


# ---------------------------------------------------------------------------- the writers
def state(step: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, epoch=step / 10, is_world_process_zero=True)


def run_folder(tmp_path, kept_rows: list[dict]):
    """A run folder as run_dir.RunDir.start leaves it: metrics.jsonl cut at the resume step."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept_rows))
    return run


def attempt(cfg, run, steps, losses, accuracy):
    """One training attempt: start, a log per step, finish (accuracy None: killed before it ended)."""
    report_to = trackers.start(cfg, run)
    for step, loss in zip(steps, losses):
        for callback in trackers.callbacks():
            callback.on_log(None, state(step), None, logs={"loss": loss, "learning_rate": 0.1})
    if accuracy is None:
        for tracker in trackers._OPEN:  # killed: nothing finishes (the process and its environment are gone)
            tracker.restore_env()
        trackers._OPEN.clear()
        return report_to
    trackers.finish({"eval": {"accuracy": accuracy, "label": "x"}, "train": {"steps": steps[-1]}})
    return report_to


def test_csv_and_tensorboard_continue_a_resumed_run_without_a_step_twice(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose("logger=[tensorboard,csv]")
    run = run_folder(tmp_path, [])
    assert attempt(cfg, run, [1, 2, 3, 4, 5], [0.9, 0.8, 0.7, 0.6, 0.5], None) == []  # killed after step 5
    # the rerun resumes from checkpoint-3: RunDir.start kept metrics.jsonl's steps 1-3
    run_folder(tmp_path, [{"step": s, "loss": 1.0} for s in (1, 2, 3)])
    attempt(cfg, run, [4, 5, 6], [0.65, 0.55, 0.45], 0.75)

    with (run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["loss"]) for r in rows if r["loss"]] == [
        ("1", "0.9"), ("2", "0.8"), ("3", "0.7"), ("4", "0.65"), ("5", "0.55"), ("6", "0.45")]
    assert [(r["step"], r["final/accuracy"]) for r in rows if r["final/accuracy"]] == [("6", "0.75")]
    assert "final/label" not in rows[0]  # only numbers are metrics

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    loss = [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss")]
    assert loss == [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.65), (5, 0.55), (6, 0.45)]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("final/accuracy")] == [(6, 0.75)]
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # set for the run only


def test_a_rerun_that_only_reevaluates_keeps_the_rows_and_replaces_the_final_row(tmp_path):
    cfg = compose("logger=csv")
    run = run_folder(tmp_path, [])
    attempt(cfg, run, [1, 2], [0.9, 0.8], 0.5)
    run_folder(tmp_path, [{"step": 1, "loss": 0.9}, {"step": 2, "loss": 0.8}])  # kept whole: model/ was complete
    trackers.start(cfg, run)
    trackers.finish({"eval": {"accuracy": 0.5}, "train": {"steps": 2}})
    with (run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["loss"], r["final/accuracy"]) for r in rows] == [("1", "0.9", ""), ("2", "0.8", ""),
                                                                         ("2", "", "0.5")]


def test_mlflow_continues_the_same_run_with_redacted_params_and_the_final_metrics(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.setenv("LLMFT_TEST_SECRET", "s3cr3t-for-mlflow-4711")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose("logger=mlflow", "data.hub_config=${oc.env:LLMFT_TEST_SECRET}")
    run = run_folder(tmp_path, [])
    assert trackers.start(cfg, run) == ["mlflow"]
    first = (run / "mlflow_run_id").read_text().strip()
    assert os.environ["MLFLOW_RUN_ID"] == first and os.environ["MLFLOW_TRACKING_URI"].endswith("/run/mlruns")
    attempt(cfg, run, [], [], None)  # killed before training ended
    assert "MLFLOW_RUN_ID" not in os.environ

    cfg = compose("logger=mlflow", "data.hub_config=${oc.env:LLMFT_TEST_SECRET}", "train.logging_steps=5")
    trackers.start(cfg, run)  # the rerun: a key the fingerprint leaves out changed (MLflow keeps params as logged)
    trackers.finish({"eval": {"accuracy": 0.75, "loss": 0.5}, "train": {"steps": 6}})
    assert "MLFLOW_RUN_ID" not in os.environ and "MLFLOW_ALLOW_FILE_STORE" not in os.environ

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((run / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("llmft").experiment_id])
    assert [r.info.run_id for r in runs] == [first] and runs[0].info.status == "FINISHED"
    params, metrics = runs[0].data.params, runs[0].data.metrics
    assert params["data.hub_config"] == "${oc.env:LLMFT_TEST_SECRET}" and params["train.logging_steps"] == "10"
    assert metrics == {"final/accuracy": 0.75, "final/loss": 0.5}
    assert [m.step for m in client.get_metric_history(first, "final/accuracy")] == [6]
    secret = b"s3cr3t-for-mlflow-4711"
    assert not [p for p in (run / "mlruns").rglob("*") if p.is_file() and secret in p.read_bytes()]


def test_a_folder_taken_over_by_another_config_moves_the_tracker_files_aside(tmp_path):
    from llmft.runtime.run_dir import RunDir

    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "mlruns").mkdir()
    for name in ("metrics.csv", "mlflow_run_id", "wandb_run_id"):
        (run / name).write_text("x\n")
    (run / "results.json").write_text(json.dumps({"status": "completed", "fingerprint": "another"}))
    RunDir(run).set_aside_other_runs("auto", {"fingerprint": "this"})
    moved = next((run / "replaced").iterdir())
    assert sorted(p.name for p in moved.iterdir()) == sorted(
        ["tensorboard", "mlruns", "metrics.csv", "mlflow_run_id", "wandb_run_id", "results.json"])
