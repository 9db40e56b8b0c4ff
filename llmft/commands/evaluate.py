"""``llmft eval model_dir=RUN/model``: re-evaluate a saved model, adapter or prompt.

    model_dir/llmft.json -> task -> data (the run's own data config unless overridden)
        -> model as its strategy saved it -> task.evaluate -> predictions.jsonl, results.json (last)
"""
from __future__ import annotations

import time
from pathlib import Path


def main(cfg, run_path: str | Path) -> dict:
    from llmft.data.files import load_splits
    from llmft.runtime.display import print_config, print_results
    from llmft.artifacts import load_saved, read_metadata
    from llmft.runtime.run_dir import RunDir
    from llmft.strategies import strategy_class
    from llmft.tasks import TASKS
    from llmft.runtime.distributed import memory_figures
    from llmft.runtime.results import completed
    from llmft.runtime.trainer import build_trainer, eval_arguments

    started = time.perf_counter()
    run = RunDir(run_path)
    run.start(cfg)
    if cfg.print_config:
        print_config(cfg, groups=("model_dir", "data", "hardware"))

    model_dir = Path(cfg.model_dir)
    meta = read_metadata(model_dir)
    task = TASKS.get(meta["task"]).from_metadata(cfg.data, meta)
    splits = load_splits(cfg.data, task)
    model, tokenizer = load_saved(model_dir, task, meta, cfg.hardware.device_map, cfg.trust_remote_code)
    splits = strategy_class(meta.get("strategy", "full")).prepare_saved_data(splits, tokenizer, meta)
    eval_set = task.tokenize(splits["eval"], tokenizer)

    trainer = build_trainer(eval_arguments(run.checkpoints, cfg.batch_size, cfg.hardware), model, tokenizer, task)
    metrics, records = task.evaluate(trainer, eval_set, splits["eval"], cfg.generate)
    baseline = task.baseline(splits["train"], splits["eval"]) if "train" in splits else {}
    results = completed(
        "eval",
        run_dir=str(run.path),
        model_dir=str(model_dir.resolve()),
        task=task.name,
        data=cfg.data.name,
        strategy=meta.get("strategy"),
        primary_metric=task.primary_metric,
        num_eval_examples=len(eval_set),
        eval=metrics,
        baseline=baseline,
        warnings=task.warnings(metrics, baseline, records),
        memory=memory_figures(),
        wall_time_s=round(time.perf_counter() - started, 1),
    )
    run.write_predictions(records)
    run.write_results(results)
    print_results(results)
    return results


def validate(cfg) -> None:
    """llmft eval's own knobs (torch-free)."""
    from llmft.core.errors import require

    require(cfg.batch_size >= 1, "batch_size", f"must be >= 1 (got {cfg.batch_size})")
