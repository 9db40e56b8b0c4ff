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
    strategy = strategy_class(meta.get("strategy", "full"))
    raw = splits
    splits = strategy.prepare_saved_data(splits, tokenizer, meta)
    eval_set = task.tokenize(splits["eval"], tokenizer)

    trainer = build_trainer(eval_arguments(run.checkpoints, cfg.batch_size, cfg.hardware), model, tokenizer, task)
    metrics, records = task.evaluate(trainer, eval_set, splits["eval"], cfg.generate)
    perturbed = perturbed_eval(cfg, task, strategy, meta, raw, tokenizer, trainer, records)
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
        **({"perturbed": perturbed} if perturbed is not None else {}),
    )
    run.write_predictions(records)
    run.write_results(results)
    print_results(results)
    return results


def perturbed_eval(cfg, task, strategy, meta, raw: dict, tokenizer, trainer, clean_records) -> dict | None:
    """``eval.perturb``: the eval split again, its input text columns perturbed (data/perturb.py,
    seeded by ``seed``, the row and the column), scored like the clean one. Its predictions are
    not written (predictions.jsonl holds the clean split's); ``prediction_changed`` is the share of
    rows whose prediction differs from the clean one."""
    e = cfg.eval
    if e.perturb == "none":
        return None
    from llmft.data.perturb import perturb_dataset

    columns = task.input_columns()
    noisy, changed = perturb_dataset(raw["eval"], columns, e.perturb, float(e.perturb_rate), int(cfg.seed))
    splits = strategy.prepare_saved_data({**raw, "eval": noisy}, tokenizer, meta)
    metrics, records = task.evaluate(trainer, task.tokenize(splits["eval"], tokenizer), splits["eval"], cfg.generate)
    flipped = sum(a.get("prediction") != b.get("prediction") for a, b in zip(clean_records, records))
    return {"method": e.perturb, "rate": float(e.perturb_rate), "seed": int(cfg.seed), "columns": columns,
            "words_changed": changed, "prediction_changed": round(flipped / max(len(records), 1), 4),
            "metrics": metrics}


def perturbable(task) -> bool:
    """One label per example that no word position defines (NER's tags follow the words; QA's
    answers are spans of the context; generated text is scored against the target)."""
    return task.logits == "sequence"


def validate(cfg) -> None:
    """llmft eval's own knobs (torch-free)."""
    import math

    from llmft.core.errors import require
    from llmft.tasks import TASKS, tasks_that

    require(cfg.batch_size >= 1, "batch_size", f"must be >= 1 (got {cfg.batch_size})")
    e = cfg.eval
    if e.perturb != "none":
        rate = e.perturb_rate
        require(isinstance(rate, (int, float)) and math.isfinite(rate) and 0 < rate <= 1, "eval.perturb_rate",
                f"must be in (0, 1] (the share of words perturbed; got {rate})")
        require(perturbable(TASKS.get(cfg.data.task)), "eval.perturb",
                f"perturbs the input text of data.task={tasks_that(perturbable)} (got {cfg.data.task}: its labels "
                f"follow word positions or the text itself)")
