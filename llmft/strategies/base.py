"""The Strategy protocol: how a fine-tuning method changes loading, parameters and saving."""
from __future__ import annotations

from typing import ClassVar

from llmft.config import StrategyConfig
from llmft.registry import Registry

STRATEGIES = Registry("llmft.strategies", key="strategy")


class Strategy:
    """Base class. Subclasses set ``name`` and ``config`` and override what they change.

    The recipe calls, in order: ``validate_config`` (before anything loads),
    ``model_load_kwargs`` (extra ``from_pretrained`` arguments, e.g. quantization),
    ``apply`` (returns the model to train), ``callbacks`` (Trainer callbacks).
    """

    name: ClassVar[str]
    config: ClassVar[type[StrategyConfig]] = StrategyConfig
    saves_adapter: ClassVar[bool] = False  # True: model/ is a PEFT adapter folder

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        STRATEGIES.register(cls)

    def __init__(self, cfg, task):
        self.cfg = cfg
        self.task = task

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        """Raise UserError for impossible combinations (wrong task, bad knob values)."""

    def model_load_kwargs(self) -> dict:
        return {}

    def apply(self, model):
        return model

    def callbacks(self) -> list:
        return []
