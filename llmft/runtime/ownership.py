"""What a command may write: its own run folder, and output paths that hold nothing of the user's.

Every command that writes (train, eval, predict, export, merge-adapters, bench-infer, report)
checks here before work starts (the CLI's preflight, then again under the run folder's lock):

- its run folder (``hydra.run.dir``) is new, empty (Hydra's own ``.hydra/`` and log aside), or a
  folder llmft wrote for the same kind of command: ``.llmft-run`` names that command. A folder
  holding anything else is refused in one line, untouched; so are eval, predict and bench-infer
  into a training run's folder (they would replace its results.json and predictions.jsonl:
  they take a folder of their own, e.g. ``hydra.run.dir=RUN/eval``).
- no output goes inside a model folder (one holding llmft.json or a Hugging Face model), nor over
  an input of the same command; an existing ``predict.output_file`` is replaced only when it is
  a predictions file llmft wrote.

Inside its own folder, a training run moves whatever it did not write for this config to
``replaced/<time>/`` (run_dir.py; what a run folder holds: layout.py); nothing is deleted. Torch-free.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from llmft.core.errors import UserError
from llmft.runtime.layout import TRAINING_ONLY

MARKER = ".llmft-run"  # {"command": kind}: this folder is an llmft run folder of that kind
LOCK_FILE = ".llmft.lock"  # run_lock.py's (earlier llmft runs carry it without the marker)
# the kind of run folder each command writes (distill is a training run)
KINDS = {"train": "train", "distill": "train", "eval": "eval", "predict": "predict", "export": "export",
         "merge-adapters": "merge-adapters", "bench-infer": "bench-infer", "prune": "prune"}
MODEL_FILES = ("llmft.json", "adapter_config.json")  # a folder holding one of these is a model folder
# .hydra/ and the job log: written by Hydra before llmft's own code runs, so not a sign of a foreign folder
HYDRA_NAMES = (".hydra",)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _hydra_or_ours(name: str, hydra_files=()) -> bool:
    return (name in (*HYDRA_NAMES, *hydra_files, MARKER, LOCK_FILE)
            or (name.startswith("llmft-") and name.endswith(".log"))
            or name in {f"{command}.log" for command in KINDS})  # Hydra's job log: hydra.job.name + .log


def folder_kind(path: str | Path, hydra_files=()) -> str | None:
    """None: absent or empty (Hydra's and llmft's bookkeeping aside); else the kind of command
    whose run folder it is ("train", "eval", ...; "llmft" when an earlier llmft left no clue which),
    or "foreign" when llmft did not write it."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return "foreign" if os.path.lexists(path) else None
    names = {p.name for p in path.iterdir()}
    marker = path / MARKER
    if marker.is_file() and not marker.is_symlink():
        try:
            kind = json.loads(marker.read_text()).get("command")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind in KINDS.values():
            return kind
    if not {n for n in names if not _hydra_or_ours(n, hydra_files)}:
        return None
    lock = path / LOCK_FILE
    if ((lock.is_file() and not lock.is_symlink()) or (".hydra" in names and _results(path) is not None)
            or _holds_only_checkpoints(path)):
        return _earlier_kind(path, names)
    return "foreign"


def _holds_only_checkpoints(path: Path) -> bool:
    """checkpoints/ holds only the Trainer's checkpoint-N folders (a run's checkpoints copied into a
    new folder to resume there, or a save killed before anything else was written)."""
    folder = path / "checkpoints"
    entries = list(folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else []
    return bool(entries) and all(e.is_dir() and not e.is_symlink() and e.name.startswith("checkpoint-")
                                 and e.name[len("checkpoint-"):].isdigit() for e in entries)


def _results(path: Path) -> dict | None:
    try:
        value = json.loads((path / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and "status" in value else None


def _earlier_kind(path: Path, names: set) -> str:
    """The kind of a run folder an llmft without the marker wrote, from what it holds."""
    results = _results(path) or {}
    if set(TRAINING_ONLY) & names or "fingerprint" in results:
        return "train"
    for name, kind in (("export.json", "export"), ("merge.json", "merge-adapters"),
                       ("inference_report.md", "bench-infer")):
        if name in names:
            return kind
    if "input_file" in results:
        return "predict"
    return "eval" if "model_dir" in results else "llmft"


def model_folder_of(path: str | Path) -> Path | None:
    """The model folder ``path`` is or sits in (a folder holding llmft.json, an adapter, or a
    Hugging Face config.json beside weights), else None."""
    path = Path(path).expanduser().resolve()
    for folder in (path, *path.parents):
        if folder.is_dir() and (any((folder / name).is_file() for name in MODEL_FILES)
                                or ((folder / "config.json").is_file()
                                    and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))))):
            return folder
    return None


def check_run_folder(path: str | Path, command: str, hydra_files=()) -> None:
    """Refuse (one line, nothing touched) a run folder ``command`` may not write: see the module doc.
    ``hydra_files``: what Hydra wrote there for this job (its log, under another hydra.job.name)."""
    key = f"hydra.run.dir={path}"
    kind, wanted = folder_kind(path, hydra_files), KINDS.get(command, command)
    if Path(path).is_file():
        raise UserError(f"{key}: is a file; name a new folder for the run")
    model = model_folder_of(path)
    if model is not None:
        raise UserError(f"{key}: is inside the model folder {model}; name a folder outside it for the run")
    if kind is None or kind in (wanted, "llmft"):
        return
    if kind == "foreign":
        shown = sorted(p.name for p in Path(path).iterdir() if not _hydra_or_ours(p.name, hydra_files))
        listing = ", ".join(shown[:4]) + (f" (+{len(shown) - 4} more)" if len(shown) > 4 else "")
        raise UserError(f"{key}: holds files llmft did not write ({listing}) and llmft {command} writes only into "
                        f"a new, empty or llmft run folder; name another folder (nothing was changed)")
    hint = f"e.g. hydra.run.dir={Path(path) / command}" if kind == "train" else "name a new folder"
    raise UserError(f"{key}: is the folder of an llmft {kind} run, and llmft {command} would replace its files "
                    f"(results.json, predictions.jsonl, ...); give it a folder of its own: {hint}")


def mark_run_folder(path: str | Path, command: str) -> None:
    """Record which kind of command owns the folder (once, before the command writes in it)."""
    marker = Path(path) / MARKER
    if os.path.lexists(marker):
        return
    atomic_write(marker, json.dumps({"command": KINDS.get(command, command)}) + "\n")


def check_output_file(out: str | Path, key: str, inputs: dict[str, str | Path]) -> Path:
    """An output file a command replaces: not a folder, link or input of the same command (``inputs``:
    key -> path), not inside a model folder or another command's run folder; an existing one only
    when llmft wrote it (a predictions file: JSON lines with a "prediction"). Returns it resolved."""
    given = Path(out).expanduser()
    path = given.resolve()
    for name, value in inputs.items():
        if value and (Path(value).expanduser().resolve() == path or _same_file(value, given)):
            raise UserError(f"{key}: is {name}, an input of this command; name a new file for the output")
    if given.is_symlink():
        raise UserError(f"{key}: is a symbolic link; name the file itself (llmft does not write through links)")
    if path.is_dir():
        raise UserError(f"{key}: is a folder; name a file in it")
    model = model_folder_of(path.parent)
    if model is not None:
        raise UserError(f"{key}: is inside the model folder {model}; name a file outside it")
    run_kind = folder_kind(path.parent)
    if run_kind not in (None, "foreign", "predict", "llmft"):
        raise UserError(f"{key}: is inside the folder of an llmft {run_kind} run, whose files it could replace; "
                        f"name a file elsewhere")
    if path.exists() and not _is_predictions(path):
        raise UserError(f"{key}: {path} exists and is not a predictions file llmft wrote; name a new file "
                        f"(nothing was changed)")
    return path


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _is_predictions(path: Path) -> bool:
    """A JSON-lines file whose first record has a "prediction": what llmft predict writes."""
    try:
        with path.open(encoding="utf-8") as f:
            first = f.readline()
        return (path.stat().st_size == 0) or "prediction" in json.loads(first)
    except (OSError, ValueError, TypeError, UnicodeDecodeError):
        return False


def check_report_out(out: Path) -> None:
    """``llmft report --out``: a folder (not a file, not inside a model folder) where report.md and
    report.png are absent or llmft report's own."""
    key = f"llmft report --out {out}"
    if out.exists() and not out.is_dir():
        raise UserError(f"{key}: is a file; name a folder for report.md and report.png")
    model = model_folder_of(out)
    if model is not None:
        raise UserError(f"{key}: is inside the model folder {model}; name another folder")
    md, png = out / "report.md", out / "report.png"
    for path, ours in ((md, _is_report_md), (png, _is_report_png)):
        if os.path.lexists(path) and (path.is_symlink() or not ours(path)):
            raise UserError(f"{key}: {path} exists and llmft report did not write it; name another folder "
                            f"with --out (nothing was changed)")


def _is_report_md(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().startswith("| run | strategy |")
    except (OSError, UnicodeDecodeError):
        return False


def _is_report_png(path: Path) -> bool:
    """A PNG matplotlib wrote (its tEXt chunk names it)."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"Matplotlib" in head


# ------------------------------------------------------------------ durable writes
def atomic_write(path: Path, text: str) -> None:
    """``path`` holds ``text`` whole or keeps what it held: a fresh temp file beside it (mkstemp
    creates it exclusively, so a planted link there is never written through), flushed to disk,
    renamed over ``path``, and the folder flushed so the rename survives a host crash."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from the user's group
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk; a no-op where the OS
    cannot open folders."""
    _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and the folders themselves: before a marker or a rename
    says the folder is complete, its contents are on disk."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            _fsync(os.path.join(root, name), os.O_RDONLY | os.O_NOFOLLOW)  # a link is not followed
        fsync_dir(Path(root))


def _fsync(path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
