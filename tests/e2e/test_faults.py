"""Faults: nothing lost, nothing mixed up. Preemption on the right device and on plain signals,
one run per folder, a folder whose files belong to another config, resume checks, a rerun that
only re-evaluates, restored callback and sampler state, secrets never written, and kill -9 trials.
Each test fails on the behaviour it guards against (see the comments)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, assert_user_error, cli_env, read_jsonl, read_results, run_cli, tiny_train_args


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    script = Path(sys.executable).with_name("llmft")
    return subprocess.Popen([str(script), *map(str, args)], env=env or cli_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def trained_steps(run_dir: Path) -> bool:
    return (run_dir / "metrics.jsonl").is_file() and bool((run_dir / "metrics.jsonl").read_text().strip())


# ------------------------------------------------------------------------------ preemption
def test_preemption_flag_is_reduced_on_the_trainers_device(monkeypatch):
    """NCCL reduces only CUDA tensors: the per-step stop flag must live on args.device (it was
    always a CPU tensor, which crashes every multi-GPU SLURM job at step 1)."""
    import torch
    import torch.distributed as dist

    from llmft.runtime.run_dir import SaveOnPreemption

    seen = []

    class Reduced(Exception):
        pass

    def all_reduce(tensor, op=None):
        seen.append(tensor.device)
        raise Reduced

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    args = type("Args", (), {"device": torch.device("meta")})()
    with pytest.raises(Reduced):
        SaveOnPreemption().on_step_end(args, None, None)
    assert seen == [torch.device("meta")]


@pytest.mark.parametrize("signum", [signal.SIGUSR2, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_and_the_rerun_resumes(tmp_path, tiny_bert, tiny_data, signum):
    """Without submitit (a plain sbatch job, a user's kill): save at the step boundary, exit
    128+signal with one line, rerun resumes from that step. No periodic checkpoints, so the
    resume can only come from the save the signal caused."""
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_bert, tiny_data, run_dir, "train.max_steps=3000", "train.logging_steps=20")
    proc = start_cli("train", *args)
    wait_for(lambda: trained_steps(run_dir), proc, "training")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    line = [x for x in err.splitlines() if "stopped by" in x]
    assert line and f"stopped by {signal.Signals(signum).name} at step" in line[0], err[-2000:]
    step = int(line[0].split(" at step ")[1].split(";")[0])
    assert (run_dir / "checkpoints" / f"checkpoint-{step}" / ".complete").is_file()
    assert not (run_dir / "results.json").exists() and not (run_dir / "model").exists()

    proc = run_cli("train", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["train"]["resumed_from_step"] == step and results["train"]["steps"] == 3000


def aborting_at_exit(tmp_path) -> dict:
    """An environment whose ranks abort in the C-level exit after Python is done, as gloo's and
    DeepSpeed's threads sometimes make them ("terminate called without an active exception")."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import ctypes, os\n"
        "if 'LOCAL_RANK' in os.environ:\n"
        "    libc = ctypes.CDLL('libc.so.6')\n"
        "    libc.on_exit(ctypes.cast(libc.abort, ctypes.c_void_p), None)\n")
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def test_usr2_to_the_launcher_reaches_its_ranks_which_save_and_resume(tmp_path, tiny_bert, tiny_data):
    """The sbatch template's --signal=B:USR2 reaches each node's llmft, not its ranks: llmft passes
    it on, both ZeRO-2 ranks save at the same step, and the rerun resumes there. The ranks abort if
    the interpreter's C-level teardown runs (it did, 1 run in ~50): their work is done by then, so
    they must end without it (a finished run used to fail: "rank 0 failed (exit code -15)")."""
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_bert, tiny_data, run_dir, "hardware=cpu_zero2", "train.max_steps=2000",
                           "train.logging_steps=5")
    env = aborting_at_exit(tmp_path)
    proc = start_cli("train", *args, env=env)
    wait_for(lambda: trained_steps(run_dir), proc, "training", timeout=600)
    proc.send_signal(signal.SIGUSR2)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGUSR2, err[-3000:]
    marked = list((run_dir / "checkpoints").glob("checkpoint-*/.complete"))
    assert len(marked) == 1 and "stopped by SIGUSR2" in err, err[-3000:]
    step = int(marked[0].parent.name.split("-")[1])
    assert any((marked[0].parent).glob("global_step*"))  # both ranks' ZeRO shards

    proc = run_cli("train", *args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(run_dir)["train"]["resumed_from_step"] == step


def test_ranks_die_with_the_llmft_that_spawned_them(tmp_path, tiny_bert, tiny_data):
    """torch's launcher starts each rank in its own session: a kill -9 of llmft's process group
    used to leave both ranks training (and writing the folder) after its lock was gone."""
    run_dir = tmp_path / "run"
    proc = start_cli("train", "hardware=cpu_zero2",
                     *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.max_steps=100000", "train.logging_steps=5"))
    wait_for(lambda: trained_steps(run_dir), proc, "training", timeout=600)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    def ranks() -> list[int]:
        found = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if f"LLMFT_SPAWNER_PID={proc.pid}".encode() in environ.read_bytes().split(b"\0"):
                    found.append(int(environ.parent.name))
            except OSError:
                pass
        return found

    deadline = time.time() + 30
    while ranks() and time.time() < deadline:
        time.sleep(0.2)
    left = ranks()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"ranks {left} outlived their launcher"


def test_sbatch_template_and_slurm_launcher_stop_cleanly():
    """The time-limit warning reaches the job (--signal) and one dead rank ends the step."""
    template = (REPO / "scripts" / "sbatch_template.sh").read_text()
    assert "#SBATCH --signal=B:USR2@" in template and "--kill-on-bad-exit=1" in template
    launcher = (REPO / "configs" / "hydra" / "launcher" / "slurm.yaml").read_text()
    assert "SLURM_KILL_BAD_EXIT=1" in launcher


# ---------------------------------------------------------------------------- run folders
def test_a_second_run_into_a_busy_folder_is_refused_and_a_dead_holder_is_taken_over(tmp_path, tiny_bert, tiny_data):
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_bert, tiny_data, run_dir, "train.max_steps=100000", "train.logging_steps=50")
    first = start_cli("train", *args)
    wait_for(lambda: trained_steps(run_dir), first, "training")
    started = time.time()
    second = run_cli("train", *args)
    assert_user_error(second, str(run_dir), f"pid {first.pid}")
    assert time.time() - started < 60
    assert first.poll() is None  # the first run carries on, its folder untouched by the second
    hydra_cfg = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "max_steps=100000" in hydra_cfg

    os.killpg(first.pid, signal.SIGKILL)  # a dead holder: its lock is taken over
    first.wait()
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.max_steps=4"))
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_stale_adapter_cannot_survive_a_full_run_in_the_same_folder(tmp_path, tiny_bert, tiny_data):
    """model/ used to be written in place: a LoRA run's adapter files stayed beside a later full
    model and eval loaded the stale adapter."""
    run_dir = tmp_path / "run"
    proc = run_cli("train", "+strategy=lora", *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.max_steps=4"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lora_results = read_results(run_dir)
    proc = run_cli("train", "+strategy=full", *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.max_steps=4"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (run_dir / "model" / "adapter_config.json").exists()
    assert json.loads((run_dir / "model" / "llmft.json").read_text())["strategy"] == "full"
    moved = list((run_dir / "replaced").glob("*"))  # the LoRA run: set aside whole, not deleted
    assert len(moved) == 1 and (moved[0] / "model" / "adapter_config.json").is_file()
    assert json.loads((moved[0] / "results.json").read_text()) == lora_results
    proc = run_cli("eval", f"model_dir={run_dir / 'model'}", f"hydra.run.dir={tmp_path / 'eval'}", "print_config=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_results(tmp_path / "eval")["eval"] == read_results(run_dir)["eval"]


def test_a_mismatched_resume_is_refused_in_one_line(tmp_path, tiny_bert, tiny_data):
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_bert, tiny_data, run_dir, "train.max_steps=6", "train.save_steps=3")
    assert run_cli("train", *args).returncode == 0
    shutil.rmtree(run_dir / "model")  # as if killed after the last checkpoint
    (run_dir / "results.json").unlink()

    proc = run_cli("train", *args, "train.lr=1e-3")  # another config
    assert_user_error(proc, "saved by another config (train.lr 0.005 -> 0.001)")

    marker = run_dir / "checkpoints" / "checkpoint-6" / ".complete"
    saved = json.loads(marker.read_text())
    marker.write_text(json.dumps({**saved, "zero_stage": 2}))  # a ZeRO-2 checkpoint, resumed without DeepSpeed
    assert_user_error(run_cli("train", *args), "saved with ZeRO stage 2")
    marker.write_text(json.dumps(saved))

    proc = run_cli("train", *args, "train.lr=1e-3", "train.resume=never")  # start over: the old run moves aside
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_results(run_dir)["train"]["resumed_from_step"] == 0
    for done in (run_dir / "checkpoints").glob("checkpoint-*/.complete"):  # only the new run's: resume=auto
        assert json.loads(done.read_text())["config"]["train.lr"] == 0.001  # cannot pick up an old one
    assert list((run_dir / "replaced").glob("*/checkpoints/checkpoint-6/.complete"))


def test_a_rerun_whose_model_is_complete_only_evaluates(tmp_path, tiny_bert, tiny_data):
    """A kill during evaluation (model/ complete, no results.json) used to retrain from step 0."""
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_bert, tiny_data, run_dir, "data.validation_fraction=0.2")
    assert run_cli("train", *args).returncode == 0
    reference = read_results(run_dir)
    metrics = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "results.json").unlink()
    proc = run_cli("train", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = read_results(run_dir)
    assert again["reevaluated"] and not reference["reevaluated"]
    for key in ("eval", "validation", "train", "params", "data_report", "retention", "baseline"):
        assert again[key] == reference[key], key
    assert (run_dir / "metrics.jsonl").read_text() == metrics  # no step was trained again


def test_sweep_rerun_with_changed_values_reruns_those_points(tmp_path, tiny_bert, tiny_data):
    """A sweep point used to be skipped whenever its folder had results.json, values changed or not."""
    sweep = tmp_path / "sweep"
    base = [a for a in tiny_train_args(tiny_bert, tiny_data, sweep / "unused", "train.max_steps=4")
            if not a.startswith(("hydra.run", "train.lr"))] + [f"hydra.sweep.dir={sweep}"]
    assert run_cli("train", "-m", "train.lr=1e-3,2e-3", *base).returncode == 0
    first = read_results(sweep / "0")
    proc = run_cli("train", "-m", "train.lr=1e-3,3e-3", *base)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("is complete; skipped") == 1 and proc.stderr.count("holds a completed run of other") == 1
    assert read_results(sweep / "0") == first
    config = (sweep / "1" / "config.yaml").read_text()
    assert "lr: 0.003" in config and read_results(sweep / "1")["fingerprint"] != first["fingerprint"]


def test_early_stopping_patience_survives_a_resume(tmp_path, tiny_bert, tiny_data):
    """The patience counter is restored from the checkpoint (it used to restart at 0, so a
    resumed run stopped later than the uninterrupted one)."""
    extra = ["train.max_steps=40", "train.eval_steps=2", "train.early_stopping.patience=3",
             "train.early_stopping.threshold=1.0", "data.validation_fraction=0.2", "train.save_total_limit=50"]
    whole = tmp_path / "whole"
    assert run_cli("train", *tiny_train_args(tiny_bert, tiny_data, whole, *extra)).returncode == 0
    stopped = read_results(whole)["train"]["early_stopping"]["stopped_at_step"]
    assert stopped == 8  # best at the first evaluation (step 2), then 3 without an improvement > 1.0

    resumed = tmp_path / "resumed"
    shutil.copytree(whole / "checkpoints" / "checkpoint-4", resumed / "checkpoints" / "checkpoint-4")
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, resumed, *extra))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = read_results(resumed)["train"]
    assert result["resumed_from_step"] == 4 and result["early_stopping"]["stopped_at_step"] == stopped


def test_balanced_sampler_draws_each_epochs_order_after_a_resume(tmp_path, tiny_bert, tiny_data):
    """The balanced sampler was re-seeded on resume and replayed epoch 1's order in epoch 2."""
    extra = ["data.sampler=balanced", "train.epochs=2", "train.save_steps=12", "train.logging_steps=1",
             "train.save_total_limit=5"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert run_cli("train", *tiny_train_args(tiny_bert, tiny_data, whole, *extra)).returncode == 0  # 12 steps an epoch
    shutil.copytree(whole / "checkpoints" / "checkpoint-12", resumed / "checkpoints" / "checkpoint-12")
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, resumed, *extra))
    assert proc.returncode == 0, proc.stderr[-2000:]

    def losses(run):
        return {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r and r["step"] > 12}

    assert losses(whole) and losses(resumed) == pytest.approx(losses(whole), rel=1e-5)


# --------------------------------------------------------------------------------- secrets
def test_secrets_from_the_environment_are_never_written(tmp_path, tiny_bert, tiny_data):
    secret, wandb_key, hf_token = "s3cr3t-from-env-42", "wandbkey" + "0" * 32, "hf_" + "x" * 34
    env = {**cli_env(), "LLMFT_TEST_SECRET": secret, "WANDB_API_KEY": wandb_key, "HF_TOKEN": hf_token}
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_bert, tiny_data, run_dir, "train.max_steps=2", "logger=wandb",
                           "data.hub_config=${oc.env:LLMFT_TEST_SECRET}", "print_config=true")
    proc = subprocess.run([str(Path(sys.executable).with_name("llmft")), "train", *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "${oc.env:LLMFT_TEST_SECRET}" in (run_dir / "config.yaml").read_text()
    for path in [p for p in run_dir.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        for value in (secret, wandb_key, hf_token):
            assert value.encode() not in data, f"{value[:6]}... written to {path.relative_to(run_dir)}"
    for value in (secret, wandb_key, hf_token):
        assert value not in proc.stdout and value not in proc.stderr


# ---------------------------------------------------------------------- kill -9 at random
def test_random_kills_end_with_the_uninterrupted_metrics(tmp_path):
    """Three trials of scripts/fault_injection.py (the README's table runs 20 of each mode)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from fault_injection import run_trials
    finally:
        sys.path.pop(0)
    rows = run_trials(3, "single", tmp_path, seed=7)
    assert all(r["identical"] for r in rows), rows
