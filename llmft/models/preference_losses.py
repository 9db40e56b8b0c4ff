"""Preference losses (DPO, IPO, ORPO, SimPO, KTO) and the log-prob / KL statistics they read.

TRL 1.16 computes these inside its trainers' ``_compute_loss`` (they need a TRL Trainer and its
collator), so llmft computes them here and keeps its own Trainer (preemption, resume, run folders);
tests/unit/test_preference_losses.py checks each against TRL's code on the same tensors.
Rewards (for reward accuracy / margin) are TRL's: beta x the summed log-ratio (dpo, ipo, kto) and
beta x the per-token mean log-prob (orpo, simpo).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_BETA: dict[str, float] = {"dpo": 0.1, "ipo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}
REFERENCE_FREE = ("orpo", "simpo")
PAIR_LOSSES = ("dpo", "ipo", "orpo", "simpo")


def completion_logps(logits, input_ids, completion_mask):
    """Per row: the sum of log p(token) over the completion tokens (logits at t predict token t+1)
    and the number of those tokens (float, the dtype of the sums)."""
    targets = input_ids[:, 1:]
    mask = completion_mask[:, 1:].to(torch.bool)
    # cross_entropy's log-softmax + gather, without a [B, T, V] log-prob tensor kept around
    token_logps = -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    token_logps = token_logps.masked_fill(~mask, 0.0)
    return token_logps.sum(-1), mask.sum(-1).to(token_logps.dtype)


def _log1mexp(x):
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (TRL's ORPO form)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _at_least_fp32(x):
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _smoothed_logsigmoid(z, label_smoothing: float):
    """-(1 - e) logsig(z) - e logsig(-z): the conservative (label-smoothed) sigmoid loss."""
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def pair_loss(loss: str, beta: float, chosen_logps, rejected_logps, chosen_tokens, rejected_tokens,
              ref_chosen_logps=None, ref_rejected_logps=None, label_smoothing: float = 0.0,
              simpo_gamma: float = 0.5, chosen_nll=None):
    """(per-pair loss [B], chosen_rewards [B], rejected_rewards [B]) for dpo / ipo / orpo / simpo.

    *_logps are sums over the completion tokens; ipo, orpo and simpo divide by the token counts as
    TRL does. dpo: conservative DPO when label_smoothing > 0 (TRL 1.16's sigmoid loss has none).
    orpo: chosen_nll is the mean NLL per chosen token [B] (TRL averages it over the prompt and
    chosen tokens of the batch), beta is ORPO's lambda. simpo: TRL's CPO with loss_type simpo and
    cpo_alpha 0 (no NLL term)."""
    if loss not in PAIR_LOSSES:
        raise ValueError(f"pair_loss: unknown loss {loss!r}; one of {PAIR_LOSSES}")
    if loss in ("ipo", "orpo") and label_smoothing:
        raise ValueError(f"pair_loss: {loss} has no label smoothing")
    if loss in REFERENCE_FREE:
        chosen_avg = _at_least_fp32(chosen_logps) / chosen_tokens.clamp(min=1)
        rejected_avg = _at_least_fp32(rejected_logps) / rejected_tokens.clamp(min=1)
        chosen_rewards, rejected_rewards = beta * chosen_avg.detach(), beta * rejected_avg.detach()
        if loss == "orpo":
            if chosen_nll is None:
                raise ValueError("pair_loss: orpo needs chosen_nll (its loss is NLL - lambda x log-odds term)")
            log_odds = (chosen_avg - rejected_avg) - (_log1mexp(chosen_avg) - _log1mexp(rejected_avg))
            return chosen_nll - beta * F.logsigmoid(log_odds), chosen_rewards, rejected_rewards
        margin = chosen_avg - rejected_avg - simpo_gamma / beta
        return _smoothed_logsigmoid(beta * margin, label_smoothing), chosen_rewards, rejected_rewards
    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError(f"pair_loss: {loss} needs the reference log-probs")
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    chosen_rewards, rejected_rewards = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    if loss == "dpo":
        losses = _smoothed_logsigmoid(beta * (chosen_ratio - rejected_ratio), label_smoothing)
    else:  # ipo: per-token means of the log-ratios (TRL's, confirmed with the IPO authors)
        delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    return losses, chosen_rewards, rejected_rewards


def kl_estimate(policy_kl_logps, ref_kl_logps):
    """KTO's reference point: the batch mean of the mismatched pairs' log-ratios, clamped at 0 and
    detached (TRL averages it over processes too)."""
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(beta: float, policy_logps, ref_logps, desirable, kl_estimate, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
    """(per-row loss [B], rewards [B]): desirable rows w_d (1 - sig(beta (r - KL))), undesirable
    rows w_u (1 - sig(beta (KL - r))), r the summed log-ratio (TRL's loss_type kto). The mean over
    rows is TRL's loss."""
    ratio = policy_logps - ref_logps
    desirable = desirable.to(torch.bool)
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl_estimate))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl_estimate - ratio))))
    return losses, beta * ratio.detach()


def token_kl(policy_logits, ref_logits, input_ids, completion_mask):
    """Per row: the sum over completion positions of the exact KL(policy || reference) over the
    vocabulary (the positions that predict completion tokens, as in completion_logps)."""
    if policy_logits.shape != ref_logits.shape or policy_logits.shape[:2] != input_ids.shape:
        raise ValueError("token_kl: policy and reference logits must match each other and input_ids")
    mask = completion_mask[:, 1:].to(torch.bool)
    policy = F.log_softmax(policy_logits[:, :-1].float(), dim=-1)
    ref = F.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    kl = F.kl_div(ref, policy, reduction="none", log_target=True).sum(-1)
    return kl.masked_fill(~mask, 0.0).sum(-1)
