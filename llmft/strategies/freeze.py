"""Layer freezing: embeddings and all but the top-k blocks stay fixed; what is above them
(pooler, final norm) and the task head train. Or name the trainable parameters by pattern."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import List, Optional

from llmft.core.config import StrategyConfig
from llmft.core.errors import UserError
from llmft.strategies.base import Strategy, set_trainable


@dataclass
class FreezeStrategyConfig(StrategyConfig):
    lr: float = 1e-4  # fewer parameters train: a higher rate than full
    trainable_layers: int = 2  # top-k blocks that train (0: head only)
    # Instead of top-k: glob patterns of parameter names that train (the head always trains),
    # e.g. ["*.encoder.layer.5.*", "*LayerNorm*"].
    trainable_patterns: Optional[List[str]] = None


class Freeze(Strategy):
    config = FreezeStrategyConfig

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        if run_cfg.strategy.trainable_layers < 0:
            raise UserError(f"strategy.trainable_layers must be >= 0 (got {run_cfg.strategy.trainable_layers})")

    def apply(self, model):
        from llmft.models.anatomy import num_blocks

        k, patterns = self.cfg.trainable_layers, self.cfg.trainable_patterns
        if patterns is None and k > num_blocks(model):
            raise UserError(f"strategy.trainable_layers={k}, but the model has {num_blocks(model)} blocks")

        def keep(name, part):
            if part.kind in ("head", "top") and patterns is None or part.kind == "head":
                return True
            if patterns is not None:
                return any(fnmatch.fnmatch(name, p) for p in patterns)
            return part.kind == "block" and part.depth_from_top <= k

        set_trainable(model, keep)
        return model
