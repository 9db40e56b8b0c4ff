"""Inference variants of a trained model: fp32, bf16, fp16, int8 — made, saved and loaded back.

int8 is torch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``: int8 weights,
activations quantized on the fly, nn.Linear layers only, CPU). Chosen by measurement on this
project's CPU: MiniLM inference ran faster than fp32 with it, while torchao 0.18's int8
dynamic and weight-only configs gave no speed-up; the torch.ao API is marked
deprecated, so this is the one place to swap when torchao catches up on CPUs.

Saved variants:
    bf16 / fp16   a plain HF folder in that dtype: ``AutoModelFor...from_pretrained(DIR)``
    int8          config + ``int8_model.safetensors``: per quantized Linear its int8 weight
                  (``<name>.weight_int8``), ``weight_scale`` / ``weight_zero_point`` (float64 /
                  int64: one each per tensor, or one per row plus ``weight_axis`` per channel) and
                  fp32 ``bias``; every other tensor as it is.
                  ``from llmft.models.precision import load_int8; model = load_int8(DIR)``

Nothing is pickled: loading builds the architecture from config.json, quantizes it the same way
and sets each Linear's weight from those tensors. An export from an older llmft holding only
``int8_model.pt`` (a pickle, which can run code when loaded) is refused: re-export it.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from llmft.core.errors import UserError
from llmft.runtime.hf_private import quantized_tensor, quantized_weight_bias

INT8_FILE = "int8_model.safetensors"
LEGACY_INT8_FILE = "int8_model.pt"  # older llmft: a pickled state dict, never loaded
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
    return _quantize(copy.deepcopy(model).float().eval())


def _quantize(model):
    """Dynamic int8 quantization of the Linear layers (in place), the one way llmft does it."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def save_variant(model, variant: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if variant == "int8":
        from safetensors.torch import save_file

        model.config.architectures = [type(model).__name__]  # as save_pretrained records it (load_int8 builds it)
        model.config.save_pretrained(str(out))
        save_file(int8_tensors(model), str(out / INT8_FILE), metadata={"format": "pt", "llmft": "int8-dynamic"})
    else:
        model.save_pretrained(str(out))


def quantized_linears(model) -> dict:
    """name -> dynamically quantized Linear of ``model``."""
    from torch.ao.nn.quantized.dynamic import Linear

    return {name: m for name, m in model.named_modules() if isinstance(m, Linear)}


def int8_tensors(model) -> dict:
    """A quantized model as plain tensors (safetensors holds no quantized dtype): each quantized
    Linear as int8 weight + scale + zero point (+ axis) + fp32 bias, the rest as it is."""
    linears = quantized_linears(model)
    tensors = {}
    for name, module in linears.items():
        weight, bias = quantized_weight_bias(module)
        tensors.update(_weight_tensors(name, weight))
        if bias is not None:
            tensors[f"{name}.bias"] = bias.detach().float().contiguous()
    for key, value in _plain_state(model, linears).items():
        tensors[key] = value.detach().clone().contiguous()  # a copy: safetensors refuses shared storage
    return tensors


def _weight_tensors(name: str, weight) -> dict:
    """One quantized weight as plain tensors; a scheme other than int8 affine is refused."""
    if weight.dtype != torch.qint8:
        raise UserError(f"format=int8: {name} is quantized to {weight.dtype}; llmft saves qint8 weights only")
    out = {f"{name}.weight_int8": weight.int_repr().contiguous()}
    if weight.qscheme() == torch.per_tensor_affine:
        out[f"{name}.weight_scale"] = torch.tensor(weight.q_scale(), dtype=torch.float64)
        out[f"{name}.weight_zero_point"] = torch.tensor(weight.q_zero_point(), dtype=torch.int64)
    elif weight.qscheme() == torch.per_channel_affine:
        out[f"{name}.weight_scale"] = weight.q_per_channel_scales().to(torch.float64).contiguous()
        out[f"{name}.weight_zero_point"] = weight.q_per_channel_zero_points().to(torch.int64).contiguous()
        out[f"{name}.weight_axis"] = torch.tensor(weight.q_per_channel_axis(), dtype=torch.int64)
    else:
        raise UserError(f"format=int8: {name} is quantized {weight.qscheme()}; llmft saves per-tensor and "
                        f"per-channel affine int8 only")
    return out


def _plain_state(model, linears: dict) -> dict:
    """The state dict without the quantized Linears' entries (packed params, output scale)."""
    return {k: v for k, v in model.state_dict().items() if not any(k.startswith(n + ".") for n in linears)}


def load_int8(path: str | Path):
    """An int8 export back as a model: the architecture from its config, quantized the same way,
    then the saved int8 weights (safetensors; a pickled export is refused, never unpickled)."""
    import transformers
    from safetensors.torch import load_file

    path = Path(path)
    _require_int8_file(path)
    config = transformers.AutoConfig.from_pretrained(str(path))
    model = _quantize(getattr(transformers, config.architectures[0])(config).eval())
    _set_int8_tensors(model, load_file(str(path / INT8_FILE)), path)
    return model.eval()


def _require_int8_file(path: Path) -> None:
    """The safetensors file of an int8 export, or a one-line error (an old pickled one: re-export)."""
    if (path / INT8_FILE).is_file():
        return
    if (path / LEGACY_INT8_FILE).is_file():
        raise UserError(f"model_dir={path}: an int8 export from an older llmft ({LEGACY_INT8_FILE}, a pickle, "
                        f"which llmft never loads: unpickling can run code); re-export it: llmft export "
                        f"model_dir={_source_of(path)} export.format=int8")
    raise UserError(f"model_dir={path}: no {INT8_FILE}; point model_dir at a folder llmft export format=int8 wrote")


def _source_of(path: Path) -> str:
    """The model an export was made from (its llmft.json), for the re-export hint."""
    import json

    try:
        return json.loads((path / "llmft.json").read_text()).get("source") or "RUN/model"
    except (OSError, ValueError):
        return "RUN/model"


def _set_int8_tensors(model, tensors: dict, path: Path) -> None:
    """Each quantized Linear's weight and bias from its tensors, then every other tensor, strictly:
    a tensor missing or left over means the file and config.json disagree."""
    linears = quantized_linears(model)
    used = set()
    for name, module in linears.items():
        weight, keys = _weight_from(tensors, name, path)
        has_bias = quantized_weight_bias(module)[1] is not None
        if has_bias != (f"{name}.bias" in tensors):
            raise UserError(f"model_dir={path}: {INT8_FILE} and config.json disagree on the bias of {name}; "
                            f"re-export it")
        module.set_weight_bias(weight, tensors.get(f"{name}.bias"))
        used |= keys | ({f"{name}.bias"} if has_bias else set())
    plain = {k: v for k, v in tensors.items() if k not in used}
    expected = set(_plain_state(model, linears))
    if set(plain) != expected:
        odd = sorted(expected ^ set(plain))
        raise UserError(f"model_dir={path}: {INT8_FILE} does not match config.json ({len(odd)} tensors differ, "
                        f"e.g. {odd[0]}); re-export it")
    state = model.state_dict()  # the quantized Linears' entries as just set (and torch's version
    state.update(plain)  # metadata, which their loading reads), the plain tensors from the file
    model.load_state_dict(state, strict=True)


def _weight_from(tensors: dict, name: str, path: Path):
    """The quantized weight of Linear ``name`` rebuilt from its plain tensors, and their keys."""
    keys = {f"{name}.weight_{part}" for part in ("int8", "scale", "zero_point")}
    if not keys <= set(tensors):
        raise UserError(f"model_dir={path}: {INT8_FILE} has no int8 weight for {name}; re-export it")
    values, scale, zero = (tensors[f"{name}.weight_{p}"] for p in ("int8", "scale", "zero_point"))
    axis = tensors.get(f"{name}.weight_axis")
    if axis is None:
        return quantized_tensor(values, scale.item(), zero.item()), keys
    weight = quantized_tensor(values, scale, zero, axis.item())
    return weight, keys | {f"{name}.weight_axis"}


def size_on_disk(path: Path) -> int:
    """Bytes of the weights in a saved folder."""
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".pt", ".bin", ".onnx"))
