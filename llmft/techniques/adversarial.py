"""Adversarial training (``train.adversarial``): each batch is run a second time with its input
embeddings pushed along the loss gradient, and that loss is added to the clean one (logged as
``loss/adv``):

    fgm   r = epsilon * g / ||g||_2                                   (Miyato et al. 2017)
    pgd   r <- P_epsilon(r + alpha * g_r / ||g_r||_2), ``steps`` times (Madry et al. 2018; FreeLB's
          use on text), from r = 0, so its first step is FGM's direction

g is the gradient of the loss with respect to the output of the input-embedding layer, and the norm
is taken per example (over its tokens and width): every example gets a perturbation of norm
epsilon whatever the batch size, the accumulation or the number of processes (a norm per batch
would shrink each example's share as the batch grows). Rows with no gradient (no label that counts)
stay unperturbed. No randomness: PGD starts at 0, so a resumed run perturbs as the uninterrupted one.

A forward hook on the input-embedding layer adds r to its output (inside PEFT, llmft's wrappers
and DeepSpeed alike); the embedding weights are never written. The hook is held for the training
loop only; evaluation sees the clean embeddings. Each step costs one more backward (the gradient
for r) and one more forward and backward (the perturbed loss); PGD adds a forward and backward per
further step. Written here: neither torch nor transformers has embedding-space adversarial training.
"""
from __future__ import annotations

import math

from llmft.core.errors import require
from llmft.tasks import tasks_that
from llmft.techniques import Technique

KEY = "train.adversarial"


def supports(task) -> bool:
    """Encoder-only and decoder-only models: one pass through the input embeddings per forward.
    An encoder-decoder embeds its targets with the same table (the decoder's inputs would be
    perturbed too)."""
    return task.auto_model != "AutoModelForSeq2SeqLM"


class Adversarial(Technique):
    keys = (KEY,)

    def validate(self, cfg, task, strategy) -> None:
        a = cfg.train.adversarial
        if a.method == "none":
            return
        finite = lambda x: isinstance(x, (int, float)) and math.isfinite(x)  # noqa: E731
        require(finite(a.epsilon) and a.epsilon > 0, f"{KEY}.epsilon",
                f"must be > 0 (the L2 norm of each example's perturbation of its input embeddings; got {a.epsilon})")
        if a.method == "pgd":
            require(a.steps >= 1, f"{KEY}.steps", f"pgd takes >= 1 ascent steps (got {a.steps})")
            require(finite(a.alpha) and a.alpha > 0, f"{KEY}.alpha", f"must be > 0 (each pgd step's L2 norm; got {a.alpha})")
            require(a.alpha <= a.epsilon, f"{KEY}.alpha",
                    f"a step of {a.alpha} leaves the ball of radius epsilon={a.epsilon} and is projected back "
                    f"onto its surface every time; give alpha <= epsilon (e.g. 2.5 x epsilon / steps, capped at epsilon)")
        require(strategy.trains, f"{KEY}.method", f"strategy={cfg.strategy.name} trains nothing to make robust")
        # DeepSpeed reduces the gradients in hooks that fire on every backward pass, the gradient
        # taken for r included (ZeRO-2 fails on its empty bucket): plain DDP only
        require(cfg.hardware.zero_stage == 0, f"{KEY}.method",
                f"takes the gradient of the loss for the perturbation before the backward pass, which DeepSpeed "
                f"ZeRO (hardware.zero_stage={cfg.hardware.zero_stage}) does not allow; use a hardware config without "
                f"ZeRO (several processes train as DDP)")
        require(supports(task), f"{KEY}.method",
                f"perturbs the input embeddings of data.task={tasks_that(supports)} (got {cfg.data.task}: the "
                f"encoder-decoder embeds its targets with the same table)")

    def trainer(self, run) -> None:
        """Wraps the run's objective (after every technique set it at the "objective" point)."""
        a = run.cfg.train.adversarial
        if a.method == "none" or not run.strategy.trains:
            return
        from llmft.techniques.objective import Objective, soft_targets

        inner = run.objective or Objective(run.task.logits or "sequence", soft=soft_targets(run.train_set))
        hook = EmbeddingHook(input_embeddings(run.model))
        steps, alpha = (int(a.steps), float(a.alpha)) if a.method == "pgd" else (1, float(a.epsilon))
        run.objective = AdversarialObjective(inner, hook, float(a.epsilon), steps, alpha)
        run.callbacks.append(hook.callback())


technique = Adversarial()


def input_embeddings(model):
    """The input-embedding layer of the model llmft trains (HF or PEFT, inside llmft's wrappers)."""
    for attr in (None, "encoder", "lm"):  # models/layers.Wrapper holds the model as .encoder, PromptClassifier as .lm
        inner = model if attr is None else getattr(model, attr, None)
        if inner is not None and hasattr(inner, "get_input_embeddings"):
            layer = inner.get_input_embeddings()
            if layer is not None:
                return layer
    raise RuntimeError(f"{KEY}: {type(model).__name__} has no input-embedding layer")


class EmbeddingHook:
    """Forward hook on the input-embedding layer. In a training forward it adds a zero tensor that
    requires grad (``seen``: the loss's gradient with respect to it is g); in an adversarial
    forward it adds ``fixed``; in evaluation (no grad or eval mode) it leaves the output alone."""

    def __init__(self, layer):
        self.layer, self.handle = layer, None
        self.seen, self.calls, self.fixed = None, 0, None

    def __call__(self, module, args, output):
        if self.fixed is not None:
            return output + self.fixed.to(output.dtype)
        import torch

        if not (module.training and torch.is_grad_enabled()):
            return None
        self.seen = torch.zeros_like(output, requires_grad=True)
        self.calls += 1
        return output + self.seen

    def attach(self) -> None:
        if self.handle is None:
            self.handle = self.layer.register_forward_hook(self)

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
        self.handle, self.seen, self.calls, self.fixed = None, None, 0, None

    def take(self):
        """The zero tensor of the clean forward just run (exactly one embedding call)."""
        seen, calls = self.seen, self.calls
        self.seen, self.calls = None, 0
        if seen is None or calls != 1:
            raise RuntimeError(f"{KEY}: the input embeddings ran {calls} times in the training forward (expected once)")
        return seen

    def callback(self):
        """Holds the hook during the training loop only (the final evaluation sees clean inputs)."""
        from transformers import TrainerCallback

        hook = self

        class HoldAdversarialHook(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                hook.attach()

            def on_train_end(self, args, state, control, **kwargs):
                hook.detach()

        return HoldAdversarialHook()


def unit(g, eps: float = 1e-12):
    """g / ||g||_2 per example (row 0 of the batch dimension); 0 where g is 0."""
    norm = g.float().flatten(1).norm(dim=1).clamp(min=eps)
    return (g.float() / norm.view(-1, *([1] * (g.dim() - 1)))).to(g.dtype)


def project(r, epsilon: float):
    """r shrunk onto the L2 ball of radius epsilon, per example."""
    norm = r.float().flatten(1).norm(dim=1)
    scale = (epsilon / norm.clamp(min=1e-12)).clamp(max=1.0)
    return (r.float() * scale.view(-1, *([1] * (r.dim() - 1)))).to(r.dtype)


class AdversarialObjective:
    """The run's objective plus the loss at the perturbed input embeddings (term ``adv``).
    FGM is one step of length epsilon; PGD ``steps`` steps of length alpha, each projected onto
    the epsilon ball. Attributes it does not have are the inner objective's (the Trainer reads
    ``soft`` and ``teacher``)."""

    def __init__(self, inner, hook: EmbeddingHook, epsilon: float, steps: int, alpha: float):
        self.inner, self.hook = inner, hook
        self.epsilon, self.steps, self.alpha = epsilon, steps, alpha
        self.last = None  # the last perturbation applied (detached): for inspection and tests

    def __getattr__(self, name):
        if name == "inner":  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, model, inputs: dict, outputs):
        import torch

        loss, terms = self.inner(model, inputs, outputs)
        seen = self.hook.take()
        net = getattr(model, "module", model)  # DDP / DeepSpeed: the module itself, so its reducer sees one forward
        terms.update({f"task_{k}": v for k, v in getattr(net, "last_terms", {}).items()})  # multi-task's, clean
        feed = {k: v for k, v in inputs.items() if k != "labels"} if getattr(self.inner, "soft", False) else inputs
        teacher = self.teacher_logits(inputs)
        (g,) = torch.autograd.grad(loss, seen, retain_graph=True, allow_unused=True)
        r = torch.zeros_like(seen)
        for step in range(self.steps):
            r = project(r + self.alpha * unit(g if g is not None else torch.zeros_like(r)), self.epsilon).detach()
            if step == self.steps - 1:
                break
            probe = r.clone().requires_grad_()
            (g,) = torch.autograd.grad(self.perturbed_loss(net, feed, inputs, probe, teacher), probe, allow_unused=True)
        adv = self.perturbed_loss(net, feed, inputs, r, teacher)
        self.last = r
        terms["adv"] = adv.detach()
        return loss + adv, terms

    def perturbed_loss(self, net, feed: dict, inputs: dict, r, teacher):
        self.hook.fixed = r
        try:
            outputs = net(**feed)
        finally:
            self.hook.fixed = None
        return data_loss(self.inner, inputs, outputs, teacher)

    def teacher_logits(self, inputs: dict):
        """Distillation's targets on the clean input, once per batch (every perturbed pass reuses them)."""
        if getattr(self.inner, "teacher", None) is None:
            return None
        return self.inner.teacher_logits(inputs)


def data_loss(objective, inputs: dict, outputs, teacher=None):
    """The objective's loss on the data (the task term, distillation's), without its penalties on
    the weights (L2-SP, L1): those do not depend on the input and count once, in the clean loss."""
    if not getattr(objective, "replaces_model_loss", False):
        return outputs.loss
    from llmft.techniques.objective import aligned

    logits, labels = aligned(outputs.logits, inputs.get("labels"), objective.kind)
    task = objective.task_loss(logits, labels)
    if teacher is None:
        return task
    return objective.alpha * objective.distill_loss(logits, teacher, labels) + (1 - objective.alpha) * task
