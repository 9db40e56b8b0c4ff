"""P-tuning (PEFT): virtual tokens produced by a small prompt encoder (MLP or LSTM)."""
from __future__ import annotations

from dataclasses import dataclass

from llmft.core.config import StrategyConfig, choice
from llmft.strategies.prefix import HEADS, SoftPrompt, prompt_encoder_checkpoints


@dataclass
class PTuningStrategyConfig(StrategyConfig):
    lr: float = 3e-3  # the prompt encoder is a small new network
    weight_decay: float = 0.0
    num_virtual_tokens: int = 20
    head: str = choice(*HEADS)  # verbalizer: the causal LM's own head at data.prompt.verbalizer's words
    encoder: str = choice("mlp", "lstm")
    encoder_hidden_size: int = 128


class PTuning(SoftPrompt):
    config = PTuningStrategyConfig

    def callbacks(self):
        return [prompt_encoder_checkpoints()]

    def peft_config(self):
        from peft import PromptEncoderConfig

        return PromptEncoderConfig(
            task_type=self.peft_task_type,
            num_virtual_tokens=self.cfg.num_virtual_tokens,
            encoder_reparameterization_type=self.cfg.encoder.upper(),
            encoder_hidden_size=self.cfg.encoder_hidden_size,
        )
