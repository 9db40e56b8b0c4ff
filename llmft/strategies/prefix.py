"""Prefix tuning (PEFT): trained key/value prefixes in every attention layer."""
from __future__ import annotations

from dataclasses import dataclass

from llmft.core.config import StrategyConfig
from llmft.core.errors import UserError
from llmft.strategies.base import PeftStrategy


@dataclass
class PrefixStrategyConfig(StrategyConfig):
    name: str = "prefix"
    num_virtual_tokens: int = 20
    prefix_projection: bool = False  # reparameterise the prefix through an MLP
    encoder_hidden_size: int = 128  # the MLP's width when prefix_projection is on


def check_virtual_tokens(run_cfg) -> None:
    if run_cfg.strategy.num_virtual_tokens < 1:
        raise UserError(f"strategy.num_virtual_tokens must be >= 1 (got {run_cfg.strategy.num_virtual_tokens})")


class Prefix(PeftStrategy):
    name = "prefix"
    config = PrefixStrategyConfig

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        check_virtual_tokens(run_cfg)

    def apply(self, model):
        if not accepts_past_key_values(model):
            import peft
            import transformers

            raise UserError(
                f"strategy=prefix: PEFT {peft.__version__} feeds prefixes as `past_key_values`, which "
                f"{type(model).__name__} in transformers {transformers.__version__} does not take; "
                f"use strategy=prompt_tuning or strategy=p_tuning"
            )
        return super().apply(model)

    def peft_config(self):
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(
            task_type=self.task.peft_task_type,
            num_virtual_tokens=self.cfg.num_virtual_tokens,
            prefix_projection=self.cfg.prefix_projection,
            encoder_hidden_size=self.cfg.encoder_hidden_size,
        )


def accepts_past_key_values(model) -> bool:
    """What PEFT's prefix-tuning forward checks, on the model and on its backbone."""
    import inspect

    modules = [model, getattr(model, getattr(model, "base_model_prefix", ""), None)]
    return any(m is not None and "past_key_values" in inspect.signature(m.forward).parameters for m in modules)
