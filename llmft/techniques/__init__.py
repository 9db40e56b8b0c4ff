"""Optional training techniques, one module each, every one off by default.

A technique module holds ``technique``, an instance of a ``Technique`` subclass: the config keys
it owns (``keys``; their schema is in core/config.py, the bottom layer the CLI and every
command read), its torch-free ``validate`` (run before anything loads, for every technique) and
the hooks it needs, each named after the point of the recipe (commands/train.py) it acts at and
given the run context (commands/train.Run) to read and fill in. The recipe calls every
technique's hook at each point (``at``), in module order; a hook returns at once when its
technique is off. Adding one: a module here and its keys in core/config.py; no recipe edit.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil


class Technique:
    """One technique. The hooks, in the order the recipe reaches them; each may set or replace the
    fields of the run context it names:

        stages(cfg)     a staged runner (self-training rounds, an ensemble of patterns) or None
        source(run)     run.source: the model the run trains from (None so far: model.name_or_path)
        splits(run)     run.splits, as loaded (before the strategy prepares them)
        train_set(run)  run.train_set, run.model, run.param_groups, once the model is wrapped;
                        run.record: what it adds to the training record
        objective(run)  run.objective: what training minimises beyond the model's own loss
        trainer(run)    run.callbacks, run.sampler, run.eval_metric, run.eval_set, run.compute_metrics
        trained(run)    after training: run.figures (the train figures), run.record
    """

    keys: tuple[str, ...] = ()  # the config keys it owns, e.g. ("train.distill",)

    def validate(self, cfg, task, strategy) -> None:
        """Torch-free checks of its keys against the task and strategy classes the config names."""

    def stages(self, cfg):
        return None

    def source(self, run) -> None:
        pass

    def splits(self, run) -> None:
        pass

    def train_set(self, run) -> None:
        pass

    def objective(self, run) -> None:
        pass

    def trainer(self, run) -> None:
        pass

    def trained(self, run) -> None:
        pass


HOOKS = ("source", "splits", "train_set", "objective", "trainer", "trained")  # what ``at`` calls


def validate_all(cfg, task, strategy) -> None:
    """Every technique's checks against the task and strategy classes the config names."""
    for technique in techniques():
        technique.validate(cfg, task, strategy)


def at(point: str, run) -> None:
    """The recipe at ``point``: every technique's hook of that name, given the run context."""
    assert point in HOOKS, point
    for technique in techniques():
        getattr(technique, point)(run)


def staged(cfg):
    """The staged runner of the technique that runs this config in stages, else None."""
    return next((runner for t in techniques() if (runner := t.stages(cfg)) is not None), None)


def techniques() -> tuple[Technique, ...]:
    """Every module's technique, in module order."""
    return tuple(module.technique for module in modules())


@functools.cache
def modules() -> tuple:
    """Every module in this package (the folder is the registry)."""
    return tuple(importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__))
