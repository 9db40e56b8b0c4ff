"""More than one process: start the ranks, or join the ranks someone else started.

    llmft train hardware=cpu_zero3          -> this process spawns nproc_per_node ranks (torch's
                                               elastic launcher, as torchrun does), waits, exits
    under torchrun / srun / a SLURM job      -> this process is a rank: it joins (RANK, WORLD_SIZE,
                                               LOCAL_RANK, MASTER_ADDR/PORT from SLURM variables)

Every rank runs the same command with the same run folder; rank 0 alone writes it.
The DeepSpeed config the hardware group renders also lives here.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from llmft.core.errors import UserError, require

log = logging.getLogger(__name__)


def world_size(hardware) -> int:
    return hardware.nproc_per_node * hardware.nnodes


def needs_ranks(hardware) -> bool:
    """DeepSpeed needs a process group even for one process; plain runs with one process don't."""
    return world_size(hardware) > 1 or hardware.zero_stage > 0


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_rank_zero() -> bool:
    return rank() == 0


def is_launched() -> bool:
    """Already a rank of a process group (torchrun, the DeepSpeed launcher, or joined from SLURM)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


# ---------------------------------------------------------------------------------- SLURM
def slurm_mode(hardware) -> str | None:
    """Inside a SLURM job step: "join" when SLURM started one task per rank (the submitit
    launcher with tasks_per_node = nproc_per_node), "spawn" when it started one task per node
    (the sbatch template: each node spawns its local ranks); None outside SLURM."""
    tasks = os.environ.get("SLURM_NTASKS")
    if tasks is None or "SLURM_PROCID" not in os.environ or is_launched():
        return None
    if int(tasks) == world_size(hardware):
        return "join"
    if int(tasks) == hardware.nnodes:
        return "spawn"
    raise UserError(f"this SLURM job has {tasks} tasks but hardware asks for {hardware.nnodes} node(s) x "
                    f"{hardware.nproc_per_node} processes: start {world_size(hardware)} tasks (one per rank) "
                    f"or {hardware.nnodes} (one per node)")


def master_addr() -> str:
    """The first host of the job's node list (scontrol expands ranges like node[01-04])."""
    import subprocess

    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodelist.split(",")[0]


def slurm_port(hardware) -> int:
    """One port per job, so two jobs sharing a node don't meet on the same rendezvous."""
    job = int(os.environ.get("SLURM_JOB_ID", "0"))
    return hardware.master_port + job % 10000


def leave() -> None:
    """Tear the process group down before the interpreter exits: a rank that exits with gloo's
    and DeepSpeed's threads still running can abort ("terminate called without an active
    exception") after its work is done."""
    import sys

    dist = getattr(sys.modules.get("torch"), "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def join_slurm(hardware) -> None:
    """Set the torch.distributed variables of this SLURM task (one task = one rank)."""
    env = os.environ
    env.setdefault("MASTER_ADDR", master_addr())
    env.setdefault("MASTER_PORT", str(slurm_port(hardware)))
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env["LOCAL_WORLD_SIZE"] = str(hardware.nproc_per_node)
    set_rank_env(hardware)


def set_rank_env(hardware) -> None:
    if hardware.accelerator == "cpu" or (hardware.accelerator == "auto" and not _cuda()):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


# ------------------------------------------------------------------------------ spawning
def spawn(command: str, overrides: list[str], run_dir: str, hardware) -> None:
    """Run ``llmft COMMAND OVERRIDES`` as this node's ranks in ``run_dir`` and wait for them.

    torch's elastic launcher (what torchrun runs) starts the processes; a rank that fails makes
    this process exit with that rank's code (2 for a user error, whose line the rank printed)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    check_devices(hardware)
    in_slurm = "SLURM_PROCID" in os.environ
    node_rank = int(os.environ.get("SLURM_NODEID", "0")) if in_slurm else 0
    if hardware.nnodes > 1:
        endpoint = f"{master_addr()}:{slurm_port(hardware)}"
    else:
        endpoint = f"127.0.0.1:{free_port()}"
    set_rank_env(hardware)
    threads = max(1, (os.cpu_count() or 1) // hardware.nproc_per_node)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # as torchrun does: no oversubscription
    config = LaunchConfig(
        min_nodes=hardware.nnodes, max_nodes=hardware.nnodes, nproc_per_node=hardware.nproc_per_node,
        run_id=os.environ.get("SLURM_JOB_ID", "llmft"), rdzv_backend="static", rdzv_endpoint=endpoint,
        rdzv_configs={"rank": node_rank}, max_restarts=0, monitor_interval=0.5,
    )
    if hardware.zero_stage > 0 and os.environ.get("DS_ACCELERATOR") == "cpu":
        prebuild_cpu_ops()
    args = ["-m", "llmft.cli", command, *overrides, f"hydra.run.dir={run_dir}"]
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    log.info("starting %d processes on this node (world size %d)", hardware.nproc_per_node, world_size(hardware))
    from llmft.runtime.run_lock import LOCK_HELD_ENV

    os.environ[LOCK_HELD_ENV] = str(Path(run_dir).resolve())  # this process holds the folder for its ranks
    os.environ[SPAWNER_ENV] = str(os.getpid())
    # the command's own handlers (runtime/preemption.py) come back after: torch's launcher sets SIGTERM's
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    signal.signal(signal.SIGUSR2, _forward_to_children)  # SLURM's time-limit warning
    _FORWARDED.clear()
    try:
        elastic_launch(config, entrypoint=sys.executable)(*args)
    except SignalException as err:  # SIGTERM to this process: torch's launcher passed it on to the ranks
        print(f"llmft: stopped by {signal.Signals(err.sigval).name}; the ranks saved a checkpoint if they reached "
              f"a step boundary in time. Rerun the same command to resume", file=sys.stderr)
        sys.exit(128 + err.sigval)
    except ChildFailedError as err:
        # the rank that failed first, not one the launcher then stopped with SIGTERM
        failed_rank, failure = min(err.failures.items(), key=lambda f: (f[1].exitcode == -signal.SIGTERM, f[0]))
        if failure.exitcode is not None and -failure.exitcode in _FORWARDED:  # a rank still starting its interpreter
            from llmft.runtime.preemption import PREEMPTION, Interrupted

            signum = -failure.exitcode
            PREEMPTION.stop(Interrupted(signum, f"stopped by {signal.Signals(signum).name} while the ranks started; "
                                                f"nothing trained yet: rerun the same command"))
        code = failure.exitcode if failure.exitcode and failure.exitcode > 0 else 1
        if code not in (2, *PREEMPTED_CODES):  # those printed their own line
            print(f"llmft: error: rank {failed_rank} failed (exit code {failure.exitcode}); its traceback is above",
                  file=sys.stderr)
        sys.exit(code)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        os.environ.pop(LOCK_HELD_ENV, None)
        os.environ.pop(SPAWNER_ENV, None)


SPAWNER_ENV = "LLMFT_SPAWNER_PID"


def die_with_spawner() -> None:
    """A rank that llmft spawned dies with it (kill -9 included). torch's launcher starts each rank
    in a session of its own, so killing llmft's process group would leave the ranks running and
    writing into a run folder whose lock died with llmft (Linux: PR_SET_PDEATHSIG)."""
    spawner = os.environ.get(SPAWNER_ENV)
    if spawner is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    if os.getppid() != int(spawner):  # it died before the line above
        os.kill(os.getpid(), signal.SIGKILL)


PREEMPTED_CODES = (128 + signal.SIGTERM, 128 + signal.SIGUSR2)  # ranks that stopped on a signal, with their line
_FORWARDED: set = set()  # signals passed on to the ranks (one that kills a rank before its handlers: stopped)


def _forward_to_children(signum, frame) -> None:
    """USR2 to the spawner (srun forwards it to each node's task) goes on to its ranks, which save
    at the next step (SIGTERM needs no help: torch's launcher sends it on to the ranks itself)."""
    _FORWARDED.add(signum)
    for pid in _children():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _children() -> list[int]:
    """This process's child pids (Linux /proc)."""
    me, out = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            out.append(int(stat.parent.name))
    return out


def prebuild_cpu_ops() -> None:
    """DeepSpeed compiles its CPU communication op on first use (about a minute, then cached in
    TORCH_EXTENSIONS_DIR). Build it here, once, rather than in every rank at the same time."""
    try:
        from deepspeed.comm.torch import build_shm_op

        build_shm_op()
    except Exception as err:  # the ranks will try again and report a real failure themselves
        log.warning("could not prebuild DeepSpeed's CPU ops: %s", err)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_devices(hardware) -> None:
    if hardware.accelerator == "cuda" or (hardware.accelerator == "auto" and _cuda()):
        import torch

        count = torch.cuda.device_count()
        if hardware.nproc_per_node > count:
            raise UserError(f"hardware.nproc_per_node={hardware.nproc_per_node} but {count} CUDA device(s) are "
                            f"visible; use at most {count}")
    elif hardware.nproc_per_node > (os.cpu_count() or 1):
        raise UserError(f"hardware.nproc_per_node={hardware.nproc_per_node} but this machine has "
                        f"{os.cpu_count()} CPU cores; use at most that many")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------- DeepSpeed
def deepspeed_config(cfg) -> dict | None:
    """The DeepSpeed config for ``hardware.zero_stage`` > 0, every value concrete (no "auto"):
    batch sizes, clipping and precision from the train config, ZeRO settings from hardware.
    The optimizer and schedule stay the Trainer's (the strategy's parameter groups included)."""
    from llmft.runtime.precision import precision

    hw, t = cfg.hardware, cfg.train
    if hw.zero_stage == 0:
        return None
    used = precision(hw)  # auto: as the run resolved it
    zero = {"stage": hw.zero_stage, "overlap_comm": hw.accelerator != "cpu", "contiguous_gradients": True}
    if hw.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # model/ holds full weights
        if hw.zero3_persistence_threshold is not None:
            zero["stage3_param_persistence_threshold"] = hw.zero3_persistence_threshold
    for kind in ("optimizer", "param"):
        device = hw[f"offload_{kind}"]
        if device != "none":
            zero[f"offload_{kind}"] = ({"device": "nvme", "nvme_path": hw.nvme_path} if device == "nvme"
                                       else {"device": "cpu", "pin_memory": True})
    ds = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.batch_size * t.grad_accum * world_size(hw),
        "gradient_clipping": t.max_grad_norm,
        "bf16": {"enabled": used == "bf16"},
        "fp16": {"enabled": used == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "steps_per_print": 10**9,  # the Trainer logs
        "wall_clock_breakdown": False,
    }
    if hw.offload_optimizer != "none":
        ds["zero_force_ds_cpu_optimizer"] = False  # keep the Trainer's optimizer and its groups
    return ds


def zero3_enabled(trainer) -> bool:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None) if trainer.is_deepspeed_enabled else None
    return plugin is not None and plugin.zero_stage == 3


def memory_figures() -> dict:
    """Peak memory of this process: resident set on the CPU, allocated memory on a GPU."""
    import resource

    figures = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        figures["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        every = [None] * torch.distributed.get_world_size()  # every rank's figures, rank 0's first
        torch.distributed.all_gather_object(every, figures)
        figures = {**figures, "per_rank": every}
    return figures


def validate_hardware(hw) -> None:
    """The hardware section (torch-free: runs before anything loads)."""
    require(hw.zero_stage in (0, 1, 2, 3), "hardware.zero_stage",
            f"must be 0 (no DeepSpeed), 1, 2 or 3 (got {hw.zero_stage})")
    require(hw.nproc_per_node >= 1, "hardware.nproc_per_node", "must be >= 1")
    require(hw.nnodes >= 1, "hardware.nnodes", "must be >= 1")
    require(hw.dataloader_workers >= 0, "hardware.dataloader_workers",
            f"must be >= 0 (0: load batches in the training process; got {hw.dataloader_workers})")
    require(hw.collective_timeout_s > 0, "hardware.collective_timeout_s",
            f"must be > 0 seconds (got {hw.collective_timeout_s})")
    for kind, stage in (("optimizer", 2), ("param", 3)):
        device = hw[f"offload_{kind}"]
        if device != "none":
            require(hw.zero_stage >= stage, f"hardware.offload_{kind}",
                    f"needs hardware.zero_stage>={stage} (got {hw.zero_stage})")
            require(hw.accelerator != "cpu", f"hardware.offload_{kind}",
                    "offloads from a GPU; with hardware.accelerator=cpu everything is in CPU memory already")
            require(device != "nvme" or bool(hw.nvme_path), "hardware.nvme_path", "is required for nvme offload")
    require(not (hw.precision == "fp16" and hw.accelerator == "cpu"), "hardware.precision",
            "fp16 needs a GPU; on the CPU use bf16 or fp32")
    if hw.device_map is not None:
        require(hw.device_map == "auto", "hardware.device_map", f"must be auto or null (got {hw.device_map})")
    require(not (hw.compile and hw.zero_stage > 0), "hardware.compile",
            "does not combine with DeepSpeed (hardware.zero_stage>0): the Trainer compiles the model, not the engine")
