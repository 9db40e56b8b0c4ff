"""BitFit: only the bias terms (and the task head) train."""
from dataclasses import dataclass

from llmft.core.config import StrategyConfig
from llmft.strategies.base import Strategy, set_trainable


@dataclass
class BitFitStrategyConfig(StrategyConfig):
    # biases move little per step: a rate ~50x full's (Ben Zaken et al. used 1e-4..1e-3 over many epochs)
    lr: float = 3e-3
    weight_decay: float = 0.0


class BitFit(Strategy):
    config = BitFitStrategyConfig

    @classmethod
    def trains_matrices(cls, run_cfg) -> bool:
        return False  # biases and the head only

    def apply(self, model):
        set_trainable(model, lambda name, part: part.kind == "head" or name.endswith(".bias"))
        return model
