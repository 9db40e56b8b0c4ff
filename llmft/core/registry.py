"""Find a strategy or task class by name: ``llmft.<package>.<name>`` defines it.

The module name is the registry (no hand-kept list): a class registers itself when its module is
imported, and ``names()`` lists the modules in the package, so the CLI and validation can name
every option without importing heavy libraries.
"""
from __future__ import annotations

import importlib
import pkgutil

from llmft.core.errors import require_one_of


class Registry:
    def __init__(self, package: str, key: str):
        self.package = package  # e.g. "llmft.strategies"
        self.key = key  # the config key that picks one, for error messages
        self.classes: dict[str, type] = {}

    def names(self) -> list[str]:
        path = importlib.import_module(self.package).__path__
        return sorted(m.name for m in pkgutil.iter_modules(path) if m.name != "base")

    def register(self, cls: type) -> None:
        self.classes[cls.name] = cls

    def get(self, name: str) -> type:
        require_one_of(self.key, name, self.names())
        importlib.import_module(f"{self.package}.{name}")
        return self.classes[name]
