"""Prefix tuning (PEFT): trained key/value prefixes in every attention layer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmft.core.config import StrategyConfig
from llmft.core.errors import UserError
from llmft.runtime.hf_private import cache_as_past_key_values, loadable_prompt_embeddings
from llmft.strategies.base import PeftStrategy
from llmft.strategies.zero_shot import ZeroShot


@dataclass
class PrefixStrategyConfig(StrategyConfig):
    # prefixes are new parameters (Li & Liang: 5e-5..8e-5 with reparameterisation, higher without)
    lr: float = 5e-3
    weight_decay: float = 0.0
    num_virtual_tokens: int = 20
    prefix_projection: bool = False  # reparameterise the prefix through an MLP
    encoder_hidden_size: int = 128  # the MLP's width when prefix_projection is on


HEADS = ("classifier", "verbalizer")


class SoftPrompt(PeftStrategy, abstract=True):
    """Prompt tuning and P-tuning: virtual tokens before the input, read by one of two heads.
    ``head=classifier``: PEFT's sequence classifier (a new head trains with the prompt).
    ``head=verbalizer``: the causal LM's own head, scored at data.prompt.verbalizer's words after
    data.prompt.template, as zero_shot / pet read it (models/prompting.py): nothing new but the
    prompt trains and model/ holds the prompt alone (Lester et al., Liu et al.'s P-tuning)."""

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        check_virtual_tokens(run_cfg)
        if run_cfg.strategy.head == "verbalizer":
            ZeroShot.validate_config(run_cfg)

    def __init__(self, run_cfg, task):
        super().__init__(run_cfg, task)
        self.reader = ZeroShot(run_cfg, task) if self.cfg.head == "verbalizer" else None  # the LM's head
        if self.reader:
            self.reader.calibration = None  # a trained prompt is not calibrated

    @property
    def peft_task_type(self) -> str:
        return "CAUSAL_LM" if self.reader else self.task.peft_task_type

    def model_class(self, path: str) -> str | None:
        if self.reader is None:
            return None
        name = self.reader.model_class(path)
        if self.reader.kind != "causal":
            raise UserError(f"strategy.head=verbalizer: PEFT's soft prompts read a causal LM's next token; "
                            f"{path} is a masked LM: use strategy.head=classifier, or strategy=pet")
        return name

    def prepare_data(self, splits: dict, tokenizer) -> dict:
        return self.reader.prepare_data(splits, tokenizer) if self.reader else splits

    def apply(self, model):
        model = super().apply(model)
        return self.reader.classifier(model) if self.reader else model

    def report(self) -> dict:
        return self.reader.report() if self.reader else {}

    def metadata(self) -> dict:
        return self.reader.prompt_meta() if self.reader else {}

    def save(self, trainer, model_dir: Path) -> None:
        if self.reader is None:
            return super().save(trainer, model_dir)
        if trainer.is_world_process_zero():
            trainer.model.lm.save_pretrained(str(model_dir))  # the soft prompt alone

    @classmethod
    def prepare_saved_data(cls, splits: dict, tokenizer, meta: dict) -> dict:
        return ZeroShot.prepare_saved_data(splits, tokenizer, meta) if meta.get("lm_kind") else splits

    @classmethod
    def load_trained(cls, model_dir: Path, task, meta: dict, tokenizer, trust_remote_code: bool = False,
                     **load_kwargs):
        loader = ZeroShot if meta.get("lm_kind") else super()
        return loader.load_trained(model_dir, task, meta, tokenizer, trust_remote_code, **load_kwargs)


def check_virtual_tokens(run_cfg) -> None:
    if run_cfg.strategy.num_virtual_tokens < 1:
        raise UserError(f"strategy.num_virtual_tokens must be >= 1 (got {run_cfg.strategy.num_virtual_tokens})")


class Prefix(PeftStrategy):
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


ENCODER_STATE = "prompt_encoder.safetensors"


def prompt_encoder_checkpoints():
    """PEFT checkpoints of P-tuning and of prefixes through an MLP hold the encoder's output, not
    its weights, so a resumed run would restart the MLP/LSTM from scratch (and a prefix MLP's
    output does not even fit back into its input embedding: PEFT's load fails). This saves the
    encoder's weights into every checkpoint, leaves PEFT a tensor it can load, and restores the
    weights when training resumes from a checkpoint or early stopping takes the best one back."""
    from pathlib import Path

    from safetensors.torch import load_file, save_file
    from transformers import TrainerCallback

    def encoder_params(model):
        return {n: p for n, p in model.named_parameters() if p.requires_grad and "prompt_encoder" in n}

    def restore(model, folder: Path) -> None:
        saved = folder / ENCODER_STATE
        if saved.is_file():
            params = encoder_params(model)
            for name, tensor in load_file(str(saved)).items():
                params[name].data.copy_(tensor)

    class PromptEncoderCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not (state.is_world_process_zero and folder.is_dir()):
                return
            params = encoder_params(model)
            save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, str(folder / ENCODER_STATE))
            adapter = folder / "adapter_model.safetensors"
            embedding = next((p for n, p in params.items() if n.endswith("embedding.weight")), None)
            if adapter.is_file() and embedding is not None:
                loadable_prompt_embeddings(adapter, embedding)  # its weights: restored from ENCODER_STATE

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step > 0:
                restore(model, Path(args.output_dir) / f"checkpoint-{state.global_step}")

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if args.load_best_model_at_end and state.best_model_checkpoint:  # the Trainer reloaded PEFT's part
                restore(model, Path(state.best_model_checkpoint))

    return PromptEncoderCheckpoints()
