"""results.json has one schema (runtime/results.py) that every writer builds through and the report
reads; a run folder's contents are one list (runtime/layout.py) that a takeover moves aside whole."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llmft.commands import report
from llmft.runtime import layout, results
from llmft.runtime.run_dir import RunDir, read_results

X, Y = "a" * 16, "b" * 16  # two configs' fingerprints

COMMON_VALUES = {"run_dir": "/runs/r", "task": "classification", "data": "tiny", "strategy": "lora",
                 "primary_metric": "accuracy", "num_eval_examples": 4, "eval": {"accuracy": 0.75},
                 "baseline": {"majority_accuracy": 0.5}, "warnings": []}
IDENTITY = {"fingerprint": X, "experiment": "e", "model": "tiny-bert", "seed": 42}


def train_values(**extra) -> dict:
    return {**COMMON_VALUES, **IDENTITY, "num_train_examples": 8, "aux": None, "data_report": {},
            "num_validation_examples": 0, "validation": None, "train": {"steps": 2}, "hardware": {"name": "cpu"},
            "memory": {"peak_rss_mb": 1.0}, "params": {"trainable": 1, "total": 2, "trainable_pct": 50.0},
            "strategy_report": {}, "retention": None, "reevaluated": False, "wall_time_s": 1.0, **extra}


def every_kind() -> dict:
    return {
        "train": results.completed("train", **train_values()),
        "staged train": results.completed("train", **train_values(pet={"patterns": []})),
        "eval": results.completed("eval", **COMMON_VALUES, model_dir="/runs/r/model", memory={}, wall_time_s=1.0),
        "pet_ensemble": results.completed(
            "pet_ensemble", **COMMON_VALUES, **IDENTITY, num_train_examples=8, num_validation_examples=0,
            validation=None, train=None, params={"trainable": 2, "total": 4, "trainable_pct": 50.0}, pet={}),
        "failed": results.failure("loss went nan", X, step=3, last_checkpoint=None),
    }


@pytest.mark.parametrize("name", list(every_kind()))
def test_every_writers_record_matches_the_schema(name):
    record = every_kind()[name]
    assert record["schema_version"] == results.SCHEMA_VERSION == 1
    assert results.problems(record) == []
    assert results.kind_of(record) == name.split()[-1]
    if name != "failed":
        assert list(record)[:len(results.COMMON)] == list(results.COMMON)  # the shared keys, first


def test_train_and_eval_records_share_the_common_keys():
    kinds = every_kind()
    shared = set(kinds["train"]) & set(kinds["eval"]) & set(kinds["pet_ensemble"])
    assert shared == set(results.COMMON)


def test_a_writer_that_misses_or_invents_a_key_fails():
    values = train_values()
    del values["params"]
    with pytest.raises(KeyError, match="params"):
        results.completed("train", **values)
    with pytest.raises(KeyError, match="accuracy"):
        results.completed("eval", **COMMON_VALUES, model_dir="m", memory={}, wall_time_s=1.0, accuracy=1.0)


def test_run_identity_names_the_run_from_its_config():
    cfg = OmegaConf.create({"experiment": "e", "model": {"name": "tiny-bert"}, "data": {"name": "tiny"},
                            "strategy": {"name": "lora"}, "seed": 42})
    task = type("Task", (), {"name": "classification", "primary_metric": "accuracy"})()
    identity = results.run_identity(cfg, task, Path("/runs/r"), X)
    assert {**identity} == {"run_dir": "/runs/r", "fingerprint": X, "experiment": "e", "task": "classification",
                            "model": "tiny-bert", "data": "tiny", "strategy": "lora", "seed": 42,
                            "primary_metric": "accuracy"}


def test_the_failure_record_is_what_run_dir_writes(tmp_path):
    run = RunDir(tmp_path)
    run.fingerprint = X
    run.write_failure("loss went nan", step=3, last_checkpoint=None)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == {"schema_version": 1, "status": "failed", "reason": "loss went nan", "fingerprint": X,
                       "step": 3, "last_checkpoint": None}
    assert read_results(tmp_path) is None  # never read as complete


def write(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value) if not isinstance(value, str) else value)


def test_report_reads_this_schema_and_the_layout_before_it(tmp_path):
    old = {k: v for k, v in results.completed("train", **train_values()).items() if k != "schema_version"}
    write(tmp_path / "old" / "results.json", old)  # the previous release wrote no schema_version
    write(tmp_path / "new" / "results.json", results.completed("train", **train_values()))
    write(tmp_path / "future" / "results.json", {**old, "schema_version": 2})
    runs = {r.name: report.read_run(r) for r in report.find_runs(tmp_path)}
    assert runs["old"]["results"] == old and results.problems(old) == []
    assert runs["new"]["results"]["eval"] == {"accuracy": 0.75} and runs["new"]["command"] == "train"
    assert runs["future"]["results"] is None and "schema_version 2" in runs["future"]["failure"]


# ------------------------------------------------------------------ what a run folder holds
def lay_out_run(path: Path, fingerprint: str) -> list[str]:
    """A finished staged run of one config, exported: every entry of the layout."""
    write(path / "results.json", results.completed("train", **train_values(fingerprint=fingerprint)))
    write(path / "model" / "llmft.json", {"fingerprint": fingerprint, "training": {}})
    write(path / "stages" / "pattern-0" / "results.json", {"status": "completed", "fingerprint": "c" * 16})
    write(path / "soft_labels.jsonl", '{"text": "x", "soft": [0.5, 0.5]}\n')
    write(path / "student_init" / "config.json", {})
    for fmt in layout.EXPORT_FOLDERS:
        write(path / fmt / "llmft.json", {"source": str(path / "model"), "format": fmt})
    write(path / "gguf-q4" / layout.EXPORT_MARKER, {"format": "a format added later"})
    for name in ("predictions.jsonl", "metrics.jsonl", "config.yaml", "deepspeed.json", "retention.png",
                 "wandb_run_id"):
        write(path / name, "")
    write(path / "checkpoints" / "checkpoint-2" / ".complete", {"fingerprint": fingerprint})
    return sorted(p.name for p in path.iterdir())


def test_a_takeover_moves_everything_the_run_left_to_replaced(tmp_path):
    left = lay_out_run(tmp_path, X)
    assert sorted(layout.artifacts(tmp_path)) == left  # the layout names all of it
    target = RunDir(tmp_path).set_aside_other_runs("auto", {"fingerprint": Y})
    assert target is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replaced"]
    assert sorted(p.name for p in Path(target).iterdir()) == left


def test_a_rerun_of_the_same_config_moves_nothing(tmp_path):
    left = lay_out_run(tmp_path, X)
    assert RunDir(tmp_path).set_aside_other_runs("auto", {"fingerprint": X}) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == left


def test_the_last_stage_of_a_staged_run_keeps_the_stages_it_just_ran(tmp_path):
    lay_out_run(tmp_path, X)
    RunDir(tmp_path / "stages" / "pattern-0").start(OmegaConf.create({"seed": 1}))  # this process ran a stage
    target = Path(RunDir(tmp_path).set_aside_other_runs("never", {"fingerprint": Y}))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["replaced", *layout.STAGED_OUTPUTS])
    assert not (target / "stages").exists() and (target / "model").is_dir() and (target / "merged").is_dir()
    # consumed: the next run into the folder (another process's, in effect) moves them too
    assert RunDir(tmp_path).set_aside_other_runs("never", {"fingerprint": Y}) is not None
    assert not (tmp_path / "stages").exists()


def test_every_export_folder_is_known_to_the_layout():
    from llmft.commands import export
    from llmft.models.formats import FORMATS

    assert export.MARKER == layout.EXPORT_MARKER  # what marks a folder llmft export wrote
    assert set(layout.EXPORT_FOLDERS) <= set(FORMATS)  # the formats from before the marker


@pytest.mark.parametrize("name", layout.TRAINING_ONLY)
def test_an_unmarked_folder_holding_a_training_runs_output_is_a_training_runs(tmp_path, name):
    from llmft.runtime.ownership import LOCK_FILE, folder_kind

    write(tmp_path / LOCK_FILE, "")  # an earlier llmft's run folder, without the .llmft-run marker
    write(tmp_path / "predictions.jsonl", "")
    assert folder_kind(tmp_path) == "llmft"
    inside = {"model": "config.json", "checkpoints": "checkpoint-1/x", "stages": "round-0/x", "student_init": "x"}
    write(tmp_path / name / inside[name] if name in inside else tmp_path / name, "")
    assert folder_kind(tmp_path) == "train"
