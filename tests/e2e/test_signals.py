"""Preemption outside the training loop: SIGTERM / SIGUSR2 during start-up stops in one line (a USR2
inside a SLURM job requeues it), during the final evaluation the run finishes first and writes
the uninterrupted run's results (and a finished SLURM job is not requeued). The signal lands at a
known moment: LLMFT_TEST_PAUSE_AT makes the command wait there for it (runtime/preemption.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env, run_cli, tiny_train_args


def start_paused(args: list[str], point: str, env: dict | None = None) -> subprocess.Popen:
    """Start `llmft train ARGS` and return once it waits at ``point`` for a signal."""
    env = dict(env or cli_env(), LLMFT_TEST_PAUSE_AT=point)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("llmft")), "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if f"llmft: paused at {point}" in line:
            return proc
    proc.wait()
    raise AssertionError(f"the run never paused at {point} (exit {proc.returncode}): {''.join(seen)[-2000:]}")


def fake_slurm(tmp_path: Path) -> tuple[dict, Path]:
    """A SLURM job's environment whose `scontrol` only records its arguments."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    scontrol.chmod(0o755)
    env = dict(cli_env(), SLURM_JOB_ID="4242", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return env, calls


def same_results(run_dir: Path, reference: Path) -> None:
    got, want = (json.loads((d / "results.json").read_text()) for d in (run_dir, reference))
    assert got["status"] == "completed" and got["eval"] == want["eval"] and got["validation"] == want["validation"]
    assert (run_dir / "predictions.jsonl").read_bytes() == (reference / "predictions.jsonl").read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert, tiny_data) -> tuple:
    """An uninterrupted run, and how to make the same run in another folder."""
    run_dir = tmp_path_factory.mktemp("signals") / "reference"
    extra = ("train.max_steps=6", "data.validation_fraction=0.2")
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir, *extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return lambda where: tiny_train_args(tiny_bert, tiny_data, where, *extra), run_dir


def test_term_during_start_up_stops_in_one_line_and_the_rerun_completes(tmp_path, reference):
    """It used to die of the signal's default action: no line, no cleanup."""
    args_for, ref = reference
    run_dir = tmp_path / "run"
    proc = start_paused(args_for(run_dir), "start-up")
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    lines = [x for x in err.splitlines() if x.startswith("llmft:")]
    assert lines == ["llmft: stopped by SIGTERM during start-up; nothing trained yet: rerun the same command"], err
    assert "Traceback" not in err
    assert not (run_dir / "results.json").exists() and not (run_dir / "model").exists()
    assert not list(run_dir.glob("checkpoints/*/.complete"))

    proc = run_cli("train", *args_for(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_results(run_dir, ref)


def test_usr2_during_the_final_evaluation_finishes_it_and_a_slurm_job_is_not_requeued(tmp_path, reference):
    """The evaluation finishes, results.json equals the uninterrupted run's, exit 0, and the
    finished job is not put back in the queue (it used to die with exit 140 and no results)."""
    args_for, ref = reference
    env, calls = fake_slurm(tmp_path)
    run_dir = tmp_path / "run"
    proc = start_paused(args_for(run_dir), "evaluation", env)
    proc.send_signal(signal.SIGUSR2)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, err[-3000:]
    assert "SIGUSR2 received during the final evaluation: finishing it first" in err, err[-2000:]
    same_results(run_dir, ref)
    assert not calls.exists(), calls.read_text()


def test_usr2_during_start_up_in_a_slurm_job_requeues_it(tmp_path, reference):
    args_for, _ = reference
    env, calls = fake_slurm(tmp_path)
    proc = start_paused(args_for(tmp_path / "run"), "start-up", env)
    proc.send_signal(signal.SIGUSR2)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGUSR2, err[-2000:]
    assert "stopped by SIGUSR2 during start-up" in err and "requeuing the SLURM job" in err, err[-2000:]
    assert calls.read_text().split() == ["requeue", "4242"]


# ------------------------------------------------------------------------- in-process units
@pytest.fixture
def preemption():
    """A fresh owner whose handlers are this test process's for the test's length."""
    from llmft.runtime.preemption import SIGNALS, Preemption

    before = {s: signal.getsignal(s) for s in SIGNALS}
    owner = Preemption()
    owner.install()
    yield owner
    for s, handler in before.items():
        signal.signal(s, handler)


def test_while_finishing_a_signal_waits_and_a_second_one_stops_now(preemption):
    from llmft.runtime.preemption import Interrupted

    preemption.finishing("the final evaluation")
    signal.raise_signal(signal.SIGUSR2)  # deferred: the evaluation goes on
    assert preemption.received == [signal.SIGUSR2]
    with pytest.raises(Interrupted) as stop:
        signal.raise_signal(signal.SIGTERM)
    assert stop.value.exit_code == 128 + signal.SIGTERM and "a second signal" in str(stop.value)
    signal.raise_signal(signal.SIGTERM)  # on the way out: ignored, not raised inside the cleanup


def test_a_signal_after_the_last_step_finishes_the_run_and_an_earlier_one_is_acted_on(preemption, monkeypatch):
    """SaveOnPreemption caught a signal with no step left to save at: the run finishes (it used to
    raise Preempted with "checkpoint saved: None"); one deferred from an earlier stage's
    evaluation is taken by the next training loop."""
    import llmft.runtime.preemption as owner_module
    from llmft.runtime.run_dir import SaveOnPreemption

    monkeypatch.setattr(owner_module, "PREEMPTION", preemption)
    monkeypatch.setattr("llmft.runtime.run_dir.PREEMPTION", preemption, raising=False)
    callback = SaveOnPreemption()
    callback.on_train_begin(None, None, None)
    signal.raise_signal(signal.SIGTERM)
    callback.on_train_end(None, None, None)
    assert callback.caught is None and preemption.phase == "finishing" and preemption.received == [signal.SIGTERM]

    callback = SaveOnPreemption()
    callback.on_train_begin(None, None, None)
    assert callback.caught == signal.SIGTERM  # saved at its first step
    callback.on_train_end(None, None, None)


def test_a_rank_killed_by_the_forwarded_usr2_before_its_handlers_stops_the_spawner_in_one_line(
        tmp_path, monkeypatch, capsys):
    """A USR2 passed on to ranks still starting their interpreter kills them by its default action:
    the spawner says so in one line, exits 140 and requeues the SLURM job (it used to report a
    failed rank, exit 1, and leave the job out of the queue)."""
    import torch.distributed.launcher.api as launcher
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
    from omegaconf import OmegaConf

    from llmft.runtime import distributed

    env, calls = fake_slurm(tmp_path)
    for key in ("SLURM_JOB_ID", "PATH"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setattr(distributed, "_children", lambda: [])

    def launch(config, entrypoint):
        def run(*args):
            signal.raise_signal(signal.SIGUSR2)  # to the spawner: passed on to the ranks
            failure = ProcessFailure(local_rank=0, pid=1, exitcode=-signal.SIGUSR2, error_file=str(tmp_path / "none"))
            raise ChildFailedError("llmft", {0: failure})
        return run

    monkeypatch.setattr(launcher, "elastic_launch", launch)
    hardware = OmegaConf.create({"nproc_per_node": 2, "nnodes": 1, "zero_stage": 0, "accelerator": "cpu",
                                 "master_port": 29500})
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    with pytest.raises(SystemExit) as stop:
        distributed.spawn("train", [], str(tmp_path / "run"), hardware)
    assert stop.value.code == 128 + signal.SIGUSR2
    assert {s: signal.getsignal(s) for s in before} == before  # the command's own handlers are back
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("llmft:")]
    assert len(lines) == 1 and "stopped by SIGUSR2 while the ranks started" in lines[0], lines
    assert calls.read_text().split() == ["requeue", "4242"]
