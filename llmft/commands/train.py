"""The training recipe, top to bottom:

    seed -> task -> strategy -> data -> tokenizer -> strategy.prepare_data -> model
         -> strategy.apply -> Trainer -> train -> save
         -> evaluate on the held-out split (and validation) -> predictions.jsonl, results.json (last)
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from llmft.data.files import load_splits
from llmft.runtime.display import print_config, print_results
from llmft.runtime.distributed import deepspeed_config, is_rank_zero, memory_figures, world_size
from llmft.core.errors import UserError
from llmft.artifacts import save_model
from llmft.models.loading import count_parameters, load_backbone, load_backbone_tokenizer, resolve_model_path
from llmft.techniques.objective import from_config as objective_from_config
from llmft.runtime.run_dir import Preempted, RunDir, SaveOnPreemption, finite_json, fingerprint
from llmft.strategies import build_strategy
from llmft.tasks import build_task
from llmft.runtime.trainer import NonFinite, build_trainer, finish_tracker, start_tracker, training_arguments

log = logging.getLogger(__name__)


def main(cfg, run_path: str | Path, callbacks=()) -> dict:
    started = time.perf_counter()
    lead = is_rank_zero()  # rank 0 alone writes the run folder, logs and the tracker
    run = RunDir(run_path)
    ds_config = deepspeed_config(cfg)
    ident = fingerprint(cfg)  # what this config computes: checkpoints, model/ and results.json carry it
    resume_from = run.resume_checkpoint(cfg.train.resume, ident, world_size(cfg.hardware), cfg.hardware.zero_stage)
    resume_step = int(resume_from.name.split("-")[-1]) if resume_from else 0
    if lead:
        moved = run.set_aside_other_runs(cfg.train.resume, ident)
        if moved:
            log.warning("%s held the files of another run (another config, or train.resume=never): moved to %s",
                        run.path, moved)
    finished = run.complete_model(ident)  # model/ of this very config is complete: evaluate it, don't retrain
    if lead:
        run.start(cfg, resume_step, ds_config, keep_metrics=finished is not None, fingerprint=ident["fingerprint"])
        if cfg.print_config:
            print_config(cfg)

    from transformers import set_seed

    set_seed(cfg.seed)
    task = build_task(cfg.data)
    strategy = build_strategy(cfg, task)
    splits = load_splits(cfg.data, task)  # bad data fails here, before the model loads
    if not strategy.trains:
        finished = None

    if cfg.train.distill.student_layers > 0 and finished is None:  # the student starts as N of the teacher's blocks
        from llmft.techniques.objective import teacher_dir
        from llmft.techniques.students import init_from_teacher

        cfg.model.name_or_path = str(init_from_teacher(teacher_dir(cfg.train.distill.teacher), task,
                                                       cfg.train.distill.student_layers, run.path / "student_init",
                                                       cfg.model.trust_remote_code))
    tokenizer = load_backbone_tokenizer(cfg.model) if finished is None else None
    results = None
    report_to = start_tracker(cfg, run.path) if lead else []
    try:
        if finished is not None:
            log.info("%s holds the finished model of this config: evaluating it (no training)", run.model_dir)
            trainer, tokenizer, record = reload_finished(cfg, run, task, strategy, finished)
            splits = strategy.prepare_data(splits, tokenizer)
            task.tokenize(splits["train"], tokenizer)  # the data report counts what training saw
        else:
            splits = strategy.prepare_data(splits, tokenizer)  # prompts that cannot fit fail here, before the model loads
        eval_set = task.tokenize(splits["eval"], tokenizer)
        validation_set = task.tokenize(splits["validation"], tokenizer) if "validation" in splits else None
        if finished is None:
            trainer, record = train_model(cfg, run, task, strategy, splits, tokenizer, eval_set, validation_set,
                                          ds_config, report_to, resume_from, resume_step, ident, [*callbacks])
        metrics, records = strategy.evaluate(trainer, eval_set, splits["eval"], cfg.generate)
        baseline = task.baseline(splits["train"], splits["eval"]) if "train" in splits else {}
        validation = None  # what sweeps select on; "eval" (the held-out test split) is what is reported
        if validation_set is not None:
            validation, _ = strategy.evaluate(trainer, validation_set, splits["validation"], cfg.generate)
        results = {
            "status": "completed",
            "run_dir": str(run.path),
            "fingerprint": ident["fingerprint"],
            "experiment": cfg.experiment,
            "task": task.name,
            "model": cfg.model.name,
            "data": cfg.data.name,
            "strategy": cfg.strategy.name,
            "seed": cfg.seed,
            "primary_metric": task.primary_metric,
            "num_train_examples": len(splits["train"]),
            "aux": record["aux"],
            "data_report": task.data_report(),
            "num_eval_examples": len(eval_set),
            "eval": metrics,  # the held-out test split: the numbers to report
            "num_validation_examples": len(splits["validation"]) if validation is not None else 0,
            "validation": validation,  # early stopping and sweeps select on these, never on "eval"
            "baseline": baseline,
            "warnings": task.warnings(metrics, baseline, records),  # learned nothing useful? (report marks it)
            "train": record["train"],
            "hardware": {"name": cfg.hardware.name, "world_size": world_size(cfg.hardware),
                         "zero_stage": cfg.hardware.zero_stage, "precision": cfg.hardware.precision},
            "memory": memory_figures(),
            "params": record["params"],
            "strategy_report": record["strategy_report"],
            "retention": record["retention"],
            "reevaluated": finished is not None,  # True: model/ was complete, this run only evaluated it
            "wall_time_s": round(time.perf_counter() - started, 1),
        }
        if trainer.is_world_process_zero():
            run.write_predictions(records)
            run.write_results(results)  # last: its presence means the run completed
    finally:
        finish_tracker(results)
    if lead:
        print_results(results)
    return results


def train_model(cfg, run, task, strategy, splits, tokenizer, eval_set, validation_set, ds_config, report_to,
                resume_from, resume_step, ident, callbacks) -> tuple:
    """Model -> strategy -> Trainer -> train -> model/ (written whole, then renamed). Returns the
    Trainer (its model is what gets evaluated) and the training record model/llmft.json keeps."""
    lead = is_rank_zero()
    model = load_backbone(cfg.model, task, strategy, tokenizer)
    model = strategy.apply(model)
    param_groups = strategy.param_groups(model)
    model, param_groups = task.wrap(model, param_groups, cfg.model)  # e.g. NER's CRF (model.crf)
    train_set = task.tokenize(splits["train"], tokenizer) if strategy.trains else None
    aux_report = None
    if cfg.data.aux and strategy.trains:  # multi-task / rehearsal data mixed into train
        from llmft.techniques.multitask import MultiTaskClassifier, mix

        train_set, heads, aux_report = mix(cfg, task, tokenizer, train_set)
        if heads:
            model = MultiTaskClassifier(model, heads)
            param_groups = model.param_groups(param_groups)
    params = count_parameters(model)
    objective = objective_from_config(cfg, task, model, train_set, tokenizer) if strategy.trains else None
    stopping = early_stopping(cfg, task, splits)

    preemption = SaveOnPreemption()  # its signal handlers are set for the training loop only
    args = training_arguments(cfg, run.checkpoints, report_to, ds_config, stopping and stopping["metric"])
    trainer = build_trainer(
        args, model, tokenizer, task, train_set,
        callbacks=[*strategy.callbacks(), *run.callbacks(ident, cfg.hardware.zero_stage), preemption, *callbacks,
                   *(stopping["callbacks"] if stopping else [])],
        param_groups=param_groups, objective=objective, train_cfg=cfg.train,
        sample_weights=balanced_sample_weights(train_set) if cfg.data.sampler == "balanced" else None,
        eval_dataset=validation_set if stopping else None,
        compute_metrics=task.loop_metrics if stopping and stopping["metric"] != "loss" else None,
    )
    if objective is not None and objective.teacher is not None:
        objective.teacher.to(trainer.args.device)
    if ds_config is not None and not trainer.is_deepspeed_enabled:
        raise RuntimeError("hardware.zero_stage>0 but the Trainer did not engage DeepSpeed "
                           "(ACCELERATE_USE_CPU set? it drops DeepSpeed silently)")
    train_figures = None
    if strategy.trains:
        if resume_from:
            log.info("resuming from %s", resume_from)
        try:
            trained = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            check_finite_weights(trainer.model, trainer.state.global_step)
        except NonFinite as err:
            raise diverged(run, err, lead) from None
        if preemption.caught:
            raise Preempted(preemption.caught, trainer.state.global_step, preemption.checkpoint)
        train_figures = train_summary(trainer, trained, resume_step)
        if stopping:
            train_figures["early_stopping"] = stopping_summary(trainer, stopping["metric"])
    strategy.before_eval(trainer)
    record = {"train": train_figures, "params": params, "aux": aux_report, "strategy_report": strategy.report(),
              "retention": retention_report(cfg, task, strategy, trainer, tokenizer, eval_set, run.path)}
    save_model(trainer, strategy, tokenizer, run.model_dir, meta={
        **task.metadata(),
        **strategy.metadata(),
        "crf": cfg.model.crf,
        "strategy": cfg.strategy.name,
        "base_model": resolve_model_path(cfg.model.name_or_path),
        "trust_remote_code": cfg.model.trust_remote_code,
        "revision": cfg.model.revision,
        "fingerprint": ident["fingerprint"],
        "training": finite_json(record),  # a rerun that finds model/ complete reports these
    })
    return trainer, record


def reload_finished(cfg, run, task, strategy, meta: dict) -> tuple:
    """A rerun whose model/ is complete (killed during evaluation, or rerun as it was): load it the
    way ``llmft eval`` does, with the run's evaluation settings, and its training record."""
    from llmft.artifacts import load_saved

    model, tokenizer = load_saved(run.model_dir, task, meta, trust_remote_code=cfg.model.trust_remote_code)
    args = training_arguments(cfg, run.checkpoints, [], None)  # no DeepSpeed: nothing to train or shard
    return build_trainer(args, model, tokenizer, task), tokenizer, meta["training"]


def check_finite_weights(model, step: int) -> None:
    """Every trainable weight finite after training (fp16 overflow, a custom loss): else NonFinite."""
    import torch

    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param.detach()).all():
            raise NonFinite(f"weight {name}", float("nan"), step)


def diverged(run: RunDir, err: NonFinite, lead: bool) -> UserError:
    """The one line for a run that diverged; its results.json says "failed" (no model/ is written)."""
    checkpoint = run.latest_checkpoint()
    where = str(checkpoint) if checkpoint else "none (train.save_steps=N keeps them)"
    message = (f"{err}; last complete checkpoint: {where}. Lower train.lr or keep train.max_grad_norm > 0 "
               f"and rerun with train.resume=never (this run's files move to {run.path / 'replaced'})")
    if lead:
        run.write_failure(str(err), step=err.step, last_checkpoint=str(checkpoint) if checkpoint else None)
    return UserError(message)


def early_stopping(cfg, task, splits) -> dict | None:
    """train.early_stopping: the metric watched on the validation split, and the callback."""
    es = cfg.train.early_stopping
    if es.patience <= 0:
        return None
    if "validation" not in splits:
        raise UserError("train.early_stopping needs a validation split: set data.validation_fraction=0.1 "
                        "or data.validation_file=PATH (the eval split stays untouched for the final report)")
    from transformers import EarlyStoppingCallback

    metric = es.metric or (task.primary_metric if task.primary_metric in task.loop_metric_names else "loss")
    return {"metric": metric, "callbacks": [EarlyStoppingCallback(es.patience, es.threshold)]}


def stopping_summary(trainer, metric: str) -> dict:
    best = trainer.state.best_model_checkpoint
    return {"metric": metric, "best_step": int(best.rsplit("-", 1)[-1]) if best else None,
            "best_value": trainer.state.best_metric, "stopped_at_step": trainer.state.global_step,
            "stopped_early": trainer.state.global_step < trainer.state.max_steps}


def balanced_sample_weights(train_set) -> list[float]:
    """data.sampler=balanced: each example drawn with probability 1 / (its label's count)."""
    from collections import Counter

    labels = train_set["labels"]
    counts = Counter(labels)
    return [1.0 / counts[y] for y in labels]


def retention_report(cfg, task, strategy, trainer, tokenizer, eval_set, run_path) -> dict | None:
    if not (cfg.train.retention.report and strategy.trains):
        return None
    if world_size(cfg.hardware) > 1:
        return {"skipped": "measured in 1-process runs only (the sharded weights are not gathered for it)"}
    if getattr(cfg.strategy, "name", "") == "qlora":
        return {"skipped": "the base weights are 4-bit: drift against the fp32 checkpoint would measure quantization"}
    from llmft.techniques.retention import report

    try:
        return report(cfg, task, strategy, trainer.model, tokenizer, eval_set, task.collator(tokenizer), Path(run_path))
    except (RuntimeError, ValueError, TypeError, AttributeError) as err:  # the report must not cost the run
        log.warning("retention report skipped: %s", err)
        return {"skipped": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}


def train_summary(trainer, trained, resume_step: int) -> dict:
    runtime = trained.metrics["train_runtime"]
    tokens = trainer.state.num_input_tokens_seen
    return {
        "runtime_s": round(runtime, 2),
        "resumed_from_step": resume_step,
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 4),
        "final_loss": round(trained.training_loss, 4),
        "samples_per_s": round(trained.metrics["train_samples_per_second"], 2),
        "tokens_seen": int(tokens),
        "tokens_per_s": round(tokens / runtime, 1) if runtime else 0.0,
    }
