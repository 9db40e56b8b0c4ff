"""Fine-tuning strategies: one module per ``+strategy=NAME``, named like its YAML.

A strategy module defines its schema (a ``StrategyConfig`` dataclass holding every default) and
a ``Strategy`` subclass; its module name is its name. Adding a strategy is one module here plus
one YAML in ``configs/strategy/`` that holds only ``defaults: [NAME_schema]`` and what it is.
Modules import only light things at the top (configs are composed before torch loads).
"""
from __future__ import annotations

from llmft.strategies.base import STRATEGIES, Strategy


def strategy_names() -> list[str]:
    return STRATEGIES.names()


def strategy_class(name: str) -> type[Strategy]:
    return STRATEGIES.get(name)


def strategies_that(capability: str) -> list[str]:
    """The strategies whose class sets ``capability`` (e.g. "mergeable"), for messages."""
    return [name for name in strategy_names() if getattr(strategy_class(name), capability)]


def strategy_configs() -> dict:
    """Every strategy's schema by name, its defaults with ``name`` filled in (for the ConfigStore:
    ``<name>_schema``). A strategy's name is written nowhere else."""
    return {name: strategy_class(name).config(name=name) for name in strategy_names()}


def build_strategy(run_cfg, task) -> Strategy:
    return strategy_class(run_cfg.strategy.name)(run_cfg, task)
