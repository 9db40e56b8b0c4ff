"""Chunked cross-entropy for causal LMs (``train.loss_chunk_tokens``): the LM head and the loss are
computed a chunk of labelled tokens at a time, so the [tokens x vocab] fp32 logits (49k wide for
SmolLM2) never exist at once, and positions without a label never reach the head.

torch 2.13's ``F.linear_cross_entropy`` with ``LinearCrossEntropyOptions`` does the chunking: each
chunk's gradients wrt the hidden states, the head's weight and bias are computed in the forward and
its logits freed (no per-chunk logits kept for the backward, no second head pass as with per-chunk
checkpointing); a frozen head (LoRA) gets no weight gradient computed. transformers' causal LM heads
build every logit; liger-kernel's fused loss is Triton (GPU only).

The model runs as it always does (its hooks, NEFTune, PEFT adapters, gradient checkpointing, packed
rows); only in a forward given labels (training and evaluation, not generation) its head receives
an empty slice: a forward pre-hook on the head keeps the final hidden
states, and the model's ``loss_function`` (the one it hands its logits and labels to, with
``num_items_in_batch``) computes transformers' ForCausalLMLoss from them: the sum over the
labelled next tokens divided by ``num_items_in_batch``, else their mean. So gradient accumulation
and several processes normalise exactly as the plain path. A tied head (SmolLM2's lm_head is
embed_tokens) is the same Parameter: its gradient is the sum of both uses, as before.

Exact only where the logits are the head's output alone: a model whose config scales or caps its
logits, whose head is not a plain Linear (a LoRA-wrapped or quantized head), a ZeRO-3 partitioned
head, or any model whose loss differs on a probe batch keeps the plain path (``unchunkable``).
"""
from __future__ import annotations

import contextlib
import logging

log = logging.getLogger(__name__)
IGNORE = -100
# config keys that transform the logits after the head (Gemma 2/3, Cohere, Granite, ...)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "logit_softcapping",
                    "output_multiplier", "logits_soft_cap")


def causal_lm_loss(hidden, weight, bias, labels, chunk: int, num_items_in_batch=None, ignore_index: int = IGNORE,
                   shift_labels=None, token_losses: list | None = None):
    """transformers' ForCausalLMLoss from the final hidden states [..., positions, width]: the head
    (``weight``, ``bias``) and cross-entropy applied ``chunk`` labelled positions at a time.
    ``token_losses`` (a list, without gradients only): gets each position's loss (0 where no label),
    shaped like the shifted labels, for the split's per-sequence loss (runtime/split_loss.py)."""
    import torch
    import torch.nn.functional as F

    if shift_labels is None:  # position t scores the token at t + 1 (ForCausalLMLoss' shift)
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    shift_labels = shift_labels.to(hidden.device)
    if hidden.shape[:-1] != shift_labels.shape:
        raise ValueError(f"hidden states {tuple(hidden.shape)} do not match the labels {tuple(shift_labels.shape)}")
    keep = shift_labels != ignore_index
    dtype = weight.dtype
    if torch.is_autocast_enabled(hidden.device.type):  # the head's matmul in autocast's dtype, as nn.Linear's
        dtype = torch.get_autocast_dtype(hidden.device.type)
        weight, bias = weight.to(dtype), bias.to(dtype) if bias is not None else None
    inputs = hidden[keep].to(dtype)
    targets = shift_labels[keep]
    if targets.numel():  # "accurate": fp32 softmax and gradient sums, as the plain path's fp32 upcast
        options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=chunk, chunking_method=None,
                                                     acc_policy="accurate")
        reduction = "sum" if token_losses is None else "none"
        total = F.linear_cross_entropy(inputs, weight, targets, linear_bias=bias, reduction=reduction,
                                       ignore_index=ignore_index, options=options)
        if token_losses is not None:
            token_losses.append(total.new_zeros(keep.shape).masked_scatter_(keep, total.detach()))
            total = total.sum()
    else:  # cross_entropy's sum over nothing, still attached to the graph
        total = inputs.sum() * 0.0
    if num_items_in_batch is None:
        return total / keep.sum()  # the mean (nan over no target, as cross_entropy's mean)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def language_model(model):
    """The transformers model that owns the head (inside PEFT and DDP-style ``.module`` wrappers)."""
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model


class ChunkedLoss:
    """The chunked loss on one model while ``install``ed: in a forward given labels its head sees an
    empty slice and its ``loss_function`` computes the loss from the hidden states the head was given."""

    def __init__(self, model, chunk: int):
        self.model, self.chunk = model, int(chunk)
        self.lm = language_model(model)
        get_head = getattr(self.lm, "get_output_embeddings", None)
        self.head = get_head() if callable(get_head) else None
        self.hidden = None  # the final hidden states the head was given in this forward
        self.armed = False  # this forward came with labels
        self._handles = []
        self._plain = None  # the model's loss_function before install

    def unchunkable(self) -> str | None:
        """Why this model's loss would not be the same chunked; None: it is (checked on a probe batch)."""
        import torch

        if type(self.head) is not torch.nn.Linear:  # noqa: E721  (a subclass: LoRA, bitsandbytes)
            return f"its output layer is {type(self.head).__name__}, not a plain Linear"
        configs = [getattr(self.lm, "config", None)]
        configs.append(getattr(configs[0], "text_config", None))
        for config in filter(None, configs):
            for key in LOGIT_TRANSFORMS:
                value = getattr(config, key, None)
                if value not in (None, 0, 1, 1.0, False):
                    return f"its config transforms the logits after the head ({key}={value})"
        if hasattr(self.head.weight, "ds_numel"):
            return "ZeRO-3 partitions the head's weight"
        if not hasattr(type(self.lm), "loss_function"):
            return "it has no loss_function to hand its labels to"
        return self._probe()

    def _probe(self) -> str | None:
        """The model's own loss and the chunked one on a fixed random batch (eval mode, no gradient,
        the global RNG untouched); a remote model that computes its loss by itself differs here."""
        import torch

        device = self.head.weight.device
        vocab = self.head.weight.shape[0]
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(min(3, vocab - 1), vocab, (2, 9), generator=generator).to(device)
        labels = ids.clone()
        labels[0, :4] = IGNORE
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                plain = self.model(input_ids=ids, labels=labels).loss
                with self.installed():
                    chunked = self.model(input_ids=ids, labels=labels).loss
        except Exception as err:  # noqa: BLE001  (any failure: the plain path stays)
            return f"the chunked loss fails on it ({type(err).__name__}: {str(err)[:120]})"
        finally:
            self.model.train(was_training)
            self.model.last_token_losses = None
        if plain is None or chunked is None:
            return "its forward returns no loss"
        plain, chunked = float(plain), float(chunked)
        if not abs(plain - chunked) <= 1e-4 * max(1.0, abs(plain)):
            return f"its loss differs from the head's cross-entropy on a probe batch ({plain:.6g} vs {chunked:.6g})"
        return None

    @contextlib.contextmanager
    def installed(self):
        self.install()
        try:
            yield self
        finally:
            self.remove()

    def install(self) -> None:
        """Forwards of ``model`` given labels run chunked; the rest (generation) as before. Without
        gradients (evaluation) each position's loss goes to ``model.last_token_losses``."""
        if self._handles:
            return

        def arm(module, args, kwargs):  # the forward the labels come with; generation has none
            self.armed = kwargs.get("labels") is not None
            module.last_token_losses = None  # never an earlier forward's

        def disarm(module, args, kwargs, output):
            self.armed, self.hidden = False, None

        def take(module, args):
            if not self.armed:
                return None
            self.hidden = args[0]
            return (args[0][..., :0, :], *args[1:])

        plain = self._plain = self.lm.loss_function

        def loss_function(logits, labels, vocab_size=None, num_items_in_batch=None, ignore_index=IGNORE,
                          shift_labels=None, **kwargs):
            hidden, self.hidden = self.hidden, None
            if hidden is None:  # the head ran on every position: the model's own loss
                return plain(logits, labels, vocab_size, num_items_in_batch=num_items_in_batch,
                             ignore_index=ignore_index, shift_labels=shift_labels, **kwargs)
            import torch

            tokens = None if torch.is_grad_enabled() else []
            loss = causal_lm_loss(hidden, self.head.weight, self.head.bias, labels, self.chunk, num_items_in_batch,
                                  ignore_index, shift_labels, tokens)
            if tokens:
                self.model.last_token_losses = tokens[0]
            return loss

        self._handles = [self.model.register_forward_pre_hook(arm, with_kwargs=True),
                         self.model.register_forward_hook(disarm, with_kwargs=True, always_call=True),
                         self.head.register_forward_pre_hook(take)]
        self.lm.loss_function = loss_function

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        if self._handles:
            self.lm.loss_function = self._plain  # the function it had (transformers' setter: this instance only)
        self._handles, self.hidden, self.armed = [], None, False


def chunked_loss(model, chunk: int) -> tuple[ChunkedLoss | None, str | None]:
    """(the chunked loss for ``model``, None) or (None, why not: logged) where it would not give the
    plain loss."""
    chunked = ChunkedLoss(model, chunk)
    why = chunked.unchunkable()
    if why is not None:
        log.info("train.loss_chunk_tokens: the plain loss (the full logits) is used: %s", why)
        return None, why
    return chunked, None
