"""`llmft check` through the real CLI: a sweep on a SLURM launcher is composed, sized and planned
without submitting a job (an sbatch on PATH that records any call) and without writing a file."""
from __future__ import annotations

import json
import os

from conftest import assert_user_error, cli_env, run_cli, snapshot, tiny_train_args


def test_check_a_slurm_sweep_submits_and_writes_nothing(tmp_path, tiny_bert, tiny_data):
    bin_dir, called, cwd = tmp_path / "bin", tmp_path / "sbatch-called", tmp_path / "cwd"
    bin_dir.mkdir()
    cwd.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" > {called}\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = {**cli_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    args = [a for a in tiny_train_args(tiny_bert, tiny_data, tmp_path / "run") if not a.startswith("hydra.run")]
    before = snapshot(tiny_data["root"])
    proc = run_cli("check", *args, "-m", "+strategy=full,lora", "train.lr=1e-3,3e-3", "hydra/launcher=slurm",
                   cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert not called.exists(), "llmft check called sbatch"
    assert list(cwd.rglob("*")) == [] and snapshot(tiny_data["root"]) == before  # no multirun/, no cache files
    out = proc.stdout
    for line in ("point 1: ", "point 4: ", "same sizes, memory, steps and data as point 3", "parameters: ",
                 "memory per rank: ", "steps: 24 optimizer steps"):  # 96 rows / batch 8 x 2 epochs
        assert line in out, out[-3000:]
    assert "sbatch" in out  # the job list and script (cli/slurm_plan.py)

    proc = run_cli("check", *args, "--json", cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout)
    (point,) = facts["points"]
    assert point["steps"]["steps"] == 24 and point["params"]["trainable"] == point["params"]["total"]

    assert_user_error(run_cli("check", *args, "train.lrr=1e-3", cwd=cwd, env=env),
                      "train.lrr: no such key in train; did you mean train.lr?")
    assert list(cwd.rglob("*")) == []
