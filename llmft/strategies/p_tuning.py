"""P-tuning (PEFT): virtual tokens produced by a small prompt encoder (MLP or LSTM)."""
from __future__ import annotations

from dataclasses import dataclass

from llmft.core.config import StrategyConfig
from llmft.core.errors import require_one_of
from llmft.strategies.base import PeftStrategy
from llmft.strategies.prefix import check_virtual_tokens, prompt_encoder_checkpoints


@dataclass
class PTuningStrategyConfig(StrategyConfig):
    name: str = "p_tuning"
    num_virtual_tokens: int = 20
    encoder: str = "mlp"  # mlp | lstm
    encoder_hidden_size: int = 128


class PTuning(PeftStrategy):
    name = "p_tuning"
    config = PTuningStrategyConfig

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        check_virtual_tokens(run_cfg)
        require_one_of("strategy.encoder", run_cfg.strategy.encoder, ("mlp", "lstm"))

    def callbacks(self):
        return [prompt_encoder_checkpoints()]

    def peft_config(self):
        from peft import PromptEncoderConfig

        return PromptEncoderConfig(
            task_type=self.task.peft_task_type,
            num_virtual_tokens=self.cfg.num_virtual_tokens,
            encoder_reparameterization_type=self.cfg.encoder.upper(),
            encoder_hidden_size=self.cfg.encoder_hidden_size,
        )
