"""The training recipe, top to bottom:

    seed -> task -> strategy -> data -> [a finished model/ of this config: reload it]
         -> tokenizer -> strategy.prepare_data -> model -> strategy.apply -> task.wrap
         -> techniques (multi-task mix, objective, early stopping, sampling) -> Trainer -> train
         -> retention report -> model/ (artifacts.py)
         -> evaluate on the held-out split (and validation) -> predictions.jsonl, results.json (last)

Every optional technique is one line below: its constructor is a no-op when it is off. A staged
technique (self-training rounds, PET's ensemble of patterns) runs this recipe once per stage
(``run_once``), in RUN/stages/<name>/ and finally in RUN (techniques/unlabeled.py).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from llmft.artifacts import load_saved, model_metadata, save_model
from llmft.core.errors import UserError
from llmft.data.files import load_splits
from llmft.models.loading import count_parameters, load_backbone, load_backbone_tokenizer
from llmft.runtime.display import print_config, print_results
from llmft.runtime.distributed import deepspeed_config, is_rank_zero, memory_figures, world_size
from llmft.runtime import throughput
from llmft.runtime.preemption import PREEMPTION
from llmft.runtime.run_dir import Preempted, RunDir, SaveOnPreemption, fingerprint
from llmft.runtime.trainer import NonFinite, build_trainer, finish_tracker, start_tracker, training_arguments
from llmft.strategies import build_strategy, strategy_class
from llmft.tasks import build_task
from llmft.techniques import (distillation, multitask, neftune, pet_ensemble, retention, sampling, self_training,
                               unlabeled)
from llmft.techniques.early_stopping import EarlyStopping
from llmft.techniques.objective import from_config as objective_from_config

log = logging.getLogger(__name__)


def main(cfg, run_path: str | Path, callbacks=()) -> dict:
    """One run; or, for a staged technique (self-training rounds, PET's ensemble of patterns), its
    stages: each one a ``run_once`` in RUN/stages/<name>/, the last one in RUN itself."""
    staged = self_training.plan(cfg) or pet_ensemble.plan(cfg)  # None: the technique is off
    return staged(run_once, cfg, run_path, callbacks) if staged else run_once(cfg, run_path, callbacks)


def run_once(cfg, run_path: str | Path, callbacks=(), extra_train=None, report: dict | None = None) -> dict:
    """seed ... results.json for one model. ``extra_train``: rows a stage adds to the train split
    (pseudo-labels); ``report``: what the stages before this one did, for results.json."""
    started = time.perf_counter()
    lead = is_rank_zero()  # rank 0 alone writes the run folder, logs and the tracker
    run = RunDir(run_path)
    ds_config = deepspeed_config(cfg)
    ident = fingerprint(cfg)  # what this config computes: checkpoints, model/ and results.json carry it
    resume_from = run.resume_checkpoint(cfg.train.resume, ident, world_size(cfg.hardware), cfg.hardware.zero_stage)
    if lead:
        run.set_aside_other_runs(cfg.train.resume, ident)
    # model/ of this very config is complete (killed while evaluating, or rerun as it was): evaluate it only
    finished = run.complete_model(ident) if strategy_class(cfg.strategy.name).trains else None
    if lead:
        run.start(cfg, step_of(resume_from), ds_config, keep_metrics=finished is not None,
                  fingerprint=ident["fingerprint"])
        if cfg.print_config:
            print_config(cfg)

    from transformers import set_seed

    set_seed(cfg.seed)
    task = build_task(cfg.data)
    strategy = build_strategy(cfg, task)
    splits = unlabeled.with_rows(load_splits(cfg.data, task), extra_train)  # bad data fails here
    report_to = start_tracker(cfg, run.path) if lead else []
    results = None
    try:
        if finished is None:
            trainer, record, splits, sets = train_model(cfg, run, task, strategy, splits, ds_config, report_to,
                                                        resume_from, ident, [*callbacks])
        else:
            trainer, record, splits, sets = reload_finished(cfg, run, task, strategy, splits, finished)
        PREEMPTION.finishing("the final evaluation")  # SIGTERM/USR2 from here on: finish, then stop
        results, records = evaluate_run(cfg, run, ident, task, strategy, trainer, splits, sets, record,
                                        reevaluated=finished is not None, started=started)
        extra = dict(report or {})  # a staged run's stages; their warnings join the run's own
        results.update(extra, warnings=[*results["warnings"], *extra.pop("warnings", [])])
        if trainer.is_world_process_zero():
            run.write_predictions(records)
            run.write_results(results)  # last: its presence means the run completed
    finally:
        finish_tracker(results)
    if lead:
        print_results(results)
    return results


def train_model(cfg, run, task, strategy, splits, ds_config, report_to, resume_from, ident, callbacks) -> tuple:
    """Tokenizer -> model -> strategy -> techniques -> Trainer -> train -> model/ (written whole,
    then renamed). Returns the Trainer (its model is what gets evaluated), the training record
    model/llmft.json keeps, the prepared splits and their tokenized eval sets."""
    source = distillation.model_path(cfg, task, run.path)  # model.name_or_path, or a student of the teacher
    tokenizer = load_backbone_tokenizer(cfg.model, source)
    splits = strategy.prepare_data(splits, tokenizer)  # prompts that cannot fit fail here, before the model loads
    sets = tokenized(task, splits, tokenizer)
    model = strategy.apply(load_backbone(cfg.model, task, strategy, tokenizer, source))
    model, param_groups = task.wrap(model, strategy.param_groups(model), cfg.model)  # e.g. NER's CRF
    train_set = task.tokenize(splits["train"], tokenizer) if strategy.trains else None
    train_set = unlabeled.soft_labels(train_set, splits["train"])  # PET's final classifier: distributions
    train_set, model, param_groups, aux = multitask.attach(cfg, task, tokenizer, train_set, model, param_groups)
    params = count_parameters(model)
    objective = objective_from_config(cfg, task, strategy, model, train_set, tokenizer)
    stopping = EarlyStopping.from_config(cfg, task, splits)
    preemption = SaveOnPreemption()  # its signal handlers are set for the training loop only
    args = training_arguments(cfg, run.checkpoints, report_to, ds_config, stopping.metric)
    trainer = build_trainer(
        args, model, tokenizer, task, train_set,
        callbacks=[*strategy.callbacks(), *run.callbacks(ident, cfg.hardware.zero_stage), preemption, *callbacks,
                   *stopping.callbacks, *neftune.callbacks(cfg)],
        param_groups=param_groups, objective=objective, train_cfg=cfg.train,
        sampler=sampling.train_sampler(cfg, train_set),
        eval_dataset=stopping.eval_dataset(sets["validation"]), compute_metrics=stopping.compute_metrics(task),
    )
    figures = fit(trainer, strategy, run, resume_from, preemption, stopping)
    if figures:
        figures["group_by_length"] = sampling.grouped(cfg)
    strategy.before_eval(trainer)
    record = {"train": figures, "params": params, "aux": aux, "strategy_report": strategy.report(),
              "retention": retention.report_for(cfg, task, strategy, trainer, tokenizer, sets["eval"], run.path,
                                                source)}
    save_model(trainer, strategy, tokenizer, run.model_dir,
               meta=model_metadata(cfg, task, strategy, source, ident["fingerprint"], record))
    return trainer, record, splits, sets


def fit(trainer, strategy, run, resume_from, preemption, stopping) -> dict | None:
    """trainer.train (from ``resume_from`` when set); the train figures of results.json. Weights
    that went nan/inf fail the run; a preemption signal saves a checkpoint and stops it."""
    if not strategy.trains:
        return None
    if resume_from:
        log.info("resuming from %s", resume_from)
    try:
        trained = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        check_finite_weights(trainer.model, trainer.state.global_step)
    except NonFinite as err:
        raise diverged(run, err, is_rank_zero()) from None
    if preemption.caught:
        raise Preempted(preemption.caught, trainer.state.global_step, preemption.checkpoint)
    return {**train_summary(trainer, trained, step_of(resume_from)), **stopping.report(trainer)}


def reload_finished(cfg, run, task, strategy, splits, meta: dict) -> tuple:
    """A rerun whose model/ is complete: load it the way ``llmft eval`` does, with the run's
    evaluation settings, and its training record."""
    log.info("%s holds the finished model of this config: evaluating it (no training)", run.model_dir)
    model, tokenizer = load_saved(run.model_dir, task, meta, trust_remote_code=cfg.model.trust_remote_code)
    splits = strategy.prepare_data(splits, tokenizer)
    task.tokenize(splits["train"], tokenizer)  # the data report counts what training saw
    sets = tokenized(task, splits, tokenizer)
    args = training_arguments(cfg, run.checkpoints, [], None)  # no DeepSpeed: nothing to train or shard
    return build_trainer(args, model, tokenizer, task), meta["training"], splits, sets


def tokenized(task, splits: dict, tokenizer) -> dict:
    """The eval split and (when there is one) the validation split, tokenized."""
    return {"eval": task.tokenize(splits["eval"], tokenizer),
            "validation": task.tokenize(splits["validation"], tokenizer) if "validation" in splits else None}


def evaluate_run(cfg, run, ident, task, strategy, trainer, splits, sets, record, reevaluated: bool,
                 started: float) -> tuple[dict, list[dict]]:
    """results.json from the parts' reports, and the eval split's prediction records."""
    metrics, records = strategy.evaluate(trainer, sets["eval"], splits["eval"], cfg.generate)
    baseline = task.baseline(splits["train"], splits["eval"]) if "train" in splits else {}
    validation = None  # what sweeps select on; "eval" (the held-out test split) is what is reported
    if sets["validation"] is not None:
        validation, _ = strategy.evaluate(trainer, sets["validation"], splits["validation"], cfg.generate)
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
        "num_eval_examples": len(sets["eval"]),
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
        "reevaluated": reevaluated,  # True: model/ was complete, this run only evaluated it
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    return results, records


def step_of(checkpoint: Path | None) -> int:
    """The global step of a checkpoint-N folder (0: no checkpoint)."""
    return int(checkpoint.name.split("-")[-1]) if checkpoint else 0


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


def train_summary(trainer, trained, resume_step: int) -> dict:
    """Steps, loss and speed of this session (a resumed run counts the tokens it trained, not the
    ones before its checkpoint); the real-token fraction and MFU (runtime/throughput.py)."""
    runtime = trained.metrics["train_runtime"]
    tokens = trainer.state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    args = trainer.args
    dtype = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return {
        "runtime_s": round(runtime, 2),
        "resumed_from_step": resume_step,
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 4),
        "final_loss": round(trained.training_loss, 4),
        "samples_per_s": round(trained.metrics["train_samples_per_second"], 2),
        "tokens_seen": int(trainer.state.num_input_tokens_seen),  # real (non-padding) tokens, all processes
        "tokens_per_s": round(tokens / runtime, 1) if runtime else 0.0,
        **throughput.summary(trainer.model, trainer.tokens, runtime, args.device.type, dtype),
    }
