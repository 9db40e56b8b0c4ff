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


class Wrapper(nn.Module):
    """A module around the strategy's model (``self.encoder``, HF or PEFT) that adds parts of its
    own as ``self.<extra>`` (the CRF, multi-task heads). The one protocol llmft relies on:
    model/ holds the encoder saved as its strategy saves it plus what ``save_extra`` writes;
    the optimizer gets the strategy's groups under ``encoder.`` and the added part at ``lr_scale``."""

    extra: str  # the attribute holding the added part

    def __init__(self, encoder, lr_scale: float = 1.0):
        super().__init__()
        self.encoder = encoder
        self.config = getattr(encoder, "config", None)
        self.lr_scale = lr_scale

    def param_groups(self, groups: list[dict] | None) -> list[dict]:
        """The strategy's groups (or one group of every trainable encoder parameter) renamed under
        ``encoder.``, plus one group for the added part."""
        if groups is None:
            groups = [{"name": "encoder", "lr_scale": 1.0,
                       "params": [n for n, p in self.encoder.named_parameters() if p.requires_grad]}]
        renamed = [{**g, "params": [f"encoder.{n}" for n in g["params"]]} for g in groups]
        added = [f"{self.extra}.{n}" for n, _ in getattr(self, self.extra).named_parameters()]
        return [*renamed, {"name": self.extra, "lr_scale": self.lr_scale, "params": added}]

    def save_extra(self, model_dir) -> None:
        """Write the added part beside the saved encoder (nothing: it serves training only)."""
