"""Inputs that pass a type check but mean nothing, and broken files: each is refused before any
work in one line that names the key, file or row and the fix (or read correctly), never a
traceback and never a run that trains on a value that does nothing.

Config cases run the CLI's own pre-flight in process (compose + every owner's validate, no torch);
model folders are copies of the tiny BERT fixture with one thing broken.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from conftest import preflight, refused, run_cli

from llmft.core.errors import UserError


# The config values that mean nothing are refused in process: tests/unit/test_bad_config.py


def test_a_sweep_without_m_is_one_line_from_the_cli(tmp_path):
    proc = run_cli("train", "train.lr=1e-4,3e-4", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert lines == ["llmft: error: train.lr=1e-4,3e-4: several values make a sweep: add -m to run one job per "
                     "value, or give one value (a list value is written in brackets: train.lr=[a,b])"], lines
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ paths
def test_a_run_folder_that_cannot_be_made_is_refused(tmp_path, tiny_data):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "cannot be made" in refused("train", f"hydra.run.dir={blocker / 'run'}")
    # an existing data file given as the run folder
    assert "hydra.run.dir" in refused("train", f"hydra.run.dir={tiny_data['train']}")
    assert tiny_data["train"].is_file()


def test_a_base_model_inside_the_run_folder_is_refused(tmp_path, tiny_bert, tiny_data):
    run = tmp_path / "run"
    shutil.copytree(tiny_bert, run / "model")
    message = refused("train", "model=hf", f"model.name_or_path={run / 'model'}", "data=csv",
                      f"data.train_file={tiny_data['train']}", f"hydra.run.dir={run}")
    assert "model.name_or_path" in message and "inside the run folder" in message
    assert sorted(p.name for p in run.iterdir()) == ["model"]  # nothing moved


# ---------------------------------------------------------------------------- broken model folders
def broken_copy(src: Path, dest: Path, how: str) -> Path:
    shutil.copytree(src, dest)
    if how == "cut weights":
        weights = dest / "model.safetensors"
        os.truncate(weights, weights.stat().st_size // 2)
    elif how == "garbage header":
        (dest / "model.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{not json")
    elif how == "missing shard":
        (dest / "model.safetensors").rename(dest / "model-00001-of-00002.safetensors")
        (dest / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    elif how == "unknown model_type":
        config = json.loads((dest / "config.json").read_text())
        (dest / "config.json").write_text(json.dumps({**config, "model_type": "bertish"}))
    elif how == "config of another model":
        config = json.loads((dest / "config.json").read_text())
        (dest / "config.json").write_text(json.dumps({**config, "vocab_size": 10}))
    elif how == "tokenizer larger than the embeddings":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(dest)
        tokenizer.add_tokens(["zzzone", "zzztwo", "zzzthree"])
        tokenizer.save_pretrained(dest)
    return dest


@pytest.mark.parametrize("how, expected", [
    ("cut weights", "model.safetensors is cut short or corrupt"),
    ("garbage header", "its header does not read"),
    ("missing shard", "lists model-00002-of-00002.safetensors, which is not in"),
])
def test_cut_weights_are_refused_before_anything_loads(how, expected, tmp_path, tiny_bert, tiny_data):
    model = broken_copy(tiny_bert, tmp_path / "model", how)
    message = refused("train", "model=hf", f"model.name_or_path={model}", "data=csv",
                      f"data.train_file={tiny_data['train']}", f"hydra.run.dir={tmp_path / 'run'}")
    assert message.startswith("model.name_or_path") and expected in message, message


@pytest.mark.parametrize("how, expected", [
    ("cut weights", "is cut short or corrupt"),
    ("unknown model_type", "config.json says model_type=bertish, which transformers"),
    ("config of another model", "its weights do not match the shapes in its config.json"),
    ("tokenizer larger than the embeddings", "the tokenizer has 36 tokens but the model's embedding table has 33 rows"),
])
def test_a_broken_model_folder_loads_to_one_line(how, expected, tmp_path, tiny_bert):
    """The loader every command goes through (training, eval, predict, export, a teacher, a base)."""
    from llmft.models.loading import load_model, load_tokenizer
    from llmft.tasks import TASKS

    model = broken_copy(tiny_bert, tmp_path / "model", how)
    with pytest.raises(UserError) as err:
        load_model(str(model), TASKS.get("classification"), load_tokenizer(str(model)), auto_class="AutoModel")
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


def saved_model(tiny_bert: Path, dest: Path, meta: str) -> Path:
    shutil.copytree(tiny_bert, dest)
    (dest / "llmft.json").write_text(meta)
    return dest


@pytest.mark.parametrize("meta", ['{"task": "classification", "labe', '["classification"]'])
def test_a_corrupt_llmft_json_is_refused(meta, tmp_path, tiny_bert):
    model = saved_model(tiny_bert, tmp_path / "model", meta)
    message = refused("eval", f"model_dir={model}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert message.startswith(f"model_dir={model}: {model / 'llmft.json'}"), message
    from llmft.artifacts import read_metadata

    with pytest.raises(UserError, match="llmft.json"):
        read_metadata(model)


def test_a_saved_model_with_cut_weights_is_refused_before_eval(tmp_path, tiny_bert):
    model = saved_model(tiny_bert, tmp_path / "model", json.dumps({"task": "classification", "labels": ["a", "b"]}))
    os.truncate(model / "model.safetensors", 100)
    message = refused("eval", f"model_dir={model}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert message.startswith(f"model_dir={model}: {model / 'model.safetensors'} is cut short"), message


# ------------------------------------------------------------------------------------------- merge
def fake_adapter(path: Path, rank: int = 4) -> Path:
    """What merge-adapters checks before loading: llmft.json, adapter_config.json, whole weights."""
    path.mkdir(parents=True)
    (path / "llmft.json").write_text(json.dumps({"task": "classification", "strategy": "lora",
                                                 "base_model": "base", "labels": ["a", "b"]}))
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "bias": "none"}))
    header = json.dumps({"__metadata__": {}}).encode()
    (path / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def test_merge_refuses_the_same_adapter_twice(tmp_path, tiny_data):
    a, b = fake_adapter(tmp_path / "a" / "model"), fake_adapter(tmp_path / "b" / "model")
    data = ["data=csv", f"data.train_file={tiny_data['train']}", f"hydra.run.dir={tmp_path / 'merge'}"]
    preflight("merge-adapters", f"inputs=[{a},{b}]", *data)  # two adapters: accepted
    message = refused("merge-adapters", f"inputs=[{a},{tmp_path / 'a' / '.' / 'model'}]", *data)
    assert message.startswith("inputs[1]=") and "the same folder as inputs[0]" in message, message
    assert "are all 0" in refused("merge-adapters", f"inputs=[{a},{b}]", "weights=[0,0]", *data)
    (b / "adapter_config.json").write_text('{"peft_type": "LO')
    assert "adapter_config.json does not read as JSON" in refused("merge-adapters", f"inputs=[{a},{b}]", *data)


# ------------------------------------------------------------------------------------------ report
def train_run(folder: Path, value: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "status": "completed", "strategy": "full", "primary_metric": "accuracy", "eval": {"accuracy": value},
        "params": {"trainable": 1000, "trainable_pct": 100.0}, "train": {"runtime_s": 1.0}}))
    return folder


def test_report_reads_a_folder_with_eval_runs_and_a_cut_results_file(tmp_path, capsys):
    from llmft.commands.report import main

    root = tmp_path / "runs"
    train_run(root / "0", 0.75)
    (root / "1").mkdir(parents=True)
    (root / "1" / "results.json").write_text('{"status": "completed", "eval": {"accu')  # cut off
    (root / "2").mkdir()
    (root / "2" / "results.json").write_text(json.dumps({  # llmft eval of run 0's model
        "status": "completed", "model_dir": str(root / "0" / "model"), "task": "classification",
        "strategy": "full", "primary_metric": "accuracy", "eval": {"accuracy": 0.5}}))
    (root / "1" / ".hydra").mkdir()
    (root / "1" / ".hydra" / "overrides.yaml").write_text("- train.lr=[1e-4\n- {")  # cut off too
    (root / "3").mkdir()
    (root / "3" / "results.json").write_text(json.dumps({"status": "completed", "rows": 10,  # llmft predict
                                                         "output_file": "p.jsonl"}))
    assert main([str(root)]) == 0
    out, err = capsys.readouterr()
    table = (root / "report.md").read_text().splitlines()
    row = {line.split(" | ")[0].strip("| "): line for line in table[2:]}
    assert set(row) == {"0", "1", f"2 (eval of {root / '0' / 'model'})"}, table
    assert "0.7500" in row["0"] and "| completed |" in row["0"]
    assert "failed: results.json does not read (cut off?)" in row["1"]
    assert "0.5000" in row[f"2 (eval of {root / '0' / 'model'})"]
    assert "skipped 1 runs of other commands" in err and (root / "report.png").is_file()


def test_report_out_that_cannot_be_a_folder_is_one_line(tmp_path, capsys):
    from llmft.commands.report import main

    train_run(tmp_path / "runs" / "0", 0.75)
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    for out in (blocker, blocker / "sub"):
        assert main([str(tmp_path / "runs"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("llmft: error:") == 1 and "--out" in err, err
    assert blocker.read_text() == "mine"
