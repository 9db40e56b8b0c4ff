"""ONNX exports of a classifier or tagger, run with ONNX Runtime: ``onnx`` (fp32) and ``onnx-int8``.

    onnx       ``torch.onnx.export(dynamo=True)``: the fp32 graph with dynamic batch and sequence axes
    onnx-int8  that graph through ONNX Runtime's transformer optimizer (its BERT fusions:
               SkipLayerNormalization, BiasGelu; Attention does not fuse on dynamo graphs) and then
               its quantizer (``quantize_dynamic``: int8 weights per channel, activations quantized
               on the fly, MatMul and Gemm nodes)

Chosen by measurement on this project's CPU (MiniLM on the tweets, against fp32 PyTorch): fused
then per channel was the fastest of the schemes tried (dynamic, per channel, QUInt8, static QDQ,
fused then dynamic), each at close to fp32's accuracy.

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
FORMATS = ("onnx", "onnx-int8")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what the graph takes, when the batch has it
QUANTIZE = {"per_channel": True, "reduce_range": False}  # ONNX Runtime's dynamic quantization (see above)


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
    if fmt == "onnx-int8":
        fused = fuse(target, model.config, out / "model.fused.onnx")
        quantize(fused, out / ONNX_FILE)
        for scratch in {target, fused}:
            scratch.unlink()


def fuse(source: Path, config, dest: Path) -> Path:
    """ONNX Runtime's transformer optimizer over ``source`` (BERT fusions, no hardware-specific
    rewrites: opt_level 0), saved to ``dest``; an architecture it cannot read stays as it was."""
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    logging.disable(logging.WARNING)  # it reports every fusion it tried
    try:
        optimized = optimize_model(str(source), model_type="bert", opt_level=0,
                                   num_heads=getattr(config, "num_attention_heads", 0) or 0,
                                   hidden_size=getattr(config, "hidden_size", 0) or 0)
        optimized.save_model_to_file(str(dest))
    except Exception:  # its fusions are an optimization: quantize the exporter's graph instead
        return source
    finally:
        logging.disable(logging.NOTSET)
    return dest


def quantize(source: Path, dest: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of ``source`` into ``dest``."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # a line per tensor it leaves in fp32 (on the root logger)
    try:
        quantize_dynamic(str(source), str(dest), weight_type=QuantType.QInt8, **QUANTIZE)
    finally:
        logging.disable(logging.NOTSET)


class OnnxModel:
    """An ONNX export run by ONNX Runtime, called like the torch model: ``model(**batch).logits``
    (a float32 torch tensor). Inputs the graph does not take are ignored."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort
        import torch

        path = Path(path)
        if not (path / ONNX_FILE).is_file():
            raise UserError(f"model_dir={path}: no {ONNX_FILE}; export one: llmft export model_dir=RUN/model "
                            f"export.format=onnx (or onnx-int8)")
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
