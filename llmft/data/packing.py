"""Padding-free batches (``data.packing=true``): a batch's sequences concatenated into one row.

transformers' ``DataCollatorWithFlattening`` concatenates the batch's ``input_ids`` and ``labels``
into a [1, total tokens] row, with ``position_ids`` restarting at 0 for each sequence, no
``attention_mask`` and -100 at each sequence's first label (the previous sequence's last token
must not learn to predict it; a causal LM's loss never scores a sequence's first token anyway,
so the labels count the same response tokens as padded batches and the loss keeps its scale).

What keeps the sequences apart is the attention implementation reading the restarts in
``position_ids``:

- ``sdpa`` is switched, in memory, to llmft/models/packed_attention.py (``prepare_model``): sdpa on
  each sequence's slice of the row, no [total, total] mask; the saved config keeps ``sdpa``.
- ``eager`` (CPU and GPU) and ``flex_attention``: masking_utils.create_causal_mask finds
  the packed sequences from the position ids (``find_packed_sequence_indices``) and builds a
  block-diagonal causal mask, but only without a 2D attention mask and without a KV cache. A
  training forward with ``use_cache=True`` (the config default of most causal LMs) creates an
  empty cache and skips that detection, so every packed batch carries ``use_cache=False``.
  eager materialises a [total, total] mask: memory grows with (batch x length)^2.
- ``flash_attention_2`` / ``_3`` (GPU): varlen kernels from the position ids
  (modeling_flash_attention_utils._is_packed_sequence): no mask, no cross-sequence work.
- anything else (a custom kernel, remote code that builds its own mask) may attend across the
  boundaries: ``check_model`` runs the model on two packed pairs once and refuses it if the
  second sequence's outputs depend on the first.

Rows without labels (what the retention report embeds) are padded as usual: packing is for the loss.
"""
from __future__ import annotations

from llmft.core.errors import UserError, require
from llmft.models.packed_attention import NAME as PACKED_SDPA
from llmft.runtime.hf_private import attention_implementation

IGNORE = -100
HONOURING = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3", PACKED_SDPA)
TASKS = ("sft",)  # causal LM training on labelled sequences; other heads score whole padded rows


def validate(d) -> None:
    """data.packing belongs to the tasks in TASKS (torch-free); the sft task checks the strategy."""
    require(not d.get("packing", False) or d.task in TASKS, "data.packing",
            f"applies to data.task={' or '.join(TASKS)} (got {d.task}); set data.packing=false")


class PackingCollator:
    """``DataCollatorWithFlattening`` for labelled rows (+ ``use_cache=False``); ``padded`` for the rest."""

    def __init__(self, padded):
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)
        self.padded = padded

    def __call__(self, features):
        if not features or "labels" not in features[0]:
            return self.padded(features)
        batch = self.flatten([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        batch["use_cache"] = False  # a cache turns off masking_utils' packed-sequence detection
        return batch


def prepare_model(model) -> None:
    """sdpa per packed sequence where the model runs sdpa (models/packed_attention.py), then the probe."""
    import logging

    from llmft.models.packed_attention import use_for_packing

    if use_for_packing(model):
        logging.getLogger(__name__).info("data.packing: sdpa runs on each packed sequence (no [total, total] mask)")
    check_model(model)


def check_model(model) -> None:
    """Refuse a model whose attention crosses packed boundaries: the second of two packed
    sequences must give the same outputs whatever the first one holds."""
    import torch

    config = getattr(model, "config", None)
    impl = attention_implementation(config)
    if impl is not None and impl not in HONOURING:
        raise UserError(f"data.packing: the model's attention implementation '{impl}' does not keep packed "
                        f"sequences apart (these do: {', '.join(HONOURING)}); set data.packing=false")
    params = list(model.parameters())
    if not params or hasattr(params[0], "ds_numel"):
        return  # ZeRO-3 partitioned weights: no forward outside the engine
    device = params[0].device
    vocab = int(getattr(config, "vocab_size", 0) or 0) or 100
    generator = torch.Generator().manual_seed(0)
    second = torch.randint(3, vocab, (6,), generator=generator)
    outs = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(2):
                first = torch.randint(3, vocab, (5,), generator=generator)
                ids = torch.cat([first, second]).unsqueeze(0).to(device)
                positions = torch.tensor([list(range(5)) + list(range(6))], device=device)
                outs.append(model(input_ids=ids, position_ids=positions, use_cache=False).logits[0, 5:].float())
    except TypeError as err:  # a forward without position_ids / use_cache
        raise UserError(f"data.packing: the model's forward does not take packed inputs ({err}); "
                        f"set data.packing=false") from None
    finally:
        model.train(was_training)
    gap = (outs[0] - outs[1]).abs().max().item()
    scale = outs[0].abs().max().item() or 1.0
    if not gap <= 1e-3 * scale:
        raise UserError(f"data.packing: this model's attention ({impl}) lets packed sequences see each other "
                        f"(the second sequence's logits moved by {gap:.3g}); set data.packing=false")
