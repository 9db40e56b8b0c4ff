"""What a SLURM launcher would submit, for ``llmft check``: the jobs, the sbatch script of each and
the GPU-hours requested, without submitting anything.

The script is submitit's own (``SlurmExecutor._make_submission_file_text``), fed the parameters
hydra-submitit-launcher's ``launch`` passes; only the few lines of those two functions that submit
or write files are repeated here. Hydra builds the launcher once, from the config composed WITHOUT
the sweep's values, and submitit sends a sweep of several points as one job array with one script:
every job gets the same resources, whatever its own hardware config says.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

from llmft.core.errors import UserError


def plan(jobs: list, sweep_dir: str, multirun: bool | None = None) -> dict:
    """``jobs``: one (overrides, composed config with its ``hydra`` node) per job, in launch order.
    ``sweep_dir``: the resolved hydra.sweep.dir (hydra.run.dir: a run without -m). ``multirun``:
    whether -m is given; None: inferred (sweep_dir is hydra.run.dir, not hydra.sweep.dir: no -m).
    Without -m Hydra runs the job here and never calls the launcher: the plan is what -m would
    submit. An Optuna sweeper (one composed point given) submits n_trials jobs, n_jobs at a time."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict
    from submitit.core.utils import JobPaths

    if not jobs or "Slurm" not in str(jobs[0][1].hydra.launcher.get("_target_", "")):
        return {}  # another launcher: nothing is submitted to SLURM
    first = jobs[0][1]
    run_dir, swept = (str(OmegaConf.select(first, k, default="")) for k in ("hydra.run.dir", "hydra.sweep.dir"))
    if multirun is None:
        multirun = str(first.hydra.mode) == "RunMode.MULTIRUN" or not (str(sweep_dir) == run_dir != swept)
    if not multirun:
        sweep_dir = swept  # where -m would put it
    primary = _primary_config(jobs)
    with open_dict(primary):
        primary.hydra.sweep.dir = str(sweep_dir)  # the folder check reports (its ${now:} resolved once)
    launcher = instantiate(primary.hydra.launcher)  # the plugin's own __init__: resolved, container params
    executor, params = _executor(launcher)
    slurm = executor._executor  # AutoExecutor's SlurmExecutor
    sweeper = first.hydra.sweeper
    optuna = "optuna" in str(sweeper.get("_target_", "")).lower()
    total = int(sweeper.n_trials) if optuna else len(jobs)  # jobs submitted in all
    batch = max(1, min(int(sweeper.n_jobs), total)) if optuna else total  # jobs per submission (one array)
    p = slurm.parameters
    nodes, tasks = int(p.get("nodes", 1)), max(1, int(p.get("ntasks_per_node") or 1))
    gpus = _gpus_per_node(p, tasks)
    cpus = p.get("cpus_per_task")
    minutes = int(p.get("time", 5))  # submitit's default time limit is 5 min
    listing = []
    for index, (overrides, cfg) in enumerate(jobs):
        paths = JobPaths(slurm.folder, job_id=f"%A_{index}" if batch > 1 else "%j")
        listing.append({"index": index, "name": p.get("job_name", "submitit"),
                        "overrides": [str(o) for o in overrides], "folder": str(paths.folder),
                        "stdout": str(paths.stdout), "run_dir": _run_dir(cfg, sweep_dir, index)})
    n = len(jobs)
    common = [str(o) for o in jobs[0][0] if all(o in other for other, _ in jobs[1:])] if n > 1 else []
    return {
        "multirun": multirun,
        "sweep_dir": str(sweep_dir),
        "executor": _versions(),
        "optuna": {"trials": total, "per_submission": batch} if optuna else None,
        "array": batch > 1,
        "array_parallelism": min(batch, int(params.get("slurm_array_parallelism", 256))) if batch > 1 else None,
        "submitit_folder": str(slurm.folder),
        "partition": p.get("partition"),
        "nodes": nodes, "tasks_per_node": tasks, "gpus_per_node": gpus, "cpus_per_task": cpus,
        "mem": p.get("mem"), "timeout_min": minutes,
        "signal": f"USR2 {params.get('slurm_signal_delay_s', 90)} s before the limit",
        "max_num_timeout": slurm.max_num_timeout,
        "common_overrides": common,
        "jobs": listing,
        "total_jobs": total,
        "script": _script(slurm, batch),
        "gpu_hours": total * nodes * gpus * minutes / 60,
        "cpu_hours": None if gpus else total * nodes * tasks * (cpus or 1) * minutes / 60,
        "warnings": _warnings(jobs, nodes, tasks, gpus),
    }


def render(facts: dict) -> list[str]:
    """The plan as ``llmft check`` prints it: the jobs, what each asks for, the script of job 0."""
    if not facts:
        return []
    total, batch = facts["total_jobs"], (facts["optuna"] or {}).get("per_submission", facts["total_jobs"])
    lines = [f"SLURM ({facts['executor']}), sweep folder {facts['sweep_dir']}"]
    if not facts["multirun"]:
        lines.append("  without -m Hydra runs this job here and submits nothing; with -m it would submit:")
    if facts["optuna"]:
        last = f", the last {total % batch}" if batch > 1 and total % batch else ""
        lines.append(f"  Optuna: {total} trial(s) drawn as the search goes, {batch} per submission"
                     + (f" (each one job array{last})" if batch > 1 else " (one job each)") + "; the composed point:")
    if batch > 1:
        lines.append(f"  {batch} jobs in one job array (at most {facts['array_parallelism']} running at a time), "
                     f"one sbatch script for all")
    elif not facts["optuna"]:
        lines.append("  1 job (not an array)")
    lines.append(f"  submitit folder: {facts['submitit_folder']}"
                 + ("  (%j: the array's job id; each job's folder %A_INDEX)" if batch > 1 else "  (%j: the job id)"))
    common = facts["common_overrides"]
    if common:
        lines.append(f"  every job: {' '.join(common)}")
    lines.append("  job  name  overrides  ->  submitit folder  ->  run folder")
    for job in facts["jobs"]:
        own = [o for o in job["overrides"] if o not in common]
        lines.append(f"  {job['index']:>3}  {job['name']}  {' '.join(own) or '(none)'}  ->  "
                     f"{job['folder']}  ->  {job['run_dir']}")
    cpus = facts["cpus_per_task"]
    each = (f"{facts['nodes']} node(s) x {facts['tasks_per_node']} task(s) per node x {facts['gpus_per_node']} GPU(s) "
            f"per node x {cpus if cpus else '1 (SLURM default)'} CPU(s) per task, "
            f"time limit {facts['timeout_min']} min, "
            f"partition {facts['partition'] or '(cluster default)'}"
            + (f", memory {facts['mem']} per node" if facts["mem"] else ""))
    lines.append(f"  each job: {each}")
    hours = facts["timeout_min"] / 60
    if facts["gpus_per_node"]:
        lines.append(f"  requested: {facts['gpu_hours']:.1f} GPU-hours ({total} job(s) x {facts['nodes']} node(s) x "
                     f"{facts['gpus_per_node']} GPU(s) x {hours:g} h)")
    else:
        lines.append(f"  requested: 0 GPUs; {facts['cpu_hours']:.1f} CPU-hours ({total} job(s) x {facts['nodes']} "
                     f"node(s) x {facts['tasks_per_node']} task(s) x {cpus or 1} CPU(s) x {hours:g} h)")
    lines.append(f"  preemption / time limit: {facts['signal']}; submitit's handler requeues the job (scontrol "
                 f"requeue, no --requeue line), on the time limit at most {facts['max_num_timeout']} time(s), "
                 f"each asking for as much again")
    lines += [f"  warning: {w}" for w in facts["warnings"]]
    if batch > 1:
        others = f"jobs 1-{batch - 1} run" if batch > 2 else "job 1 runs"
        lines.append(f"  sbatch script of job 0; {others} the same script (one array: "
                     f"SLURM_ARRAY_TASK_ID picks each job's overrides; logs in %A_%a):")
    else:
        lines.append("  sbatch script:")
    lines += [f"    {line}" if line else "" for line in facts["script"].rstrip("\n").splitlines()]
    return lines


def _primary_config(jobs: list):
    """The config Hydra builds the launcher from: composed without the sweep's overrides, which
    for several jobs are the ones not shared by all of them."""
    overrides, cfg = jobs[0]
    cfg = copy.deepcopy(cfg)
    if len(jobs) == 1:
        return cfg
    common = [o for o in overrides if all(o in other for other, _ in jobs[1:])]
    from hydra import compose, initialize_config_dir

    from llmft.cli.table import config_dir

    searchpath = list(cfg.hydra.searchpath)  # --config-dir, as the caller composed it
    extra = [] if not searchpath or any(o.startswith("hydra.searchpath=") for o in common) else \
        [f"hydra.searchpath=[{','.join(searchpath)}]"]
    with initialize_config_dir(config_dir(), version_base="1.3", job_name=str(cfg.hydra.job.name)):
        return compose(str(cfg.hydra.job.config_name), overrides=[*common, *extra], return_hydra_config=True)


def _executor(launcher):
    """submitit's AutoExecutor as hydra-submitit-launcher's ``launch`` builds it (same key mapping),
    constructed without the srun check: this may run on a machine with no SLURM."""
    from unittest import mock

    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmExecutor

    kind = launcher._EXECUTOR
    init_keys = {"max_num_timeout"}
    init = {"folder": launcher.params["submitit_folder"],
            **{f"{kind}_{k}": v for k, v in launcher.params.items() if k in init_keys}}
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {k if k in base else f"{kind}_{k}": v for k, v in launcher.params.items()
              if k not in init_keys | {"submitit_folder"}}
    try:
        with mock.patch.object(SlurmExecutor, "affinity", classmethod(lambda cls: 2)):
            executor = submitit.AutoExecutor(cluster=kind, **init)
        executor.update_parameters(**params)  # submitit's own checks (types, names, an sbatch dry build)
    except (AssertionError, ValueError, NameError, TypeError) as err:
        raise UserError(f"hydra.launcher: submitit refuses these settings: {_first_line(err)}") from None
    return executor, params


def _script(slurm, n: int) -> str:
    """The sbatch file submitit writes: one job, or (several) the array copy of the executor with
    ``map_count`` set, as ``SlurmExecutor._internal_process_submissions`` does."""
    from unittest import mock

    from submitit.slurm.slurm import SlurmExecutor

    if n == 1:
        return slurm._make_submission_file_text(slurm._submitit_command_str, "")
    with mock.patch.object(SlurmExecutor, "affinity", classmethod(lambda cls: 2)):
        array = SlurmExecutor(slurm.folder, slurm.max_num_timeout)
    array.update_parameters(**slurm.parameters)
    array.parameters["map_count"] = n
    return array._make_submission_file_text(slurm._submitit_command_str, "")


def _gpus_per_node(p: dict, tasks: int) -> int:
    """GPUs per node from any of the ways sbatch takes them (gpus_per_node, gpus_per_task, gres)."""
    extra = {k.replace("_", "-"): v for k, v in (p.get("additional_parameters") or {}).items()}
    for value in (extra.get("gpus-per-node"), p.get("gpus_per_node")):
        if value not in (None, ""):
            return int(str(value).rsplit(":", 1)[-1])
    for value in (extra.get("gpus-per-task"), p.get("gpus_per_task")):
        if value not in (None, ""):
            return int(str(value).rsplit(":", 1)[-1]) * tasks
    for value in (extra.get("gres"), p.get("gres")):
        match = re.search(r"gpu(?::[^:,]+)?:(\d+)", str(value or ""))
        if match:
            return int(match.group(1))
    return 0


def _warnings(jobs, nodes: int, tasks: int, gpus: int) -> list[str]:
    """What would make a submitted job fail at its start, or run somewhere else than meant."""
    out, n = [], len(jobs)
    for index, (_, cfg) in enumerate(jobs):
        hw = cfg.hardware
        world, total = hw.nproc_per_node * hw.nnodes, nodes * tasks
        who = f"job {index}" if n > 1 else "the job"
        if total not in (world, hw.nnodes):  # runtime/distributed.slurm_mode refuses it
            hint = ("the array's resources come from the config without the sweep's values: sweep hardware in "
                    "separate commands, or set hydra.launcher.tasks_per_node and nodes on the command line"
                    if n > 1 else "set hydra.launcher.tasks_per_node=${hardware.nproc_per_node}")
            out.append(f"{who} would stop at its start: {nodes} node(s) x {tasks} task(s) = {total} SLURM tasks, but "
                       f"hardware={hw.name} has {hw.nnodes} node(s) x {hw.nproc_per_node} processes ({hint})")
        gpu_run = hw.accelerator == "cuda" or (hw.accelerator == "auto" and hw.precision in ("bf16", "fp16"))
        if gpu_run and not gpus:
            out.append(f"0 GPUs requested but {who} trains with hardware.accelerator={hw.accelerator} "
                       f"precision={hw.precision}: SLURM gives a job no GPU unless asked; set "
                       f"hydra.launcher.gpus_per_node={hw.nproc_per_node}")
        elif gpu_run and gpus < hw.nproc_per_node:
            out.append(f"{who}: {hw.nproc_per_node} processes per node share {gpus} GPU(s) per node; set "
                       f"hydra.launcher.gpus_per_node={hw.nproc_per_node}")
        elif gpus and hw.accelerator == "cpu":
            out.append(f"{gpus} GPU(s) per node requested but {who} runs on the CPU (hardware={hw.name}): "
                       f"they sit idle and count against the allocation")
    return list(dict.fromkeys(out))


def _run_dir(cfg, sweep_dir: str, index: int) -> str:
    """hydra.sweep.dir / hydra.sweep.subdir with this job's number (subdir is ${hydra.job.num})."""
    from omegaconf import OmegaConf, open_dict

    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.hydra.job.num = index
    try:
        subdir = OmegaConf.select(cfg, "hydra.sweep.subdir") or str(index)
    except Exception:  # a subdir that reads a key only the running job sets: shown as written
        subdir = str(cfg.hydra.sweep._get_node("subdir")._value())
    return str(Path(sweep_dir).expanduser().absolute() / str(subdir))  # as submitit's folder: from here


def _versions() -> str:
    from importlib.metadata import version

    return f"hydra-submitit-launcher {version('hydra-submitit-launcher')}, submitit {version('submitit')}"


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]

