"""The trackers end to end: one run logging to MLflow, TensorBoard and metrics.csv at once (and
wandb), read back with each library's own reader; then a rerun after a kill past a checkpoint,
which must continue the same MLflow run, TensorBoard folder and CSV without a step twice; and no
secret from the environment in anything a tracker wrote."""
from __future__ import annotations

import csv
import shutil

import pytest
from conftest import cli_env, read_jsonl, read_results, run_cli, tiny_train_args

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")


def csv_rows(run_dir):
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def tensorboard_scalars(run_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_run(run_dir):
    import os

    from mlflow import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # mlflow 3 reads its file store only when asked to
    client = MlflowClient((run_dir / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("llmft").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]  # one run, the rerun's included
    return client, runs[0]


def losses(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def test_trackers_log_the_run_and_a_rerun_continues_each(tmp_path, tiny_bert, tiny_data):
    secret = "s3cr3t-for-the-trackers-4711"
    env = {**cli_env(), "LLMFT_TEST_SECRET": secret}
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_bert, tiny_data, run_dir, "logger=[wandb,mlflow,tensorboard,csv]",
                           "train.max_steps=6", "train.save_steps=3", "train.logging_steps=1",
                           "data.hub_config=${oc.env:LLMFT_TEST_SECRET}")
    proc = run_cli("train", *args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = (run_dir / "mlflow_run_id").read_text().strip()

    # a kill after checkpoint-3, with steps 4-6 already sent to every tracker: the rerun resumes from 3
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-6")
    shutil.rmtree(run_dir / "model")
    (run_dir / "results.json").unlink()
    proc = run_cli("train", *args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["train"]["resumed_from_step"] == 3
    expected = losses(run_dir)  # metrics.jsonl: steps 1-3 of the first attempt, 4-6 of the rerun
    assert [s for s, _ in expected] == [1, 2, 3, 4, 5, 6]
    accuracy = results["eval"]["accuracy"]

    rows = csv_rows(run_dir)
    assert [(int(r["step"]), float(r["loss"])) for r in rows if r["loss"]] == expected  # no step twice
    final = [r for r in rows if r["final/accuracy"]]
    assert len(final) == 1 and int(final[0]["step"]) == 6 and float(final[0]["final/accuracy"]) == accuracy

    scalars = tensorboard_scalars(run_dir)
    assert [(s, pytest.approx(v)) for s, v in scalars["train/loss"]] == expected  # the old 4-6 purged
    assert scalars["final/accuracy"] == [(6, pytest.approx(accuracy))]

    client, run = mlflow_run(run_dir)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"  # the rerun continued the same run
    history = client.get_metric_history(run_id, "loss")
    assert {s for s, _ in expected} == {m.step for m in history}
    last = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}  # the rerun's values last
    assert [(s, pytest.approx(last[s])) for s, _ in expected] == expected
    assert run.data.metrics["final/accuracy"] == pytest.approx(accuracy)
    assert run.data.params["data.hub_config"] == "${oc.env:LLMFT_TEST_SECRET}"  # redacted, as config.yaml
    assert run.data.params["logger.mlflow.experiment"] == "llmft"

    for path in [p for p in run_dir.rglob("*") if p.is_file()]:  # tensorboard/, mlruns/, metrics.csv, wandb/
        assert secret.encode() not in path.read_bytes(), path.relative_to(run_dir)
