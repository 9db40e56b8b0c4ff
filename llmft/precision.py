"""Inference variants of a trained model: fp32, bf16, fp16, int8 — made, saved and loaded back.

int8 is torch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``: int8 weights,
activations quantized on the fly, nn.Linear layers only, CPU). Chosen by measurement on this
project's CPU: MiniLM inference at batch 32 ran 2.1x fp32 with it, while torchao 0.18's int8
dynamic and weight-only configs gave no speed-up (0.96x, 0.85x); the torch.ao API is marked
deprecated, so this is the one place to swap when torchao catches up on CPUs.

Saved variants:
    bf16 / fp16   a plain HF folder in that dtype: ``AutoModelFor...from_pretrained(DIR)``
    int8          config + ``int8_model.pt`` (the quantized state dict):
                  ``from llmft.precision import load_int8; model = load_int8(DIR)``
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from llmft.errors import UserError

INT8_FILE = "int8_model.pt"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VARIANTS = ("fp32", "bf16", "fp16", "int8")


def to_variant(model, variant: str):
    """A copy of ``model`` in ``variant`` (the original is left as it is)."""
    if variant in DTYPES:
        return copy.deepcopy(model).to(DTYPES[variant]).eval()
    if variant != "int8":
        raise UserError(f"precision must be one of {', '.join(VARIANTS)} (got {variant})")
    if next(model.parameters()).device.type != "cpu":
        raise UserError("int8 (dynamic quantization) runs on the CPU; use bf16 or fp16 on a GPU")
    if not any(isinstance(m, torch.nn.Linear) for m in model.modules()):
        raise UserError(f"int8: {type(model).__name__} has no nn.Linear layers to quantize")
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model).float().eval(), {torch.nn.Linear}, dtype=torch.qint8)


def save_variant(model, variant: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if variant == "int8":
        model.config.save_pretrained(str(out))
        torch.save(model.state_dict(), out / INT8_FILE)
    else:
        model.save_pretrained(str(out))


def load_int8(path: str | Path):
    """An int8 export back as a model: the architecture from its config, quantized the same way,
    then the saved int8 weights."""
    import transformers
    from torch.ao.quantization import quantize_dynamic

    path = Path(path)
    config = transformers.AutoConfig.from_pretrained(str(path))
    architecture = getattr(transformers, config.architectures[0])
    model = quantize_dynamic(architecture(config).eval(), {torch.nn.Linear}, dtype=torch.qint8)
    model.load_state_dict(torch.load(path / INT8_FILE, weights_only=False))
    return model.eval()


def size_on_disk(path: Path) -> int:
    """Bytes of the weights in a saved folder."""
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".pt", ".bin"))
