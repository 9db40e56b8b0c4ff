"""The Trainer llmft trains and evaluates with: transformers' Trainer and what llmft adds to it
(built by runtime/trainer.py's build_trainer). Its private overrides: runtime/hf_private.py.

Imports transformers at module level: only build_trainer imports this module (validation stays
torch-free).
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
from transformers import Trainer, TrainerCallback

from llmft.core.errors import NonFinite, UserError
from llmft.runtime.hf_private import TrainerPrivates, unwrap_without_deepspeed
from llmft.runtime.split_loss import SplitLoss, row_losses
from llmft.runtime.throughput import TokenCounter

LOW_RANK_OPTIMIZERS = ("galore_adamw", "apollo_adamw")  # runtime/trainer.py's (it imports this module)


class LlmftTrainer(TrainerPrivates, Trainer):
    """``task``: its loss kind and whether its loss is a token mean; ``param_groups``: the
    strategy's optimizer groups; ``loss_objective``: a loss beyond the model's own
    (techniques/objective.py), each term logged; ``torch_schedule``: the train config when its
    lr_scheduler is torch's one_cycle / cyclic (torch_scheduler), else None;
    ``sampler_factory``: (global batch, seed) -> Sampler (techniques/sampling.py); ``tokens``:
    the tokens trained on, real and padded (runtime/throughput.py)."""

    def __init__(self, *args, task, param_groups=None, loss_objective=None, torch_schedule=None,
                 sampler_factory=None, **kwargs):
        self.task, self.param_groups, self.loss_objective = task, param_groups, loss_objective
        self.torch_schedule, self.sampler_factory = torch_schedule, sampler_factory
        self._terms = {}  # loss term -> (sum, count) since the last log
        self._split_loss = None  # during an evaluation: the split's summed loss and target count
        self.tokens = TokenCounter()
        unwrap_without_deepspeed()
        super().__init__(*args, **kwargs)
        self.own_loss_normalisation(task.loss_counts_tokens and loss_objective is None)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.tokens.add(inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():  # before the optimizer step: the weights are still finite
            raise NonFinite("loss", loss.float().max().item(), self.state.global_step + 1)
        return loss

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # a resume, and the best checkpoint loaded at the end: DeepSpeed's loader unpickles anything
        # only the classes this run's optimizer saves: importing DeepSpeed or GaLore (bitsandbytes) costs seconds
        optim = str(getattr(self.args.optim, "value", self.args.optim))
        with weights_only_loads(str(resume_from_checkpoint or self.args.output_dir), deepspeed=bool(self.args.deepspeed),
                                low_rank=optim.startswith(("galore", "apollo"))):
            return super().train(resume_from_checkpoint, *args, **kwargs)

    def check_grad_norm(self, grad_norm):
        value = float(grad_norm) if grad_norm is not None else 0.0
        # fp16 loss scaling overflows on purpose now and then: the scaler skips that step
        if not math.isfinite(value) and not self.args.fp16:
            raise NonFinite("gradient norm", value, self.state.global_step + 1)
        return grad_norm

    def train_sampler(self):
        """The sampler of the training batches; None: the Trainer's own."""
        if self.sampler_factory is None:
            return None
        return self.sampler_factory(self.args.per_device_train_batch_size * self.args.world_size, self.args.seed)

    def new_split_loss(self):
        """What an evaluation sums each row's loss into; None: the Trainer's eval_loss stays."""
        return SplitLoss() if self.task.loss_kind is not None else None

    def create_optimizer(self, model=None):
        low_rank = self.args.optim in LOW_RANK_OPTIMIZERS
        if (self.param_groups is None and not low_rank) or self.optimizer is not None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        try:
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        except ValueError as err:  # GaLore / APOLLO: no linear layer has a name the targets match
            if not (low_rank and "No target modules" in str(err)):
                raise
            targets = self.args.optim_target_modules
            raise UserError(f"train.optim_target_modules: no linear layer's name matches {targets}; give module "
                            f"names, parts of them or regexes (null: the attention and MLP layers)") from None
        groups = self.param_groups or [{"name": "all", "lr_scale": 1.0,
                                        "params": [n for n, p in model.named_parameters() if p.requires_grad]}]
        groups = optimizer_groups(self, model, groups)
        if low_rank:  # transformers' GaLore / APOLLO groups: [rest, target weights + projection settings]
            groups = projected_groups(groups, kwargs.pop("params"), self.args)
        self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.torch_schedule is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = self.optimizer if optimizer is None else optimizer
        self.lr_scheduler = torch_scheduler(self.torch_schedule, optimizer, num_training_steps)
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        objective = self.loss_objective
        if objective is None or not model.training:  # eval loss: the model's own
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:  # multi-task: each task's loss on the batches that had it
                self._add_terms({f"task_{k}": v for k, v in getattr(model, "last_terms", {}).items()})
            elif self._split_loss is not None and return_outputs:  # evaluation: each row's loss, gathered
                rows = row_losses(self.task.loss_kind, out[1], inputs, self.model)
                self._split_loss.add(*self.accelerator.gather_for_metrics(rows))
            return out
        # soft targets: not the model's (it would take float labels for multi-label and keep that in its config)
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"} if objective.soft else inputs)
        loss, terms = objective(model, inputs, outputs)
        self._add_terms(terms)
        return (loss, outputs) if return_outputs else loss

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

    def __init__(self):
        self.applied = {}

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


def projected_groups(groups: list[dict], low_rank: list[dict], args) -> list[dict]:
    """llmft's groups (lr scale, weight decay) with each split into its target weights, which carry
    the projection settings, and the rest. transformers' own two groups drop weight decay (the
    optimizer's default 0 applies) and every strategy's lr scale."""
    _, target = low_rank
    settings = {k: v for k, v in target.items() if k != "params"}
    projected = {id(p) for p in target["params"]}
    out = []
    for group in groups:
        for is_target in (False, True):
            params = [p for p in group["params"] if (id(p) in projected) == is_target]
            if params:
                out.append({**group, "params": params, **(settings if is_target else {})})
    if not any("rank" in g for g in out):
        raise UserError(f"train.optim_target_modules: no weight that trains matches {args.optim_target_modules} "
                        f"(null: the linear layers of the attention and MLP blocks); name the modules to project")
    return out


def low_rank_projectors() -> list:
    """The projector objects GaLore / APOLLO keep in the optimizer state (a checkpoint pickles
    them; a weights-only load must be allowed to rebuild them)."""
    classes = []
    with contextlib.suppress(ImportError):
        from galore_torch.galore_projector import GaLoreProjector

        classes.append(GaLoreProjector)
    with contextlib.suppress(ImportError):
        from apollo_torch.random_projector import GradientProjector
        from apollo_torch.svd_projector import GaLoreProjector as ApolloSVDProjector

        classes += [GradientProjector, ApolloSVDProjector]
    return classes


def torch_scheduler(t, optimizer, total_steps: int):
    """one_cycle (warm up to each group's lr, then anneal; warmup_ratio sets the rise) or cyclic
    (CyclicLR between base_lr and max_lr), scaled per optimizer group like its lr."""
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


def deepspeed_saved_classes() -> list:
    """What DeepSpeed pickles into a ZeRO checkpoint besides tensors and plain containers (its
    optimizer states: the ZeRO stage, the loss scaler, the parameter fragment map)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


@contextlib.contextmanager
def weights_only_loads(checkpoint: str, deepspeed: bool = True, low_rank: bool = True):
    """Every ``torch.load`` inside unpickles only tensors, plain containers and what DeepSpeed
    saves: its loader asks for ``weights_only=False`` (a checkpoint folder received from someone
    else could run code); torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD overrides the call site. Anything
    else in a checkpoint is refused in one line, unloaded. ``deepspeed`` / ``low_rank``: allow
    DeepSpeed's / GaLore's and APOLLO's classes (False: their packages are not imported)."""
    import pickle

    allowed = []
    if deepspeed:
        with contextlib.suppress(ImportError):  # no DeepSpeed: the Trainer's own loads are weights-only already
            allowed = deepspeed_saved_classes()
    if low_rank:
        allowed += low_rank_projectors()
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
