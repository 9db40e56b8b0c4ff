"""Layer-wise learning-rate decay: every parameter trains, at lr x decay^(depth from the top).

The head and what sits above the blocks get lr, the top block lr x decay, the next one
lr x decay^2, ..., the embeddings lr x decay^(blocks + 1). The applied rate of every group is
logged as lr/<group> in metrics.jsonl.
"""
from __future__ import annotations

from dataclasses import dataclass

from llmft.core.config import StrategyConfig
from llmft.core.errors import UserError
from llmft.strategies.base import Strategy


@dataclass
class LLRDStrategyConfig(StrategyConfig):
    lr: float = 8e-5  # the top block's rate; lower blocks train slower
    decay: float = 0.9


class LLRD(Strategy):
    config = LLRDStrategyConfig

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        if not 0 < run_cfg.strategy.decay <= 1:
            raise UserError(f"strategy.decay must be in (0, 1] (got {run_cfg.strategy.decay})")

    def param_groups(self, model):
        return depth_groups(model, lambda part: self.cfg.decay ** part.depth_from_top)


def depth_groups(model, lr_scale) -> list[dict]:
    """One optimizer group per part of the model (embeddings, each block, top, head)."""
    from llmft.models.anatomy import parts

    groups: dict[str, dict] = {}
    for name, part in parts(model).items():
        group = groups.setdefault(part.label, {"name": part.label, "params": [], "lr_scale": lr_scale(part)})
        group["params"].append(name)
    return list(groups.values())
