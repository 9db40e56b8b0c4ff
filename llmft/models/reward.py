"""A reward model (data.task=reward): a one-output sequence classifier (HF or PEFT) that scores
prompt + completion, trained on pairs with the Bradley-Terry loss of TRL's RewardTrainer
(trl 1.16, RewardTrainer.compute_loss): -logsigmoid(r_chosen - r_rejected - margin), plus in
training ``center`` x mean((r_chosen + r_rejected)^2) when set (TRL's center_rewards_coefficient).

Batches (tasks/reward.py's collator): rows 0..B-1 prompt + chosen, rows B..2B-1 prompt + rejected,
``labels`` [B] each pair's margin (0: none). Without ``labels`` (``llmft predict``) every row is
scored on its own. Not TRL's trainer itself: llmft's Trainer (its optimizer groups, sampler,
checkpoints, split loss) stays the one that trains; the loss is 3 lines.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from llmft.models.layers import Wrapper


def pair_losses(chosen, rejected, margin=None, center: float | None = None):
    """Each pair's loss [B] (float32): TRL's batch loss is their mean (its centring term is a mean
    over pairs too, so it splits into per-pair terms)."""
    chosen, rejected = chosen.float(), rejected.float()
    diff = chosen - rejected if margin is None else chosen - rejected - margin.float()
    loss = -F.logsigmoid(diff)
    if center:
        loss = loss + center * (chosen + rejected) ** 2
    return loss


class RewardModel(Wrapper):
    """encoder (num_labels=1) -> one score per row; paired batches -> the pairwise loss and
    logits [B, 2] (chosen's score, rejected's score), which eval metrics read pair by pair."""

    extra = None  # no part of its own: model/ is the encoder as its strategy saves it
    last_row_loss = None  # each pair's loss in the last eval forward (runtime/split_loss.py)

    def __init__(self, encoder, center: float | None = None):
        super().__init__(encoder)
        self.center = center

    def param_groups(self, groups: list[dict] | None) -> list[dict] | None:
        if groups is None:
            return None
        return [{**g, "params": [f"encoder.{n}" for n in g["params"]]} for g in groups]

    # rejected_*: named so the Trainer keeps those columns for the collator, which folds them
    # into input_ids / attention_mask / token_type_ids (they never reach this method)
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                rejected_input_ids=None, rejected_attention_mask=None, rejected_token_type_ids=None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        scores = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        if labels is None:  # unpaired rows: one score each
            return SequenceClassifierOutput(logits=scores)
        chosen, rejected = scores.view(-1).chunk(2)
        # the centring term trains only: the eval loss is the pairwise loss, the same for llmft eval
        # of the saved model (which knows no training knob)
        per_pair = pair_losses(chosen, rejected, labels, self.center if self.training else None)
        if not self.training:  # the split's eval loss sums pairs, whatever the batch size
            self.last_row_loss = per_pair.detach()
        return SequenceClassifierOutput(loss=per_pair.mean(), logits=torch.stack([chosen, rejected], dim=-1))
