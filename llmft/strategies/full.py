"""Full fine-tuning: every parameter trains. The default when no strategy is given."""
from dataclasses import dataclass

from llmft.core.config import StrategyConfig
from llmft.strategies.base import Strategy


@dataclass
class FullConfig(StrategyConfig):
    name: str = "full"


class Full(Strategy):
    name = "full"
    config = FullConfig
