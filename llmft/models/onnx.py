"""ONNX exports of a classifier or tagger, run with ONNX Runtime: ``onnx`` (fp32), ``onnx-fused``
(fp32, ONNX Runtime's fused kernels) and ``onnx-int8``.

    onnx        ``torch.onnx.export(dynamo=True)``: the fp32 graph with dynamic batch and sequence axes,
                standard ONNX ops only (any ONNX runtime reads it)
    onnx-fused  that graph through onnxscript's ONNX Runtime fusions (``optimize_for_ort``:
                SkipLayerNormalization, BiasGelu, MultiHeadAttention with the padding mask as its
                bias): the same fp32 math in fewer kernels; com.microsoft ops, ONNX Runtime only
    onnx-int8   the fused graph through ONNX Runtime's quantizer (``quantize_dynamic``: int8 weights
                per channel, activations quantized on the fly, MatMul nodes); 7-bit weights
                (``reduce_range``) on an x86 CPU without VNNI, where ONNX Runtime's U8S8 kernels
                can saturate (its quantization docs), 8-bit elsewhere: chosen on the CPU that exports
                and recorded in the graph's metadata (``llmft_int8``)

Why onnxscript's fusions: ONNX Runtime's own transformer optimizer fuses only SkipLayerNorm and
BiasGelu on dynamo graphs (its Attention patterns are the TorchScript exporter's). Q, K and V stay
three MatMuls (onnxscript's packed ``Attention`` is left out): quantize_dynamic leaves a packed
Attention's weights in fp32. Measured on this project's CPU (MiniLM on the tweets, CPU seconds
against fp32 PyTorch at batch 32): onnx 1.8x, the fused graph + int8 2.5-2.65x, the ORT optimizer's
+ int8 2.4x ([measurements](../../docs/measurements.md)).

Why these exporters: optimum-onnx (optimum's exporter) pins transformers<4.58, and llmft runs on
transformers 5. The legacy TorchScript exporter (``dynamo=False``) traces transformers 5's mask
code into constants: its MiniLM graph was off by up to 0.06 in the logits, so the dynamo one.

A saved export is the folder llmft export wrote: ``model.onnx`` (one file, weights inside), the
tokenizer, config.json and llmft.json. ``OnnxModel(DIR)`` loads it with an InferenceSession
(CPUExecutionProvider, as many threads as torch uses) and is called like the torch model:
``OnnxModel(DIR)(**batch).logits``. ONNX files are protobuf, not pickles: loading runs no code.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from llmft.core.errors import UserError

ONNX_FILE = "model.onnx"
FORMATS = ("onnx", "onnx-fused", "onnx-int8")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what the graph takes, when the batch has it
INT8_KEY = "llmft_int8"  # the graph's metadata entry: the quantizer settings and why


def require_onnxruntime(key: str) -> None:
    """onnx / onnxruntime installed, or a one-line error naming the extra."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"{key}: needs {', '.join(missing)}: pip install 'llmft[onnx]'")


def save_onnx(model, batch: dict, fmt: str, out: Path) -> None:
    """``model`` (fp32, plain HF, on the CPU) as ``out/model.onnx`` in ``fmt``; ``batch`` is an
    example input (its keys name the graph's inputs; its shapes do not bind: both axes are dynamic)."""
    import torch

    if fmt not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)} (got {fmt})")
    require_onnxruntime(f"format={fmt}")
    out.mkdir(parents=True, exist_ok=True)
    model = model.float().eval().cpu()
    names = [k for k in INPUTS if k in batch]
    example = {k: batch[k].cpu() for k in names}
    if next(iter(example.values())).shape[0] < 2:  # a batch of 1 would fix the batch axis to 1
        example = {k: v.repeat(2, 1) for k, v in example.items()}
    limit = getattr(model.config, "max_position_embeddings", None)
    batch_dim = torch.export.Dim("batch")
    seq_dim = torch.export.Dim("sequence", max=limit) if limit else torch.export.Dim("sequence")
    target = out / ONNX_FILE if fmt == "onnx" else out / "model.fp32.onnx"
    try:
        torch.onnx.export(model, (), str(target), kwargs=example, input_names=names, output_names=["logits"],
                          dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes={k: {0: batch_dim, 1: seq_dim} for k in names})
    except Exception as err:  # the exporter's own errors are many pages long
        message = " ".join(str(err).split())[:300]
        raise UserError(f"format={fmt}: torch.onnx.export failed on {type(model).__name__}: {message}") from None
    if fmt == "onnx":
        return
    fused = fuse(target, out / "model.fused.onnx")
    if fmt == "onnx-int8":
        quantize(fused, out / ONNX_FILE)
    else:
        fused.replace(out / ONNX_FILE)
    for scratch in {target, fused}:
        scratch.unlink(missing_ok=True)


def fuse(source: Path, dest: Path) -> Path:
    """onnxscript's ONNX Runtime fusions over ``source`` with Q, K and V left unpacked (see the module
    doc), saved to ``dest``; a graph they cannot read stays as it was (they are an optimization)."""
    import logging
    from unittest import mock

    import onnx_ir as ir

    logging.disable(logging.INFO)  # a line per initializer and rewrite (into the run's log)
    try:
        from onnxscript.rewriter.ort_fusions import _core  # why private: the public entry packs Q, K, V

        model = ir.load(str(source))
        with mock.patch.object(_core, "fuse_attention", lambda model, debug=False: 0):
            model, _ = _core.optimize_for_ort(model)
        ir.save(model, str(dest))
    except Exception:
        return source
    finally:
        logging.disable(logging.NOTSET)
    return dest


def int8_settings(cpu: dict) -> dict:
    """quantize_dynamic's settings for a CPU (runtime/cpu_features.describe): per channel, and 7-bit
    weights where ONNX Runtime's docs ask for them (x86 without VNNI: U8S8 can saturate)."""
    from llmft.runtime.cpu_features import x86

    seven_bit = x86(cpu["machine"]) and not cpu["vnni"]
    why = ("x86 without VNNI: 7-bit weights, so U8S8 does not saturate" if seven_bit
           else "VNNI: 8-bit weights" if cpu["vnni"] else "not x86: 8-bit weights")
    return {"per_channel": True, "reduce_range": seven_bit, "why": f"{why} ({cpu['name']})"}


def quantize(source: Path, dest: Path, cpu: dict | None = None) -> dict:
    """ONNX Runtime's dynamic int8 quantization of ``source`` into ``dest`` with the settings for
    ``cpu`` (default: this one), recorded in dest's metadata; returns them."""
    import json
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from llmft.runtime.cpu_features import describe

    settings = int8_settings(cpu or describe())
    logging.disable(logging.WARNING)  # a line per tensor it leaves in fp32 (on the root logger)
    try:
        quantize_dynamic(str(source), str(dest), weight_type=QuantType.QInt8, per_channel=settings["per_channel"],
                         reduce_range=settings["reduce_range"])
    finally:
        logging.disable(logging.NOTSET)
    graph = onnx.load(str(dest))
    onnx.helper.set_model_props(graph, {**{p.key: p.value for p in graph.metadata_props},
                                        INT8_KEY: json.dumps(settings)})
    onnx.save(graph, str(dest))
    return settings


def int8_record(path: Path) -> dict | None:
    """The quantizer settings an onnx-int8 export recorded (None: not one, or from an older llmft)."""
    import json

    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[INT8_KEY]) if INT8_KEY in props else None


class OnnxModel:
    """An ONNX export run by ONNX Runtime, called like the torch model: ``model(**batch).logits``
    (a float32 torch tensor). Inputs the graph does not take are ignored."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort
        import torch

        path = Path(path)
        if not (path / ONNX_FILE).is_file():
            raise UserError(f"model_dir={path}: no {ONNX_FILE}; export one: llmft export model_dir=RUN/model "
                            f"export.format=onnx (or onnx-fused, onnx-int8)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()  # the same threads as torch
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(path / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, **batch):
        import numpy as np
        import torch

        feed = {k: np.ascontiguousarray(batch[k].cpu().numpy().astype(np.int64)) for k in self.inputs}
        return SimpleNamespace(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]))

    def eval(self):
        return self


class OnnxPredictor:
    """What ``task.predict`` needs of a Trainer, over an ONNX export: ``processing_class`` (the
    tokenizer) and ``predict(tokenized)`` -> ``.predictions`` (logits, batched; token logits padded
    with -100 to one width, as the Trainer pads them)."""

    def __init__(self, model: OnnxModel, tokenizer, collator, batch_size: int):
        self.model, self.processing_class, self.collator, self.batch_size = model, tokenizer, collator, batch_size

    def predict(self, dataset):
        import numpy as np

        keep = [c for c in dataset.column_names if c in INPUTS]
        rows = dataset.select_columns(keep)
        out = []
        for start in range(0, len(rows), self.batch_size):
            features = [rows[i] for i in range(start, min(start + self.batch_size, len(rows)))]
            out.append(self.model(**self.collator(features)).logits.numpy())
        if out and out[0].ndim == 3:  # token classification: one width for all batches
            width = max(x.shape[1] for x in out)
            out = [np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0)), constant_values=-100) for x in out]
        return SimpleNamespace(predictions=np.concatenate(out) if out else np.zeros((0,)))
