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
