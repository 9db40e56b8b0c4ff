"""Multi-task training and rehearsal: extra data sets (``data.aux``) trained together with the main one.

    kind: lm              plain text (a .txt file, or a column of a csv/jsonl) replayed as a
                          next-token objective while doing SFT: keeps a causal LM's general
                          language modelling alive (rehearsal)
    kind: classification  a second labelled data set with its own head on the shared encoder
                          (main task: classification)

Each aux set contributes ``weight`` of the training examples (drawn with the data split seed,
with replacement when the set is smaller), mixed into the main train split before shuffling.
Only the main task's model is saved to model/; aux heads exist for training.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmft.core.errors import UserError
from llmft.core.paths import resolve_path
from llmft.models.layers import Wrapper

TASK_ID = "task_id"


def mix(cfg, task, tokenizer, train_set):
    """The train split with every aux set mixed in; returns (dataset, heads, report).
    ``heads``: name -> number of labels, for aux classification sets."""
    from datasets import concatenate_datasets

    aux_cfgs = list(cfg.data.aux)
    main_share = 1 - sum(float(a.get("weight", 0.2)) for a in aux_cfgs)
    parts, heads, report = [], {}, []
    has_task_id = any(a.get("kind", "lm") == "classification" for a in aux_cfgs)
    main = train_set.add_column(TASK_ID, [0] * len(train_set)) if has_task_id else train_set
    for i, aux in enumerate(aux_cfgs):
        name, kind = aux.get("name") or f"aux{i}", aux.get("kind", "lm")
        pool = lm_chunks(aux, tokenizer, cfg.data.max_length) if kind == "lm" else \
            classification_set(cfg, aux, tokenizer)
        if kind == "classification":
            heads[name] = pool[1]
            pool = pool[0].add_column(TASK_ID, [len(heads)] * len(pool[0]))
        if len(pool) == 0:
            raise UserError(f"data.aux[{i}].train_file: no examples")
        n = max(1, round(float(aux.get("weight", 0.2)) / main_share * len(train_set)))
        rng = torch.Generator().manual_seed(cfg.data.split_seed + i)
        picks = torch.randint(len(pool), (n,), generator=rng).tolist() if n > len(pool) else \
            torch.randperm(len(pool), generator=rng)[:n].tolist()
        parts.append(pool.select(picks))
        report.append({"name": name, "kind": kind, "file": str(aux["train_file"]), "examples": n,
                       "weight": float(aux.get("weight", 0.2)), **({"labels": heads[name]} if kind != "lm" else {})})
    main = plain_labels(main)
    return concatenate_datasets([main, *(plain_labels(p).cast(main.features) for p in parts)]), heads, report


def plain_labels(dataset):
    """Class ids as plain integers: each set's ClassLabel names its own classes."""
    from datasets import ClassLabel, Value

    if isinstance(dataset.features.get("labels"), ClassLabel):
        return dataset.cast_column("labels", Value("int64"))
    return dataset


def lm_chunks(aux, tokenizer, max_length: int):
    """Plain text -> consecutive blocks of max_length tokens, every token a target."""
    from datasets import Dataset

    path = resolve_path(aux["train_file"])
    if path.suffix.lower() == ".txt":
        text = path.read_text(encoding=aux.get("encoding", "utf-8"))
    else:
        from llmft.data.files import read_file

        column = aux.get("text_column", "text")
        rows = read_file(path, _FileSpec(aux), "data.aux.train_file")
        if column not in rows.column_names:
            raise UserError(f"{path}: no column '{column}' (data.aux text_column)")
        text = "\n\n".join(rows[column])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    blocks = [ids[s:s + max_length] for s in range(0, len(ids), max_length) if len(ids[s:s + max_length]) > 1]
    return Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks],
                              "labels": [list(b) for b in blocks]})


class _FileSpec:
    """The bits of a data config read_file looks at, from an aux entry."""

    def __init__(self, aux):
        self.format = aux.get("format")
        self.encoding = aux.get("encoding", "utf-8")
        self.task = "aux"

    def __getitem__(self, key):
        return getattr(self, key)


def classification_set(cfg, aux, tokenizer):
    """An aux labelled set, encoded and tokenized by its own classification task."""
    from omegaconf import OmegaConf, open_dict

    from llmft.data.files import read_file
    from llmft.tasks import TASKS

    data_cfg = copy.deepcopy(cfg.data)
    with open_dict(data_cfg):
        data_cfg.text_column = aux.get("text_column", "text")
        data_cfg.label_column = aux.get("label_column", "label")
        data_cfg.text_pair_column = None
        data_cfg.labels = OmegaConf.create(list(aux["labels"])) if aux.get("labels") else None
        data_cfg.encoding = aux.get("encoding", cfg.data.encoding)
        data_cfg.format = aux.get("format")
        data_cfg.aux = []
    aux_task = TASKS.get("classification")(data_cfg)
    path = resolve_path(aux["train_file"])
    rows = read_file(path, data_cfg, "data.aux.train_file")
    encoded = aux_task.encode(rows, str(path), is_train=True)
    return aux_task.tokenize(encoded, tokenizer), len(aux_task.labels)


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


