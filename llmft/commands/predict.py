"""``llmft predict model_dir=RUN/model predict.input_file=X.jsonl``: batched inference on
unlabelled inputs (csv or json lines with the data config's text column(s); the file's format from
its extension or predict.format, its encoding predict.encoding).

    model_dir/llmft.json -> task -> read + check the input file -> model or adapter
        -> trainer.predict (batched, progress bar) -> predictions JSONL (+ throughput in the log)
predict.backend=onnxruntime: model_dir is an ``llmft export format=onnx|onnx-int8`` folder; its
model.onnx runs in ONNX Runtime (CPU) instead of the model and the Trainer, same JSONL.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from llmft.core.errors import UserError

log = logging.getLogger(__name__)


def main(cfg, run_path: str | Path) -> dict:
    from llmft.runtime.display import console
    from llmft.artifacts import load_saved, read_metadata
    from llmft.core.paths import resolve_path
    from llmft.runtime.run_dir import RunDir
    from llmft.strategies import strategy_class
    from llmft.tasks import TASKS
    from llmft.runtime.trainer import build_trainer, eval_arguments

    run = RunDir(run_path)
    model_dir = Path(cfg.model_dir)
    meta = read_metadata(model_dir)
    task = TASKS.get(meta["task"]).from_metadata(cfg.data, meta)
    path = resolve_path(cfg.predict.input_file, key="predict.input_file")
    inputs = read_inputs(cfg, task)

    from llmft.models.formats import backend_of, of_saved

    onnx = cfg.predict.backend == "onnxruntime"
    if (backend_of(meta) == "onnxruntime") != onnx:
        raise UserError(f"model_dir={model_dir}: " + ("an ONNX export: add predict.backend=onnxruntime" if not onnx
                        else "holds no ONNX export; make one with llmft export export.format=onnx (or onnx-int8)"))
    if onnx:
        from llmft.artifacts import require_trust
        from llmft.models.loading import load_tokenizer
        from llmft.models.onnx import OnnxPredictor

        require_trust(meta, cfg.trust_remote_code, f"model_dir={model_dir}", model_dir)
        tokenizer = load_tokenizer(str(model_dir), cfg.trust_remote_code)
    else:
        model, tokenizer = load_saved(model_dir, task, meta, cfg.hardware.device_map, cfg.trust_remote_code)
    if cfg.predict.precision != "fp32":
        from llmft.models.precision import to_variant

        model = to_variant(model, cfg.predict.precision)
    inputs = strategy_class(meta.get("strategy", "full")).prepare_saved_data({"eval": inputs}, tokenizer, meta)["eval"]
    if onnx:
        exported = of_saved(meta).load(model_dir, task, tokenizer, cfg.trust_remote_code)
        trainer = OnnxPredictor(exported, tokenizer, task.collator(tokenizer), cfg.predict.batch_size)
    else:
        args = eval_arguments(run.checkpoints, cfg.predict.batch_size, cfg.hardware, compile=cfg.predict.compile)
        trainer = build_trainer(args, model, tokenizer, task)
    started = time.perf_counter()
    records = task.predict(trainer, inputs, cfg.generate)
    seconds = time.perf_counter() - started

    out = Path(cfg.predict.output_file) if cfg.predict.output_file else run.path / "predictions.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    from llmft.runtime.ownership import atomic_write
    from llmft.runtime.run_dir import dumps

    atomic_write(out, "".join(dumps(r) + "\n" for r in records))
    summary = {"status": "completed", "input_file": str(path), "output_file": str(out), "examples": len(records),
               "precision": cfg.predict.precision, "compile": cfg.predict.compile, "backend": cfg.predict.backend,
               "seconds": round(seconds, 3), "examples_per_s": round(len(records) / seconds, 1) if seconds else None}
    run.write_results(summary)
    log.info("predict: %d examples in %.2f s (%.1f examples/s) -> %s", len(records), seconds,
             summary["examples_per_s"] or 0, out)
    console.print(f"{len(records)} predictions in {seconds:.2f} s ({summary['examples_per_s']} examples/s): {out}")
    return summary


def read_inputs(cfg, task):
    """predict.input_file as a Dataset the task can read. Its format comes from its extension (or
    predict.format) and its encoding from predict.encoding, never from the training data's config:
    a run trained on a latin-1 CSV still predicts on UTF-8 JSON lines."""
    from llmft.core.paths import resolve_path
    from llmft.data.files import check_columns, read_file

    path = resolve_path(cfg.predict.input_file, key="predict.input_file")
    inputs = read_file(path, cfg.data, "predict.input_file", task.file_layouts, options=cfg.predict,
                       options_key="predict")
    check_columns(inputs, str(path), task.input_columns(), cfg.data)
    task.check_inputs(inputs, str(path))
    return inputs


def validate(cfg) -> None:
    """llmft predict's own knobs (torch-free)."""
    from llmft.core.errors import require
    from llmft.core.paths import resolve_path

    require(cfg.predict.batch_size >= 1, "predict.batch_size", f"must be >= 1 (got {cfg.predict.batch_size})")
    require(resolve_path(cfg.predict.input_file, "predict.input_file").is_file(), "predict.input_file",
            f"file not found: {cfg.predict.input_file}")
    from llmft.data.files import check_encoding, file_format

    require(file_format(cfg.predict.input_file, cfg.predict.format) is not None, "predict.format",
            f"cannot tell the format of {Path(cfg.predict.input_file).name} from its extension; "
            f"set predict.format=csv or json")
    check_encoding(cfg.predict.encoding, "predict.encoding")
    if cfg.predict.output_file:  # never over an input, into a model folder or over a file llmft did not write
        from llmft.runtime.ownership import check_output_file

        check_output_file(cfg.predict.output_file, f"predict.output_file={cfg.predict.output_file}",
                          {"predict.input_file": resolve_path(cfg.predict.input_file, "predict.input_file"),
                           "model_dir": cfg.model_dir})
    from llmft.models.onnx import ONNX_FILE, require_onnxruntime

    if cfg.predict.backend == "torch":
        require(not (Path(cfg.model_dir) / ONNX_FILE).is_file(), "predict.backend",
                f"model_dir={cfg.model_dir} is an ONNX export ({ONNX_FILE}): add predict.backend=onnxruntime")
    else:
        for key, value, default in (("predict.precision", cfg.predict.precision, "fp32"),
                                    ("predict.compile", cfg.predict.compile, False)):
            require(value == default, key, f"{value} applies to the torch backend; with predict.backend=onnxruntime "
                    "the export's own precision runs (llmft export export.format=onnx-int8 for int8)")
        require((Path(cfg.model_dir) / ONNX_FILE).is_file(), "predict.backend",
                f"onnxruntime runs an ONNX export and model_dir={cfg.model_dir} has no {ONNX_FILE}; make one: "
                f"llmft export model_dir=RUN/model export.format=onnx (or onnx-int8)")
        require_onnxruntime("predict.backend=onnxruntime")
