"""What training minimises, when it is more than the model's own loss:

    task term     cross-entropy, class-weighted cross-entropy, or focal loss      (train.loss, class_weights)
    + distill     alpha * T^2 * KL(teacher || student) at temperature T            (train.distill)
                  (the task term then weighs 1 - alpha)
    + l2sp        l2sp / 2 * ||theta - theta_0||^2 over trainable pretrained weights (train.retention.l2sp)
    + l1          l1 * sum |theta| over the trainable weights, or l1 * sum |theta - theta_0| over the
                  trainable pretrained ones (train.l1, train.l1_to; validation: regularization.py)

Each term is logged as loss/<term> in metrics.jsonl. Logits are per example (classification),
per token (NER) or per next token (causal LM); label -100 marks positions that do not count.
torch has the pieces (cross_entropy with weights, kl_div); focal loss, L2-SP and L1 are three
lines each on top, so they are written here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from llmft.core.errors import require
from llmft.tasks import tasks_that
from llmft.techniques import Technique

if TYPE_CHECKING:
    import torch


IGNORE = -100


class Loss(Technique):
    """The run's Objective (``from_config``): the task term, distillation's, L2-SP's."""

    keys = ("train.loss", "train.focal_gamma", "train.class_weights")

    def validate(self, cfg, task, strategy) -> None:
        """train.loss / class_weights / focal_gamma (the L2-SP and distillation terms: retention.py,
        distillation.py)."""
        from omegaconf import OmegaConf

        t = cfg.train
        labelled = lambda k: k.logits in ("sequence", "token")  # noqa: E731  (a label per example or token)
        if t.loss != "ce" or t.class_weights not in (None, "none"):
            require(labelled(task), "train.loss" if t.loss != "ce" else "train.class_weights",
                    f"applies to {tasks_that(labelled)} (got data.task={cfg.data.task})")
            require(not cfg.model.crf, "model.crf", "the CRF has its own loss: drop train.loss / train.class_weights")
        cw = t.class_weights
        if cw not in (None, "none", "balanced"):
            require(isinstance(cw, (list, tuple)) or OmegaConf.is_list(cw), "train.class_weights",
                    f"must be none, balanced or a list of weights, one per label (got {cw})")
            require(all(isinstance(w, (int, float)) and w >= 0 for w in cw), "train.class_weights",
                    "weights must be numbers >= 0")
            require(any(w > 0 for w in cw), "train.class_weights",
                    f"all weights are 0 (got {list(cw)}): the loss would be 0 and nothing would train; give each "
                    "label a weight > 0")
        require(t.focal_gamma >= 0, "train.focal_gamma", "must be >= 0")

    def objective(self, run) -> None:
        run.objective = from_config(run.cfg, run.task, run.strategy, run.model, run.train_set, run.tokenizer)


technique = Loss()


class Objective:
    def __init__(self, kind: str, loss: str = "ce", focal_gamma: float = 2.0, class_weights=None,
                 l2sp: float = 0.0, anchor: dict | None = None, teacher=None, temperature: float = 2.0,
                 alpha: float = 0.5, cache: bool = False, soft: bool = False, l1: float = 0.0,
                 l1_anchor: dict | None = None):
        self.kind = kind  # sequence | token | causal
        self.soft = soft  # labels are distributions over the classes (PET's final classifier)
        self.loss, self.gamma = loss, focal_gamma
        self.class_weights = class_weights  # a tensor, one weight per label, or None
        self.l2sp, self.anchor = l2sp, anchor or {}
        self.l1, self.l1_anchor = l1, l1_anchor  # l1_anchor None: towards 0, over every trainable weight
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha
        self.cache = {} if cache else None

    @property
    def replaces_model_loss(self) -> bool:
        return self.loss != "ce" or self.class_weights is not None or self.teacher is not None or self.soft

    def __call__(self, model, inputs: dict, outputs) -> tuple[torch.Tensor, dict]:

        labels = inputs.get("labels")
        terms = {}
        if self.replaces_model_loss:
            logits, labels_ = aligned(outputs.logits, labels, self.kind)
            task = self.task_loss(logits, labels_)
            total = task
            if self.teacher is not None:
                distill = self.distill_loss(logits, self.teacher_logits(inputs), labels_)
                terms["distill"] = distill.detach()
                total = self.alpha * distill + (1 - self.alpha) * task
        else:
            task = total = outputs.loss
        terms["task"] = task.detach()
        if self.l2sp > 0:
            penalty = l2sp_penalty(model, self.anchor)
            terms["l2sp"] = (self.l2sp / 2 * penalty).detach()
            total = total + self.l2sp / 2 * penalty
        if self.l1 > 0:
            penalty = l1_penalty(model, self.l1_anchor)
            terms["l1"] = (self.l1 * penalty).detach()
            total = total + self.l1 * penalty
        return total, terms

    # ------------------------------------------------------------------ terms
    def task_loss(self, logits, labels):
        import torch.nn.functional as F

        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        if labels.is_floating_point():  # soft targets: cross-entropy against the distribution
            return F.cross_entropy(logits.float(), labels.float(), weight=weight)
        if self.loss == "focal":
            return focal_loss(logits, labels, self.gamma, weight)
        return F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=IGNORE)

    def distill_loss(self, student, teacher, labels):
        return distillation_loss(student, teacher, labels, self.temperature)

    def teacher_logits(self, inputs: dict) -> torch.Tensor:
        import torch

        feed = {k: v for k, v in inputs.items() if k not in ("labels", "word_start")}
        with torch.no_grad():
            logits = self.teacher(**feed).logits if self.cache is None else self.cached(feed)
            return aligned(logits, inputs.get("labels"), self.kind)[0]

    def cached(self, feed: dict) -> torch.Tensor:
        """Teacher logits per example, keyed by its (unpadded) token ids; only the missing ones run."""
        import torch

        ids, mask = feed["input_ids"], feed.get("attention_mask", torch.ones_like(feed["input_ids"]))
        keys = [tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask)]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            out = self.teacher(**{k: v[missing] for k, v in feed.items()}).logits.detach().cpu()
            for j, i in enumerate(missing):
                self.cache[keys[i]] = out[j] if self.kind == "sequence" else out[j][mask[i].bool().cpu()]
        if self.kind == "sequence":
            return torch.stack([self.cache[k] for k in keys]).to(ids.device)
        full = torch.zeros(*ids.shape, self.cache[keys[0]].shape[-1])
        for i, k in enumerate(keys):
            full[i][mask[i].bool().cpu()] = self.cache[k]
        return full.to(ids.device)


def soft_targets(train_set) -> bool:
    """The train set's labels are class distributions (a list of floats per row), not class ids."""
    feature = train_set.features.get("labels") if train_set is not None else None
    inner = getattr(feature, "feature", None)  # a list's items: floats are a distribution, ints token ids
    return type(feature).__name__ in ("List", "Sequence", "LargeList") and str(getattr(inner, "dtype", "")).startswith("float")


def aligned(logits, labels, kind: str):
    """(N, C) logits and (N,) labels over the positions that count."""
    if kind == "causal":  # position t predicts token t + 1
        logits, labels = logits[:, :-1], labels[:, 1:] if labels is not None else None
    if kind in ("token", "causal"):
        logits = logits.reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1) if labels is not None else None
    return logits, labels


def focal_loss(logits, labels, gamma: float, weight=None):
    """Lin et al. (2017): cross-entropy scaled by (1 - p_true)^gamma, so easy examples count less."""
    keep = labels != IGNORE
    logits, labels = logits[keep].float(), labels[keep]
    logp = logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
    loss = -((1 - logp.exp()) ** gamma) * logp
    if weight is not None:
        w = weight[labels]
        return (w * loss).sum() / w.sum()
    return loss.mean()


def distillation_loss(student, teacher, labels, temperature: float):
    """Hinton et al. (2015): T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over
    the positions that count (all examples for classification)."""
    import torch.nn.functional as F

    if labels is not None:
        keep = labels != IGNORE
        student, teacher = student[keep], teacher[keep]
    s = (student.float() / temperature).log_softmax(-1)
    t = (teacher.float() / temperature).log_softmax(-1)
    return temperature**2 * F.kl_div(s, t, log_target=True, reduction="batchmean")


def l2sp_penalty(model, anchor: dict) -> torch.Tensor:
    """||theta - theta_0||^2 over the anchored parameters (Li et al., 2018)."""

    return sum(((p - a) ** 2).sum() for p, a in anchored(model, anchor))


def l1_penalty(model, anchor: dict | None) -> torch.Tensor:
    """sum |theta| over every parameter that trains now (biases and norm gains too; anchor None),
    or sum |theta - theta_0| over the anchored ones; summed in fp32 (bf16 weights included)."""
    import torch

    if anchor is None:
        return sum(p.abs().sum(dtype=torch.float32) for p in model.parameters() if p.requires_grad)
    return sum((p - a).abs().sum(dtype=torch.float32) for p, a in anchored(model, anchor))


def anchored(model, anchor: dict) -> list:
    """(parameter, theta_0) pairs. The anchor is copied from the unwrapped model before the Trainer
    places and wraps it: a wrapper's names carry a prefix (DDP, DeepSpeed: "module."), and each
    theta_0 moves to its parameter's device on first use (then stays there)."""
    params = dict(model.named_parameters())
    pairs = []
    for name, a in anchor.items():
        p = params[name] if name in params else next((q for n, q in params.items() if n.endswith("." + name)), None)
        if p is None:
            raise KeyError(f"anchored parameter {name} is not in the model trained")
        if a.device != p.device:
            a = anchor[name] = a.to(p.device)
        pairs.append((p, a))
    return pairs


def l2sp_anchor(model, exclude_parts=("head",), frozen_too: bool = False) -> dict:
    """theta_0: a copy of every trainable parameter the pretrained model had (not the new head),
    on the parameter's own device. ``frozen_too``: also the frozen ones, for strategies that
    unfreeze them during training (gradual_unfreeze); a frozen one adds 0 until it moves."""
    from llmft.models.anatomy import parts

    by_name = dict(model.named_parameters())
    return {n: by_name[n].detach().clone() for n, part in parts(model).items()
            if (frozen_too or by_name[n].requires_grad) and part.kind not in exclude_parts}


def balanced_class_weights(label_ids: list[int], num_labels: int) -> torch.Tensor:
    """n / (k * count(c)), scikit-learn's "balanced" heuristic; absent labels get weight 1."""
    import torch

    counts = torch.bincount(torch.tensor(label_ids), minlength=num_labels).float()
    weights = len(label_ids) / (num_labels * counts.clamp(min=1))
    weights[counts == 0] = 1.0
    return weights


def from_config(cfg, task, strategy, model, train_set, tokenizer):
    """The run's Objective, or None when the model's own loss is all there is (or nothing trains)."""
    if not strategy.trains:
        return None
    import torch

    from llmft.core.errors import UserError

    t = cfg.train
    weights = None
    if t.class_weights not in (None, "none"):
        n = len(task.labels)
        if t.class_weights == "balanced":
            labels = [x for row in train_set["labels"] for x in (row if isinstance(row, list) else [row]) if x != IGNORE]
            weights = balanced_class_weights(labels, n)
        else:
            weights = torch.tensor([float(w) for w in t.class_weights])
            if len(weights) != n:
                raise UserError(f"train.class_weights has {len(weights)} weights but the task has {n} labels "
                                f"{list(task.labels)}")
    from llmft.techniques.distillation import load_teacher

    teacher = (load_teacher(t.distill.teacher, task, tokenizer, cfg.model.trust_remote_code)
               if t.distill.teacher else None)
    later = strategy.unfreezes_later  # anchor what will train, not only what trains now
    l1_to_pretrained = t.l1 > 0 and t.l1_to == "pretrained"
    anchored_ = t.retention.l2sp > 0 or l1_to_pretrained
    anchor = l2sp_anchor(model, frozen_too=later) if anchored_ else {}  # one copy for both terms
    for key, on, fix in (("train.retention.l2sp", t.retention.l2sp > 0, "train.weight_decay"),
                         ("train.l1_to=pretrained", l1_to_pretrained, "train.l1_to=zero")):
        if on and not anchor:
            raise UserError(f"{key}: no trainable pretrained weights to anchor (this strategy trains only new "
                            f"parameters); use {fix}")
    objective = Objective(task.logits or "sequence", t.loss, t.focal_gamma, weights, t.retention.l2sp,
                          anchor if t.retention.l2sp > 0 else {}, teacher, t.distill.temperature, t.distill.alpha,
                          t.distill.cache, soft=soft_targets(train_set), l1=t.l1,
                          l1_anchor=anchor if l1_to_pretrained else None)
    active = objective.replaces_model_loss or objective.l2sp > 0 or objective.l1 > 0
    return objective if active else None
