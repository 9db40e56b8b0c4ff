"""LoRA (PEFT): low-rank updates on chosen linear layers; the task head trains in full.

The LoRA knobs (``LoraKnobs``), their checks and the PEFT config built from them live here once:
DoRA and QLoRA subclass LoRA, PET's ``params=lora|dora`` reuses them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from llmft.core.config import StrategyConfig, choice
from llmft.core.errors import UserError
from llmft.strategies.base import PeftStrategy


@dataclass
class LoraKnobs:
    r: int = 8  # rank of the update
    alpha: float = 16  # scaling: the update is multiplied by alpha / r
    dropout: float = 0.1
    # Module names to adapt; null: PEFT's default for the architecture (BERT: query, value;
    # Llama: q_proj, v_proj). [all-linear] adapts every linear layer but the head.
    target_modules: Optional[List[str]] = None
    # How A and B start (PEFT's init_lora_weights): default (Kaiming-uniform A, B = 0), gaussian,
    # pissa / olora (from the weights' SVD / QR), eva / corda (from a pass over the train split), loftq
    init: str = choice("default", "gaussian", "pissa", "olora", "eva", "loftq", "corda")
    lr_ratio: float = 1.0  # LoRA+: B's learning rate is lr_ratio x A's (lora_plus: 16)


@dataclass
class LoraStrategyConfig(LoraKnobs, StrategyConfig):
    lr: float = 2e-3  # the low-rank update starts at zero and needs a rate ~40x full's
    weight_decay: float = 0.0
    bias: str = choice("none", "all", "lora_only")
    use_dora: bool = False  # weight-decomposed LoRA (see dora)


def check_lora_knobs(s) -> None:
    if s.r < 1:
        raise UserError(f"strategy.r must be >= 1 (got {s.r})")
    if not s.alpha > 0:  # the update is scaled by alpha / r: 0 trains an adapter that does nothing
        raise UserError(f"strategy.alpha must be > 0 (got {s.alpha}; the update is scaled by alpha / r, "
                        f"e.g. strategy.alpha={2 * s.r})")
    if not 0 <= s.dropout < 1:
        raise UserError(f"strategy.dropout must be in [0, 1) (got {s.dropout})")


def lora_config(s, task_type: str | None, use_dora: bool, bias: str = "none", use_rslora: bool = False):
    """PEFT's LoraConfig from the LoRA knobs of a strategy section."""
    from peft import LoraConfig

    return LoraConfig(task_type=task_type, r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout,
                      target_modules=target_modules(s.target_modules), bias=bias, use_dora=use_dora,
                      use_rslora=use_rslora)


class LoRA(PeftStrategy):
    config = LoraStrategyConfig
    mergeable = True
    rank_stabilized = False  # the update scaled by alpha / sqrt(r) instead of alpha / r (rslora)

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        check_lora_knobs(run_cfg.strategy)

    def peft_config(self):
        return lora_config(self.cfg, self.task.peft_task_type, self.cfg.use_dora, self.cfg.bias, self.rank_stabilized)


def target_modules(names):
    """Config list -> PEFT's argument: None (PEFT's default), a list, or "all-linear"."""
    if names is None:
        return None
    names = list(names)
    return "all-linear" if names == ["all-linear"] else names
