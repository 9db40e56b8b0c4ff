"""Assemble the HF Trainer from a run config: TrainingArguments, callbacks, the trackers (trackers.py).

The config's names map onto TrainingArguments here and nowhere else. The hardware config
decides the device, precision and the DeepSpeed config (``TrainingArguments(deepspeed=...)``).
The Trainer subclass is runtime/hf_trainer.py (it imports transformers; this module must not: the
CLI's validation reads validate_train); what it overrides of transformers' private API, hf_private.py.
"""
from __future__ import annotations

from pathlib import Path

from llmft.runtime.distributed import is_launched
from llmft.core.errors import UserError, require, require_one_of


def use_cpu(hardware) -> bool:
    import torch

    if hardware.accelerator == "cuda" and not torch.cuda.is_available():
        raise UserError("hardware.accelerator=cuda but no CUDA device is visible; use hardware=cpu")
    return hardware.accelerator == "cpu" or not torch.cuda.is_available()


def precision_flags(hardware) -> dict:
    """TrainingArguments' bf16 / fp16 for the run's precision (auto resolved: runtime/precision.py)."""
    from llmft.runtime import hf_private
    from llmft.runtime.precision import precision

    if hardware.precision == "bf16" and use_cpu(hardware) and not hf_private.cpu_has_bf16():
        raise UserError("hardware.precision=bf16: this CPU has no bf16 instructions (AVX512-BF16 or AMX); "
                        "use hardware.precision=fp32 (or auto: bf16 where the device has it)")
    used = precision(hardware)
    return {"bf16": used == "bf16", "fp16": used == "fp16"}


TORCH_SCHEDULERS = ("one_cycle", "cyclic")


def scheduler_kwargs(t) -> dict:
    if t.lr_scheduler == "cosine_with_restarts":
        return {"num_cycles": int(t.num_cycles)}
    if t.lr_scheduler == "cosine":
        return {"num_cycles": t.num_cycles / 2}  # transformers counts half-waves x 2: 0.5 = one decay
    if t.lr_scheduler == "polynomial":
        return {"power": t.power}
    return {}


def optimizer_name(optim: str, hardware) -> str:
    """adamw: torch's fused kernel, on the CPU too (it steps faster there than the for-each one);
    sgd with momentum; adafactor, galore_adamw, apollo_adamw (transformers' integrations)."""
    return "adamw_torch_fused" if optim == "adamw" else optim


LOW_RANK_OPTIMIZERS = {"galore_adamw": "galore_torch", "apollo_adamw": "apollo_torch"}  # optim -> its package
# null train.optim_target_modules: every linear layer inside the stack of blocks (BERT encoder.layer.N,
# Llama model.layers.N, T5 block.N), i.e. attention and MLP; not embeddings, pooler, lm_head or task head.
# transformers' rule: a list entry is a module name, a substring of one, or a regex it fully matches.
DEFAULT_TARGET_MODULES = [r".*\.(layer|layers|h|block|blocks)\.\d+\..+"]


def optimizer_arguments(t) -> dict:
    """train.optim and its knobs as TrainingArguments' optim / optim_args / optim_target_modules."""
    args = {"optim": optimizer_name(t.optim, None), "optim_args": None}
    if t.optim == "sgd":
        args["optim_args"] = f"momentum={t.momentum}"
    if t.optim in LOW_RANK_OPTIMIZERS:  # transformers reads rank, update_proj_gap, scale from optim_args
        knobs = {"rank": t.optim_rank, "update_proj_gap": t.optim_update_proj_gap, "scale": t.optim_scale}
        args["optim_args"] = ",".join(f"{k}={v}" for k, v in knobs.items() if v is not None)
        targets = t.optim_target_modules
        args["optim_target_modules"] = list(targets) if targets is not None else list(DEFAULT_TARGET_MODULES)
    return args


def checkpoint_and_eval_arguments(t, early_stopping_metric: str | None) -> dict:
    """Periodic checkpoints; with early stopping also periodic evaluation on the validation split,
    a checkpoint at every evaluation and the best one reloaded at the end."""
    if early_stopping_metric is None:
        return {"save_strategy": "steps" if t.save_steps > 0 else "no",  # the final model: the recipe saves it
                "save_steps": t.save_steps or 500, "save_total_limit": t.save_total_limit, "eval_strategy": "no"}
    mode = t.early_stopping.mode
    greater = (early_stopping_metric != "loss") if mode == "auto" else mode == "max"
    return {"save_strategy": "steps", "save_steps": t.save_steps or t.eval_steps,
            "save_total_limit": max(t.save_total_limit, 2), "eval_strategy": "steps", "eval_steps": t.eval_steps,
            "load_best_model_at_end": True, "metric_for_best_model": early_stopping_metric,
            "greater_is_better": greater}


def training_arguments(cfg, output_dir: Path, report_to: list[str], deepspeed: dict | None = None,
                       early_stopping_metric: str | None = None):
    from transformers import TrainingArguments

    t = cfg.train
    return TrainingArguments(
        output_dir=str(output_dir),
        seed=cfg.seed,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.lr,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or 2 * t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        # torch's one_cycle / cyclic replace this placeholder in LlmftTrainer.create_scheduler
        lr_scheduler_type="constant" if t.lr_scheduler in TORCH_SCHEDULERS else t.lr_scheduler,
        lr_scheduler_kwargs=scheduler_kwargs(t),
        **optimizer_arguments(t),
        logging_steps=t.logging_steps,
        **checkpoint_and_eval_arguments(t, early_stopping_metric),
        report_to=report_to,
        run_name=cfg.get("experiment") or cfg.strategy.name,
        use_cpu=use_cpu(cfg.hardware),
        **precision_flags(cfg.hardware),
        dataloader_num_workers=cfg.hardware.dataloader_workers,
        # packed rows (data.packing) have no padding and no attention mask: count them whole, not != pad (= eos)
        include_num_input_tokens_seen="all" if cfg.data.get("packing") else "non_padding",
        logging_nan_inf_filter=False,  # metrics.jsonl shows a nan loss as nan (and the run stops: NonFinite)
        disable_tqdm=False,
        activation_checkpointing=cfg.hardware.gradient_checkpointing,  # transformers 5 name
        torch_compile=cfg.hardware.compile,
        deepspeed=deepspeed,  # rendered from cfg.hardware (runtime/distributed.py); None: no DeepSpeed
        ddp_backend="gloo" if use_cpu(cfg.hardware) and is_launched() else None,
        ddp_timeout=cfg.hardware.collective_timeout_s,  # a rank that waits longer on the others fails
        restore_callback_states_from_checkpoint=True,  # early stopping's patience survives a resume
    )


def eval_arguments(output_dir: Path, batch_size: int, hardware, compile: bool = False):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_eval_batch_size=batch_size,
        report_to="none",
        use_cpu=use_cpu(hardware),
        torch_compile=compile,
        **precision_flags(hardware),
        dataloader_num_workers=hardware.dataloader_workers,
        disable_tqdm=False,
    )


def build_trainer(args, model, tokenizer, task, train_dataset=None, callbacks=(), param_groups=None,
                  objective=None, train_cfg=None, sampler=None, eval_dataset=None, compute_metrics=None):
    """The HF Trainer, and what llmft adds to it: the strategy's optimizer groups
    (``param_groups``), an ``objective`` beyond the model's own loss (techniques/objective.py) with
    each term logged, torch's one_cycle / cyclic schedules, the order examples are drawn in
    (``sampler``: (global batch, seed) -> Sampler, techniques/sampling.py), the tokens trained on
    (``trainer.tokens``: real and padded, runtime/throughput.py)."""
    from llmft.runtime.hf_trainer import GroupLearningRates, LlmftTrainer

    extra = [GroupLearningRates()]  # every strategy: lr/<group> at every logged step
    trainer = LlmftTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=task.collator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[*extra, *callbacks],
        task=task,
        param_groups=param_groups,
        loss_objective=objective,
        torch_schedule=train_cfg if train_cfg is not None and train_cfg.lr_scheduler in TORCH_SCHEDULERS else None,
        sampler_factory=sampler,
    )
    if args.deepspeed and not trainer.is_deepspeed_enabled:
        raise RuntimeError("hardware.zero_stage>0 but the Trainer did not engage DeepSpeed "
                           "(ACCELERATE_USE_CPU set? it drops DeepSpeed silently)")
    if objective is not None and objective.teacher is not None:
        objective.teacher.to(trainer.args.device)  # distillation: the teacher runs beside the student
    return trainer


def validate_logger(logger) -> None:
    """The trackers' own knobs (torch-free; runtime/trackers.py runs them)."""
    if logger.wandb is not None:
        require(bool(logger.wandb.project.strip()), "logger.wandb.project", "must not be empty")
    if logger.mlflow is not None:
        require(bool(logger.mlflow.experiment.strip()), "logger.mlflow.experiment",
                "must not be empty (MLflow makes an experiment of this name if it has none)")
        uri = logger.mlflow.tracking_uri
        require(uri is None or bool(uri.strip()), "logger.mlflow.tracking_uri",
                "must not be empty; null: a file store in RUN/mlruns, or http(s)://HOST:PORT for a server")


def start_tracker(cfg, run_path: Path) -> list[str]:
    """Open the run's trackers (runtime/trackers.py); returns the Trainer's ``report_to``."""
    from llmft.runtime import trackers

    return trackers.start(cfg, run_path)


def tracker_callbacks() -> list:
    """The trackers' own callbacks for the training Trainer (TensorBoard's writer, metrics.csv)."""
    from llmft.runtime import trackers

    return trackers.callbacks()


def finish_tracker(results: dict | None) -> None:
    """The final metrics into each tracker, then close them (``results`` None: the run failed)."""
    from llmft.runtime import trackers

    trackers.finish(results)


# transformers' SchedulerType values, listed here because importing transformers.trainer_utils
# pulls torch and peft, and validation stays torch-free; tests/unit/test_config.py checks the list against it.
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
    "warmup_stable_decay", "greedy", "one_cycle", "cyclic",
)


def validate_optimizer(cfg, strategy) -> None:
    """train.optim against the strategy and the hardware (torch-free)."""
    t = cfg.train
    if t.optim not in LOW_RANK_OPTIMIZERS:
        return
    import importlib.util

    require(t.optim_rank >= 1, "train.optim_rank", f"must be >= 1 (got {t.optim_rank})")
    require(t.optim_update_proj_gap >= 1, "train.optim_update_proj_gap",
            f"must be >= 1 (got {t.optim_update_proj_gap})")
    require(t.optim_scale is None or t.optim_scale > 0, "train.optim_scale", f"must be > 0 (got {t.optim_scale})")
    targets = t.optim_target_modules
    require(targets is None or (len(targets) > 0 and all(str(m).strip() for m in targets)),
            "train.optim_target_modules", "must be null (attention and MLP) or a non-empty list of names / regexes")
    require(importlib.util.find_spec(LOW_RANK_OPTIMIZERS[t.optim]) is not None, "train.optim",
            f"{t.optim} needs {LOW_RANK_OPTIMIZERS[t.optim]}: pip install 'llmft[lowmem-optim]'")
    if strategy is not None:
        require(strategy.trains_matrices(cfg), "train.optim",
                f"{t.optim} projects the gradients of whole weight matrices; strategy={strategy.name} trains none "
                f"(adapters, prompts or biases): use strategy=full / freeze / llrd, or train.optim=adamw")
        # APOLLO seeds each projection when it is built, for the weights that train then only
        require(t.optim != "apollo_adamw" or not strategy.unfreezes_later, "train.optim",
                f"apollo_adamw seeds its projections for the weights that train at the start; strategy="
                f"{strategy.name} unfreezes more later: use train.optim=galore_adamw")
    # ZeRO hands the optimizer flat 1-D partitions of the weights: no matrix left to project
    require(cfg.get("hardware") is None or cfg.hardware.zero_stage == 0, "hardware.zero_stage",
            f"train.optim={t.optim} needs each weight as a matrix, DeepSpeed ZeRO gives the optimizer flat "
            f"1-D shards; use hardware.zero_stage=0 (DDP) or train.optim=adamw")


def validate_train(t) -> None:
    """The train section's own knobs (torch-free); the techniques check theirs."""
    require(t.lr > 0, "train.lr", f"must be > 0 (got {t.lr})")
    require(t.batch_size >= 1, "train.batch_size", f"must be >= 1 (got {t.batch_size})")
    require(t.eval_batch_size is None or t.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1")
    require(t.grad_accum >= 1, "train.grad_accum", f"must be >= 1 (got {t.grad_accum})")
    require(t.epochs > 0 or t.max_steps > 0, "train.epochs", "must be > 0 unless train.max_steps > 0")
    require(0 <= t.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1) (got {t.warmup_ratio})")
    require(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0 (got {t.weight_decay})")
    require(t.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0 (0 turns clipping off)")
    require(t.logging_steps >= 1, "train.logging_steps", "must be >= 1")
    require(t.save_steps >= 0, "train.save_steps", "must be >= 0 (0: no intermediate checkpoints)")
    require(t.save_total_limit >= 1, "train.save_total_limit", "must be >= 1")
    require_one_of("train.lr_scheduler", t.lr_scheduler, LR_SCHEDULERS)
    require(t.eval_steps >= 0, "train.eval_steps", "must be >= 0")
    if t.lr_scheduler == "cyclic":
        c = t.cyclic
        require(c.step_size >= 1, "train.cyclic.step_size", "must be >= 1")
        top, bottom = c.max_lr or t.lr, c.base_lr if c.base_lr is not None else (c.max_lr or t.lr) / 10
        require(0 <= bottom < top, "train.cyclic.base_lr", f"must be below max_lr ({bottom} vs {top})")
        require(c.mode != "exp_range" or 0 < c.gamma <= 1, "train.cyclic.gamma",
                f"exp_range scales the cycle by gamma ** step: must be in (0, 1] (got {c.gamma}; 0 is a flat "
                f"rate, > 1 grows without bound)")
    require(0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)")
    if t.lr_scheduler == "cosine_with_restarts":  # transformers takes a whole number of cycles
        require(t.num_cycles >= 1 and float(t.num_cycles).is_integer(), "train.num_cycles",
                f"cosine_with_restarts runs a whole number of cycles >= 1 (got {t.num_cycles}; "
                f"{int(t.num_cycles)} would be used)")
    if t.lr_scheduler == "cosine":
        require(t.num_cycles > 0, "train.num_cycles", f"must be > 0 (0.5: one decay; got {t.num_cycles})")
    if t.lr_scheduler == "polynomial":  # power 0: a flat rate; < 0: 0 ** power at the last step
        require(t.power > 0, "train.power", f"polynomial decay needs a power > 0 (1: linear; got {t.power})")
        require(t.lr > 1e-7, "train.lr", f"polynomial decay ends at 1e-7 (transformers' lr_end): the rate must "
                                         f"start above it (got {t.lr})")
