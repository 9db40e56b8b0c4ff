"""Sweeps: Hydra grid sweeps that skip completed points on a rerun, and an Optuna search."""
from __future__ import annotations

import pytest
import yaml
from conftest import make_rows, read_results, run_cli, tiny_train_args, write_csv


def sweep_args(model, data, sweep_dir, *extra):
    args = tiny_train_args(model, data, sweep_dir / "unused", "train.epochs=1", *extra)
    return [a for a in args if not a.startswith(("hydra.run", "train.lr"))] + [f"hydra.sweep.dir={sweep_dir}"]


def test_rerun_sweep_skips_completed_points_and_retries_the_rest(tmp_path, tiny_bert, tiny_data):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "train.lr=1e-3,5e-3", *sweep_args(tiny_bert, tiny_data, sweep)]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = read_results(sweep / "0")
    (sweep / "1" / "results.json").unlink()  # as if point 1 had failed or been killed

    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("is complete; skipped") == 1
    assert read_results(sweep / "0") == first  # untouched
    assert read_results(sweep / "1")["status"] == "completed"  # run again


def test_optuna_search_writes_its_best_parameters(tmp_path, tiny_bert, tiny_data):
    sweep = tmp_path / "optuna"
    rows = make_rows(45, seed=7)  # a validation split unlike the test split: 2/3 of it positive
    skewed = write_csv(tmp_path / "validation.csv", [r for r in rows if r["label"] == "positive"] + rows[:8])
    proc = run_cli("train", "hparams_search=optuna", "hydra.sweeper.n_trials=3",
                   f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",  # a study that can be resumed
                   "train.lr=tag(log, interval(1e-3, 2e-2))",  # the tiny model learns here
                   *sweep_args(tiny_bert, tiny_data, sweep, f"data.validation_file={skewed}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"train.lr", "train.warmup_ratio", "train.weight_decay"}
    trials = [read_results(sweep / str(i)) for i in range(3)]
    validation = [t["validation"]["accuracy"] for t in trials]
    test = [t["eval"]["accuracy"] for t in trials]
    assert validation != test  # the fixture's splits score differently, so the check below means something
    assert best["best_value"] == pytest.approx(max(validation))  # selected on validation, not on test
    assert all(t["num_validation_examples"] == 23 for t in trials)
    assert (tmp_path / "study.db").is_file()


def test_optuna_search_refuses_data_without_a_validation_split(tmp_path, tiny_bert, tiny_data):
    proc = run_cli("train", "hparams_search=optuna", *sweep_args(tiny_bert, tiny_data, tmp_path / "optuna"))
    assert proc.returncode == 2 and "data.validation_fraction" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "optuna").exists()
