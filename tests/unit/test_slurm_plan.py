"""`llmft check` with hydra/launcher=slurm, in process: the jobs, the sbatch script submitit would
write and the GPU-hours requested, with nothing submitted (an `sbatch` first on PATH records any
call and the test fails). The script is also compared with the one hydra-submitit-launcher's own
launch() hands to sbatch."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmft.cli import normalize_overrides
from llmft.cli.slurm_plan import plan, render
from llmft.core.errors import UserError

SLURM = ["hydra/launcher=slurm"]


@pytest.fixture(autouse=True)
def no_submission(tmp_path, monkeypatch):
    """sbatch / srun / sinfo stand-ins first on PATH: any call is recorded, and fails the test."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for name in ("sbatch", "srun", "sinfo", "squeue", "sacct", "scontrol"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexit 1\n')
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield
    assert not calls.exists(), f"a SLURM command ran: {calls.read_text()}"


def jobs_of(*overrides: str, multirun: bool = True) -> list:
    """(overrides, config with its hydra node) per job, composed as the CLI's pre-flight does."""
    from hydra import compose, initialize_config_dir

    from llmft.cli.app import _combinations
    from llmft.cli.table import config_dir
    from llmft.cli.validate import register_configs

    register_configs()
    out = []
    for combo in _combinations(normalize_overrides([*SLURM, *overrides], "train")):
        with initialize_config_dir(config_dir(), version_base="1.3", job_name="train"):
            out.append((combo, compose("train", overrides=combo, return_hydra_config=True)))
    return out


def sbatch_lines(script: str) -> set[str]:
    return {line for line in script.splitlines() if line.startswith("#SBATCH")}


def test_one_job_script_and_gpu_hours(tmp_path):
    sweep = tmp_path / "sweep"
    facts = plan(jobs_of("hardware=gpu", "hardware.nproc_per_node=4", "hydra.launcher.gpus_per_node=4",
                         "hydra.launcher.partition=a100", "hydra.launcher.timeout_min=90",
                         "+hydra.launcher.additional_parameters.mail_type=END"), str(sweep))
    lines = sbatch_lines(facts["script"])
    folder = f"{sweep}/.submitit/%j"
    assert {"#SBATCH --partition=a100", "#SBATCH --time=90", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=4",
            "#SBATCH --gpus-per-node=4", "#SBATCH --signal=USR2@120", "#SBATCH --job-name=train",
            "#SBATCH --mail-type=END", f"#SBATCH --output={folder}/%j_0_log.out"} <= lines
    assert not any(line.startswith(("#SBATCH --array", "#SBATCH --requeue")) for line in lines)  # submitit requeues
    assert "export SLURM_KILL_BAD_EXIT=1" in facts["script"]  # the launcher config's setup
    assert facts["script"].rstrip().endswith(f"-u -m submitit.core._submit {folder}")
    assert facts["gpu_hours"] == pytest.approx(1 * 1 * 4 * 90 / 60) and facts["cpu_hours"] is None
    assert not facts["array"] and facts["max_num_timeout"] == 3 and not facts["warnings"]
    assert [j["folder"] for j in facts["jobs"]] == [folder] and facts["jobs"][0]["run_dir"] == f"{sweep}/0"
    text = "\n".join(render(facts))
    assert "6.0 GPU-hours (1 job(s) x 1 node(s) x 4 GPU(s) x 1.5 h)" in text
    assert not sweep.exists()  # writes nothing


def test_three_point_sweep_is_one_array(tmp_path):
    facts = plan(jobs_of("hardware=multinode", "hydra.launcher.gpus_per_node=8", "hydra.launcher.timeout_min=120",
                         "hydra.launcher.array_parallelism=2", "train.lr=1e-4,3e-4,1e-3"), str(tmp_path))
    assert [j["index"] for j in facts["jobs"]] == [0, 1, 2] and facts["array"]
    assert [j["overrides"][-1] for j in facts["jobs"]] == ["train.lr=0.0001", "train.lr=0.0003", "train.lr=0.001"]
    assert [j["folder"] for j in facts["jobs"]] == [f"{tmp_path}/.submitit/%A_{i}" for i in range(3)]
    lines = sbatch_lines(facts["script"])
    assert {"#SBATCH --array=0-2%2", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
            "#SBATCH --time=120", f"#SBATCH --output={tmp_path}/.submitit/%A_%a/%A_%a_0_log.out"} <= lines
    assert facts["gpu_hours"] == pytest.approx(3 * 2 * 8 * 2.0)  # jobs x nodes x GPUs per node x hours
    text = "\n".join(render(facts))
    assert "3 jobs in one job array (at most 2 running at a time)" in text
    assert "96.0 GPU-hours" in text and "jobs 1-2 run the same script" in text
    assert text.count("#SBATCH --array") == 1  # one script for the array


def test_no_gpus_requested_says_so_and_warns_on_gpu_hardware(tmp_path):
    facts = plan(jobs_of("hardware=gpu", "hydra.launcher.timeout_min=30"), str(tmp_path))
    assert facts["gpu_hours"] == 0 and facts["cpu_hours"] == pytest.approx(0.5)  # 1 task x 1 CPU (default)
    assert not any(line.startswith(("#SBATCH --gpu", "#SBATCH --gres")) for line in sbatch_lines(facts["script"]))
    text = "\n".join(render(facts))
    assert "requested: 0 GPUs; 0.5 CPU-hours" in text
    assert "warning: 0 GPUs requested but the job trains with hardware.accelerator=cuda" in text
    cpu = plan(jobs_of("hardware=cpu_zero2", "hydra.launcher.cpus_per_task=4"), str(tmp_path))
    assert not cpu["warnings"] and cpu["cpu_hours"] == pytest.approx(1 * 2 * 4 * 1.0)


@pytest.mark.parametrize("overrides, warning", [
    (["hardware=cpu_zero2", "hydra.launcher.tasks_per_node=3"],
     "the job would stop at its start: 1 node(s) x 3 task(s) = 3 SLURM tasks, but hardware=cpu_zero2 has "
     "1 node(s) x 2"),
    (["hardware=gpu_zero2", "hydra.launcher.gpus_per_node=2"], "8 processes per node share 2 GPU(s) per node"),
    (["hardware=gpu_zero2", "hydra.launcher.gres=gpu:a100:2"], "8 processes per node share 2 GPU(s) per node"),
    (["hardware=cpu", "hydra.launcher.gpus_per_node=1"], "1 GPU(s) per node requested but the job runs on the CPU"),
])
def test_warnings(tmp_path, overrides, warning):
    assert any(warning in w for w in plan(jobs_of(*overrides), str(tmp_path))["warnings"])


def test_sweep_resources_come_from_the_config_without_the_sweep(tmp_path):
    """Hydra builds the launcher once, from the config composed without the sweep's values: a
    hardware sweep does not change tasks_per_node (the default hardware=cpu: 1), whatever each
    job's own config says (2); one task per node then starts its 2 ranks itself."""
    jobs = jobs_of("hardware=cpu_zero2,cpu_zero3")
    assert [cfg.hydra.launcher.tasks_per_node for _, cfg in jobs] == [2, 2]
    facts = plan(jobs, str(tmp_path))
    assert "#SBATCH --ntasks-per-node=1" in facts["script"] and facts["tasks_per_node"] == 1
    assert not facts["warnings"]


def test_without_multirun_nothing_is_submitted_and_the_plan_is_what_m_would_submit(tmp_path):
    jobs = jobs_of(f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep")
    facts = plan(jobs, f"{tmp_path}/run")  # the caller's folder of a run without -m
    assert not facts["multirun"] and facts["submitit_folder"] == f"{tmp_path}/sweep/.submitit/%j"
    assert "without -m Hydra runs this job here and submits nothing" in "\n".join(render(facts))
    assert plan(jobs, f"{tmp_path}/sweep")["multirun"]


def test_optuna_submits_n_trials_n_jobs_at_a_time(tmp_path):
    """hydra-optuna-sweeper launches n_jobs trials per launch() call: arrays of 4, 4, 2 for 10."""
    facts = plan(jobs_of("hparams_search=optuna", "hydra.sweeper.n_jobs=4", "hydra.launcher.gpus_per_node=1",
                         "hardware=gpu", "data.validation_fraction=0.1"), str(tmp_path))
    assert facts["total_jobs"] == 10 and "#SBATCH --array=0-3%4" in facts["script"]
    assert facts["gpu_hours"] == pytest.approx(10 * 1 * 1 * 1.0)
    assert "Optuna: 10 trial(s) drawn as the search goes, 4 per submission (each one job array, the last 2)" in \
        "\n".join(render(facts))


def test_submitit_refusal_is_one_line(tmp_path):
    """A launcher key submitit does not know (added with +) would fail the real launch too."""
    with pytest.raises(UserError, match=r"^hydra.launcher: submitit refuses these settings: .*gpu_per_node") as err:
        plan(jobs_of("+hydra.launcher.gpu_per_node=1"), str(tmp_path))
    assert "\n" not in str(err.value)


def test_other_launcher_plans_nothing(tmp_path):
    from hydra import compose, initialize_config_dir

    from llmft.cli.table import config_dir

    with initialize_config_dir(config_dir(), version_base="1.3", job_name="train"):
        cfg = compose("train", return_hydra_config=True)
    assert plan([([], cfg)], str(tmp_path)) == {} and render({}) == []


def _task(cfg):  # never runs: the stand-in sbatch refuses the submission
    raise AssertionError("ran")


@pytest.mark.parametrize("sweep", [["train.lr=1e-4"], ["train.lr=1e-4,3e-4,1e-3"]])
def test_script_is_the_one_the_launcher_submits(tmp_path, monkeypatch, sweep):
    """hydra-submitit-launcher's launch() with submitit's real executor, up to sbatch: a recording
    sbatch keeps the file it was given and fails, so nothing is queued."""
    from hydra.core.utils import setup_globals
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from llmft.cli.slurm_plan import _primary_config

    kept = tmp_path / "submitted.sh"
    recorder = tmp_path / "rec"
    recorder.mkdir()
    (recorder / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {kept}\necho refused >&2\nexit 1\n')
    (recorder / "sbatch").chmod(0o755)
    (recorder / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only looks for it
    (recorder / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{recorder}{os.pathsep}{os.environ['PATH']}")
    sweep_dir = tmp_path / "sweep"
    jobs = jobs_of("hardware=cpu_zero2", "hydra.launcher.partition=debug", *sweep)
    facts = plan(jobs, str(sweep_dir))

    setup_globals()
    primary = _primary_config(jobs)
    with open_dict(primary):
        primary.hydra.sweep.dir = str(sweep_dir)
    launcher = instantiate(primary.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=_task, config=primary)
    with pytest.raises(Exception, match="refused"):
        launcher.launch([list(o) for o, _ in jobs], initial_job_idx=0)
    assert Path(kept).read_text() == facts["script"]
