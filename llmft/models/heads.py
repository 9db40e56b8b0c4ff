"""Multi-task heads: extra classification heads on a shared encoder (data.aux of kind
classification, llmft/techniques/multitask.py)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmft.models.layers import Wrapper

class MultiTaskClassifier(Wrapper):
    """The main classifier plus one head per aux classification set on its last hidden state
    (first token for encoders, last real token for decoders). Examples carry their task id;
    eval and predict (no task id) see the main task alone."""

    extra = "heads"  # aux heads serve training only: model/ is the main task's model

    def __init__(self, encoder, heads: dict[str, int]):
        super().__init__(encoder)
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in heads.items()})
        self.last_terms: dict = {}
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

        # encoders (BERT-like) summarise in their first token, decoders in their last real one
        self.first_token = encoder.config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, task_id=None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **extra)
        if labels is None:
            return SequenceClassifierOutput(logits=out.logits)
        task_id = torch.zeros_like(labels) if task_id is None else task_id
        main = task_id == 0
        losses, self.last_terms = [], {}
        if main.any():
            loss = F.cross_entropy(out.logits[main].float(), labels[main], reduction="sum")
            losses.append(loss)
            self.last_terms["main"] = (loss / main.sum()).detach()
        pooled = pool(out.hidden_states[-1], attention_mask, self.first_token)
        for k, (name, head) in enumerate(self.heads.items(), start=1):
            rows = task_id == k
            if rows.any():
                loss = F.cross_entropy(head(pooled[rows]).float(), labels[rows], reduction="sum")
                losses.append(loss)
                self.last_terms[name] = (loss / rows.sum()).detach()
        return SequenceClassifierOutput(loss=torch.stack(losses).sum() / len(labels), logits=out.logits)



def pool(hidden, attention_mask, first_token: bool):
    if first_token or attention_mask is None:
        return hidden[:, 0]
    last = attention_mask.sum(1) - 1  # right padding: the last real token
    return hidden[torch.arange(len(hidden)), last.clamp(min=0)]


