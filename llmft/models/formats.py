"""The export formats, one entry each: ``llmft export format=NAME`` and bench-infer's
``variants=[NAME]`` read them from here, and so do the config checks, predict's backend and the
loading of a saved export. Adding a format is adding an entry to FORMATS.

An entry names its accuracy tolerance (what the export check allows), the tasks it exports, how it
converts a model into a folder, how that folder loads back (for the check and for predict), and
whether bench-infer times it. Torch-free: the functions import their libraries when called, so
the config checks stay instant.

    merged (default)  a LoRA / DoRA / IA3 adapter merged into its base, saved as a plain HF model
    bf16, fp16        the model (adapters merged first) in half precision, a plain HF folder
    int8              dynamic int8 quantization of the linear layers, in safetensors (models/precision.py)
    onnx, onnx-fused, onnx-int8
                      model.onnx for ONNX Runtime: fp32 (standard ops, or ONNX Runtime's fused
                      kernels), or int8 by its quantizer (models/onnx.py); classification and NER
                      (without a CRF) models
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from llmft.core.errors import require_one_of


@dataclass(frozen=True)
class ExportFormat:
    name: str
    # max |exported - source logit| / max(1, max |source logit|) the export check allows (export.tolerance: null)
    tolerance: float
    # (model, example batch, folder) -> the converted model, its weights written into folder; the
    # model is the fp32 one with adapters merged, or the adapter model itself for ``merges``
    convert: Callable
    # (folder, task, tokenizer, trust_remote_code) -> the export as a model: ``model(**batch).logits``
    load: Callable
    tasks: Optional[tuple] = None  # the data.task values it exports; None: every task
    timed: bool = False  # bench-infer can time it (variants=[NAME])
    merges: bool = False  # merges an adapter: checked against the adapter and its base, not fp32
    crf: bool = True  # exports a NER model with a CRF (the CRF file is copied beside it)
    backend: str = "torch"  # the predict.backend that runs it
    hf_folder: bool = True  # a plain HF folder: eval and predict load it as a trained model
    dtype: Optional[str] = None  # the check's "dtype"; None: the loaded model's parameters'
    requires: Optional[Callable] = None  # (key) -> None, or a one-line error naming the missing extra


# ------------------------------------------------------------------ how each converts and loads
def _merge(model, batch, folder: Path):
    merged = model.merge_and_unload()
    merged.save_pretrained(str(folder))
    return merged


def _load_hf_task(folder: Path, task, tokenizer, trust_remote_code: bool):
    from llmft.models.loading import load_model

    return load_model(str(folder), task, tokenizer, trust_remote_code).eval()


def _precision(variant: str) -> Callable:
    def convert(model, batch, folder: Path):
        from llmft.models.precision import save_variant, to_variant

        converted = to_variant(model, variant)
        save_variant(converted, variant, folder)
        return converted

    return convert


def _load_hf(folder: Path, task, tokenizer, trust_remote_code: bool):
    """The saved class (config.json's architectures) in the saved dtype."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(folder))
    return getattr(transformers, config.architectures[0]).from_pretrained(str(folder)).eval()


def _load_int8(folder: Path, task, tokenizer, trust_remote_code: bool):
    from llmft.models.precision import load_int8

    return load_int8(folder)


def _onnx(variant: str) -> Callable:
    def convert(model, batch, folder: Path):
        from llmft.models.onnx import OnnxModel, save_onnx

        save_onnx(model, batch, variant, folder)
        model.config.save_pretrained(str(folder))
        return OnnxModel(folder)

    return convert


def _load_onnx(folder: Path, task, tokenizer, trust_remote_code: bool):
    from llmft.models.onnx import OnnxModel

    return OnnxModel(folder)


def _require_onnxruntime(key: str) -> None:
    from llmft.models.onnx import require_onnxruntime

    require_onnxruntime(key)


# sequence and token logits: what ONNX Runtime runs here (a CRF's decoding is not in the graph)
_ONNX = dict(tasks=("classification", "ner"), timed=True, crf=False, backend="onnxruntime", hf_folder=False,
             requires=_require_onnxruntime)

# the first is the default (export.format); onnx: the same fp32 math in other kernels, measured
# ~1e-7; onnx-fused: the same, fused kernels; onnx-int8: int8 weights, like int8
FORMATS = {f.name: f for f in (
    ExportFormat("merged", 1e-4, _merge, _load_hf_task, merges=True),
    ExportFormat("bf16", 5e-2, _precision("bf16"), _load_hf, timed=True),
    ExportFormat("fp16", 1e-2, _precision("fp16"), _load_hf, timed=True),
    ExportFormat("int8", 1e-1, _precision("int8"), _load_int8, timed=True, hf_folder=False, dtype="qint8"),
    ExportFormat("onnx", 1e-4, _onnx("onnx"), _load_onnx, dtype="float32", **_ONNX),
    ExportFormat("onnx-fused", 1e-4, _onnx("onnx-fused"), _load_onnx, dtype="float32", **_ONNX),
    ExportFormat("onnx-int8", 1e-1, _onnx("onnx-int8"), _load_onnx, dtype="qint8", **_ONNX),
)}
REFERENCE = "fp32"  # bench-infer's baseline row: the model as trained (adapters merged)


def names() -> list[str]:
    """export.format's values."""
    return list(FORMATS)


def timed() -> list[str]:
    """bench-infer's variants: the fp32 reference and every format it can time."""
    return [REFERENCE, *(f.name for f in FORMATS.values() if f.timed)]


def get(name: str, key: str = "format") -> ExportFormat:
    """The entry of ``name``, or the one-line error listing the formats."""
    require_one_of(key, name, names())
    return FORMATS[name]


def of_saved(meta: dict) -> Optional[ExportFormat]:
    """The format a saved folder was exported in (its llmft.json), None for a trained model."""
    return FORMATS.get(meta.get("format"))


def backend_of(meta: dict) -> str:
    """The predict.backend that runs a saved folder."""
    saved = of_saved(meta)
    return saved.backend if saved is not None else "torch"


def tolerance(name: str, given: Optional[float]) -> float:
    """export.tolerance, or the format's own when it is null."""
    return given if given is not None else FORMATS[name].tolerance


def same_tasks(entry: ExportFormat) -> list[str]:
    """The formats restricted to the same tasks as ``entry`` (for messages)."""
    return [f.name for f in FORMATS.values() if f.tasks == entry.tasks]


def any_task() -> list[str]:
    """The conversions that take a model of any task (for messages)."""
    return [f.name for f in FORMATS.values() if f.tasks is None and not f.merges]
