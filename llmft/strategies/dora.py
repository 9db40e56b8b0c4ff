"""DoRA (PEFT): LoRA with the weight split into magnitude and direction; same knobs as lora."""
from dataclasses import dataclass

from llmft.strategies.lora import LoRA, LoraStrategyConfig


@dataclass
class DoraStrategyConfig(LoraStrategyConfig):
    name: str = "dora"
    use_dora: bool = True


class DoRA(LoRA):
    name = "dora"
    config = DoraStrategyConfig
