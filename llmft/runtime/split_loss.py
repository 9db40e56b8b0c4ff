"""The eval loss of a split as a whole: the sum of its targets' losses over the number of targets.

Not the Trainer's ``eval_loss``: that is the mean of per-batch mean losses, so a token loss moved
with the eval batch size (a batch's tokens weigh more the fewer they are; 1.021 at batch 1, 0.549
at batch 16 for one SFT model), and on several processes a causal LM's batch loss is divided by
every process's token count. Here each batch gives every row's summed loss and its number of
targets (target tokens for token losses, 1 for row losses), gathered across processes without the
rows the sampler repeats to even them out (``gather_for_metrics``); the split's loss is
sum / count. Padding is never a target: the losses are read at the labelled positions only, and a
QA window's span scores are taken over its own tokens.

Kinds (``Task.loss_kind``): ``causal`` (next-token: SFT; a packed row is split into its sequences
by ``position_ids``), ``token`` (one label per position: NER, a seq2seq decoder), ``row`` (one
label per row: classification, prompting), ``squared`` (one value per row: regression's squared
error), ``span`` (QA start/end). A model that scores whole rows itself (the CRF's sentence
likelihood) hands its per-row losses over as ``last_row_loss``.
"""
from __future__ import annotations

IGNORE = -100
KINDS = ("causal", "token", "row", "squared", "span")


def row_losses(kind: str, outputs, inputs: dict, model=None):
    """(summed loss, target count) per row of one batch, float64 tensors of the batch's length
    (a packed row: one entry per packed sequence)."""
    import torch
    import torch.nn.functional as F

    own = getattr(model, "last_row_loss", None) if model is not None else None
    if own is not None:
        model.last_row_loss = None
        return own.detach().double(), torch.ones_like(own, dtype=torch.float64)
    if kind == "span":
        attention = inputs.get("attention_mask")
        total = 0
        for logits, positions in ((outputs.start_logits, inputs["start_positions"]),
                                  (outputs.end_logits, inputs["end_positions"])):
            logits = logits.float()
            if attention is not None and attention.shape == logits.shape:
                # padding is no candidate answer (the model's own loss scores it: it moves with the padding)
                logits = logits.masked_fill(attention == 0, float("-inf"))
            total = total + F.cross_entropy(logits, positions.view(-1).clamp(0, logits.size(1) - 1), reduction="none")
        loss = (total / 2).double()
        return loss, torch.ones_like(loss)
    labels = inputs["labels"]
    logits = outputs.logits
    if kind == "squared":  # one output per row (regression): the squared error, in the model's target units
        loss = (logits.float().view(-1) - labels.float().view(-1)).pow(2).double()
        return loss, torch.ones_like(loss)
    if kind == "row":
        loss = F.cross_entropy(logits.float(), labels.view(-1), reduction="none").double()
        return loss, torch.ones_like(loss)
    if kind not in ("causal", "token"):
        raise ValueError(f"unknown loss kind {kind!r} (one of {KINDS})")
    # a chunked causal loss (models/chunked_loss.py) computed no logits: it hands each position's loss over
    token_losses = getattr(model, "last_token_losses", None) if model is not None and kind == "causal" else None
    if token_losses is not None:
        model.last_token_losses = None
    width = logits.size(1) if token_losses is None else token_losses.size(1)
    if width > labels.size(1):  # prompt learning prepends virtual tokens: they carry no label
        labels = F.pad(labels, (width - labels.size(1), 0), value=IGNORE)
    if kind == "causal":  # the logits at t score the token at t + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    if token_losses is not None:  # shaped like the shifted labels (their last column: the pad)
        per_token = token_losses[:, :-1].double()
    else:  # one row at a time: a float copy of the whole batch's vocabulary scores is not needed at once
        per_token = torch.stack([F.cross_entropy(row.float(), target, ignore_index=IGNORE, reduction="none")
                                 for row, target in zip(logits, labels)]).double()
    mask = labels != IGNORE
    per_token = per_token.masked_fill(~mask, 0.0)
    positions = inputs.get("position_ids")
    if kind == "causal" and positions is not None and inputs.get("attention_mask") is None:
        # packed rows (data.packing): a sequence starts where its positions restart at 0
        starts = (positions == 0).long()
        sequence = (starts.cumsum(1) - 1)[:, 1:]  # of each scored target, shifted like the labels
        offsets = torch.cat([starts.new_zeros(1), starts.sum(1).cumsum(0)[:-1]])
        index = (sequence + offsets[:, None]).reshape(-1).clamp(min=0)
        n = int(starts.sum())
        sums = per_token.new_zeros(n).index_add_(0, index, per_token.reshape(-1))
        counts = per_token.new_zeros(n).index_add_(0, index, mask.reshape(-1).double())
        return sums, counts
    return per_token.sum(1), mask.sum(1).double()


class SplitLoss:
    """Accumulates the gathered (sums, counts) of one evaluation; ``value`` is the split's loss."""

    def __init__(self):
        self.sum = 0.0
        self.count = 0.0

    def add(self, sums, counts) -> None:
        self.sum += float(sums.double().sum())
        self.count += float(counts.double().sum())

    def value(self) -> float | None:
        return self.sum / self.count if self.count else None
