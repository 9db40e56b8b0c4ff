"""What a run was computed from: a changed input is never a finished run, and a resume starts
only from a whole checkpoint llmft saved for this very config, loading nothing but tensors.

The fingerprint covers what the input files hold (data files, a local model folder: core/digest.py),
so a rewritten CSV or retrained base model moves the old run aside and trains again; large files
are hashed once (cached by path, size and mtime). train.resume takes only a checkpoint-N folder
with llmft's marker of the same config and files that are whole; every checkpoint load is
weights-only, DeepSpeed's included (its ZeRO states with an allow-list of what it saves).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import assert_user_error, make_rows, read_results, run_cli, tiny_train_args, write_csv


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmft.cli.app import config_dir
    from llmft.cli.validate import register_configs

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def own_inputs(tmp_path, tiny_bert, tiny_data) -> tuple[Path, dict]:
    """Copies of the tiny model and data that a test may rewrite."""
    model = tmp_path / "base"
    shutil.copytree(tiny_bert, model)
    data = {"train": tmp_path / "train.csv", "eval": tmp_path / "eval.csv"}
    shutil.copy(tiny_data["train"], data["train"])
    shutil.copy(tiny_data["eval"], data["eval"])
    return model, data


def reinit_weights(model: Path, seed: int) -> None:
    """The same architecture and files, other weights (as a base model retrained in place)."""
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(seed)
    AutoModel.from_config(AutoConfig.from_pretrained(model)).save_pretrained(model)


class Evil:
    """Unpickling it creates a folder: proof that a load ran code."""

    def __init__(self, proof: Path):
        self.proof = proof

    def __reduce__(self):
        return os.mkdir, (str(self.proof),)


# ------------------------------------------------------------------ the fingerprint covers content
def test_a_rewritten_input_is_retrained_and_a_checkpoint_is_resumed_only_when_safe(tmp_path, tiny_bert, tiny_data):
    """The same command after the train CSV (then the base model's weights) changed used to say
    model/ "holds the finished model of this config" and re-evaluate the old model."""
    model, data = own_inputs(tmp_path, tiny_bert, tiny_data)
    run_dir = tmp_path / "run"
    args = tiny_train_args(model, data, run_dir, "train.max_steps=4", "train.save_steps=4")
    assert run_cli("train", *args).returncode == 0
    first = read_results(run_dir)

    write_csv(data["train"], make_rows(96, seed=11))  # same name, other rows
    proc = run_cli("train", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    second = read_results(run_dir)
    assert not second["reevaluated"] and "finished model" not in proc.stderr
    assert second["train"]["resumed_from_step"] == 0 and second["fingerprint"] != first["fingerprint"]
    assert [json.loads(p.read_text())["fingerprint"] for p in run_dir.glob("replaced/*/results.json")] == \
        [first["fingerprint"]]

    reinit_weights(model, seed=5)  # same folder, other weights
    proc = run_cli("train", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    third = read_results(run_dir)
    assert not third["reevaluated"] and third["fingerprint"] not in (first["fingerprint"], second["fingerprint"])
    assert len(list(run_dir.glob("replaced/*/results.json"))) == 2
    marker = json.loads((run_dir / "checkpoints" / "checkpoint-4" / ".complete").read_text())
    assert {"data.train_file#sha256", "data.eval_file#sha256", "model.name_or_path#sha256"} <= set(marker["config"])

    # killed while evaluating, then the train file changes back: its checkpoint is another config's
    shutil.rmtree(run_dir / "model")
    (run_dir / "results.json").unlink()
    train_now = data["train"].read_bytes()
    shutil.copy(tiny_data["train"], data["train"])
    assert_user_error(run_cli("train", *args), "saved by another config (data.train_file#sha256 ")
    data["train"].write_bytes(train_now)

    # a checkpoint of this config whose optimizer state holds code: refused in one line, never run
    proof = tmp_path / "ran"
    import torch

    torch.save({"state": {}, "param_groups": [], "x": Evil(proof)}, run_dir / "checkpoints" / "checkpoint-4" /
               "optimizer.pt")
    proc = run_cli("train", *args)
    assert_user_error(proc, "train.resume:", "not loaded")
    assert not proof.exists()


def test_the_fingerprint_follows_each_input_files_content(tmp_path, tiny_bert, tiny_data):
    from llmft.runtime.run_dir import config_difference, fingerprint

    model, data = own_inputs(tmp_path, tiny_bert, tiny_data)
    unlabeled = write_csv(tmp_path / "unlabeled.csv", make_rows(10, seed=3))
    aux, text = tmp_path / "aux.csv", tmp_path / "retention.txt"
    shutil.copy(data["train"], aux)
    text.write_text("some text to measure perplexity on\n")
    teacher = tmp_path / "teacher-run"  # a run folder: its model/ is the teacher
    shutil.copytree(tiny_bert, teacher / "model")
    overrides = ["model=hf", f"model.name_or_path={model}", "data=csv", f"data.train_file={data['train']}",
                 f"data.eval_file={data['eval']}", f"data.unlabeled_file={unlabeled}",
                 f"data.aux=[{{kind:classification,train_file:'{aux}'}}]", f"train.retention.eval_file={text}",
                 f"train.distill.teacher={teacher}"]
    before = fingerprint(compose(*overrides))
    assert fingerprint(compose(*overrides)) == before  # unchanged inputs: the same config
    assert len([k for k in before["config"] if k.endswith("#sha256")]) == 7
    for changed in (data["eval"], unlabeled, aux, text, model / "config.json", teacher / "model" / "vocab.txt"):
        kept = changed.read_bytes()
        changed.write_bytes(kept + b"\n")
        after = fingerprint(compose(*overrides))
        assert after["fingerprint"] != before["fingerprint"], changed
        difference = config_difference(before["config"], after["config"])
        assert difference.count("#sha256") == 1 and " -> " in difference, difference
        changed.write_bytes(kept)
    (model / "extra.txt").write_text("a file added to the model folder")
    assert fingerprint(compose(*overrides))["fingerprint"] != before["fingerprint"]


def test_a_hub_datasets_downloaded_revision_is_part_of_the_fingerprint(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from llmft.runtime.run_dir import fingerprint

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    cfg = compose("model=hf", "model.name_or_path=some/hub-model", "data=hub", "data.hub_name=someone/tweets")
    assert "data.hub_name#revision" not in fingerprint(cfg)["config"]  # never downloaded: nothing to pin
    ref = tmp_path / "datasets--someone--tweets" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("a" * 40)
    first = fingerprint(cfg)
    ref.write_text("b" * 40)  # the cached copy moved on to another commit
    second = fingerprint(cfg)
    assert first["config"]["data.hub_name#revision"] == "a" * 40 and second["fingerprint"] != first["fingerprint"]


def test_a_sweep_point_whose_data_changed_is_run_again(tmp_path, tiny_data, monkeypatch):
    """launch.train skips a point whose folder holds a completed run of the same fingerprint."""
    import llmft.commands.train as recipe
    from llmft.cli import launch
    from llmft.runtime.run_dir import fingerprint

    train = tmp_path / "train.csv"
    shutil.copy(tiny_data["train"], train)
    cfg = compose("model=hf", "model.name_or_path=some/hub-model", "data=csv", f"data.train_file={train}",
                  "hardware=cpu")
    point = tmp_path / "0"
    point.mkdir()
    done = {"status": "completed", "fingerprint": fingerprint(cfg)["fingerprint"], "primary_metric": "f1",
            "validation": {"f1": 0.5}}
    (point / "results.json").write_text(json.dumps(done))
    ran = []
    monkeypatch.setattr(recipe, "main", lambda cfg, run_dir: ran.append(run_dir) or {"status": "failed"})
    assert launch.train("train", cfg, str(point), [], sweep=True) == 0.5 and ran == []
    write_csv(train, make_rows(96, seed=12))
    launch.train("train", cfg, str(point), [], sweep=True)
    assert ran == [str(point)]


def test_a_large_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    from llmft.core import digest

    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(digest, "CACHE_ABOVE", 1000)
    hashed = []
    real = digest._hash_file
    monkeypatch.setattr(digest, "_hash_file", lambda path: hashed.append(path) or real(path))
    big = tmp_path / "big.csv"
    big.write_bytes(b"text,label\n" + b"some text,pos\n" * 200)
    first = digest.file_digest(big)
    assert digest.file_digest(big) == first and len(hashed) == 1  # the second time: from the cache

    import hashlib

    assert first == hashlib.sha256(big.read_bytes()).hexdigest()
    stat = big.stat()
    big.write_bytes(big.read_bytes().replace(b"pos", b"neg", 1))  # same size
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
    assert digest.file_digest(big) == hashlib.sha256(big.read_bytes()).hexdigest() != first and len(hashed) == 2

    small = tmp_path / "small.csv"
    small.write_text("text,label\na,b\n")
    digest.file_digest(small), digest.file_digest(small)
    assert len(hashed) == 4  # below CACHE_ABOVE: read every time, never cached

    # a cache that cannot be written (here: a file where its folder should be) costs time, not the run
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("LLMFT_CACHE", str(blocked))
    assert digest.file_digest(big) == digest.file_digest(big) and len(hashed) == 6


# ------------------------------------------------------------------ train.resume=PATH
def checkpoint(root: Path, name: str = "checkpoint-4", marker: dict | None = None, **files: bytes) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    if marker is not None:
        (folder / ".complete").write_text(json.dumps(marker))
    for file, content in files.items():
        (folder / file.replace("_", ".")).write_bytes(content)
    return folder


IDENT = {"fingerprint": "f" * 16, "config": {"train.lr": 0.001}}
MARKER = {"fingerprint": IDENT["fingerprint"], "zero_stage": 0, "world_size": 1, "config": IDENT["config"]}


def safetensors_bytes(cut: int = 0) -> bytes:
    import torch
    from safetensors.torch import save

    data = save({"w": torch.ones(64)})
    return data[:len(data) - cut]


@pytest.mark.parametrize("make, expected", [
    (lambda root: root / "missing", "no such folder"),
    (lambda root: checkpoint(root, "my-weights", MARKER), "not a checkpoint-N folder"),
    (lambda root: checkpoint(root, "checkpoint-4"), "no readable llmft completion marker"),
    (lambda root: checkpoint(root, "checkpoint-4", {"zero_stage": 0}), "no readable llmft completion marker"),
    (lambda root: checkpoint(root, "checkpoint-4", {**MARKER, "fingerprint": "0" * 16, "config": {"train.lr": 0.1}}),
     "saved by another config (train.lr 0.1 -> 0.001)"),
    (lambda root: checkpoint(root, "checkpoint-4", MARKER, model_safetensors=safetensors_bytes(cut=10)),
     "model.safetensors is cut short"),
    (lambda root: checkpoint(root, "checkpoint-4", MARKER, optimizer_pt=b"PK\x03\x04 not a whole archive"),
     "optimizer.pt is cut short"),
], ids=["missing", "not-checkpoint-N", "no-marker", "marker-without-fingerprint", "other-config",
        "cut-safetensors", "cut-archive"])
def test_a_resume_folder_that_does_not_qualify_is_refused_in_one_line(tmp_path, make, expected):
    from llmft.core.errors import UserError
    from llmft.runtime.run_dir import RunDir

    folder = make(tmp_path / "elsewhere")
    with pytest.raises(UserError) as err:
        RunDir(tmp_path / "run").resume_checkpoint(str(folder), IDENT, world_size=1, zero_stage=0)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_whole_checkpoint_of_this_config_is_resumed(tmp_path):
    import torch

    from llmft.runtime.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    folder = checkpoint(run.checkpoints, "checkpoint-4", MARKER, model_safetensors=safetensors_bytes())
    torch.save({"state": {}}, folder / "optimizer.pt")
    assert run.resume_checkpoint(str(folder), IDENT, world_size=1, zero_stage=0) == folder
    assert run.resume_checkpoint("auto", IDENT, world_size=1, zero_stage=0) == folder
    (folder / "optimizer.pt").write_bytes((folder / "optimizer.pt").read_bytes()[:-30])  # marked, then cut
    with pytest.raises(Exception, match="optimizer.pt is cut short"):
        run.resume_checkpoint("auto", IDENT, world_size=1, zero_stage=0)


# ------------------------------------------------------------------ DeepSpeed's loader, weights only
def test_deepspeeds_loader_runs_no_code_and_still_loads_a_real_zero_checkpoint(tmp_path, tiny_bert, tiny_data):
    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from llmft.core.errors import UserError
    from llmft.runtime.hf_trainer import weights_only_loads

    run_dir = tmp_path / "zero"
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir, "hardware=cpu_zero2", "train.max_steps=2",
                                             "train.save_steps=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = sorted((run_dir / "checkpoints" / "checkpoint-2").glob("global_step2/*.pt"))
    assert len(shards) == 3  # the model states and each rank's optimizer partition
    loader = TorchCheckpointEngine()  # what DeepSpeedEngine.load_checkpoint reads every file with
    for shard in shards:
        with weights_only_loads(str(shard.parent.parent)):
            safe = loader.load(str(shard), map_location="cpu")
        assert_same(safe, torch.load(shard, map_location="cpu", weights_only=False))
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # only while loading

    # fp16 runs (GPU) save a dynamic loss scaler instead: allowed too
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    scaler = DynamicLossScaler(init_scale=2 ** 16, scale_window=1000, min_scale=1, delayed_shift=2,
                               consecutive_hysteresis=False, dtype=torch.half)
    torch.save({"loss_scaler": scaler}, tmp_path / "fp16.pt")
    with weights_only_loads(str(tmp_path)):
        assert vars(loader.load(str(tmp_path / "fp16.pt"), map_location="cpu")["loss_scaler"]) == vars(scaler)

    # the same optimizer file, with something that runs code on unpickling
    proof = tmp_path / "ran"
    evil = tmp_path / "checkpoint-2" / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    evil.parent.mkdir(parents=True)
    state = torch.load(shards[-1], map_location="cpu", weights_only=False)
    state["optimizer_state_dict"]["loss_scaler"] = Evil(proof)
    torch.save(state, evil)
    with pytest.raises(UserError, match="not loaded"), weights_only_loads(str(evil.parent.parent)):
        loader.load(str(evil), map_location="cpu")
    assert not proof.exists()
    loader.load(str(evil), map_location="cpu")  # DeepSpeed's own call, unguarded: the code runs
    assert proof.is_dir()


def assert_same(a, b) -> None:
    import enum

    import torch

    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif hasattr(a, "__dict__") and not isinstance(a, (type, enum.Enum)):
        assert type(a) is type(b)
        assert_same(vars(a), vars(b))
    else:
        assert a == b
