"""Unlabelled data and the staged runs that use it (self_training.py, pet_ensemble.py).

    data.unlabeled_file / data.unlabeled_from_train=N  ->  splits["unlabeled"] (data/files.py)
    a stage = one ordinary run (commands/train.run_once) in RUN/stages/<name>/ whose config carries
    the stage's name and a digest of the rows it adds, so its fingerprint, checkpoints, resume
    and "model/ complete: only evaluate" work per stage; a rerun after a kill skips finished stages
    label_scores(model/, rows)  ->  the saved model's class scores on rows (llmft predict's path)

Rows a stage adds to the train split: text column(s) + a hard label ("labels"), or a class
distribution ("_soft", PET's final classifier; the labelled rows then carry their one-hot).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llmft.core.errors import require
from llmft.techniques import Technique

SOFT = "_soft"  # a row's target distribution, when the train split has one


class Unlabeled(Technique):
    """The unlabelled split set aside, a stage's rows added to the train split."""

    keys = ("data.unlabeled_file", "data.unlabeled_from_train")

    def validate(self, cfg, task, strategy) -> None:
        """Unlabelled data only where a technique reads it, for a classification task, in one process."""
        d = cfg.data
        given = bool(d.unlabeled_file) or d.unlabeled_from_train > 0
        users = consumers(cfg, strategy)
        if given:
            require(bool(users), "data.unlabeled_file" if d.unlabeled_file else "data.unlabeled_from_train",
                    "nothing reads unlabelled data in this run: set train.self_training.rounds=N, or "
                    "+strategy=pet strategy.ensemble=true")
        if users:
            require(task.logits == "sequence" and not cfg.data.aux and not cfg.model.get("crf", False), "data.task",
                    f"{users[0]} labels whole inputs: it needs a classification task without data.aux "
                    f"(got data.task={d.task})")
            require(cfg.hardware.nproc_per_node * cfg.hardware.nnodes == 1, "hardware",
                    f"{users[0]} runs its stages in one process; use hardware=cpu or hardware=gpu")

    def splits(self, run) -> None:
        run.splits = with_rows(run.splits, run.extra_train)

    def train_set(self, run) -> None:
        """PET's final classifier: the targets are the rows' distributions."""
        run.train_set = soft_labels(run.train_set, run.splits["train"])


technique = Unlabeled()


def consumers(cfg, strategy) -> list[str]:
    out = []
    if cfg.train.self_training.rounds > 0:
        out.append("train.self_training")
    if strategy.pattern_ensemble(cfg):
        out.append("strategy.ensemble")
    return out


# ------------------------------------------------------------------ stages
def stage_config(cfg, name: str, rows=None, **changes):
    """A copy of the run's config for one stage: ``changes`` (dotted keys) applied, and the stage's
    name and a digest of the rows it adds recorded (they are part of what it computes)."""
    from omegaconf import OmegaConf, open_dict

    stage = cfg.copy()
    with open_dict(stage):
        for key, value in changes.items():
            OmegaConf.update(stage, key, value, merge=False, force_add=True)
        stage.print_config = False
        stage.stage = {"name": name, "added_rows": len(rows) if rows is not None else 0, "rows_digest": digest(rows)}
    return stage


def stage_dir(run_path, name: str) -> Path:
    return Path(run_path) / "stages" / name


def digest(rows) -> str | None:
    if rows is None:
        return None
    text = json.dumps(rows.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def with_rows(splits: dict, rows) -> dict:
    """The splits of one run: the unlabelled split set aside (a stage reads it, not the run), and
    ``rows`` (hard "labels", or "_soft" distributions) appended to the train split."""
    splits = {k: v for k, v in splits.items() if k != "unlabeled"}
    if rows is None:
        return splits
    from datasets import concatenate_datasets

    train = splits["train"]
    keep = [c for c in rows.column_names if c != SOFT]
    train = train.select_columns(keep)
    if SOFT in rows.column_names:  # the labelled rows' targets: their one-hot
        n = len(rows[0][SOFT])
        train = train.map(lambda row: {SOFT: [float(i == row["labels"]) for i in range(n)]})
    splits["train"] = concatenate_datasets([train, rows.cast(train.features)])
    return splits


def soft_labels(train_set, train_split):
    """The tokenized train set with its targets replaced by the rows' distributions, if they have them."""
    if train_set is None or SOFT not in train_split.column_names:
        return train_set
    return train_set.remove_columns("labels").add_column("labels", train_split[SOFT])


def labelled(rows, labels, soft=None):
    """``rows`` (the unlabelled split's columns) with a hard label per row, or a distribution."""
    from llmft.data.files import UNLABELED_GOLD

    rows = rows.remove_columns([c for c in rows.column_names if c == UNLABELED_GOLD])
    if soft is not None:
        rows = rows.add_column("labels", [int(x) for x in soft.argmax(-1)])
        return rows.add_column(SOFT, [[float(x) for x in p] for p in soft])
    return rows.add_column("labels", [int(x) for x in labels])


# ------------------------------------------------------------------ scores
def label_scores(model_dir: Path, task, rows, cfg):
    """The saved model's class scores (logits) on ``rows``, read the way ``llmft predict`` reads
    inputs (a prompting model renders its own template). numpy (rows, classes)."""
    import tempfile

    from llmft.artifacts import load_saved, read_metadata
    from llmft.runtime.trainer import build_trainer, eval_arguments
    from llmft.strategies import strategy_class

    meta = read_metadata(Path(model_dir))
    model, tokenizer = load_saved(Path(model_dir), task, meta, trust_remote_code=cfg.model.trust_remote_code)
    rows = strategy_class(meta.get("strategy", "full")).prepare_saved_data({"eval": rows}, tokenizer, meta)["eval"]
    tokenized = task.tokenize(rows.select_columns([c for c in rows.column_names if c != "labels"]), tokenizer)
    with tempfile.TemporaryDirectory() as scratch:
        args = eval_arguments(Path(scratch), cfg.train.eval_batch_size or 2 * cfg.train.batch_size, cfg.hardware)
        output = build_trainer(args, model, tokenizer, task).predict(tokenized)
    scores = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return scores.astype("float64")


def softmax(scores, temperature: float = 1.0):
    import numpy as np

    z = scores / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def gold_accuracy(rows, predicted) -> float | None:
    """How many pseudo-labels match the labels data.unlabeled_from_train set aside (None: a file)."""
    from llmft.data.files import UNLABELED_GOLD

    if UNLABELED_GOLD not in rows.column_names or not len(rows):
        return None
    gold = rows[UNLABELED_GOLD]
    return round(sum(int(g == p) for g, p in zip(gold, predicted)) / len(gold), 4)


def write_rows(path: Path, rows, labels: list[str], probs) -> None:
    """What a stage labelled, one JSON line per row: text, label, the distribution."""
    from llmft.runtime.run_dir import dumps

    text = [c for c in rows.column_names if c not in ("labels", SOFT)][0]
    lines = [dumps({"text": t, "label": labels[int(p.argmax())], "probs": [round(float(x), 6) for x in p]})
             for t, p in zip(rows[text], probs)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
