"""The policy under preference tuning (data.task=preference) and its reference model.

``PreferenceModel`` wraps the strategy's causal LM: in training its loss is the preference loss
(models/preference_losses.py) of the batch; in evaluation it returns one row of STATS per pair
(its log-probs and the reference's, token counts, the exact KL to the reference), which
``summarise`` turns into results.json's metrics, so every metric, the eval loss included, is a
mean over pairs whatever the eval batch size.

The reference: a PEFT model with its adapter disabled (no second copy in memory); otherwise a
frozen copy that is not a submodule (not trained, not in the optimizer, not in checkpoints or
model/), moved to the batch's device on first use; or log-probs precomputed into the train set
(``ref_logps`` columns). Evaluation always scores the reference too (the baseline needs it): a
full model without a live copy loads one for it (``load_reference``).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from transformers.utils import ModelOutput

from llmft.models.layers import Wrapper
from llmft.models.preference_losses import (DEFAULT_BETA, REFERENCE_FREE, completion_logps, kl_estimate, kto_loss,
                                            pair_loss, token_kl)

# eval rows: one per pair
STATS = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected", "chosen_tokens", "rejected_tokens",
         "kl_chosen", "kl_rejected")


@dataclass
class Settings:
    """The loss and its knobs (train.preference with beta and the reference resolved)."""
    loss: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    reference: str = "model"  # model | none | precomputed (auto resolved)
    simpo_gamma: float = 0.5
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    @classmethod
    def from_config(cls, p) -> "Settings":
        return cls(loss=p.loss, beta=float(p.beta) if p.beta is not None else DEFAULT_BETA[p.loss],
                   label_smoothing=float(p.label_smoothing), reference=resolve_reference(p.loss, p.reference),
                   simpo_gamma=float(p.simpo_gamma), desirable_weight=float(p.desirable_weight),
                   undesirable_weight=float(p.undesirable_weight))

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_reference(loss: str, reference: str) -> str:
    if reference != "auto":
        return reference
    return "none" if loss in REFERENCE_FREE else "model"


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and callable(getattr(model, "disable_adapter", None))


class PreferenceModel(Wrapper):
    """forward(**batch) -> ModelOutput(loss, logits=stats); see the module's docstring."""

    extra = "encoder"  # nothing added: model/ is the policy as its strategy saves it
    _keys_to_ignore_on_save = None  # the Trainer reads it after loading a checkpoint's state dict

    def __init__(self, encoder, settings: Settings, frozen=None, load_reference=None):
        super().__init__(encoder)
        self.settings = settings
        self._frozen = [frozen] if frozen is not None else []  # a list: not a submodule, so not trained or saved
        self._load_reference = load_reference  # () -> a frozen base model, for evaluation without a live reference

    @classmethod
    def frozen_copy(cls, model):
        """The untrained policy as a reference: a copy with no gradients, in eval mode."""
        ref = copy.deepcopy(model)
        ref.requires_grad_(False)
        return ref.eval()

    def param_groups(self, groups: list[dict] | None) -> list[dict]:
        if groups is None:
            groups = [{"name": "encoder", "lr_scale": 1.0,
                       "params": [n for n, p in self.encoder.named_parameters() if p.requires_grad]}]
        return [{**g, "params": [f"encoder.{n}" for n in g["params"]]} for g in groups]

    def state_dict(self, *args, **kwargs):
        """Each tensor once: the Trainer checkpoints a wrapper with safetensors, which refuses tied
        weights (embeddings = LM head, as in SmolLM2); its resume loads non-strictly and the tie
        restores the other name."""
        state = super().state_dict(*args, **kwargs)
        seen = set()
        for name in list(state):
            tensor = state[name]
            key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if tensor.numel() and key in seen:
                del state[name]
            seen.add(key)
        return state

    def activation_checkpointing_enable(self, **kwargs):
        """hardware.gradient_checkpointing: the Trainer asks the model it holds, the policy does it."""
        self.encoder.activation_checkpointing_enable(**kwargs)

    @property
    def is_activation_checkpointing(self) -> bool:
        return bool(getattr(self.encoder, "is_activation_checkpointing", False))

    def has_live_reference(self) -> bool:
        return is_peft(self.encoder) or bool(self._frozen)

    def reference_logits(self, input_ids, attention_mask):
        with torch.no_grad():
            if is_peft(self.encoder):
                with self.encoder.disable_adapter():
                    return self.encoder(input_ids=input_ids, attention_mask=attention_mask).logits
            if not self._frozen:
                if self._load_reference is None:
                    raise RuntimeError("preference: no reference model to score with")
                self._frozen.append(self.frozen_copy(self._load_reference()))
            ref = self._frozen[0]
            if next(ref.parameters()).device != input_ids.device:
                ref.to(input_ids.device)
            return ref(input_ids=input_ids, attention_mask=attention_mask).logits

    def reference_logps(self, input_ids, attention_mask, completion_mask):
        logits = self.reference_logits(input_ids, attention_mask)
        return completion_logps(logits, input_ids, completion_mask)[0]

    def forward(self, input_ids=None, attention_mask=None, completion_mask=None, ref_logps=None, desirable=None,
                kl_input_ids=None, kl_attention_mask=None, kl_completion_mask=None, ref_kl_logps=None):
        s = self.settings
        logits = self.encoder(input_ids=input_ids, attention_mask=attention_mask).logits
        logps, tokens = completion_logps(logits, input_ids, completion_mask)
        if not self.training:
            return ModelOutput(logits=self._stats(logits, logps, tokens, input_ids, attention_mask, completion_mask))
        if desirable is not None:  # KTO's unpaired rows
            with torch.no_grad():
                kl_logits = self.encoder(input_ids=kl_input_ids, attention_mask=kl_attention_mask).logits
                policy_kl = completion_logps(kl_logits, kl_input_ids, kl_completion_mask)[0]
            if ref_logps is None:
                ref_logps = self.reference_logps(input_ids, attention_mask, completion_mask)
                ref_kl_logps = self.reference_logps(kl_input_ids, kl_attention_mask, kl_completion_mask)
            z0 = kl_estimate(policy_kl, ref_kl_logps)
            losses, _ = kto_loss(s.beta, logps, ref_logps, desirable, z0, s.desirable_weight, s.undesirable_weight)
            return ModelOutput(loss=losses.mean())
        n = len(input_ids) // 2
        if s.loss in REFERENCE_FREE:
            ref = (None, None)
        else:
            if ref_logps is None:
                ref_logps = self.reference_logps(input_ids, attention_mask, completion_mask)
            ref = (ref_logps[:n], ref_logps[n:])
        chosen_nll = -logps[:n] / tokens[:n].clamp(min=1) if s.loss == "orpo" else None
        losses, _, _ = pair_loss(s.loss, s.beta, logps[:n], logps[n:], tokens[:n], tokens[n:], *ref,
                                 label_smoothing=s.label_smoothing, simpo_gamma=s.simpo_gamma, chosen_nll=chosen_nll)
        return ModelOutput(loss=losses.mean())

    def _stats(self, logits, logps, tokens, input_ids, attention_mask, completion_mask):
        """[pairs, len(STATS)]: the policy's and the reference's log-prob sums, token counts, KL sums."""
        ref_logits = self.reference_logits(input_ids, attention_mask)
        ref_logps = completion_logps(ref_logits, input_ids, completion_mask)[0]
        kl = token_kl(logits, ref_logits, input_ids, completion_mask)
        n = len(input_ids) // 2
        columns = (logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], tokens[:n], tokens[n:], kl[:n], kl[n:])
        return torch.stack([c.float() for c in columns], dim=1)


def summarise(stats, settings: Settings) -> tuple[dict, dict, list[dict]]:
    """(metrics, baseline, per-pair records) of the eval rows (``stats``: [pairs, len(STATS)]).

    Rewards are the loss's (beta x log-ratio to the reference, or x per-token log-prob for the
    reference-free losses); preference accuracy and the baseline compare the policy's (the
    reference's) own log-probs of chosen and rejected, length-normalised as the loss is. The
    loss is a mean over pairs; kto's eval loss scores chosen as desirable, rejected as
    undesirable, with the reference point at 0 (its batch KL estimate depends on the batch)."""
    s = settings
    col = {name: torch.as_tensor(stats[:, i], dtype=torch.float64) for i, name in enumerate(STATS)}
    pc, pr, rc, rr = col["policy_chosen"], col["policy_rejected"], col["ref_chosen"], col["ref_rejected"]
    tc, tr = col["chosen_tokens"], col["rejected_tokens"]
    if s.loss == "kto":
        both = kto_loss(s.beta, torch.cat([pc, pr]), torch.cat([rc, rr]),
                        torch.cat([torch.ones_like(pc), torch.zeros_like(pr)]).bool(), torch.tensor(0.0),
                        s.desirable_weight, s.undesirable_weight)[0]
        losses = (both[: len(pc)] + both[len(pc):]) / 2
        chosen_r, rejected_r = s.beta * (pc - rc), s.beta * (pr - rr)
    else:
        nll = -pc / tc.clamp(min=1) if s.loss == "orpo" else None
        losses, chosen_r, rejected_r = pair_loss(s.loss, s.beta, pc, pr, tc, tr, rc, rr,
                                                 label_smoothing=s.label_smoothing, simpo_gamma=s.simpo_gamma,
                                                 chosen_nll=nll)
    per_token = s.loss in ("ipo", "orpo", "simpo")  # the losses that compare per-token means

    def prefers(chosen, rejected):
        return (chosen / tc.clamp(min=1) > rejected / tr.clamp(min=1)) if per_token else (chosen > rejected)

    correct = chosen_r > rejected_r
    margin = chosen_r - rejected_r
    tokens = (tc + tr).sum()

    def mean(x):
        return round(float(x.double().mean()), 5)

    metrics = {
        "reward_accuracy": mean(correct),
        "reward_margin": mean(margin),
        "chosen_logps": mean(pc / tc.clamp(min=1)),
        "rejected_logps": mean(pr / tr.clamp(min=1)),
        "kl": round(float((col["kl_chosen"] + col["kl_rejected"]).sum() / tokens), 6) if tokens > 0 else 0.0,
        "preference_accuracy": mean(prefers(pc, pr)),
        "loss": mean(losses),
    }
    baseline = {"reward_accuracy": mean(prefers(rc, rr))}
    records = [{"chosen_logps": round(float(a), 5), "rejected_logps": round(float(b), 5),  # per token
                "margin": round(float(m), 5), "correct": bool(c)}
               for a, b, m, c in zip(pc / tc.clamp(min=1), pr / tr.clamp(min=1), margin, correct)]
    return metrics, baseline, records
