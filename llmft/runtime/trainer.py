"""Assemble the HF Trainer from a run config: TrainingArguments, callbacks, the tracker.

The config's names map onto TrainingArguments here and nowhere else. The hardware config
decides the device, precision and the DeepSpeed config (``TrainingArguments(deepspeed=...)``).
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from llmft.runtime.distributed import is_launched
from llmft.runtime.throughput import TokenCounter
from llmft.core.errors import UserError, require, require_one_of


def use_cpu(hardware) -> bool:
    import torch

    if hardware.accelerator == "cuda" and not torch.cuda.is_available():
        raise UserError("hardware.accelerator=cuda but no CUDA device is visible; use hardware=cpu")
    return hardware.accelerator == "cpu" or not torch.cuda.is_available()


def precision_flags(hardware) -> dict:
    if hardware.precision == "bf16" and use_cpu(hardware) and not cpu_has_bf16():
        raise UserError("hardware.precision=bf16: this CPU has no bf16 instructions (AVX512-BF16 or AMX); "
                        "use hardware.precision=fp32")
    return {"bf16": hardware.precision == "bf16", "fp16": hardware.precision == "fp16"}


def cpu_has_bf16() -> bool:
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


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
    """adamw: torch's fused kernel, on the CPU too (22.4M parameters, this 2-core CPU: 142 ms a
    step against 398 ms for the for-each one); sgd with momentum; adafactor (transformers')."""
    return "adamw_torch_fused" if optim == "adamw" else optim


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
        optim=optimizer_name(t.optim, cfg.hardware),
        optim_args=f"momentum={t.momentum}" if t.optim == "sgd" else None,
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
        deepspeed=deepspeed,  # rendered from cfg.hardware (llmft/distributed.py); None: no DeepSpeed
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
    (``param_groups``), an ``objective`` beyond the model's own loss (llmft/objective.py) with
    each term logged, torch's one_cycle / cyclic schedules, the order examples are drawn in
    (``sampler``: (global batch, seed) -> Sampler, techniques/sampling.py), the tokens trained on
    (``trainer.tokens``: real and padded, runtime/throughput.py)."""
    import torch
    from transformers import Trainer, TrainerCallback

    from llmft.runtime.split_loss import SplitLoss, row_losses

    class LlmftTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            self.tokens.add(inputs)
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not torch.isfinite(loss).all():  # before the optimizer step: the weights are still finite
                raise NonFinite("loss", loss.float().max().item(), self.state.global_step + 1)
            return loss

        def train(self, resume_from_checkpoint=None, *args, **kwargs):
            # a resume, and the best checkpoint loaded at the end: DeepSpeed's loader unpickles anything
            with weights_only_loads(str(resume_from_checkpoint or self.args.output_dir)):
                return super().train(resume_from_checkpoint, *args, **kwargs)

        def _save_checkpoint(self, model, trial):
            # The Trainer deletes checkpoints beyond save_total_limit before the new one is marked
            # complete (on_save): a kill in between left nothing to resume from. Rotation waits for
            # the marker instead (run_dir.prune_checkpoints, called once it is written).
            limit, self.args.save_total_limit = self.args.save_total_limit, None
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = limit

        def _get_grad_norm(self, model, grad_norm=None):
            grad_norm = super()._get_grad_norm(model, grad_norm)
            value = float(grad_norm) if grad_norm is not None else 0.0
            # fp16 loss scaling overflows on purpose now and then: the scaler skips that step
            if not math.isfinite(value) and not self.args.fp16:
                raise NonFinite("gradient norm", value, self.state.global_step + 1)
            return grad_norm

        def create_optimizer(self, model=None):
            if param_groups is None or self.optimizer is not None:
                return super().create_optimizer(model)
            model = self.model if model is None else model
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_cls(optimizer_groups(self, model, param_groups), **kwargs)
            return self.optimizer

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if train_cfg is None or train_cfg.lr_scheduler not in TORCH_SCHEDULERS or self.lr_scheduler is not None:
                return super().create_scheduler(num_training_steps, optimizer)
            optimizer = self.optimizer if optimizer is None else optimizer
            self.lr_scheduler = torch_scheduler(train_cfg, optimizer, num_training_steps)
            return self.lr_scheduler

        def _get_train_sampler(self, train_dataset=None):
            if sampler is None:
                return super()._get_train_sampler(train_dataset)
            return sampler(self.args.per_device_train_batch_size * self.args.world_size, self.args.seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if objective is None or not model.training:  # eval loss: the model's own
                out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                if model.training:  # multi-task: each task's loss on the batches that had it
                    self._add_terms({f"task_{k}": v for k, v in getattr(model, "last_terms", {}).items()})
                elif self._split_loss is not None and return_outputs:  # evaluation: each row's loss, gathered
                    rows = row_losses(task.loss_kind, out[1], inputs, self.model)
                    self._split_loss.add(*self.accelerator.gather_for_metrics(rows))
                return out
            # soft targets: not the model's (it would take float labels for multi-label and keep that in its config)
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"} if objective.soft else inputs)
            loss, terms = objective(model, inputs, outputs)
            self._add_terms(terms)
            return (loss, outputs) if return_outputs else loss

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                            metric_key_prefix="eval"):
            """The Trainer's loop with the split's loss (runtime/split_loss.py) as ``eval_loss``,
            not its mean of per-batch means."""
            self._split_loss = SplitLoss() if task.loss_kind is not None else None
            try:
                output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                                 metric_key_prefix)
                loss = self._split_loss.value() if self._split_loss is not None else None
            finally:
                self._split_loss = None
            if loss is not None and f"{metric_key_prefix}_loss" in output.metrics:
                output.metrics[f"{metric_key_prefix}_loss"] = loss
            return output

        def _add_terms(self, terms: dict) -> None:
            for name, value in terms.items():
                total, count = self._terms.get(name, (0.0, 0))
                self._terms[name] = (total + value.item(), count + 1)

        def log(self, logs, start_time=None):
            if "loss" in logs and self._terms:  # each term's mean since the last log
                logs.update({f"loss/{k}": total / count for k, (total, count) in self._terms.items()})
                self._terms.clear()
            super().log(logs, start_time)

    class GroupLearningRates(TrainerCallback):
        """Logs the applied learning rate of every named optimizer group as lr/<name>."""

        applied: dict = {}

        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            # the rates this step used (the scheduler moves them before on_log runs)
            if optimizer is not None:
                self.applied = {}
                for group in optimizer.param_groups:  # the Trainer's own groups (decay / no decay): "all"
                    self.applied.setdefault(f"lr/{group.get('name', 'all')}", group["lr"])

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None and "loss" in logs:
                for name, lr in self.applied.items():
                    logs.setdefault(name, lr)

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
    )
    trainer._terms = {}  # loss term -> (sum, count) since the last log
    trainer._split_loss = None  # during an evaluation: the split's summed loss and target count
    trainer.tokens = TokenCounter()
    # transformers 5 takes any forward(**kwargs) for a loss normalised by its token count and
    # then skips the division by gradient accumulation and multiplies by the process count: for
    # heads whose loss is a per-batch mean (and for llmft's objective), that scales the gradient
    # by grad_accum x world size.
    trainer.model_accepts_loss_kwargs = (trainer.model_accepts_loss_kwargs and task.loss_counts_tokens
                                         and objective is None)
    if args.deepspeed and not trainer.is_deepspeed_enabled:
        raise RuntimeError("hardware.zero_stage>0 but the Trainer did not engage DeepSpeed "
                           "(ACCELERATE_USE_CPU set? it drops DeepSpeed silently)")
    if objective is not None and objective.teacher is not None:
        objective.teacher.to(trainer.args.device)  # distillation: the teacher runs beside the student
    return trainer


def deepspeed_saved_classes() -> list:
    """What DeepSpeed pickles into a ZeRO checkpoint besides tensors and plain containers (its
    optimizer states: the ZeRO stage, the loss scaler, the parameter fragment map)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


@contextlib.contextmanager
def weights_only_loads(checkpoint: str):
    """Every ``torch.load`` inside unpickles only tensors, plain containers and what DeepSpeed
    saves: its loader asks for ``weights_only=False`` (a checkpoint folder received from someone
    else could run code); torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD overrides the call site. Anything
    else in a checkpoint is refused in one line, unloaded."""
    import pickle

    import torch

    try:
        allowed = deepspeed_saved_classes()
    except ImportError:  # no DeepSpeed: the Trainer's own loads are weights-only already
        allowed = []
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    except pickle.UnpicklingError as err:
        unsupported = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line),
                           str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise UserError(f"train.resume: {checkpoint} holds a pickled object that is not a tensor or DeepSpeed's "
                        f"optimizer state ({unsupported[:200]}); it was not loaded. Resume only from a checkpoint "
                        f"llmft wrote, or start over with train.resume=never") from None
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


class NonFinite(Exception):
    """The loss or the gradient norm became nan/inf at ``step``; raised before the optimizer step,
    so no update from it reaches the weights (the recipe turns it into a one-line error)."""

    def __init__(self, what: str, value: float, step: int):
        super().__init__(f"{what} became {value} at step {step}")
        self.what, self.value, self.step = what, value, step


def torch_scheduler(t, optimizer, total_steps: int):
    """one_cycle (warm up to each group's lr, then anneal; warmup_ratio sets the rise) or cyclic
    (CyclicLR between base_lr and max_lr), scaled per optimizer group like its lr."""
    import torch

    peaks = [g["lr"] for g in optimizer.param_groups]
    if t.lr_scheduler == "one_cycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=max(total_steps, 2),
                                                   pct_start=float(t.warmup_ratio), cycle_momentum=False)
    c = t.cyclic
    top = c.max_lr or t.lr
    bottom = c.base_lr if c.base_lr is not None else top / 10
    scale = [p / t.lr for p in peaks]  # a group at lr_scale s cycles between s * base and s * max
    return torch.optim.lr_scheduler.CyclicLR(optimizer, base_lr=[bottom * k for k in scale],
                                             max_lr=[top * k for k in scale], step_size_up=c.step_size,
                                             mode=c.mode, gamma=c.gamma, cycle_momentum=False)


def optimizer_groups(trainer, model, groups: list[dict]) -> list[dict]:
    """Strategy groups (names + lr scale) -> torch groups, split by the Trainer's weight-decay rule."""
    decay = set(trainer.get_decay_parameter_names(model))
    params = dict(model.named_parameters())
    out = []
    for group in groups:
        for with_decay in (True, False):
            names = [n for n in group["params"] if (n in decay) == with_decay]
            if names:
                out.append({
                    "name": group["name"],
                    "params": [params[n] for n in names],
                    "lr": trainer.args.learning_rate * group["lr_scale"],
                    "weight_decay": trainer.args.weight_decay if with_decay else 0.0,
                })
    return out


def start_tracker(cfg, run_path: Path) -> list[str]:
    """Open the experiment tracker for this run; returns the Trainer's ``report_to``."""
    if cfg.logger.name != "wandb":
        return []
    try:
        import wandb
    except ImportError:
        raise UserError("logger=wandb needs the wandb package: pip install wandb") from None
    import sys

    from llmft.core.redact import redacted, scrub_text, secret_values

    os.environ["WANDB_MODE"] = cfg.logger.mode
    os.environ.setdefault("WANDB_SILENT", "true")
    id_file = run_path / "wandb_run_id"  # a resumed run logs into the same wandb run
    import secrets

    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    argv, secrets = sys.argv, secret_values(cfg)
    sys.argv = [scrub_text(a, secrets) for a in argv]  # wandb records the command line (its metadata's args)
    try:
        wandb.init(
            id=run_id,
            resume="allow",
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            tags=list(cfg.logger.tags),
            name=cfg.get("experiment") or cfg.strategy.name,
            dir=str(run_path),
            config=redacted(cfg),  # secrets read from the environment stay ${oc.env:...}
        )  # the Trainer's WandbCallback finds this run and logs into it
    finally:
        sys.argv = argv
    return ["wandb"]


def finish_tracker(results: dict | None) -> None:
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return
    if results is not None:
        wandb.run.summary.update({f"final/{k}": v for k, v in results["eval"].items()
                                  if isinstance(v, (int, float))})
    wandb.finish(exit_code=0 if results is not None else 1)


# transformers' SchedulerType values, listed here because importing transformers.trainer_utils
# costs ~3 s (it pulls torch and peft); tests/test_config.py checks the list against it.
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
    "warmup_stable_decay", "greedy", "one_cycle", "cyclic",
)


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
