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
    def __init__(self, package: str, key: str, not_members: tuple[str, ...] = ("base",)):
        self.package = package  # e.g. "llmft.strategies"
        self.key = key  # the config key that picks one, for error messages
        self.not_members = not_members  # the package's modules that are not one of its kind
        self.classes: dict[str, type] = {}

    def names(self) -> list[str]:
        path = importlib.import_module(self.package).__path__
        return sorted(m.name for m in pkgutil.iter_modules(path) if m.name not in self.not_members)

    def register(self, cls: type, name: str | None = None) -> None:
        name = name or cls.name
        known = self.classes.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:  # a reload re-registers the same class
            raise TypeError(f"{cls.__module__} defines two classes named {name!r} ({known.__qualname__}, "
                            f"{cls.__qualname__}); declare the shared base with abstract=True")
        self.classes[name] = cls

    def module_name(self, cls: type) -> str | None:
        """The name a class defined in one of the package's own modules registers under: its module's
        (None: defined elsewhere, or in ``base``)."""
        package, _, module = cls.__module__.rpartition(".")
        return module if package == self.package and module != "base" else None

    def get(self, name: str) -> type:
        require_one_of(self.key, name, self.names())
        importlib.import_module(f"{self.package}.{name}")
        return self.classes[name]
