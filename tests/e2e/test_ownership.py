"""Every command writes only into its own folder and only files it owns; writes are durable and
never follow a planted link; lock errors say what they are; export leftovers of another host
survive. Each case fails on the behaviour it guards against (see the comments)."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import assert_user_error, run_cli, tiny_train_args

from llmft.core.errors import UserError


def snapshot(folder: Path) -> dict:
    """{relative path: sha256} of every file under ``folder`` (byte-for-byte comparison)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def preflight(command: str, *overrides: str) -> None:
    """The CLI's check before Hydra starts (in-process: the same code path, no subprocess)."""
    from llmft.cli.app import preflight as check
    from llmft.cli.validate import register_configs

    register_configs()
    check(command, list(overrides))


@pytest.fixture(scope="module")
def trained(trained_bert) -> Path:
    """One finished training run (its folder), shared by the cases below."""
    return trained_bert


# ------------------------------------------------------------------ 1. a folder llmft did not write
def test_train_into_a_folder_of_foreign_files_is_refused_and_they_survive(tmp_path, tiny_bert, tiny_data):
    """It used to overwrite config.yaml and rename, then delete, the user's model/."""
    folder = tmp_path / "mine"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "notes.txt").write_text("my notes\n")
    (folder / "config.yaml").write_text("mine: true\n")
    before = snapshot(folder)
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, folder, "train.max_steps=2"))
    assert_user_error(proc, f"hydra.run.dir={folder}", "did not write", "config.yaml")
    assert snapshot(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "model"]  # not even .hydra/


def test_a_foreign_model_folder_inside_a_run_folder_is_moved_aside_not_deleted(tmp_path):
    """A model/ without llmft.json in an llmft run folder was left in place, then deleted by the save."""
    from llmft.runtime.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    (run.path / ".llmft.lock").write_text("")
    (run.model_dir).mkdir()
    (run.model_dir / "weights.bin").write_bytes(b"precious")
    moved = run.set_aside_other_runs("auto", {"fingerprint": "0123456789abcdef", "config": {}})
    assert moved is not None and (Path(moved) / "model" / "weights.bin").read_bytes() == b"precious"
    assert not run.model_dir.exists()


@pytest.mark.parametrize("command,extra", [
    ("eval", ()),
    ("predict", ("predict.input_file={eval_file}",)),
    ("bench-infer", ("variants=[fp32]",)),
])
def test_eval_predict_bench_into_a_training_run_folder_are_refused(trained, tiny_data, command, extra):
    """`llmft eval model_dir=RUN/model hydra.run.dir=RUN` emptied metrics.jsonl and replaced
    config.yaml and results.json of the training run."""
    extra = [e.format(eval_file=tiny_data["eval"]) for e in extra]
    with pytest.raises(UserError, match="folder of an llmft train run") as err:
        preflight(command, f"model_dir={trained / 'model'}", f"hydra.run.dir={trained}", *extra)
    assert "\n" not in str(err.value) and f"hydra.run.dir={trained / command}" in str(err.value)


def test_eval_into_the_run_folder_leaves_it_byte_for_byte(trained):
    before = snapshot(trained)
    proc = run_cli("eval", f"model_dir={trained / 'model'}", f"hydra.run.dir={trained}", "print_config=false")
    assert_user_error(proc, "folder of an llmft train run")
    assert snapshot(trained) == before


@pytest.mark.parametrize("case", ["the input", "inside model/", "a training run's predictions", "a foreign file",
                                  "a symlink"])
def test_predict_output_file_refused(trained, tmp_path, tiny_data, case):
    """predict.output_file accepted the input file or RUN/model/config.json and overwrote it."""
    inputs = tmp_path / "inputs.csv"
    inputs.write_bytes(Path(tiny_data["eval"]).read_bytes())
    foreign = tmp_path / "notes.csv"
    foreign.write_text("a,b\n1,2\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(foreign)
    out = {"the input": inputs, "inside model/": trained / "model" / "config.json",
           "a training run's predictions": trained / "predictions.jsonl", "a foreign file": foreign,
           "a symlink": link}[case]
    with pytest.raises(UserError, match="predict.output_file") as err:
        preflight("predict", f"model_dir={trained / 'model'}", f"predict.input_file={inputs}",
                  f"predict.output_file={out}", f"hydra.run.dir={tmp_path / 'predict'}")
    assert "\n" not in str(err.value)


def test_predict_output_file_of_its_own_is_replaced(trained, tmp_path, tiny_data):
    """The other side: a new file, or predictions a previous predict wrote, are accepted."""
    earlier = tmp_path / "preds.jsonl"
    earlier.write_text('{"text": "x", "prediction": "positive"}\n')
    for out in (tmp_path / "new.jsonl", earlier):
        preflight("predict", f"model_dir={trained / 'model'}", f"predict.input_file={tiny_data['eval']}",
                  f"predict.output_file={out}", f"hydra.run.dir={tmp_path / 'predict'}")


def test_report_does_not_overwrite_a_foreign_report(tmp_path):
    from llmft.commands.report import main as report

    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"status": "failed", "reason": "x"}))
    (tmp_path / "runs" / "report.md").write_text("# my own notes\n")
    assert report([str(tmp_path / "runs")]) == 2
    assert (tmp_path / "runs" / "report.md").read_text() == "# my own notes\n"
    assert report([str(tmp_path / "runs"), "--out", str(tmp_path / "elsewhere")]) == 0
    assert report([str(tmp_path / "runs"), "--out", str(tmp_path / "elsewhere")]) == 0  # its own: replaced


# ------------------------------------------------------------------ 7. links are never written through
def test_a_planted_lock_symlink_is_refused_not_written_through(tmp_path):
    """The lock was opened following links: the holder line truncated the file it pointed at."""
    from llmft.runtime.run_lock import RunLock

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".llmft.lock").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link") as err:
        RunLock(tmp_path / "run").acquire()
    assert "\n" not in str(err.value)
    assert victim.read_text() == "keep me\n"


def test_a_planted_temp_file_symlink_is_not_written_through(tmp_path):
    """Atomic writes went through a fixed `.results.json.tmp`: a link there wrote into its target."""
    from llmft.runtime.run_dir import RunDir, read_results as read

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    run = RunDir(tmp_path / "run")
    (run.path / ".results.json.tmp").symlink_to(victim)
    run.write_results({"status": "completed", "eval": {"accuracy": 0.5}})
    assert victim.read_text() == "keep me\n"
    assert read(run.path)["eval"] == {"accuracy": 0.5} and not (run.path / "results.json").is_symlink()


# ------------------------------------------------------------------ 9. durability
def test_atomic_writes_flush_the_file_and_its_folder(tmp_path, monkeypatch):
    """Nothing was fsynced: a host crash could leave a marker over unflushed files."""
    from llmft.runtime import run_dir

    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else None)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run_dir.atomic_write(tmp_path / "results.json", "{}\n")
    assert synced[:2] == [False, True]  # the file, then its folder


@pytest.mark.parametrize("content", ["", '{"status": "compl', "[]", "\xff\xfe"])
def test_an_unreadable_results_json_is_not_complete_and_is_moved_aside(tmp_path, content, caplog):
    """An empty or cut-off results.json made every rerun fail with a traceback."""
    from llmft.runtime.run_dir import RunDir, read_results as read

    run = RunDir(tmp_path / "run")
    run.results_file.write_bytes(content.encode("latin-1"))
    assert read(run.path) is None
    run.model_dir.mkdir()
    (run.model_dir / "llmft.json").write_text(json.dumps({"fingerprint": "f" * 16, "training": {}}))
    ident = {"fingerprint": "f" * 16, "config": {}}
    assert run.set_aside_other_runs("auto", ident) is None  # the same config's model/ stays: it is re-evaluated
    assert not run.results_file.exists() and run.complete_model(ident) is not None
    kept = list((run.path / "replaced").glob("*/results.json"))
    assert len(kept) == 1 and kept[0].read_bytes() == content.encode("latin-1")
    assert sum("could not be read" in r.getMessage() for r in caplog.records) == 1


def test_a_kill_between_rotation_and_marker_leaves_a_checkpoint_to_resume(tmp_path, tiny_bert, tiny_data,
                                                                          monkeypatch):
    """With save_total_limit=1 the Trainer deleted checkpoint-2 before checkpoint-4 was marked:
    a kill in between left nothing complete. In-process: the marker write is where it dies."""
    from hydra import compose, initialize_config_dir

    from llmft.cli.app import config_dir
    from llmft.cli.validate import register_configs
    from llmft.commands.train import main as train
    from llmft.runtime import run_dir
    from llmft.runtime.run_dir import MarkCompleteCheckpoints, RunDir

    class Killed(Exception):
        pass

    real = MarkCompleteCheckpoints.on_save

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise Killed
        return real(self, args, state, control, **kwargs)

    register_configs()
    args = [a for a in tiny_train_args(tiny_bert, tiny_data, tmp_path / "run", "train.max_steps=6",
                                       "train.save_steps=2", "train.save_total_limit=1") if "hydra." not in a]
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=args)
    monkeypatch.setattr(MarkCompleteCheckpoints, "on_save", on_save)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    with pytest.raises(Killed):
        train(cfg, tmp_path / "run")
    for signum, handler in handlers.items():  # the killed run never reached on_train_end
        signal.signal(signum, handler)
    run = RunDir(tmp_path / "run")
    assert run.latest_checkpoint() is not None and run.latest_checkpoint().name == "checkpoint-2"

    monkeypatch.setattr(MarkCompleteCheckpoints, "on_save", real)  # the rerun resumes, then rotation prunes
    results = train(cfg, tmp_path / "run")
    assert results["train"]["resumed_from_step"] == 2
    assert sorted(p.name for p in run.checkpoints.glob("checkpoint-*")) == ["checkpoint-6"]
    assert run_dir.prune_checkpoints(run.checkpoints, 1) == []


# ------------------------------------------------------------------ 8. file systems without flock
@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS])
def test_a_file_system_without_locks_is_named_in_one_line(tmp_path, monkeypatch, code):
    """Every flock failure read "in use by a running llmft": on such a mount no run could start."""
    import fcntl

    from llmft.runtime.run_lock import RunLock

    def flock(fd, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(UserError) as err:
        RunLock(tmp_path / "run").acquire()
    message = str(err.value)
    assert "\n" not in message and "does not lock" in message and "hardware.lock=false" in message
    assert "in use" not in message and str(tmp_path / "run") in message


def test_hardware_lock_false_runs_unlocked_with_a_warning(tmp_path, caplog, tiny_bert, tiny_data):
    from llmft.runtime.run_dir import NOT_FINGERPRINTED
    from llmft.runtime.run_lock import run_lock

    with run_lock(str(tmp_path), lock=False):
        pass
    assert not (tmp_path / ".llmft.lock").exists()
    assert any("hardware.lock=false" in r.getMessage() for r in caplog.records)
    assert "hardware.lock" in NOT_FINGERPRINTED  # switching it does not make another config
    preflight("train", *tiny_train_args(tiny_bert, tiny_data, tmp_path / "run", "hardware.lock=false"))


# ------------------------------------------------------------------ 10. export leftovers across hosts
def test_export_leftovers_of_another_host_are_kept_until_abandoned(tmp_path):
    """Abandoned was decided from a pid on this host: another host's live export was removed."""
    from llmft.commands.export import LEFTOVER_AGE_S, recover_leftovers, staging

    out = tmp_path / "bf16"
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs here
    host = socket.gethostname()
    live = tmp_path / f".bf16.tmp-other-node-7-{gone.pid}"  # another host's export, still writing
    stale = tmp_path / f".bf16.tmp-other-node-7-{gone.pid + 1}"  # another host's, untouched for long
    ours = tmp_path / f".bf16.tmp-{host}-{gone.pid}"  # this host's, its process is gone
    for folder in (live, stale, ours):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
    old = time.time() - LEFTOVER_AGE_S - 60
    for path in (stale, stale / "model.safetensors"):
        os.utime(path, (old, old))
    recover_leftovers(out)
    assert live.is_dir() and not stale.exists() and not ours.exists()
    with staging(out) as tmp:
        assert tmp.name == f".bf16.tmp-{host}-{os.getpid()}"
    assert live.is_dir()
