"""Full fine-tuning: every parameter trains. The default when no strategy is given."""
from llmft.core.config import StrategyConfig
from llmft.strategies.base import Strategy


class Full(Strategy):
    config = StrategyConfig  # its defaults are full fine-tuning's
