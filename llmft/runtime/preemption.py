"""SIGTERM (preemption, scancel, the time limit) and SIGUSR2 (SLURM's warning before the time
limit: ``--signal=B:USR2@120``) at any moment of a command, not only inside the training loop.

One owner, ``PREEMPTION``, set up first thing in the CLI (before Hydra and torch load), decides
what a signal does from where the command is:

    start-up    config, run folder, data, tokenizer and model loading (and every command that
                does not train): stop now with one line, exit 128+signal. A USR2 inside a SLURM
                job requeues it (submitit's own handler under hydra/launcher=slurm, else
                ``scontrol requeue``); the rerun starts or resumes as any rerun does.
    training    SaveOnPreemption (run_dir.py) holds the signals: the step finishes, a checkpoint
                is saved, the run stops (``Preempted``) and the rerun resumes from it.
    finishing   model/ being saved, the final evaluation, results.json: short, so the run goes on
                and completes (exit 0, one line says what arrived); a finished job is never
                requeued. A second signal stops now: what is written stays (model/ is written
                whole, so the rerun only evaluates it).

Torch-free: it is set before anything heavy is imported.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
# Tests only: make the command wait at a named moment ("start-up", "save", "evaluation") for up
# to a minute until a signal arrives, so that a signal lands there deterministically.
PAUSE_ENV = "LLMFT_TEST_PAUSE_AT"


class Interrupted(BaseException):
    """A command stopped by a signal outside the training loop. A BaseException, as
    KeyboardInterrupt is: library code that catches Exception while it loads data or a model
    must not swallow it."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


class Preemption:
    def __init__(self):
        self.outer: dict = {}  # the handlers found before ours (submitit's in a SLURM launcher job)
        self.owner: int | None = None  # the pid that installed ours (a forked worker is not it)
        self.command, self.trains = "train", True
        self.phase, self.what = "start-up", "start-up"
        self.received: list[int] = []

    @property
    def installed(self) -> bool:
        return self.owner == os.getpid()

    def install(self, command: str = "train", trains: bool = True) -> None:
        """Catch SIGTERM and SIGUSR2 from here to the command's end (main thread only; a second
        call in the same process keeps the first one's outer handlers)."""
        self.command, self.trains = command, trains
        if self.installed or threading.current_thread() is not threading.main_thread():
            return
        self.outer = {s: signal.getsignal(s) for s in SIGNALS}
        for s in SIGNALS:
            signal.signal(s, self._handle)
        self.owner = os.getpid()

    def begin(self, command: str = "train", trains: bool = True) -> None:
        """A job starts (a sweep runs several in one process): start-up again, unless a signal
        arrived while the previous point finished; then stop before this one."""
        self.install(command, trains)
        if self.received and self.phase == "finishing":
            self.phase = "stopping"
            raise Interrupted(self.received[-1], f"stopped by {signal.Signals(self.received[-1]).name} after "
                                                 f"a sweep point completed: rerun the same command (completed "
                                                 f"points are skipped)")
        self.phase, self.what = "start-up", "start-up"
        self.pause("start-up")

    def training(self) -> int | None:
        """The training loop takes the signals over (SaveOnPreemption); returns one that arrived
        while an earlier stage finished, which the loop then acts on at its first step."""
        self.phase, self.what = "training", "training"
        pending = self.received[-1] if self.received else None
        self.received = []
        return pending

    def finishing(self, what: str, point: str = "evaluation", pending: int | None = None) -> None:
        """From here on a signal lets ``what`` finish and the run complete (``pending``: one the
        training loop caught after its last step, so it saved no checkpoint)."""
        if self.phase != "stopping":
            self.phase, self.what = "finishing", what
        if pending:
            self.received.append(pending)
            _say(f"{signal.Signals(pending).name} received after the last training step: finishing {what} "
                 f"first (a second signal stops now)")
        self.pause(point)

    def completed(self) -> None:
        """The command finished: say what arrived while it finished (no requeue: nothing is left)."""
        if self.received and self.phase == "finishing":
            _say(f"{signal.Signals(self.received[-1]).name} arrived during {self.what}; the run completed "
                 f"first (results.json is written)")

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.owner:  # a forked worker (a DataLoader's): the default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        name = signal.Signals(signum).name
        if self.phase == "stopping":  # already on the way out (a requeue sends SIGTERM too)
            return
        if self.phase == "finishing" and not self.received:
            self.received.append(signum)
            _say(f"{name} received during {self.what}: finishing it first (a second signal stops now)")
            return
        self.received.append(signum)
        if self.phase == "finishing":
            message = (f"stopped by {name} during {self.what} (a second signal); what is written stays: "
                       f"rerun the same command to finish")
        elif self.trains:
            message = f"stopped by {name} during start-up; nothing trained yet: rerun the same command"
        else:
            message = f"stopped by {name}; llmft {self.command} did not finish: rerun the same command"
        self.phase = "stopping"
        raise Interrupted(signum, message)

    def stop(self, err: Interrupted):
        """The one line (rank 0's: every rank got the signal), the requeue (a USR2 in a SLURM
        job), exit 128+signal."""
        self.phase = "stopping"
        signum = signal.SIGUSR2 if signal.SIGUSR2 in self.received else err.signum
        requeue = signum == signal.SIGUSR2 and "SLURM_JOB_ID" in os.environ
        if _lead():
            _say(f"{err}{'; requeuing the SLURM job' if requeue else ''}")
        self.pass_on(signum, _lead())
        sys.exit(err.exit_code)

    def pass_on(self, signum: int, lead: bool, fallback: dict | None = None) -> None:
        """Hand a stop to the job scheduler: under submitit its own handler (a USR2 checkpoints
        the job's submission, requeues it and exits); elsewhere a USR2 in a SLURM job requeues it
        with ``scontrol requeue`` (rank 0). ``fallback``: the handlers to use when ours are not
        installed (the training loop run without the CLI)."""
        if "SLURM_JOB_ID" not in os.environ:
            return
        handler = (self.outer if self.installed else fallback or {}).get(signum)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signum, None)
        elif signum == signal.SIGUSR2 and lead:
            requeue_slurm_job()

    def pause(self, point: str) -> None:
        if os.environ.get(PAUSE_ENV) != point or not self.installed:
            return
        _say(f"paused at {point}")
        seen, deadline = len(self.received), time.monotonic() + 60
        while len(self.received) == seen and time.monotonic() < deadline:
            time.sleep(0.02)


def requeue_slurm_job() -> None:
    """Put this SLURM job back in the queue (it needs --requeue); its rerun resumes."""
    import logging
    import subprocess

    job = os.environ["SLURM_JOB_ID"]
    out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if out.returncode:
        logging.getLogger(__name__).warning("scontrol requeue %s failed: %s", job, out.stderr.strip())


def _lead() -> bool:
    """Rank 0 (before a rank joins its group, SLURM's task 0)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


def _say(text: str) -> None:
    print(f"llmft: {text}", file=sys.stderr, flush=True)


PREEMPTION = Preemption()
