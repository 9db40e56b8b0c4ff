"""Sweeps: Hydra grid sweeps that skip completed points on a rerun, and an Optuna search."""
from __future__ import annotations

import pytest
import yaml
from conftest import read_results, run_cli, tiny_train_args


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
    proc = run_cli("train", "hparams_search=optuna", "hydra.sweeper.n_trials=3",
                   f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",  # a study that can be resumed
                   *sweep_args(tiny_bert, tiny_data, sweep))
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"train.lr", "train.warmup_ratio", "train.weight_decay"}
    trials = [read_results(sweep / str(i)) for i in range(3)]
    assert best["best_value"] == pytest.approx(max(t["eval"]["accuracy"] for t in trials))
    assert (tmp_path / "study.db").is_file()
