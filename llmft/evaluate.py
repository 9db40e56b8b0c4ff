"""``llmft eval model_dir=RUN/model``: re-evaluate a saved model, adapter or prompt.

    model_dir/llmft.json -> task -> data (the run's own data config unless overridden)
        -> model as its strategy saved it -> task.evaluate -> predictions.jsonl, results.json (last)
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def memory_figures() -> dict:
    """Peak memory of this process: resident set on the CPU, allocated memory on a GPU."""
    figures = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        figures["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        every = [None] * torch.distributed.get_world_size()  # every rank's figures, rank 0's first
        torch.distributed.all_gather_object(every, figures)
        figures = {**figures, "per_rank": every}
    return figures


def use_run_data(cfg, overrides: list[str], model_dir: str):
    """The data config the run of ``model_dir`` trained with, plus any ``data.KEY=VALUE`` from the
    command line. ``data=NAME`` on the command line means another data set: the composed one is kept.
    """
    from omegaconf import OmegaConf, open_dict

    run_config = Path(model_dir) / ".." / "config.yaml"
    meta_file = Path(model_dir) / "llmft.json"
    if not run_config.is_file() and meta_file.is_file():  # an export elsewhere: its source's run
        source = json.loads(meta_file.read_text()).get("source")
        run_config = Path(source) / ".." / "config.yaml" if source else run_config
    if any(o.lstrip("+~").startswith("data=") for o in overrides) or not run_config.is_file():
        return cfg
    trained = OmegaConf.load(run_config)
    if "data" not in trained:
        return cfg
    keys = [o.lstrip("+") for o in overrides if o.lstrip("+").startswith("data.")]
    with open_dict(cfg):
        cfg.data = OmegaConf.merge(cfg.data, trained.data, OmegaConf.from_dotlist(keys).get("data", {}))
    return cfg


def main(cfg, run_path: str | Path) -> dict:
    from llmft.data import load_splits
    from llmft.display import print_config, print_results
    from llmft.models import load_saved, read_metadata
    from llmft.run_dir import RunDir
    from llmft.strategies import strategy_class
    from llmft.tasks import TASKS
    from llmft.trainer import build_trainer, eval_arguments

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
    results = {
        "status": "completed",
        "run_dir": str(run.path),
        "model_dir": str(model_dir.resolve()),
        "task": task.name,
        "data": cfg.data.name,
        "strategy": meta.get("strategy"),
        "primary_metric": task.primary_metric,
        "num_eval_examples": len(eval_set),
        "eval": metrics,
        "baseline": baseline,
        "warnings": task.warnings(metrics, baseline, records),
        "memory": memory_figures(),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    run.write_predictions(records)
    run.write_results(results)
    print_results(results)
    return results
