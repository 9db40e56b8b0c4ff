"""Faults and security: an export never destroys files, nothing llmft writes or reads is a pickle,
and code shipped with a model runs only when the command line asks for it."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, custom_code_model, run_cli, tiny_train_args

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle")


def snapshot(folder: Path) -> dict:
    """relative path -> sha256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def data_args(tiny_data) -> list[str]:
    return ["data=csv", f"data.train_file={tiny_data['train']}", f"data.eval_file={tiny_data['eval']}"]


@pytest.fixture(scope="module")
def trained(trained_bert) -> Path:
    """A full fine-tuning run of tiny BERT; returns its model/."""
    return trained_bert / "model"


def export(model_dir: Path, out: Path | str, log_dir: Path, *extra: str, cwd: Path | None = None):
    return run_cli("export", f"model_dir={model_dir}", "export.format=bf16", f"export.output_dir={out}",
                   f"hydra.run.dir={log_dir}", *extra, cwd=cwd)


# ------------------------------------------------------------------ 1. export never destroys files
@pytest.mark.parametrize("target", ["model", "model/bf16", "run"])
def test_export_refuses_the_source_a_folder_in_it_or_the_run_folder(tmp_path, trained, target):
    """Aimed at its own model_dir, inside it or at the run folder holding it: refused, every byte kept."""
    model = shutil.copytree(trained.parent, tmp_path / "run") / "model"  # a copy: a wrong export could eat it
    out = {"model": model, "model/bf16": model / "bf16", "run": model.parent}[target]
    before, run_before = snapshot(model), snapshot(model.parent)
    proc = export(model, out, tmp_path / "log")
    assert_user_error(proc, f"export.output_dir={out}", "model_dir")
    assert snapshot(model) == before
    assert snapshot(model.parent) == run_before


def test_export_refuses_a_folder_of_user_files_and_the_working_directory(tmp_path, trained):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes\n")
    (mine / "sub" / "data.csv").write_text("a,b\n1,2\n")
    before = snapshot(mine)
    proc = export(trained, mine, tmp_path / "log")
    assert_user_error(proc, f"export.output_dir={mine}", "did not write")
    assert snapshot(mine) == before

    proc = export(trained, ".", tmp_path / "log2", cwd=mine)  # the working directory, even if it were empty
    assert_user_error(proc, "export.output_dir=.", "current directory")
    assert snapshot(mine) == before


def test_export_again_replaces_it_and_a_failed_check_keeps_the_previous_one(tmp_path, trained):
    out = tmp_path / "exports" / "bf16"
    for attempt in ("first", "second"):  # the second export replaces the first (its marker says it may)
        proc = export(trained, out, tmp_path / attempt)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (out / ".llmft-export").is_file() and (out / "model.safetensors").is_file()
        meta = json.loads((out / "llmft.json").read_text())
        assert meta["source"] == str(trained.resolve()) and meta["format"] == "bf16"
    before = snapshot(out)

    proc = export(trained, out, tmp_path / "failed", "export.tolerance=1e-12")  # bf16 cannot match fp32 that closely
    assert_user_error(proc, "export check failed")
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["bf16"]  # no temp or set-aside folder left

    # an export killed between moving the previous one aside and renaming its own into place
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    out.rename(out.with_name(f".bf16.old-{gone.pid}"))
    (out.with_name(f".bf16.tmp-{gone.pid}")).mkdir()
    proc = export(trained, out, tmp_path / "after-kill", "export.tolerance=1e-12")
    assert_user_error(proc, "export check failed")
    assert snapshot(out) == before  # the previous export is back in place, the dead one's temp folder gone
    assert sorted(p.name for p in out.parent.iterdir()) == ["bf16"]


# ------------------------------------------------------------------ 2. nothing pickled
def is_pickle(path: Path) -> bool:
    """A pickle (protocol >= 2 starts with 0x80) or a torch.save zip archive."""
    head = path.read_bytes()[:4]
    return path.suffix in PICKLE_SUFFIXES or head[:1] == b"\x80" or head == b"PK\x03\x04"


def test_a_trained_model_holds_no_pickle(tmp_path, trained, tiny_bert, tiny_data):
    assert not (trained / "training_args.bin").exists()
    assert [p.name for p in trained.rglob("*") if p.is_file() and is_pickle(p)] == []
    run_dir = tmp_path / "lora"
    proc = run_cli("train", "+strategy=lora", *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.max_steps=1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in (run_dir / "model").rglob("*") if p.is_file() and is_pickle(p)] == []


def test_int8_export_is_safetensors_and_reloads_exactly(tmp_path, trained, tiny_data):
    from safetensors.torch import load_file

    from llmft.artifacts import load_saved, read_metadata
    from llmft.models.precision import load_int8, to_variant
    from llmft.tasks import TASKS

    out = tmp_path / "int8"
    proc = run_cli("export", f"model_dir={trained}", "export.format=int8", f"export.output_dir={out}",
                   f"hydra.run.dir={tmp_path / 'log'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert [p.name for p in files if is_pickle(p)] == []
    tensors = [p for p in files if p.suffix == ".safetensors"]
    assert [p.name for p in tensors] == ["int8_model.safetensors"]
    for path in tensors:
        assert load_file(str(path))

    meta = read_metadata(trained)
    from omegaconf import OmegaConf

    data_cfg = OmegaConf.load(trained.parent / "config.yaml").data
    task = TASKS.get(meta["task"]).from_metadata(data_cfg, meta)
    model, tokenizer = load_saved(trained, task, meta)
    in_memory = to_variant(model, "int8")
    reloaded = load_int8(out)
    batch = tokenizer(["great happy day", "the worst report", "a table on monday"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected, got = in_memory(**batch).logits, reloaded(**batch).logits
    assert (got - expected).abs().max().item() <= 1e-6


class RunsCode:
    """Unpickling this writes a file: what a planted pickle could do."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return exec, (f"open({str(self.sentinel)!r}, 'w').write('ran')",)


def test_a_pickled_int8_export_is_refused_unread(tmp_path, trained, tiny_data):
    probe = tmp_path / "probe-ran"
    torch.save(RunsCode(probe), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.is_file()  # the planted file really runs code when unpickled

    old = tmp_path / "old_int8"
    shutil.copytree(trained, old)
    (old / "model.safetensors").unlink()
    sentinel = tmp_path / "sentinel"
    torch.save({"weights": RunsCode(sentinel)}, old / "int8_model.pt")
    meta = json.loads((old / "llmft.json").read_text())
    (old / "llmft.json").write_text(json.dumps({**meta, "format": "int8", "source": str(trained)}))

    proc = run_cli("eval", f"model_dir={old}", *data_args(tiny_data), f"hydra.run.dir={tmp_path / 'eval'}",
                   "print_config=false")
    assert_user_error(proc, f"model_dir={old}", "int8_model.pt", "re-export")
    from llmft.core.errors import UserError
    from llmft.models.precision import load_int8

    with pytest.raises(UserError, match="re-export"):
        load_int8(old)
    assert not sentinel.exists()


def test_no_unsafe_torch_load_in_llmft():
    import re

    from conftest import REPO

    source = REPO / "llmft"
    calls = [(p.name, line) for p in source.rglob("*.py") for line in p.read_text().splitlines()
             if re.search(r"torch\.load\(", line) and "weights_only=True" not in line]
    assert calls == []


# ------------------------------------------------------------------ 3. nothing trusted by default
def custom_code_copy(trained: Path, folder: Path, sentinel: Path, trusted_in_meta: bool) -> Path:
    """A copy of a trained model/ whose config.json maps the Auto classes to a module of its own."""
    custom_code_model(trained, folder, sentinel)
    meta = json.loads((folder / "llmft.json").read_text())
    (folder / "llmft.json").write_text(json.dumps({**meta, "trust_remote_code": trusted_in_meta}))
    return folder


@pytest.mark.parametrize("trusted_in_meta", [True, False])
def test_a_models_own_code_does_not_run_unless_asked(tmp_path, trained, tiny_data, monkeypatch, trusted_in_meta):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))  # where transformers copies the code
    sentinel = tmp_path / "sentinel"
    folder = custom_code_copy(trained, tmp_path / "custom", sentinel, trusted_in_meta)
    proc = run_cli("eval", f"model_dir={folder}", *data_args(tiny_data), f"hydra.run.dir={tmp_path / 'eval'}",
                   "print_config=false")
    assert_user_error(proc, "trust_remote_code=true", f"read the code in {folder}")
    if trusted_in_meta:
        assert_user_error(proc, f"model_dir={folder}: this model was trained with trust_remote_code=true")
    assert not sentinel.exists()

    if trusted_in_meta:  # asked for on the command line (either spelling): the code runs
        proc = run_cli("eval", f"model_dir={folder}", *data_args(tiny_data), f"hydra.run.dir={tmp_path / 'eval2'}",
                       "print_config=false", "model.trust_remote_code=true")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert sentinel.is_file()
