"""BitFit: only the bias terms (and the task head) train."""
from dataclasses import dataclass

from llmft.core.config import StrategyConfig
from llmft.strategies.base import Strategy, set_trainable


@dataclass
class BitFitStrategyConfig(StrategyConfig):
    name: str = "bitfit"


class BitFit(Strategy):
    name = "bitfit"
    config = BitFitStrategyConfig

    def apply(self, model):
        set_trainable(model, lambda name, part: part.kind == "head" or name.endswith(".bias"))
        return model
