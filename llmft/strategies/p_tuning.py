"""P-tuning (PEFT): virtual tokens produced by a small prompt encoder (MLP or LSTM)."""
from __future__ import annotations

from dataclasses import dataclass

from llmft.core.config import StrategyConfig
from llmft.core.errors import require_one_of
from llmft.strategies.prefix import SoftPrompt, prompt_encoder_checkpoints


@dataclass
class PTuningStrategyConfig(StrategyConfig):
    name: str = "p_tuning"
    num_virtual_tokens: int = 20
    head: str = "classifier"  # classifier | verbalizer (the causal LM's own head at data.prompt.verbalizer)
    encoder: str = "mlp"  # mlp | lstm
    encoder_hidden_size: int = 128


class PTuning(SoftPrompt):
    name = "p_tuning"
    config = PTuningStrategyConfig

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        super().validate_config(run_cfg)
        require_one_of("strategy.encoder", run_cfg.strategy.encoder, ("mlp", "lstm"))

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
