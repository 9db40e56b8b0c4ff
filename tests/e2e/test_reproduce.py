"""``llmft reproduce RUN``: a short run rerun from its folder alone gives the same numbers on the
CPU, bit for bit; an input file changed since the run is refused in one line; a folder without
a manifest is refused."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import assert_user_error, cli_env, read_jsonl, read_results, run_cli, tiny_train_args

SECRET = "s3cr3t-of-the-reproduce-test-0815"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert, tiny_data) -> dict:
    """One finished tiny run on its own copy of the data (a test changes that copy), with a
    secret read from the environment in its config."""
    root = tmp_path_factory.mktemp("reproduce")
    data = {k: shutil.copy(tiny_data[k], root / Path(tiny_data[k]).name) for k in ("train", "eval")}
    env = {**cli_env(), "LLMFT_TEST_SECRET": SECRET}
    proc = run_cli("train", *tiny_train_args(tiny_bert, data, root / "run", "train.epochs=1", "seed=7",
                                             "data.hub_config=${oc.env:LLMFT_TEST_SECRET}"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"run": root / "run", "data": data, "env": env, "root": root}


def test_reproduce_gives_the_same_numbers(run):
    first = run["run"]
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["seeds"]["seed"] == 7 and "data.split_seed" in manifest["seeds"]
    assert set(manifest["inputs"]) >= {"data.train_file#sha256", "data.eval_file#sha256", "model.name_or_path#sha256"}
    assert manifest["config_fingerprint"] == read_results(first)["fingerprint"]
    again = run["root"] / "again"
    proc = run_cli("reproduce", first, f"hydra.run.dir={again}", env=run["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "inputs: the same 3 digest(s) as recorded" in proc.stderr, proc.stderr[-3000:]
    for section in ("packages", "python", "hardware", "environment"):  # the same machine (the checkout may change)
        assert f"differs on this machine: {section}" not in proc.stderr, proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-3000:]
    old, new = read_results(first), read_results(again)
    assert new["fingerprint"] == old["fingerprint"]  # the same config and input files
    assert new["eval"] == old["eval"]
    assert new["train"]["final_loss"] == old["train"]["final_loss"] and new["train"]["steps"] == 12
    assert [r["loss"] for r in read_jsonl(again / "metrics.jsonl") if "loss" in r] == \
        [r["loss"] for r in read_jsonl(first / "metrics.jsonl") if "loss" in r]
    assert (again / "config.yaml").read_text() == (first / "config.yaml").read_text()
    second = json.loads((again / "manifest.json").read_text())
    assert second["reproduced_from"] == {"run": str(first.resolve()), "overrides": [f"hydra.run.dir={again}"]}
    assert second["inputs"] == manifest["inputs"]
    for folder in (first, again):  # the secret the config read from the environment is in no file
        for path in folder.rglob("*"):
            assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


def test_a_changed_data_file_is_refused_and_a_run_without_manifest_too(run, tmp_path):
    train_file = Path(run["data"]["train"])
    original = train_file.read_bytes()
    try:
        train_file.write_bytes(original + b"great day,positive\n")
        proc = run_cli("reproduce", run["run"], f"hydra.run.dir={tmp_path / 'changed'}", env=run["env"])
    finally:
        train_file.write_bytes(original)
    assert_user_error(proc, f"data.train_file ({train_file})", "--allow-changed-data")
    assert not (tmp_path / "changed").exists()
    bare = tmp_path / "bare"
    shutil.copytree(run["run"], bare, ignore=shutil.ignore_patterns("model", "checkpoints", "manifest.json"))
    proc = run_cli("reproduce", bare, env=run["env"])
    assert_user_error(proc, "no readable manifest.json")
