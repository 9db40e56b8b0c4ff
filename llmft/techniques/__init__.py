"""Optional training techniques, one module each, every one off by default.

A technique module has a torch-free ``validate(cfg, task, strategy)`` (task and strategy are the
classes the config names; run before anything loads, for every module here) next to its torch
code, and a constructor the recipe (commands/train.py) calls in one line that is a no-op when the
technique is off. Adding one: a module here, its schema in core/config.py, one recipe line.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil


def validate_all(cfg, task, strategy) -> None:
    """Every technique's checks against the task and strategy classes the config names."""
    for module in modules():
        module.validate(cfg, task, strategy)


@functools.cache
def modules() -> tuple:
    """Every module in this package (the folder is the registry)."""
    return tuple(importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__))
