"""Every use of a private part of transformers, PEFT or torch, each with one line saying why.

tests/unit/test_hf_boundary.py guards each one: it fails when the library changes under it
(a name gone, a signature changed, the Trainer no longer calling it as relied on). Nothing here
imports torch, transformers or PEFT at module level: the Trainer overrides are a mixin
(``TrainerPrivates``) that runtime/hf_trainer.py puts before transformers' Trainer.
"""
from __future__ import annotations

import inspect
from pathlib import Path


class TrainerPrivates:
    """The Trainer's private methods llmft overrides; each calls a public hook of the subclass."""

    def _save_checkpoint(self, model, trial):
        # why: the Trainer deletes checkpoints beyond save_total_limit before the new one is marked
        # complete (on_save), so a kill in between left nothing to resume from; rotation waits for
        # the marker instead (run_dir.prune_checkpoints, called once it is written)
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit

    def _get_grad_norm(self, model, grad_norm=None):
        # why: the one place the training loop hands over the norm of each step's gradient, before the optimizer step
        return self.check_grad_norm(super()._get_grad_norm(model, grad_norm))

    def _get_train_sampler(self, train_dataset=None):
        # why: the Trainer builds its train DataLoader's sampler here and has no public way to pass one
        custom = self.train_sampler()
        return super()._get_train_sampler(train_dataset) if custom is None else custom

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The Trainer's loop with the split's loss (runtime/split_loss.py) as ``eval_loss``, not
        its mean of per-batch means."""
        # why: the loop computes <prefix>_loss itself; compute_loss adds each row's loss to self._split_loss
        self._split_loss = self.new_split_loss()
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
            loss = self._split_loss.value() if self._split_loss is not None else None
        finally:
            self._split_loss = None
        if loss is not None and f"{metric_key_prefix}_loss" in output.metrics:
            output.metrics[f"{metric_key_prefix}_loss"] = loss
        return output

    def own_loss_normalisation(self, token_mean: bool) -> None:
        """Gradient accumulation and processes divide the loss as the loss was computed."""
        # why: transformers 5 takes any forward(**kwargs) for a loss normalised by its token count and
        # then skips the division by gradient accumulation and multiplies by the process count: for
        # heads whose loss is a per-batch mean (and for llmft's objective), that scales the gradient
        # by grad_accum x world size. Only a token-mean loss keeps the Trainer's normalisation.
        self.model_accepts_loss_kwargs = self.model_accepts_loss_kwargs and token_mean

    def session_tokens(self) -> int:
        """Input tokens seen by this train() call (a resumed run: not those before its checkpoint)."""
        # why: train() records the count it started from there (its own tokens/s uses it)
        return self.state.num_input_tokens_seen - getattr(self, "_initial_num_input_tokens_seen", 0)


def unwrap_without_deepspeed() -> None:
    """accelerate's unwrap_model (the Trainer calls it at init and at each save) imports DeepSpeed
    (~1.3 s) whenever it is installed, only to test whether the model is a DeepSpeedEngine."""
    # why: no model is a DeepSpeedEngine before DeepSpeed is imported (a ZeRO run imports it when it
    # wraps the model), so the check asks for the package only once it is loaded: runs without ZeRO
    # never import it. Guarded: tests/e2e/test_startup.py.
    import sys

    from accelerate.utils import other

    installed = other.is_deepspeed_available
    if getattr(installed, "only_once_imported", False):
        return

    def is_deepspeed_available() -> bool:
        return "deepspeed" in sys.modules and installed()

    is_deepspeed_available.only_once_imported = True
    other.is_deepspeed_available = is_deepspeed_available


def peft_without_bitsandbytes() -> None:
    """PEFT's tuners import bitsandbytes (~1.5 s) whenever it is installed, only to test whether a
    layer they wrap is one of its quantized layers; PEFT has no setting to skip that."""
    # why: no layer is a bitsandbytes layer before bitsandbytes is imported (QLoRA's 4-bit load
    # imports it), so the tests ask for the package only once it is loaded: LoRA on a plain base
    # never imports it. Call before PEFT wraps or loads; guarded: tests/e2e/test_startup.py.
    import sys

    import peft.import_utils as imports

    for name in ("is_bnb_available", "is_bnb_4bit_available"):
        installed = getattr(imports, name)

        def loaded(installed=installed) -> bool:
            return "bitsandbytes" in sys.modules and installed()

        for module in list(sys.modules.values()):
            if (getattr(module, "__name__", "").startswith("peft.") and module is not imports
                    and getattr(module, name, None) is installed):
                setattr(module, name, loaded)


def attention_implementation(config) -> str | None:
    """The attention kernel a model's config selects (``sdpa``, ``eager``, ...); None: no config."""
    # why: transformers keeps the resolved choice only under this name
    return getattr(config, "_attn_implementation", None)


def cpu_has_bf16() -> bool:
    import torch

    # why: torch has no public query for the CPU's bf16 instructions (AVX512-BF16 or AMX)
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


PREFIX_MARK = "_llmft_prefix_cache"  # on the forward cache_as_past_key_values installed


def peft_cache_name() -> str:
    """The keyword PEFT hands the prefix to the model under: ``past_key_values`` before PEFT 0.22,
    the installed transformers' own name (``cache`` from 5.24) after."""
    import peft.import_utils

    name = getattr(peft.import_utils, "get_transformers_cache_name", None)
    return name() if name else "past_key_values"


def cache_as_past_key_values(model):
    """PEFT calls the whole model with the prefix only when the model's forward signature names
    PEFT's cache keyword (``peft_cache_name``); otherwise PEFT < 0.22 refuses and PEFT 0.22 runs the
    backbone and the head by its own code (its own pooling, dropout and loss, not the model's).
    transformers 5 task heads such as BertForSequenceClassification take the cache only through
    ``**kwargs``. This gives the model's forward that keyword and passes the prefix on as ``cache``,
    so every PEFT version runs the model's own forward (in-repo: no PEFT release does, peft #1962)."""
    original = model.forward
    params = inspect.signature(original).parameters
    name = peft_cache_name()
    if name in params or getattr(original, PREFIX_MARK, False):
        return model
    if "cache" not in params and not hasattr(model, getattr(model, "base_model_prefix", "")):
        return model

    def forward(*args, **kwargs):
        prefix = kwargs.pop(name, None)
        if prefix is not None:
            kwargs["cache"] = prefix
        return original(*args, **kwargs)

    # the model's own parameters plus PEFT's keyword: the Trainer keeps the data columns it names
    named = [q for q in params.values() if q.kind != q.VAR_KEYWORD]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)]
    forward.__signature__ = inspect.signature(original).replace(
        parameters=[*named, *extra, *[q for q in params.values() if q.kind == q.VAR_KEYWORD]])
    setattr(forward, PREFIX_MARK, True)
    # why: PEFT's prefix forward passes the prefix only to a model whose forward signature names it
    model.forward = forward  # this instance only: PEFT reads the signature of this bound forward
    return model


def loadable_prompt_embeddings(adapter: Path, embedding) -> None:
    """PEFT's checkpoint of a prompt encoder's output, replaced by ``embedding`` (the encoder's
    input table) where the shapes differ, so that PEFT's load of the checkpoint succeeds."""
    from safetensors.torch import load_file, save_file

    # why: PEFT saves prompt learning as the tensor "prompt_embeddings" in adapter_model.safetensors
    # and loads it back into the encoder's embedding table
    tensors = load_file(str(adapter))
    if tensors.get("prompt_embeddings") is not None and tensors["prompt_embeddings"].shape != embedding.shape:
        tensors["prompt_embeddings"] = embedding.detach().cpu().contiguous()
        save_file(tensors, str(adapter), metadata={"format": "pt"})


def model_source(model) -> str:
    """The folder or hub id ``model`` was loaded from."""
    # why: from_pretrained records it on the config only, under this name
    return model.config._name_or_path


def quantized_weight_bias(module):
    """(weight, bias) of a dynamically quantized Linear."""
    # why: the quantized Linear has no public getter for its packed weight and bias
    return module._weight_bias()


def quantized_tensor(values, scale, zero, axis=None):
    """A quantized tensor from its int8 values, scale(s), zero point(s) and channel ``axis`` (None:
    one scale for the whole tensor)."""
    import torch

    # why: torch builds a quantized tensor from given int8 values only through these
    if axis is None:
        return torch._make_per_tensor_quantized_tensor(values, float(scale), int(zero))
    return torch._make_per_channel_quantized_tensor(values, scale, zero, int(axis))
