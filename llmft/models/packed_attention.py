"""sdpa per packed sequence: padding-free batches without a [total, total] mask.

A packed batch (data/packing.py: one row, ``position_ids`` restarting at 0 for each sequence, no
``attention_mask``) makes masking_utils build a block-diagonal causal mask for ``sdpa``/``eager``:
attention runs over the whole row, (batch x length)^2 pairs, almost all of them masked.
flash-attention's varlen kernels run each sequence on its own; on the CPU (and on a GPU without
flash-attn) this does the same with torch's sdpa, ``is_causal`` on each sequence's slice.

It is registered under ``NAME`` through transformers' ``AttentionInterface`` and its mask function
through ``AttentionMaskInterface``:

- the mask function builds no mask only where masking_utils would build the packed-sequence mask
  (no padding mask, no cache offset, no sliding window or custom mask function, and a causal
  pattern); everything else gets ``sdpa_mask``'s mask, so padded batches, generation and eval run
  exactly as under ``sdpa``;
- the attention function, given no mask, splits the row where the position ids restart (or at the
  flattening collator's ``cu_seq_lens_q`` when the batch carries them) and runs transformers' own
  ``sdpa_attention_forward`` (GQA, scaling, dropout, is_causal) on each sequence; given a mask it
  is ``sdpa_attention_forward``.

Only the in-memory config holds ``NAME``: ``save_pretrained`` never writes the attention
implementation, so a saved model loads with the standard ``sdpa``.
torch 2.13's jagged nested-tensor sdpa has no CPU kernel for ``is_causal`` (it refuses), so the
sequences run in a Python loop: 3.7x faster than the masked full row at 8 sequences of ~110 tokens.
"""
from __future__ import annotations

NAME = "llmft_packed_sdpa"
BASE = "sdpa"  # the implementation it stands in for (and that a saved config keeps)


def _bounds(position_ids, cu_seq_lens, rows: int, length: int) -> list[list[tuple[int, int]]] | None:
    """Each row's (start, end) per sequence; None: no row holds more than one sequence."""
    import torch

    if cu_seq_lens is not None and rows == 1:
        cuts = [int(c) for c in cu_seq_lens.tolist()]
        if cuts[-1] == length and len(cuts) > 2:
            return [list(zip(cuts[:-1], cuts[1:]))]
    if position_ids is None:
        return None
    global _cache
    key = (position_ids, position_ids._version, rows)
    if _cache is not None and _cache[0][0] is position_ids and _cache[0][1:] == key[1:]:
        return _cache[1]
    pos = position_ids.expand(rows, -1)
    # the same rule as masking_utils.find_packed_sequence_indices: a new sequence where the positions do not step by 1
    starts = torch.diff(pos, prepend=pos[:, :1] - 1, dim=-1) != 1  # False at 0
    out = []
    for row in starts.cpu().tolist():
        cuts = [0] + [i for i, s in enumerate(row) if s] + [length]
        out.append(list(zip(cuts[:-1], cuts[1:])))
    bounds = out if any(len(b) > 1 for b in out) else None
    _cache = (key, bounds)  # every layer of one forward (and its checkpointed recompute) reads the same ids
    return bounds


_cache = None


def packed_sdpa_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                                  scaling: float | None = None, is_causal: bool | None = None,
                                  position_bias=None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows, length = query.shape[0], query.shape[2]
    bounds = None
    if attention_mask is None and length > 1 and key.shape[2] == length:
        bounds = _bounds(kwargs.get("position_ids"), kwargs.get("cu_seq_lens_q"), rows, length)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, position_bias=position_bias, **kwargs)
    outs = []
    for b, spans in enumerate(bounds):
        row = []
        for s, e in spans:
            bias = None
            if position_bias is not None:  # [batch or 1, heads, q, kv]: this sequence's block
                bias = position_bias[b if position_bias.shape[0] > 1 else 0][None, :, s:e, s:e]
            out, _ = sdpa_attention_forward(module, query[b:b + 1, :, s:e], key[b:b + 1, :, s:e],
                                            value[b:b + 1, :, s:e], None, dropout=dropout, scaling=scaling,
                                            is_causal=is_causal, position_bias=bias, **kwargs)
            row.append(out)  # [1, e - s, heads, head_dim]
        outs.append(torch.cat(row, dim=1))
    return torch.cat(outs, dim=0), None


def packed_sdpa_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
                     mask_function=None, attention_mask=None, local_size=None, allow_is_causal_skip: bool = True,
                     use_vmap: bool = False, device="cpu", **kwargs):
    """No mask for a packed batch (the attention splits the row itself); ``sdpa_mask`` otherwise."""
    import torch
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    mask_function = mask_function or causal_mask_function
    # masking_utils turns the is_causal skip off for a packed batch (and for block overlays, told apart below)
    packed = (attention_mask is None and not allow_is_causal_skip and not use_vmap and local_size is None
              and isinstance(q_offset, int) and q_offset == 0 and kv_offset == 0 and q_length == kv_length > 1)
    if packed:
        # a causal pattern never lets a token see the next one; a bidirectional block overlay does
        q = torch.arange(q_length - 1, device=device)
        rows = torch.arange(batch_size, device=device)[:, None].expand(-1, q_length - 1)
        ahead = mask_function(rows, torch.zeros_like(rows), q.expand(batch_size, -1), (q + 1).expand(batch_size, -1))
        packed = not bool(torch.as_tensor(ahead).any())
    if packed:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                     local_size=local_size, allow_is_causal_skip=allow_is_causal_skip, use_vmap=use_vmap,
                     device=device, **kwargs)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_sdpa_attention_forward)
    AttentionMaskInterface.register(NAME, packed_sdpa_mask)


def use_for_packing(model) -> bool:
    """Switch a model on ``sdpa`` to the per-sequence attention (in memory only); True if it did.
    eager (softcapping, attention outputs), flash-attention and flex keep their own."""
    from transformers import PreTrainedModel

    from llmft.runtime.hf_private import attention_implementation

    if attention_implementation(getattr(model, "config", None)) != BASE:
        return False
    base = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if base is None or not base._can_set_attn_implementation():
        return False
    register()
    base.set_attn_implementation(NAME)
    return attention_implementation(base.config) == NAME
