"""Prompt tuning (PEFT): a trained soft prompt of virtual token embeddings before the input."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from llmft.core.config import StrategyConfig
from llmft.core.errors import UserError, require_one_of
from llmft.strategies.prefix import SoftPrompt


@dataclass
class PromptTuningStrategyConfig(StrategyConfig):
    name: str = "prompt_tuning"
    num_virtual_tokens: int = 20
    head: str = "classifier"  # classifier | verbalizer (the causal LM's own head at data.prompt.verbalizer)
    init: str = "random"  # random | text
    init_text: Optional[str] = None  # with init=text: the soft prompt starts as these tokens


class PromptTuning(SoftPrompt):
    name = "prompt_tuning"
    config = PromptTuningStrategyConfig

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        super().validate_config(run_cfg)
        s = run_cfg.strategy
        require_one_of("strategy.init", s.init, ("random", "text"))
        if s.init == "text" and not s.init_text:
            raise UserError("strategy.init_text is required with strategy.init=text")

    def peft_config(self):
        from peft import PromptTuningConfig

        text = self.cfg.init == "text"
        return PromptTuningConfig(
            task_type=self.peft_task_type,
            num_virtual_tokens=self.cfg.num_virtual_tokens,
            prompt_tuning_init="TEXT" if text else "RANDOM",
            prompt_tuning_init_text=self.cfg.init_text if text else None,
            tokenizer_name_or_path=self.tokenizer_path if text else None,
        )

    def apply(self, model):
        self.tokenizer_path = model.config._name_or_path  # text init tokenizes with the model's tokenizer
        return super().apply(model)
