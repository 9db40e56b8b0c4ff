"""VeRA (PEFT): one pair of frozen random low-rank matrices shared by all adapted layers; each
layer trains only two scaling vectors (d, b). PEFT sizes the shared pair to the largest adapted
shape and slices it per layer, so target modules of different shapes work. The random pair is
saved with the adapter (save_projection), so reloading does not depend on regenerating it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from llmft.core.config import StrategyConfig
from llmft.core.errors import require
from llmft.strategies.base import PeftStrategy
from llmft.strategies.lora import target_modules


@dataclass
class VeraStrategyConfig(StrategyConfig):
    lr: float = 4e-3  # the low end of the VeRA paper's rates for RoBERTa-base on GLUE (4e-3 to 1e-2); not tuned here
    weight_decay: float = 0.0
    r: int = 256  # rank of the shared random matrices (PEFT's default; the vectors train, not them)
    # null: PEFT's default for the architecture (BERT: query, value; Llama: q_proj, v_proj)
    target_modules: Optional[List[str]] = None
    projection_prng_key: int = 0  # seed of the shared random matrices
    vera_dropout: float = 0.0
    d_initial: float = 0.1  # initial value of the d vectors (b starts at 0: the update starts at 0)


class VeRA(PeftStrategy):
    config = VeraStrategyConfig
    mergeable = True  # PEFT's VeRA layers merge (b * (B @ (d * A))) into the base weight

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        s = run_cfg.strategy
        require(s.r >= 1, "strategy.r", f"must be >= 1 (got {s.r})")
        require(0 <= s.vera_dropout < 1, "strategy.vera_dropout", f"must be in [0, 1) (got {s.vera_dropout})")
        require(s.d_initial != 0, "strategy.d_initial", "must be non-zero (d = 0 and b = 0 leave no gradient)")

    def peft_config(self):
        from peft import VeraConfig

        s = self.cfg
        return VeraConfig(task_type=self.task.peft_task_type, r=s.r, target_modules=target_modules(s.target_modules),
                          projection_prng_key=s.projection_prng_key, save_projection=True,
                          vera_dropout=s.vera_dropout, d_initial=s.d_initial)
