"""LoRA (PEFT): low-rank updates on chosen linear layers; the task head trains in full."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from llmft.core.config import StrategyConfig
from llmft.core.errors import UserError, require_one_of
from llmft.strategies.base import PeftStrategy


@dataclass
class LoraStrategyConfig(StrategyConfig):
    name: str = "lora"
    r: int = 8  # rank of the update
    alpha: float = 16  # scaling: the update is multiplied by alpha / r
    dropout: float = 0.1
    # Module names to adapt; null: PEFT's default for the architecture (BERT: query, value;
    # Llama: q_proj, v_proj). [all-linear] adapts every linear layer but the head.
    target_modules: Optional[List[str]] = None
    bias: str = "none"  # none | all | lora_only
    use_dora: bool = False  # weight-decomposed LoRA (see dora)


class LoRA(PeftStrategy):
    name = "lora"
    config = LoraStrategyConfig

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        s = run_cfg.strategy
        if s.r < 1:
            raise UserError(f"strategy.r must be >= 1 (got {s.r})")
        if not 0 <= s.dropout < 1:
            raise UserError(f"strategy.dropout must be in [0, 1) (got {s.dropout})")
        require_one_of("strategy.bias", s.bias, ("none", "all", "lora_only"))

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            task_type=self.task.peft_task_type,
            r=self.cfg.r,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=target_modules(self.cfg.target_modules),
            bias=self.cfg.bias,
            use_dora=self.cfg.use_dora,
        )


def target_modules(names):
    """Config list -> PEFT's argument: None (PEFT's default), a list, or "all-linear"."""
    if names is None:
        return None
    names = list(names)
    return "all-linear" if names == ["all-linear"] else names
