"""``llmft COMMAND [overrides]``: the console script. Imports stay light so --help is instant;
Hydra and the command's module load only once a command runs (see app.py)."""
from __future__ import annotations

import os
import sys

from llmft.cli.table import COMMANDS, usage


def normalize_overrides(args: list[str], command: str = "train") -> list[str]:
    """``+strategy=X`` means ``strategy=X``: strategy has a default (full), and users type both.
    ``export.KEY=V`` means ``KEY=V`` (the export command's keys are top-level), and so does
    ``model.trust_remote_code=V`` for the commands that load a saved model (users type both)."""
    out = []
    for a in args:
        if a.startswith("model.trust_remote_code=") and command in COMMANDS and COMMANDS[command].loads_saved:
            a = a[len("model."):]
        elif a.startswith("+strategy="):
            a = "strategy=" + a[len("+strategy="):]
        elif a.startswith("export."):
            a = a[len("export."):]
        elif a.startswith(("teacher=", "student.layers=")):  # llmft distill's short keys
            key, value = a.split("=", 1)
            a = f"train.distill.{'teacher' if key == 'teacher' else 'student_layers'}={value}"
        elif a.startswith("student.name_or_path="):
            out.append("model=hf")
            a = "model.name_or_path=" + a.split("=", 1)[1]
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from llmft import __version__

        print(f"llmft {__version__}")
        return 0
    command, args = argv[0], normalize_overrides(argv[1:], argv[0])
    if command not in COMMANDS:
        print(f"llmft: error: unknown command '{command}'; choose one of: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    if COMMANDS[command].entry:  # report, check, reproduce: not a Hydra run of their own
        import importlib

        return importlib.import_module(COMMANDS[command].entry).main(argv[1:])
    from llmft.cli.app import run

    if "LOCAL_RANK" in os.environ or "SLURM_PROCID" in os.environ:  # maybe a rank (joined in run())
        try:
            code = run(command, args)
        except SystemExit as stop:  # a user error or a preemption: the rank printed its line
            code = stop.code
        if "LOCAL_RANK" in os.environ:
            end_rank(code)
        sys.exit(code)
    return run(command, args)


def end_rank(code) -> None:
    """A rank ends with ``os._exit`` once Python's own exit work (atexit: logging, wandb) has run.
    The interpreter's C++ teardown, with gloo's and DeepSpeed's threads still alive, can abort a rank
    whose work is done ("terminate called without an active exception"); the launcher then kills
    the other ranks and fails a finished run. Exceptions never get here: their traceback stays."""
    import atexit

    code = code if isinstance(code, int) else (0 if code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()  # what a normal exit runs, minus the C++ teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
