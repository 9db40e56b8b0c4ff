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

from typing import TYPE_CHECKING

import copy


from llmft.core.errors import UserError, require
from llmft.core.paths import resolve_path
from llmft.techniques import Technique

if TYPE_CHECKING:
    pass

TASK_ID = "task_id"  # the column naming each example's task (0: the main one; models/heads.py)

class MultiTask(Technique):
    keys = ("data.aux",)

    def validate(self, cfg, task, strategy) -> None:
        """Each entry a mapping with a kind the task trains with, an existing file, a weight in (0, 1)."""
        if not cfg.data.aux:
            return
        from llmft.tasks import TASKS

        total = 0.0
        for i, aux in enumerate(cfg.data.aux):
            key = f"data.aux[{i}]"
            kind = aux.kind  # one of the schema's (core/config.py AuxConfig)
            if kind not in task.aux_kinds:
                needs = next(n for n in TASKS.names() if kind in TASKS.get(n).aux_kinds)
                raise UserError(f"{key}.kind={kind} goes with data.task={needs} (got {cfg.data.task})")
            path = resolve_path(aux["train_file"], key=f"{key}.train_file")
            if not path.is_file():
                raise UserError(f"{key}.train_file: file not found: {path}")
            weight = float(aux.weight)
            if not 0 < weight < 1:
                raise UserError(f"{key}.weight: must be in (0, 1) (the share of training examples; got {weight})")
            total += weight
        if total >= 1:
            raise UserError(f"data.aux: the weights add up to {total:g}; the main task needs a share too (< 1 in all)")
        if any(aux.kind == "classification" for aux in cfg.data.aux):
            t = cfg.train
            for key, on in (("train.class_weights", t.class_weights not in (None, "none")),
                            ("train.loss", t.loss != "ce"), ("train.distill.teacher", bool(t.distill.teacher)),
                            ("data.sampler", cfg.data.sampler != "random")):
                require(not on, key, "does not combine with data.aux of kind classification (the aux rows have "
                                      "their own labels and head; it would score them as main-task labels)")

    def train_set(self, run) -> None:
        """The aux sets mixed into the train split, the aux heads and their optimizer groups; the
        record's "aux" (None without data.aux or training)."""
        run.train_set, run.model, run.param_groups, run.record["aux"] = attach(
            run.cfg, run.task, run.tokenizer, run.train_set, run.model, run.param_groups)


technique = MultiTask()


def attach(cfg, task, tokenizer, train_set, model, param_groups) -> tuple:
    """The train split with the aux sets mixed in, the model with the aux heads (classification),
    their optimizer groups, and the report; all unchanged (report None) without data.aux or training."""
    if not cfg.data.aux or train_set is None:
        return train_set, model, param_groups, None
    train_set, heads, report = mix(cfg, task, tokenizer, train_set)
    if heads:
        from llmft.models.heads import MultiTaskClassifier

        model = MultiTaskClassifier(model, heads)
        param_groups = model.param_groups(param_groups)
    return train_set, model, param_groups, report

def mix(cfg, task, tokenizer, train_set):
    """The train split with every aux set mixed in; returns (dataset, heads, report).
    ``heads``: name -> number of labels, for aux classification sets."""
    import torch

    from datasets import concatenate_datasets

    aux_cfgs = list(cfg.data.aux)
    main_share = 1 - sum(float(a.weight) for a in aux_cfgs)
    parts, heads, report = [], {}, []
    has_task_id = any(a.kind == "classification" for a in aux_cfgs)
    main = train_set.add_column(TASK_ID, [0] * len(train_set)) if has_task_id else train_set
    for i, aux in enumerate(aux_cfgs):
        name, kind = aux.name or f"aux{i}", aux.kind
        pool = lm_chunks(aux, tokenizer, cfg.data.max_length) if kind == "lm" else \
            classification_set(cfg, task, aux, tokenizer)
        if kind == "classification":
            heads[name] = pool[1]
            pool = pool[0].add_column(TASK_ID, [len(heads)] * len(pool[0]))
        if len(pool) == 0:
            raise UserError(f"data.aux[{i}].train_file: no examples")
        n = max(1, round(float(aux.weight) / main_share * len(train_set)))
        rng = torch.Generator().manual_seed(cfg.data.split_seed + i)
        picks = torch.randint(len(pool), (n,), generator=rng).tolist() if n > len(pool) else \
            torch.randperm(len(pool), generator=rng)[:n].tolist()
        parts.append(pool.select(picks))
        report.append({"name": name, "kind": kind, "file": str(aux["train_file"]), "examples": n,
                       "weight": float(aux.weight), **({"labels": heads[name]} if kind != "lm" else {})})
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
        text = path.read_text(encoding=aux.encoding or "utf-8")
    else:
        from llmft.data.files import read_file

        column = aux.text_column
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
        self.format = aux.format
        self.encoding = aux.encoding or "utf-8"

    def __getitem__(self, key):
        return getattr(self, key)


def classification_set(cfg, task, aux, tokenizer):
    """An aux labelled set, encoded and tokenized by a task of the main task's kind (its own labels)."""
    from omegaconf import OmegaConf, open_dict

    from llmft.data.files import read_file
    data_cfg = copy.deepcopy(cfg.data)
    with open_dict(data_cfg):
        data_cfg.text_column = aux.text_column
        data_cfg.label_column = aux.label_column
        data_cfg.text_pair_column = None
        data_cfg.labels = OmegaConf.create(list(aux.labels)) if aux.labels else None
        data_cfg.encoding = aux.encoding or cfg.data.encoding
        data_cfg.format = aux.format
        data_cfg.aux = []
    aux_task = type(task)(data_cfg)
    path = resolve_path(aux["train_file"])
    rows = read_file(path, data_cfg, "data.aux.train_file")
    encoded = aux_task.encode(rows, str(path), is_train=True)
    return aux_task.tokenize(encoded, tokenizer), len(aux_task.labels)
