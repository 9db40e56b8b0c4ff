"""Prompt tuning (PEFT): a trained soft prompt of virtual token embeddings before the input."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from llmft.core.config import StrategyConfig, choice
from llmft.core.errors import UserError
from llmft.runtime.hf_private import model_source
from llmft.strategies.prefix import HEADS, SoftPrompt


@dataclass
class PromptTuningStrategyConfig(StrategyConfig):
    lr: float = 1e-2  # a soft prompt needs a high rate (Lester et al. used 0.3 with Adafactor)
    weight_decay: float = 0.0
    num_virtual_tokens: int = 20
    head: str = choice(*HEADS)  # verbalizer: the causal LM's own head at data.prompt.verbalizer's words
    init: str = choice("random", "text")
    init_text: Optional[str] = None  # with init=text: the soft prompt starts as these tokens


class PromptTuning(SoftPrompt):
    config = PromptTuningStrategyConfig

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        super().validate_config(run_cfg)
        s = run_cfg.strategy
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
        self.tokenizer_path = model_source(model)  # text init tokenizes with the model's tokenizer
        return super().apply(model)
