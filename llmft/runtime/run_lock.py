"""One llmft writes a run folder at a time: an exclusive lock held for the whole run.

``flock`` on ``<run>/.llmft.lock``: the kernel drops it when the holder dies (kill -9 included),
so a stale lock is simply taken over by the next run; the file names the holder (host, pid,
start) for the refusal's one line. Torch-free: the CLI checks it before Hydra writes anything.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from llmft.core.errors import UserError

LOCK_FILE = ".llmft.lock"
LOCK_HELD_ENV = "LLMFT_RUN_LOCK_HELD"  # set for the ranks a locking process spawned


class RunLock:
    """An exclusive lock on a run folder (see the module doc)."""

    def __init__(self, path: str | Path):
        self.path = Path(path) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = self.path.read_text().strip() or "another process"
            raise UserError(f"{self.path.parent} is in use by a running llmft ({holder}); wait for it to end "
                            f"or choose another hydra.run.dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def check_unlocked(path: str | Path) -> None:
    """Refuse now (before Hydra writes into it) when a running llmft holds ``path``."""
    if (Path(path) / LOCK_FILE).is_file():
        RunLock(path).acquire().release()


def is_lock_holder(run_dir: str) -> bool:
    """The process that locks a run folder: not a rank spawned by a process that holds it, and
    rank 0 only (SLURM's task 0 when SLURM starts the ranks or the per-node spawners)."""
    if os.environ.get(LOCK_HELD_ENV) == str(Path(run_dir).resolve()):
        return False
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


def run_lock(run_dir: str):
    return RunLock(run_dir) if is_lock_holder(run_dir) else contextlib.nullcontext()
