"""What a run's input files contain, for its fingerprint (runtime/run_dir.py): a rewritten data
file or a changed local model folder makes another config, never a finished run.

    input_digests(cfg)  ->  {"data.train_file#sha256": "ab12...", "model.name_or_path#sha256": ...,
                             "data.hub_name#revision": "<commit>"}

A file's digest is the sha256 of its content. Files of CACHE_ABOVE bytes or more are hashed once
per (path, size, mtime, inode): the digest is kept in $LLMFT_CACHE/digests/ (an unwritable or
corrupt cache only means hashing again). A model folder's digest covers every file in it (names
and contents): config, tokenizer, weights index and weights alike. A hub dataset's digest is the
commit of its local copy in the Hugging Face cache (none when it was never downloaded); a hub
model is pinned by model.revision, which is a config value already. Torch-free.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ABOVE = 1 << 20  # bytes; smaller files are hashed every time (reading them costs less than a lookup)
_CHUNK = 1 << 22
SUFFIX = "#sha256"  # the fingerprint key of a file's or folder's digest: "data.train_file#sha256"

# Config keys that name one data file (each digested when set), and the one that names a folder.
FILE_KEYS = ("data.train_file", "data.validation_file", "data.eval_file", "data.unlabeled_file",
             "train.retention.eval_file")


def input_digests(cfg) -> dict:
    """{"<key>#sha256": digest} for every input file or local model folder the config names, and
    {"data.hub_name#revision": commit} for a downloaded hub dataset. Missing inputs are left out
    (validation refuses them before a run starts)."""
    from omegaconf import OmegaConf

    out = {}
    for key in FILE_KEYS:
        spec = OmegaConf.select(cfg, key, default=None)
        if spec:
            _put(out, key + SUFFIX, file_path(str(spec)), file_digest)
    for i, aux in enumerate(OmegaConf.select(cfg, "data.aux", default=None) or []):
        if aux.get("train_file"):
            _put(out, f"data.aux.{i}.train_file{SUFFIX}", file_path(str(aux.train_file)), file_digest)
    model = OmegaConf.select(cfg, "model.name_or_path", default=None)
    if model:
        _put(out, "model.name_or_path" + SUFFIX, model_path(str(model)), path_digest)
    if OmegaConf.select(cfg, "data.augment.method", default=None) == "paraphrase":  # the model writes train rows
        spec = OmegaConf.select(cfg, "data.augment.model", default=None)
        if spec:
            _put(out, "data.augment.model" + SUFFIX, model_path(str(spec)), path_digest)
    final = OmegaConf.select(cfg, "strategy.final_model", default=None)
    if final:
        _put(out, "strategy.final_model" + SUFFIX, model_path(str(final)), path_digest)
    teacher = OmegaConf.select(cfg, "train.distill.teacher", default=None)
    if teacher:  # a trained model/ folder, or the run folder holding it (distillation.teacher_dir)
        folder = Path(str(teacher)).expanduser()
        _put(out, "train.distill.teacher" + SUFFIX, folder / "model" if (folder / "model").is_dir() else folder,
             path_digest)
    if OmegaConf.select(cfg, "data.source", default=None) == "hub":
        name = OmegaConf.select(cfg, "data.hub_name", default=None)
        if name and Path(str(name)).expanduser().is_dir():  # load_dataset reads a local folder too
            _put(out, "data.hub_name" + SUFFIX, Path(str(name)).expanduser(), path_digest)
        elif name:
            revision = hub_dataset_revision(str(name))
            if revision:
                out["data.hub_name#revision"] = revision
    return out


def _put(out: dict, key: str, path: Path | None, how) -> None:
    if path is None or not path.exists():
        return
    try:
        out[key] = how(path)[:16]
    except OSError as err:  # unreadable: the run itself fails on it, in one line, when it reads the file
        log.debug("no digest of %s: %s", path, err)


def file_path(spec: str) -> Path | None:
    """A data file spec (local or ``pkg:``) as a path; None when its package is not installed."""
    from llmft.core.errors import UserError
    from llmft.core.paths import resolve_path

    try:
        return resolve_path(spec)
    except UserError:
        return None


def model_path(spec: str) -> Path | None:
    """model.name_or_path as what holds the weights: a local folder, the file of a ``gguf:`` spec,
    or None for a hub id."""
    if spec.startswith("gguf:"):
        return file_path("pkg:" + spec[len("gguf:"):])
    if spec.startswith("pkg:"):
        return file_path(spec)
    path = Path(spec).expanduser()
    return path if path.exists() else None


def path_digest(path: Path) -> str:
    """A file's digest, or a folder's: every file under it (hidden ones aside), by relative name
    and content, so a renamed, added, removed or rewritten file changes it."""
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            file = Path(root) / name
            if file.is_file():
                h.update(f"{file.relative_to(path).as_posix()}\0{file_digest(file)}\n".encode())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of the file's content; looked up in (and added to) the cache for large files."""
    path = Path(path).resolve()
    st = path.stat()
    if st.st_size < CACHE_ABOVE:
        return _hash_file(path)
    ident = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    entry = _cache_dir() / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
    try:
        cached = json.loads(entry.read_text())
        if {k: cached.get(k) for k in ident} == ident and isinstance(cached.get("sha256"), str):
            return cached["sha256"]
    except (OSError, ValueError, AttributeError):
        pass  # none yet, or unreadable: hash again
    digest = _hash_file(path)
    after = path.stat()
    if (after.st_mtime_ns, after.st_size) == (st.st_mtime_ns, st.st_size):  # not rewritten while being read
        _store(entry, {**ident, "sha256": digest})
    return digest


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _cache_dir() -> Path:
    from llmft.core.paths import cache_root

    return cache_root() / "digests"


def _store(entry: Path, record: dict) -> None:
    """Write a cache entry; a cache that cannot be written is skipped (the digest is still right)."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, entry)
    except OSError as err:
        log.debug("digest cache not written (%s): %s", entry, err)


def hub_dataset_revision(name: str) -> str | None:
    """The commit of a hub dataset's copy in the Hugging Face cache (what ``load_dataset`` reads
    offline), or None when it has none there."""
    try:
        from huggingface_hub import constants

        ref = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}" / "refs" / "main"
        return ref.read_text().strip() or None
    except (OSError, ImportError):
        return None
