"""DoRA (PEFT): LoRA with the weight split into magnitude and direction; same knobs as lora."""
from dataclasses import dataclass

from llmft.strategies.lora import LoRA, LoraStrategyConfig


@dataclass
class DoraStrategyConfig(LoraStrategyConfig):
    use_dora: bool = True


class DoRA(LoRA):
    config = DoraStrategyConfig
