"""IA3 (PEFT): learned scaling vectors on keys, values and the feed-forward activations."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from llmft.core.config import StrategyConfig
from llmft.strategies.base import PeftStrategy
from llmft.strategies.lora import target_modules


@dataclass
class IA3StrategyConfig(StrategyConfig):
    lr: float = 5e-3  # scaling vectors start at 1 and move slowly (T-Few used 3e-3)
    weight_decay: float = 0.0
    # null: PEFT's defaults for the architecture (BERT: key, value, output.dense).
    target_modules: Optional[List[str]] = None
    feedforward_modules: Optional[List[str]] = None  # must be a subset of target_modules


class IA3(PeftStrategy):
    config = IA3StrategyConfig
    mergeable = True

    def peft_config(self):
        from peft import IA3Config

        return IA3Config(
            task_type=self.task.peft_task_type,
            target_modules=target_modules(self.cfg.target_modules),
            feedforward_modules=target_modules(self.cfg.feedforward_modules),
        )
