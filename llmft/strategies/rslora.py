"""rsLoRA (PEFT): rank-stabilised LoRA, the update scaled by alpha / sqrt(r) (PEFT's use_rslora)."""
from dataclasses import dataclass

from llmft.strategies.lora import LoRA, LoraStrategyConfig


@dataclass
class RsLoraStrategyConfig(LoraStrategyConfig):
    name: str = "rslora"


class RsLoRA(LoRA):
    name = "rslora"
    config = RsLoraStrategyConfig
    rank_stabilized = True
