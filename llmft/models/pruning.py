"""Pruning a fine-tuned encoder (``llmft prune``): what is removed, how it is chosen, and how a
pruned folder loads back.

    magnitude  torch.nn.utils.prune's L1 unstructured pruning of every Linear weight in the encoder
               layers, each layer separately (so every layer, small or large, loses exactly
               round(amount x its weights)); embeddings, pooler and classifier untouched. The zeros
               stay in dense tensors: smaller when compressed, no faster on dense kernels.
    heads      the same number of attention heads removed from every layer: the rows of
               query/key/value and the columns of the attention output projection of each head
    ffn        the same number of intermediate (FFN) channels removed from every layer: rows of
               intermediate.dense, columns of output.dense; config.intermediate_size shrinks

Heads and channels are ranked by first-order Taylor importance summed over a few training
batches (Michel et al. 2019 for heads, Molchanov et al. 2019 for channels): |sum W * dL/dW| over
the output-projection columns a head or channel writes through, which equals |dL/dmask| of a
mask on its output, so no head mask is needed (transformers 5 dropped ``head_mask`` and
``prune_heads``).

A BERT config cannot describe fewer heads than ``num_attention_heads`` (the head size is
hidden_size / num_attention_heads), so a head-pruned folder keeps the original config and names
the heads each layer kept in its llmft.json (``pruned.heads``): ``load_head_pruned`` rebuilds that
shape before loading the weights. A plain ``from_pretrained`` of it fails on the shapes (it does
not load silently wrong); an FFN- or magnitude-pruned folder is a plain HF model.
"""
from __future__ import annotations

from pathlib import Path

# model_type values whose self-attention views q/k/v as (-1 heads, head size) and whose layers have
# the BERT module names (checked in transformers 5.25's modeling files)
ARCHITECTURES = ("bert", "roberta", "xlm-roberta", "electra")
METHODS = ("magnitude", "heads", "ffn")
LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "intermediate.dense", "output.dense")


def layers(model):
    """The encoder's transformer layers (BertLayer and its relatives)."""
    return model.base_model.encoder.layer


def removed(amount: float, n: int) -> int:
    """How many of ``n`` units ``amount`` removes: round() as torch.nn.utils.prune counts weights."""
    return round(amount * n)


def encoder_linears(model) -> dict:
    """name -> every nn.Linear magnitude pruning reaches (the encoder layers', not head or embeddings)."""
    return {f"layer.{i}.{name}": layer.get_submodule(name) for i, layer in enumerate(layers(model)) for name in LINEARS}


# ------------------------------------------------------------------ magnitude
def magnitude(model, amount: float) -> list:
    """L1 unstructured pruning of each encoder Linear weight (torch's mask stays attached until
    ``make_permanent``, so recovery fine-tuning cannot revive a pruned weight)."""
    from torch.nn.utils import prune

    pruned = list(encoder_linears(model).values())
    for module in pruned:
        prune.l1_unstructured(module, "weight", amount=amount)
    return pruned


def make_permanent(modules) -> None:
    """The masks folded into the weights (prune.remove): a plain model with zeros in it."""
    from torch.nn.utils import prune

    for module in modules:
        if prune.is_pruned(module):
            prune.remove(module, "weight")


def sparsity(model) -> dict:
    """The zero fraction of every encoder Linear weight, of them all, and of all parameters."""
    per_layer = {name: m.weight.eq(0).float().mean().item() for name, m in encoder_linears(model).items()}
    zeros = sum(int(m.weight.eq(0).sum()) for m in encoder_linears(model).values())
    size = sum(m.weight.numel() for m in encoder_linears(model).values())
    all_zeros = sum(int(p.eq(0).sum()) for p in model.parameters())
    return {"encoder_linear_weights": round(zeros / size, 6), "all_parameters": round(all_zeros / count(model), 6),
            "per_layer": {k: round(v, 6) for k, v in per_layer.items()}}


# ------------------------------------------------------------------ importance
def importance(model, batches) -> tuple:
    """(heads [layers, heads], channels [layers, intermediate]): first-order Taylor importance,
    |sum over a unit's output-projection columns of W * dL/dW| per batch, summed over batches."""
    import torch

    model.eval()  # no dropout: the loss of the model as it will run
    blocks = list(layers(model))
    heads = torch.zeros(len(blocks), blocks[0].attention.self.num_attention_heads)
    channels = torch.zeros(len(blocks), blocks[0].intermediate.dense.out_features)
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for i, block in enumerate(blocks):
            attn_out, ffn_out = block.attention.output.dense.weight, block.output.dense.weight
            size = block.attention.self.attention_head_size
            per_col = (attn_out * attn_out.grad).sum(0).detach()
            heads[i, :per_col.numel() // size] += per_col.view(-1, size).sum(1).abs()
            channels[i, :ffn_out.shape[1]] += (ffn_out * ffn_out.grad).sum(0).detach().abs()
    model.zero_grad(set_to_none=True)
    return heads, channels


def keep_top(scores, n_keep: int) -> list:
    """Per layer: the indices of its ``n_keep`` most important units, in their original order
    (ties broken by index: deterministic)."""
    import torch

    return [torch.sort(torch.topk(row, n_keep, sorted=True).indices).values for row in scores]


# ------------------------------------------------------------------ structured removal
def prune_heads(model, keep: list) -> None:
    """Keep only the heads ``keep[i]`` (indices) of layer i."""
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    for block, heads in zip(layers(model), keep):
        attn = block.attention.self
        size = attn.attention_head_size
        index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in heads.tolist()])
        for name in ("query", "key", "value"):
            setattr(attn, name, prune_linear_layer(getattr(attn, name), index, dim=0))
        block.attention.output.dense = prune_linear_layer(block.attention.output.dense, index, dim=1)
        attn.num_attention_heads = len(heads)
        attn.all_head_size = len(heads) * size


def prune_ffn(model, keep: list) -> None:
    """Keep only the intermediate channels ``keep[i]`` of layer i (the same count in every layer,
    so config.intermediate_size describes the result)."""
    from transformers.pytorch_utils import prune_linear_layer

    for block, channels in zip(layers(model), keep):
        block.intermediate.dense = prune_linear_layer(block.intermediate.dense, channels, dim=0)
        block.output.dense = prune_linear_layer(block.output.dense, channels, dim=1)
    model.config.intermediate_size = len(keep[0])


def heads_kept(model) -> list[int]:
    """The heads each layer has now (from the weights' shapes)."""
    return [block.attention.self.query.out_features // block.attention.self.attention_head_size
            for block in layers(model)]


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ loading a head-pruned folder
def load_head_pruned(folder: Path, task, heads: list[int]):
    """A head-pruned folder's model: the task's class built from its config.json, layer i cut to
    ``heads[i]`` heads, then every saved weight loaded strictly (a missing or extra tensor fails)."""
    import torch
    import transformers
    from safetensors.torch import load_file

    config = transformers.AutoConfig.from_pretrained(str(folder))
    model = getattr(transformers, task.auto_model).from_config(config)
    prune_heads(model, [torch.arange(n) for n in heads])
    state = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(str(file)))
    model.load_state_dict(state, strict=True)
    return model.eval()
