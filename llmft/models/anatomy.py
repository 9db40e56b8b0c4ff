"""Where things are in a transformer: embeddings, the stack of blocks, what sits on top, the head.

Strategies that act by depth (freeze, gradual unfreezing, layer-wise LR decay, BitFit) need to
know which parameter belongs to which part, for any architecture. The block stack is the longest
``nn.ModuleList`` in the model (BERT ``encoder.layer``, Llama ``model.layers``, GPT-2 ``h``);
parameters registered before it are the embeddings, those after it are the "top" (pooler, final
norm) and the head is whatever lies outside the backbone (``model.base_model_prefix``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    kind: str  # embeddings | block | top | head
    depth_from_top: int  # head/top 0, top block 1, ..., embeddings num_blocks + 1
    index: int | None = None  # block index from the bottom

    @property
    def label(self) -> str:
        return f"block.{self.index}" if self.kind == "block" else self.kind


def block_stack(model):
    """(qualified name, ModuleList) of the repeated transformer blocks."""
    import torch.nn as nn

    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no stack of transformer blocks found")
    return max(lists, key=lambda item: len(item[1]))  # first of the longest: the main stack


def _backbone_prefix(model, stack_name: str) -> str:
    """The qualified name of the backbone module (everything not in it is the task head)."""
    prefix = getattr(model, "base_model_prefix", "")
    matches = [name for name, _ in model.named_modules()
               if prefix and name.split(".")[-1] == prefix and stack_name.startswith(name + ".")]
    return max(matches, key=len) if matches else stack_name.split(".")[0]


def parts(model) -> dict:
    """Every parameter name -> its Part."""
    stack_name, stack = block_stack(model)
    backbone = _backbone_prefix(model, stack_name)
    n = len(stack)
    out, seen_blocks = {}, False
    for name, _ in model.named_parameters():
        if name.startswith(stack_name + "."):
            index = int(name[len(stack_name) + 1:].split(".")[0])
            out[name] = Part("block", n - index, index)
            seen_blocks = True
        elif not name.startswith(backbone + "."):
            out[name] = Part("head", 0)
        elif not seen_blocks:
            out[name] = Part("embeddings", n + 1)
        else:
            out[name] = Part("top", 0)
    return out


def num_blocks(model) -> int:
    return len(block_stack(model)[1])
