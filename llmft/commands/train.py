"""The training recipe, top to bottom:

    seed -> task -> strategy -> data -> [a finished model/ of this config: reload it]
         -> tokenizer -> strategy.prepare_data -> model -> strategy.apply -> task.wrap
         -> techniques (multi-task mix, objective, early stopping, sampling) -> Trainer -> train
         -> retention report -> model/ (artifacts.py)
         -> evaluate on the held-out split (and validation) -> predictions.jsonl, results.json (last)

The recipe fills in one run context (``Run``); the optional techniques (techniques/*.py) act at
the points named ``techniques.at(...)`` below, each reading and setting fields of it, and do
nothing there when they are off. A staged technique (self-training rounds, PET's ensemble of
patterns) runs this recipe once per stage (``run_once``), in RUN/stages/<name>/ and finally in
RUN (techniques/unlabeled.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmft.artifacts import load_saved, model_metadata, save_model
from llmft.core.errors import NonFinite, UserError
from llmft.data.files import load_splits
from llmft.models.loading import count_parameters, load_backbone, load_backbone_tokenizer, resolve_model_path
from llmft.runtime.display import print_config, print_results
from llmft.runtime.distributed import deepspeed_config, is_rank_zero, memory_figures, world_size
from llmft.runtime import throughput
from llmft.runtime.preemption import PREEMPTION
from llmft.runtime.results import completed, run_identity
from llmft.runtime.manifest import write_manifest
from llmft.runtime.precision import record as precision_record, resolve as resolve_precision
from llmft.runtime.run_dir import Preempted, RunDir, SaveOnPreemption, fingerprint
from llmft.runtime.trainer import (build_trainer, finish_tracker, start_tracker, tracker_callbacks,
                                   training_arguments)
from llmft.strategies import build_strategy, strategy_class
from llmft.tasks import build_task
from llmft import techniques

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One run of the recipe, filled in step by step: what ``train_model``, ``evaluate_run`` and
    the techniques' hooks (techniques/__init__.py) read and set."""

    cfg: Any
    dir: RunDir  # the run folder
    started: float = 0.0  # time.perf_counter() at the start: results.json's wall time
    extra_train: Any = None  # rows a stage adds to the train split (pseudo-labels, soft labels)
    callbacks: list = field(default_factory=list)  # the Trainer's: the caller's, then the techniques'
    ident: dict | None = None  # what this config computes: checkpoints, model/ and results.json carry it
    ds_config: dict | None = None  # DeepSpeed's, rendered from cfg.hardware; None: no DeepSpeed
    resume_from: Path | None = None  # the checkpoint training resumes from
    reevaluated: bool = False  # model/ of this config was complete: this run only evaluates it
    report_to: list = field(default_factory=list)  # the tracker (rank 0 only)
    task: Any = None
    strategy: Any = None
    splits: dict = field(default_factory=dict)  # rows per split
    baseline_train: Any = None  # the rows the majority baseline is fitted on (None: splits["train"])
    sets: dict = field(default_factory=dict)  # the eval and validation splits, tokenized
    source: str | None = None  # the model the run trains from (a path)
    tokenizer: Any = None
    model: Any = None
    param_groups: Any = None  # optimizer groups with their own learning-rate scale (None: the Trainer's)
    train_set: Any = None  # the train split, tokenized (None: the strategy trains nothing)
    objective: Any = None  # what training minimises beyond the model's own loss (None: that loss)
    sampler: Any = None  # (global batch, seed) -> Sampler (None: the Trainer's random order)
    eval_metric: str | None = None  # what the evaluations during training watch (None: there are none)
    eval_set: Any = None  # what they score
    compute_metrics: Any = None  # their metric function (None: the loss only)
    trainer: Any = None  # its model is what gets evaluated
    figures: dict | None = None  # the train figures of results.json (None: nothing trained)
    record: dict = field(default_factory=dict)  # the training record model/llmft.json keeps
    # record["techniques"][name]: what a technique reports in results.json (e.g. augment's rows per class)

    @property
    def path(self) -> Path:
        return self.dir.path


def main(cfg, run_path: str | Path, callbacks=()) -> dict:
    """One run; or, for a staged technique (self-training rounds, PET's ensemble of patterns), its
    stages: each one a ``run_once`` in RUN/stages/<name>/, the last one in RUN itself."""
    staged = techniques.staged(cfg)  # None: no technique runs this config in stages
    return staged(run_once, cfg, run_path, callbacks) if staged else run_once(cfg, run_path, callbacks)


def run_once(cfg, run_path: str | Path, callbacks=(), extra_train=None, report: dict | None = None) -> dict:
    """seed ... results.json for one model. ``extra_train``: rows a stage adds to the train split
    (pseudo-labels); ``report``: what the stages before this one did, for results.json."""
    run = Run(cfg, RunDir(run_path), started=time.perf_counter(), extra_train=extra_train, callbacks=[*callbacks])
    lead = is_rank_zero()  # rank 0 alone writes the run folder, logs and the tracker
    run.ident = fingerprint(cfg)
    run.resume_from = run.dir.resume_checkpoint(cfg.train.resume, run.ident, world_size(cfg.hardware),
                                                cfg.hardware.zero_stage)
    resolve_precision(cfg.hardware, run.resume_from, announce=lead)  # auto: fixed here for the whole run
    run.ds_config = deepspeed_config(cfg)
    if lead:
        run.dir.set_aside_other_runs(cfg.train.resume, run.ident)
    # model/ of this very config is complete (killed while evaluating, or rerun as it was): evaluate it only
    finished = run.dir.complete_model(run.ident) if strategy_class(cfg.strategy.name).trains else None
    run.reevaluated = finished is not None
    if lead:
        run.dir.start(cfg, step_of(run.resume_from), run.ds_config, keep_metrics=run.reevaluated,
                      fingerprint=run.ident["fingerprint"])
        write_manifest(run.path, cfg, run.ident)  # what a rerun elsewhere must match (llmft reproduce)
        if cfg.print_config:
            print_config(cfg)

    from transformers import set_seed

    set_seed(cfg.seed)
    run.task = build_task(cfg.data)
    run.strategy = build_strategy(cfg, run.task)
    run.splits = load_splits(cfg.data, run.task)  # bad data fails here
    techniques.at("splits", run)  # the unlabelled split set aside; a stage's rows join the train split
    run.report_to = start_tracker(cfg, run.path) if lead else []
    results = None
    try:
        if finished is None:
            train_model(run)
        else:
            reload_finished(run, finished)
        PREEMPTION.finishing("the final evaluation")  # SIGTERM/USR2 from here on: finish, then stop
        results, records = evaluate_run(run)
        extra = dict(report or {})  # a staged run's stages; their warnings join the run's own
        results.update(extra, warnings=[*results["warnings"], *extra.pop("warnings", [])])
        if run.trainer.is_world_process_zero():
            run.dir.write_predictions(records)
            run.dir.write_results(results)  # last: its presence means the run completed
    finally:
        finish_tracker(results)
    if lead:
        print_results(results)
    return results


def train_model(run: Run) -> None:
    """Tokenizer -> model -> strategy -> techniques -> Trainer -> train -> model/ (written whole,
    then renamed). Fills in the run's Trainer (its model is what gets evaluated), the training
    record model/llmft.json keeps, the prepared splits and their tokenized eval sets."""
    cfg, task, strategy = run.cfg, run.task, run.strategy
    techniques.at("source", run)  # e.g. a student built from the teacher's blocks
    run.source = run.source or resolve_model_path(cfg.model.name_or_path)
    run.tokenizer = load_backbone_tokenizer(cfg.model, run.source)
    # prompts that cannot fit fail here, before the model loads
    run.splits = strategy.prepare_data(run.splits, run.tokenizer)
    run.sets = tokenized(task, run.splits, run.tokenizer)
    model = strategy.apply(load_backbone(cfg.model, task, strategy, run.tokenizer, run.source))
    run.model, run.param_groups = task.wrap(model, strategy.param_groups(model), cfg.model)  # e.g. NER's CRF
    run.train_set = task.tokenize(run.splits["train"], run.tokenizer) if strategy.trains else None
    techniques.at("train_set", run)  # PET's final classifier: distributions; data.aux mixed in, aux heads
    params = count_parameters(run.model)
    techniques.at("objective", run)  # focal / class-weighted loss, distillation, L2-SP
    techniques.at("trainer", run)  # early stopping, NEFTune, the order examples are drawn in
    preemption = SaveOnPreemption()  # its signal handlers are set for the training loop only
    args = training_arguments(cfg, run.dir.checkpoints, run.report_to, run.ds_config, run.eval_metric)
    run.trainer = build_trainer(
        args, run.model, run.tokenizer, task, run.train_set,
        callbacks=[*strategy.callbacks(), *run.dir.callbacks(run.ident, cfg.hardware.zero_stage), preemption,
                   *tracker_callbacks(), *run.callbacks],
        param_groups=run.param_groups, objective=run.objective, train_cfg=cfg.train, sampler=run.sampler,
        eval_dataset=run.eval_set, compute_metrics=run.compute_metrics,
    )
    run.figures = fit(run, preemption)
    strategy.before_eval(run.trainer)
    run.record = {"train": run.figures, "params": params, **run.record, "strategy_report": strategy.report()}
    techniques.at("trained", run)  # early stopping's and sampling's train figures, the retention report
    save_model(run.trainer, strategy, run.tokenizer, run.dir.model_dir,
               meta=model_metadata(cfg, task, strategy, run.source, run.ident["fingerprint"], run.record))


def fit(run: Run, preemption) -> dict | None:
    """trainer.train (from ``run.resume_from`` when set); the train figures of results.json.
    Weights that went nan/inf fail the run; a preemption signal saves a checkpoint and stops it."""
    if not run.strategy.trains:
        return None
    trainer, resume_from = run.trainer, run.resume_from
    if resume_from:
        log.info("resuming from %s", resume_from)
    try:
        trained = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        check_finite_weights(trainer.model, trainer.state.global_step)
    except NonFinite as err:
        raise diverged(run.dir, err, is_rank_zero()) from None
    if preemption.caught:
        raise Preempted(preemption.caught, trainer.state.global_step, preemption.checkpoint)
    return train_summary(trainer, trained, step_of(resume_from))


def reload_finished(run: Run, meta: dict) -> None:
    """A rerun whose model/ is complete: load it the way ``llmft eval`` does, with the run's
    evaluation settings, and its training record."""
    cfg, task = run.cfg, run.task
    log.info("%s holds the finished model of this config: evaluating it (no training)", run.dir.model_dir)
    run.model, run.tokenizer = load_saved(run.dir.model_dir, task, meta, trust_remote_code=cfg.model.trust_remote_code)
    run.splits = run.strategy.prepare_data(run.splits, run.tokenizer)
    task.tokenize(run.splits["train"], run.tokenizer)  # the data report counts what training saw
    run.sets = tokenized(task, run.splits, run.tokenizer)
    args = training_arguments(cfg, run.dir.checkpoints, [], None)  # no DeepSpeed: nothing to train or shard
    run.trainer = build_trainer(args, run.model, run.tokenizer, task)
    run.record = meta["training"]


def tokenized(task, splits: dict, tokenizer) -> dict:
    """The eval split and (when there is one) the validation split, tokenized."""
    return {"eval": task.tokenize(splits["eval"], tokenizer),
            "validation": task.tokenize(splits["validation"], tokenizer) if "validation" in splits else None}


def evaluate_run(run: Run) -> tuple[dict, list[dict]]:
    """results.json from the parts' reports, and the eval split's prediction records."""
    cfg, task, strategy, trainer, splits, sets = run.cfg, run.task, run.strategy, run.trainer, run.splits, run.sets
    ident, record, reevaluated, started = run.ident, run.record, run.reevaluated, run.started
    metrics, records = strategy.evaluate(trainer, sets["eval"], splits["eval"], cfg.generate)
    fitted_on = run.baseline_train if run.baseline_train is not None else splits.get("train")
    baseline = task.baseline(fitted_on, splits["eval"]) if fitted_on is not None else {}
    validation = None  # what sweeps select on; "eval" (the held-out test split) is what is reported
    if sets["validation"] is not None:
        validation, _ = strategy.evaluate(trainer, sets["validation"], splits["validation"], cfg.generate)
    results = completed(
        "train",
        **run_identity(cfg, task, run.path, ident["fingerprint"]),
        num_train_examples=len(splits["train"]),
        aux=record["aux"],
        data_report=task.data_report(),
        num_eval_examples=len(sets["eval"]),
        eval=metrics,  # the held-out test split: the numbers to report
        num_validation_examples=len(splits["validation"]) if validation is not None else 0,
        validation=validation,  # early stopping and sweeps select on these, never on "eval"
        baseline=baseline,
        warnings=task.warnings(metrics, baseline, records),  # learned nothing useful? (report marks it)
        train=record["train"],
        hardware={"name": cfg.hardware.name, "world_size": world_size(cfg.hardware),
                  "zero_stage": cfg.hardware.zero_stage, **precision_record(cfg.hardware)},
        memory=memory_figures(),
        params=record["params"],
        strategy_report=record["strategy_report"],
        retention=record["retention"],
        **({"techniques": record["techniques"]} if record.get("techniques") else {}),  # by technique name
        reevaluated=reevaluated,  # True: model/ was complete, this run only evaluated it
        wall_time_s=round(time.perf_counter() - started, 1),
    )
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
    tokens = trainer.session_tokens()
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
        "precision": dtype,  # what this session trained in (hardware.precision=auto resolved)
        **throughput.summary(trainer.model, trainer.tokens, runtime, args.device.type, dtype),
    }
