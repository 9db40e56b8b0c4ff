"""Prefix tuning (PEFT): trained key/value prefixes in every attention layer."""
from __future__ import annotations

from dataclasses import dataclass

from llmft.core.config import StrategyConfig
from llmft.core.errors import UserError
from llmft.strategies.base import PeftStrategy


@dataclass
class PrefixStrategyConfig(StrategyConfig):
    name: str = "prefix"
    num_virtual_tokens: int = 20
    prefix_projection: bool = False  # reparameterise the prefix through an MLP
    encoder_hidden_size: int = 128  # the MLP's width when prefix_projection is on


def check_virtual_tokens(run_cfg) -> None:
    if run_cfg.strategy.num_virtual_tokens < 1:
        raise UserError(f"strategy.num_virtual_tokens must be >= 1 (got {run_cfg.strategy.num_virtual_tokens})")


class Prefix(PeftStrategy):
    name = "prefix"
    config = PrefixStrategyConfig

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        check_virtual_tokens(run_cfg)

    def apply(self, model):
        return super().apply(cache_as_past_key_values(model))

    def callbacks(self):
        return [prompt_encoder_checkpoints()] if self.cfg.prefix_projection else []  # the MLP's weights

    @classmethod
    def adapt_base(cls, base):
        return cache_as_past_key_values(base)

    def peft_config(self):
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(
            task_type=self.task.peft_task_type,
            num_virtual_tokens=self.cfg.num_virtual_tokens,
            prefix_projection=self.cfg.prefix_projection,
            encoder_hidden_size=self.cfg.encoder_hidden_size,
        )


def cache_as_past_key_values(model):
    """PEFT 0.21 hands the prefix to the model as ``past_key_values`` (a DynamicCache) and checks
    the model's forward signature for that name; transformers 5 models take it as ``cache``. This
    gives the model's forward that name and passes the prefix on as ``cache`` (PEFT's prefix
    forward is otherwise used as is; in-repo because no PEFT release maps the two, peft #1962)."""
    import inspect

    original = model.forward
    params = inspect.signature(original).parameters
    if "past_key_values" in params or getattr(original, "_llmft_prefix_cache", False):
        return model
    if "cache" not in params and not hasattr(model, getattr(model, "base_model_prefix", "")):
        return model

    def forward(*args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            kwargs["cache"] = past_key_values
        return original(*args, **kwargs)

    # the model's own parameters plus past_key_values: the Trainer keeps the data columns it names
    named = [q for q in params.values() if q.kind != q.VAR_KEYWORD]
    extra = [inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None)]
    forward.__signature__ = inspect.signature(original).replace(
        parameters=[*named, *extra, *[q for q in params.values() if q.kind == q.VAR_KEYWORD]])
    forward._llmft_prefix_cache = True
    model.forward = forward  # this instance only: PEFT reads the signature of this bound forward
    return model


ENCODER_STATE = "prompt_encoder.safetensors"


def prompt_encoder_checkpoints():
    """PEFT checkpoints of P-tuning (and of prefixes through an MLP) hold the encoder's output, not its weights, so a resumed run
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
