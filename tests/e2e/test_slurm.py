"""SLURM for real: scripts/slurm_local.sh starts a one-node cluster on this machine; sweeps go
through hydra/launcher=slurm (hydra-submitit-launcher); a preempted job saves, requeues, resumes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, cli_env, read_results, run_cli, tiny_train_args

pytestmark = pytest.mark.slurm
ROOT = REPO
STANDIN_BIN = "/tmp/llmft-slurm-bin"


@pytest.fixture(scope="module")
def slurm():
    """A running local cluster (started here when needed), sacct stand-in first on PATH."""
    if os.geteuid() != 0 and shutil.which("sinfo") is None:
        pytest.skip("a local SLURM needs root (or an existing cluster)")
    proc = subprocess.run([str(ROOT / "scripts" / "slurm_local.sh"), "start"], capture_output=True, text=True,
                          env={**os.environ, "LLMFT_SLURM_BIN": STANDIN_BIN}, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    os.environ["PATH"] = f"{STANDIN_BIN}:{os.environ['PATH']}"
    return "debug"


def slurm_args(partition: str, sweep_dir: Path) -> list[str]:
    return ["-m", "hydra/launcher=slurm", f"hydra.launcher.partition={partition}",
            "hydra.launcher.timeout_min=30", f"hydra.sweep.dir={sweep_dir}"]


def test_sweep_runs_one_slurm_job_per_point_with_two_ranks(tmp_path, slurm, tiny_bert, tiny_data):
    sweep = tmp_path / "sweep"
    args = [a for a in tiny_train_args(tiny_bert, tiny_data, tmp_path / "unused")
            if not a.startswith(("hydra.run", "train.lr"))]
    proc = run_cli("train", *slurm_args(slurm, sweep), "hardware=cpu_zero2", "train.lr=1e-3,5e-3", *args,
                   timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for point, lr in (("0", 1e-3), ("1", 5e-3)):
        results = read_results(sweep / point)
        assert results["status"] == "completed" and results["hardware"]["world_size"] == 2
        assert json.loads(json.dumps(results["memory"]))["per_rank"][1]["peak_rss_mb"] > 0
        import yaml

        assert yaml.safe_load((sweep / point / "config.yaml").read_text())["train"]["lr"] == lr
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.out"))
    print(logs[-2000:])  # the jobs' own lines, for the record
    proc = run_cli("report", str(sweep))
    assert proc.returncode == 0 and (sweep / "report.md").is_file()
    assert (sweep / "report.md").read_text().count("completed") >= 2

    # the same sweep again: both points are complete, so their jobs skip them
    before = [(sweep / p / "results.json").stat().st_mtime for p in "01"]
    proc = run_cli("train", *slurm_args(slurm, sweep), "hardware=cpu_zero2", "train.lr=1e-3,5e-3", *args,
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(sweep / p / "results.json").stat().st_mtime for p in "01"] == before
    assert "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.err")).count("is complete; skipped") >= 2


def test_unknown_partition_fails_before_submitting(tmp_path, slurm, tiny_bert, tiny_data):
    proc = run_cli("train", *slurm_args("no-such-partition", tmp_path / "sweep"),
                   *tiny_train_args(tiny_bert, tiny_data, tmp_path / "run"))
    assert proc.returncode == 2 and "hydra.launcher.partition=no-such-partition: no such partition" in proc.stderr
    assert not (tmp_path / "sweep").exists()


def job_id(sweep: Path, timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ids = [p.name for p in (sweep / ".submitit").glob("*") if p.name.isdigit()] if (sweep / ".submitit").is_dir() else []
        if ids:
            return ids[0]
        time.sleep(0.1)
    raise AssertionError("no job was submitted")


def wait_for(predicate, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.parametrize("how", ["signal", "requeue"])
def test_preempted_job_resumes_from_its_checkpoint(tmp_path, slurm, tiny_bert, tiny_data, how):
    """signal: SLURM's preemption signal (USR2) makes the job save a checkpoint at that step and
    requeue itself (no periodic checkpoints: the resume can only come from that save).
    requeue: `scontrol requeue` kills the job outright; it restarts from the last periodic one."""
    sweep = tmp_path / "sweep"
    save = "train.save_steps=0" if how == "signal" else "train.save_steps=200"
    args = [a for a in tiny_train_args(tiny_bert, tiny_data, tmp_path / "unused", "train.max_steps=5000", save,
                                       "train.logging_steps=100") if not a.startswith("hydra.run")]
    cmd = [shutil.which("llmft") or "llmft", "train", *slurm_args(slurm, sweep), *args]
    sweeper = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = job_id(sweep)
    run = sweep / "0"
    if how == "signal":
        wait_for(lambda: (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().strip(), "training")
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
    else:
        wait_for(lambda: list(run.glob("checkpoints/checkpoint-*/.complete")), "a checkpoint")
        subprocess.run(["scontrol", "requeue", job], check=True)
    out, _ = sweeper.communicate(timeout=900)
    assert sweeper.returncode == 0, out[-3000:]
    results = read_results(run)
    assert results["train"]["steps"] == 5000 and results["train"]["resumed_from_step"] > 0
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    print(f"job {job} ({how}):\n" + "\n".join(line for line in logs.splitlines()
                                               if "signal" in line.lower() or "requeu" in line.lower()))


def test_check_shows_the_script_the_submitted_job_gets(tmp_path, slurm, tiny_bert, tiny_data):
    """`llmft check` submits nothing, and its sbatch script is the one submitit then writes for the
    same command (patterns, not job ids: the file is written before sbatch gives the id)."""
    sweep = tmp_path / "sweep"
    args = [*slurm_args(slurm, sweep), *(a for a in tiny_train_args(tiny_bert, tiny_data, tmp_path / "unused",
                                                                     "train.max_steps=2")
                                         if not a.startswith("hydra.run"))]
    proc = run_cli("check", *args)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert not sweep.exists()
    out = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(out) if line.strip().startswith("sbatch script")) + 1
    planned = [line[4:] for line in out[start:] if line.startswith("    ") or not line]
    planned = "\n".join(planned[:next((i for i, line in enumerate(planned) if line.startswith("srun")), -1) + 1])
    proc = run_cli("train", *args, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (script,) = sweep.glob(".submitit/*/*_submission.sh")
    assert "#SBATCH --partition=debug" in planned
    assert script.read_text().strip() == planned.strip()
