"""Modules llmft adds to pretrained models (kept apart from the strategy modules, which must
import without torch)."""
from __future__ import annotations

import torch.nn as nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class BottleneckAdapter(nn.Module):
    """Wraps a projection: h = inner(x); returns h + up(act(down(h))). ``up`` starts at zero, so
    the wrapped model computes exactly what the pretrained one did until training moves it."""

    def __init__(self, inner: nn.Module, width: int, bottleneck: int, activation: str = "relu"):
        super().__init__()
        self.inner = inner
        self.adapter = nn.Sequential(nn.Linear(width, bottleneck), ACTIVATIONS[activation](),
                                     nn.Linear(bottleneck, width))
        nn.init.zeros_(self.adapter[2].weight)
        nn.init.zeros_(self.adapter[2].bias)

    def forward(self, x):
        h = self.inner(x)
        return h + self.adapter(h)


def wrapper_param_groups(wrapper, groups: list[dict] | None, extra: str, lr_scale: float = 1.0) -> list[dict]:
    """Optimizer groups for a module that wraps the strategy's model as ``wrapper.encoder`` and adds
    its own parts as ``wrapper.<extra>`` (the CRF, multi-task heads): the strategy's groups
    (or one group of every trainable encoder parameter) renamed under ``encoder.``, plus one group
    for the added part at ``lr_scale``."""
    if groups is None:
        groups = [{"name": "encoder", "lr_scale": 1.0,
                   "params": [n for n, p in wrapper.encoder.named_parameters() if p.requires_grad]}]
    renamed = [{**g, "params": [f"encoder.{n}" for n in g["params"]]} for g in groups]
    added = [f"{extra}.{n}" for n, _ in getattr(wrapper, extra).named_parameters()]
    return [*renamed, {"name": extra, "lr_scale": lr_scale, "params": added}]
