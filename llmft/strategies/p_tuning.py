"""P-tuning (PEFT): virtual tokens produced by a small prompt encoder (MLP or LSTM)."""
from __future__ import annotations

from dataclasses import dataclass

from llmft.core.config import StrategyConfig
from llmft.core.errors import require_one_of
from llmft.strategies.base import PeftStrategy
from llmft.strategies.prefix import check_virtual_tokens


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


ENCODER_STATE = "prompt_encoder.safetensors"


def prompt_encoder_checkpoints():
    """PEFT checkpoints of P-tuning hold the encoder's output, not its weights, so a resumed run
    would restart the MLP/LSTM from scratch. This saves the encoder's weights into every
    checkpoint and loads them back when training resumes from one."""
    from pathlib import Path

    from safetensors.torch import load_file, save_file
    from transformers import TrainerCallback

    def encoder_params(model):
        return {n: p for n, p in model.named_parameters() if p.requires_grad and "prompt_encoder" in n}

    class PromptEncoderCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                save_file({n: p.detach().cpu().contiguous() for n, p in encoder_params(model).items()},
                          str(folder / ENCODER_STATE))

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" / ENCODER_STATE
            if state.global_step > 0 and saved.is_file():
                params = encoder_params(model)
                for name, tensor in load_file(str(saved)).items():
                    params[name].data.copy_(tensor)

    return PromptEncoderCheckpoints()
