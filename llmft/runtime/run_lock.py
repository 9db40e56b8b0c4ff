"""One llmft writes a run folder at a time: an exclusive lock held for the whole run.

``flock`` on ``<run>/.llmft.lock``: the kernel drops it when the holder dies (kill -9 included),
so a stale lock is simply taken over by the next run; the file names the holder (host, pid,
start) for the refusal's one line. Torch-free: the CLI checks it before Hydra writes anything.

The lock file is opened with ``O_NOFOLLOW``: a ``.llmft.lock`` planted as a symlink is refused,
never written through. A file system that does not lock (some NFS/Lustre mounts: ENOLCK,
EOPNOTSUPP, ENOSYS) is refused in one line naming it; ``hardware.lock=false`` runs without the
lock (with a warning: nothing then stops a second run writing the same folder).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from pathlib import Path

from llmft.core.errors import UserError

LOCK_FILE = ".llmft.lock"
LOCK_HELD_ENV = "LLMFT_RUN_LOCK_HELD"  # set for the ranks a locking process spawned
# flock errors that mean "this file system does not lock", not "another process holds it"
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTSUP, errno.EINVAL}

log = logging.getLogger(__name__)


class RunLock:
    """An exclusive lock on a run folder (see the module doc)."""

    def __init__(self, path: str | Path):
        self.path = Path(path) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self, record: bool = True) -> "RunLock":
        """Take the lock (``record``: write this process's line into it for a refusal to name)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            if err.errno != errno.ELOOP and not self.path.is_symlink():
                raise
            raise UserError(f"{self.path} is a symbolic link (to {os.readlink(self.path)}); llmft does not write "
                            f"through links: remove it, or choose another hydra.run.dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in UNSUPPORTED:
                raise UserError(f"{self.path.parent} is on a file system that does not lock files "
                                f"({file_system(self.path.parent)}: {os.strerror(err.errno)}); put the run folder on "
                                f"a local disk (hydra.run.dir=PATH), or pass hardware.lock=false and make sure no "
                                f"other llmft writes this folder at the same time") from None
            holder = _read_holder(self.path)
            raise UserError(f"{self.path.parent} is in use by a running llmft ({holder}); wait for it to end "
                            f"or choose another hydra.run.dir") from None
        if record:
            os.ftruncate(fd, 0)
            since = time.strftime("%Y-%m-%d %H:%M:%S")
            os.write(fd, f"{socket.gethostname()} pid {os.getpid()} since {since}\n".encode())
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


def _read_holder(path: Path) -> str:
    """The holder line the lock file carries (read without following a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return "another process"
    with os.fdopen(fd) as f:
        return f.read(200).strip() or "another process"


def file_system(path: Path) -> str:
    """'nfs4 mount /scratch' for the mount that holds ``path`` (Linux's /proc/mounts), else the path."""
    best, where = "", str(path)
    try:
        resolved = str(Path(path).resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and (resolved == fields[1] or resolved.startswith(fields[1].rstrip("/") + "/")) \
                    and len(fields[1]) >= len(best):
                best, where = fields[1], f"{fields[2]} mount {fields[1]}"
    except OSError:
        pass
    return where


def check_unlocked(path: str | Path, lock: bool = True) -> None:
    """Refuse now (before Hydra writes into it) when a running llmft holds ``path``, or its lock
    file is a link, or (when one is there to try) its file system does not lock."""
    if lock and os.path.lexists(Path(path) / LOCK_FILE):
        RunLock(path).acquire(record=False).release()


def is_lock_holder(run_dir: str) -> bool:
    """The process that locks a run folder: not a rank spawned by a process that holds it, and
    rank 0 only (SLURM's task 0 when SLURM starts the ranks or the per-node spawners)."""
    if os.environ.get(LOCK_HELD_ENV) == str(Path(run_dir).resolve()):
        return False
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


def run_lock(run_dir: str, lock: bool = True):
    """The run folder's lock for the process that holds it; ``lock=False`` (hardware.lock=false,
    for file systems without flock) runs unlocked, with a warning."""
    if not is_lock_holder(run_dir):
        return contextlib.nullcontext()
    if not lock:
        log.warning("hardware.lock=false: %s is not locked; a second llmft writing it at the same time would "
                    "mix the two runs' files", run_dir)
        return contextlib.nullcontext()
    return RunLock(run_dir)
