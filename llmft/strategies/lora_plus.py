"""LoRA+ (Hayou et al. 2024): LoRA with B trained at lr_ratio x A's learning rate (16, the paper's
recommended 2^4). The base rate is half LoRA's, as PEFT's create_loraplus_optimizer advises."""
from dataclasses import dataclass

from llmft.strategies.lora import LoRA, LoraStrategyConfig


@dataclass
class LoraPlusStrategyConfig(LoraStrategyConfig):
    lr: float = 1e-3  # A's (and the head's) rate; B trains at lr x lr_ratio
    lr_ratio: float = 16.0


class LoraPlus(LoRA):
    config = LoraPlusStrategyConfig
