"""LoRA (PEFT): low-rank updates on chosen linear layers; the task head trains in full."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from llmft.config import StrategyConfig
from llmft.errors import UserError
from llmft.strategies.base import Strategy


@dataclass
class LoraStrategyConfig(StrategyConfig):
    name: str = "lora"
    r: int = 8  # rank of the update
    alpha: float = 16  # scaling: the update is multiplied by alpha / r
    dropout: float = 0.1
    # Module names to adapt; null: PEFT's default for the architecture (BERT: query, value;
    # Llama: q_proj, v_proj). "all-linear" adapts every linear layer but the head.
    target_modules: Optional[List[str]] = None
    bias: str = "none"  # none | all | lora_only
    use_dora: bool = False


class LoRA(Strategy):
    name = "lora"
    config = LoraStrategyConfig
    saves_adapter = True

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        s = run_cfg.strategy
        if s.r < 1:
            raise UserError(f"strategy.r must be >= 1 (got {s.r})")
        if not 0 <= s.dropout < 1:
            raise UserError(f"strategy.dropout must be in [0, 1) (got {s.dropout})")
        if s.bias not in ("none", "all", "lora_only"):
            raise UserError(f"strategy.bias={s.bias!r} is not one of: none, all, lora_only")

    def peft_config(self):
        from peft import LoraConfig

        targets = self.cfg.target_modules
        if targets is not None:
            targets = list(targets)
            if targets == ["all-linear"]:
                targets = "all-linear"  # PEFT's own shortcut
        return LoraConfig(
            task_type=self.task.peft_task_type,
            r=self.cfg.r,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=targets,
            bias=self.cfg.bias,
            use_dora=self.cfg.use_dora,
        )

    def apply(self, model):
        from peft import get_peft_model

        try:
            return get_peft_model(model, self.peft_config())
        except ValueError as err:
            if "target_modules" in str(err):
                raise UserError(
                    f"strategy.target_modules: PEFT has no default for model type "
                    f"'{model.config.model_type}'; set e.g. strategy.target_modules=[q_proj,v_proj] "
                    f"or [all-linear]"
                ) from None
            raise
