"""A CRF layer over a token-classification model (``model.crf=true``, NER only).

The encoder's per-token scores become emission scores of a linear-chain CRF (pytorch-crf) over
words: only each word's first sub-word is kept (the same positions that carry the word's tag), so
the chain runs word to word. Training maximises the CRF log-likelihood of the gold tag sequence;
prediction is Viterbi decoding. Transitions the tag scheme forbids start (and, for BIOES, end)
at a large negative score, so decoded paths are valid tag sequences: BIO by default (O -> I-X,
B-X -> I-Y, starting with I-X); the task passes BIOES's rules, or none (any tag after any: POS).

Saved next to the encoder (full model or PEFT adapter) as ``crf.safetensors``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from llmft.models.layers import Wrapper

CRF_FILE = "crf.safetensors"
FORBIDDEN = -1e4  # a transition the tag scheme does not allow


def allowed(previous: str, tag: str) -> bool:
    """May ``tag`` follow ``previous`` in BIO? (``previous`` None: the sentence's start.)"""
    if not tag.startswith("I-"):
        return True
    return previous is not None and previous[2:] == tag[2:] and previous[:2] in ("B-", "I-")


class CrfTagger(Wrapper):
    """encoder (token classification, HF or PEFT) -> word emissions -> CRF. ``lr_scale``: the CRF's
    few transition scores need a far larger step than the pretrained encoder."""

    extra = "crf"
    last_row_loss = None  # each sentence's loss in the last eval forward with labels

    def __init__(self, encoder, labels: list[str], lr_scale: float = 1.0, may_follow=allowed, may_end=None):
        """``may_follow(previous, tag)`` (previous None: the start) and ``may_end(tag)``: the tag
        scheme's rules (None: any); forbidden moves start at FORBIDDEN."""
        from torchcrf import CRF

        super().__init__(encoder, lr_scale)
        self.labels = list(labels)
        self.crf = CRF(len(labels), batch_first=True)
        with torch.no_grad():
            for i, tag in enumerate(labels):
                if may_follow is not None and not may_follow(None, tag):
                    self.crf.start_transitions[i] = FORBIDDEN
                if may_end is not None and not may_end(tag):
                    self.crf.end_transitions[i] = FORBIDDEN
                for j, previous in enumerate(labels):
                    if may_follow is not None and not may_follow(previous, tag):
                        self.crf.transitions[j, i] = FORBIDDEN

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, word_start=None):
        from transformers.modeling_outputs import TokenClassifierOutput

        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        logits = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        if word_start is None:  # no word boundaries given: every scored position is a word
            word_start = labels != -100 if labels is not None else attention_mask.bool()
        emissions, mask, positions = pack_words(logits.float(), word_start.bool())
        loss = None
        if labels is not None:
            tags = labels.gather(1, positions).clamp(min=0)
            per_row = -self.crf(emissions, tags, mask=mask, reduction="none")
            loss = per_row.mean()  # pytorch-crf's "mean": over the sentences
            if not self.training:  # the eval loss of a split sums sentences (runtime/split_loss.py)
                self.last_row_loss = per_row.detach()
        if not self.training:  # the Viterbi path, one-hot at each word start: argmax(-1) reads it
            logits = logits.detach().clone()
            for row, path in enumerate(self.crf.decode(emissions, mask=mask)):
                where = positions[row, : len(path)]
                logits[row, where] = nn.functional.one_hot(torch.tensor(path, device=logits.device),
                                                           len(self.labels)).to(logits.dtype) * 1e4
        return TokenClassifierOutput(loss=loss, logits=logits)

    def save_extra(self, model_dir: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.crf.state_dict().items()},
                  str(model_dir / CRF_FILE))

    def load_crf(self, model_dir: Path) -> "CrfTagger":
        from safetensors.torch import load_file

        self.crf.load_state_dict(load_file(str(model_dir / CRF_FILE)))
        return self


def pack_words(logits, word_start):
    """(batch, tokens, tags) scores -> (batch, words, tags) at the word starts, left-aligned,
    with the word mask and each word's token position. pytorch-crf needs every row's first
    position on, so a row without words keeps one dummy position (its tag is never read)."""
    counts = word_start.sum(1)
    width = max(int(counts.max()), 1)
    order = torch.argsort((~word_start).to(torch.int8), dim=1, stable=True)  # word starts first, in order
    positions = order[:, :width]
    mask = torch.arange(width, device=logits.device)[None, :] < counts[:, None]
    mask[:, 0] = True
    emissions = logits.gather(1, positions[..., None].expand(-1, -1, logits.size(-1)))
    return emissions, mask, positions
