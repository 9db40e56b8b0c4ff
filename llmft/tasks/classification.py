"""Sequence classification: text (or a text pair) -> one label. Metrics from scikit-learn."""
from __future__ import annotations

from collections import Counter

from llmft.core.errors import UserError, require
from llmft.tasks.base import Task

LABEL_COLUMN = "labels"  # the column name HF models read the targets from


class Classification(Task):
    name = "classification"
    auto_model = "AutoModelForSequenceClassification"
    logits = "sequence"
    aux_kinds = ("classification",)
    peft_task_type = "SEQ_CLS"
    loss_kind = "row"
    primary_metric = "accuracy"
    loop_metric_names = ("accuracy", "macro_f1")
    stratify_column = LABEL_COLUMN
    input_column_keys = ("text_column", "text_pair_column")
    answer_column_key = "label_column"

    @classmethod
    def validate_config(cls, cfg) -> None:
        super().validate_config(cfg)
        labels = cfg.data.labels
        require(labels is None or len(labels) >= 2, "data.labels",
                f"a classifier needs at least 2 labels (got {[str(x) for x in labels or []]})")

    def input_columns(self) -> list[str]:
        return [c for c in (self.data_cfg.text_column, self.data_cfg.text_pair_column) if c]

    def required_columns(self) -> list[str]:
        return [*self.input_columns(), self.data_cfg.label_column]

    # ------------------------------------------------------------------ data
    def encode(self, dataset, source: str, is_train: bool):
        d = self.data_cfg
        if getattr(dataset.features[d.label_column], "dtype", "").startswith("float"):  # JSON: 1 and 1.0 alike
            raise UserError(f"{source}: column '{d.label_column}' holds numbers with a fraction; labels are names: "
                            f"write them as text (\"1\", \"2.5\")")
        names = getattr(dataset.features[d.label_column], "names", None)  # hub ClassLabel: ids of these names
        if names:  # -1: a split without labels (e.g. GLUE's test sets), never the last name
            values = [names[v] if v is not None and 0 <= v < len(names) else None for v in dataset[d.label_column][:]]
        else:
            # [:]: one list; iterating datasets' Column formats each row apart (~2.5 s per pass over 38k rows)
            values = [None if v is None else str(v).strip() for v in dataset[d.label_column][:]]
        empty = next((i for i, v in enumerate(values) if not v), None)
        if empty is not None:
            raise UserError(f"{source}: row {empty + 1}: no label in column '{d.label_column}' (empty, or -1)")
        if self.labels is None:
            if not is_train:
                raise UserError("data.labels: cannot infer the label set without a train split")
            self.labels = sorted({v for v in values if v is not None})
        index = {name: i for i, name in enumerate(self.labels)}
        for row, value in enumerate(values):
            if value not in index:
                raise UserError(
                    f"{source}: row {row + 1}: label {value!r} in column '{d.label_column}' is not "
                    f"one of {self.labels} (set data.labels to the full label set)"
                )
        for column in (d.text_column, d.text_pair_column):
            if column:
                texts = dataset[column][:]
                bad = next((i for i, t in enumerate(texts) if t is None or (isinstance(t, str) and not t.strip())), None)
                if bad is not None:
                    raise UserError(f"{source}: row {bad + 1}: column '{column}' is empty")
                bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
                if bad is not None:
                    raise UserError(f"{source}: row {bad + 1}: column '{column}' holds {type(texts[bad]).__name__} "
                                    f"{texts[bad]!r}, not text (data.{'text_column' if column == d.text_column else 'text_pair_column'})")
        if is_train and len(set(values)) < 2:
            raise UserError(f"{source}: every row has the label {values[0]!r}: a classifier needs at least 2 classes")

        from datasets import ClassLabel

        ids = [index[v] for v in values]
        dataset = dataset.add_column(LABEL_COLUMN, ids)
        return dataset.cast_column(LABEL_COLUMN, ClassLabel(names=self.labels))

    def model_kwargs(self) -> dict:
        return {
            "num_labels": len(self.labels),
            "id2label": dict(enumerate(self.labels)),
            "label2id": {name: i for i, name in enumerate(self.labels)},
        }

    def tokenize(self, dataset, tokenizer):
        d = self.data_cfg

        def encode_batch(batch):
            pair = batch[d.text_pair_column] if d.text_pair_column else None
            return tokenizer(batch[d.text_column], pair, truncation=True, max_length=d.max_length)

        keep = {LABEL_COLUMN}
        return dataset.map(
            encode_batch,
            batched=True,
            remove_columns=[c for c in dataset.column_names if c not in keep],
            desc="tokenize",
        )

    # --------------------------------------------------------------- results
    def metrics(self, predictions, label_ids) -> dict:
        from sklearn.metrics import accuracy_score, classification_report, f1_score

        predicted = predictions.argmax(-1)
        ids = list(range(len(self.labels)))
        report = classification_report(
            label_ids, predicted, labels=ids, target_names=self.labels, output_dict=True,
            zero_division=0,
        )
        per_class = {
            name: {"precision": round(report[name]["precision"], 4), "recall": round(report[name]["recall"], 4),
                   "f1": round(report[name]["f1-score"], 4), "support": int(report[name]["support"])}
            for name in self.labels
        }
        return {
            "accuracy": float(accuracy_score(label_ids, predicted)),
            "macro_f1": float(f1_score(label_ids, predicted, labels=ids, average="macro", zero_division=0)),
            "per_class": per_class,
        }

    def loop_metrics(self, eval_pred) -> dict:
        metrics = self.metrics(eval_pred.predictions, eval_pred.label_ids)
        return {k: v for k, v in metrics.items() if k in self.loop_metric_names}

    def baseline(self, train, eval_split) -> dict:
        majority, _ = Counter(train[LABEL_COLUMN]).most_common(1)[0]
        gold = eval_split[LABEL_COLUMN]
        return {
            "majority_label": self.labels[majority],
            "majority_accuracy": sum(1 for g in gold if g == majority) / max(len(gold), 1),
        }

    def warnings(self, metrics: dict, baseline: dict, records: list[dict]) -> list[str]:
        out = []
        predicted = Counter(r["prediction"] for r in records)
        label, count = predicted.most_common(1)[0] if predicted else (None, 0)
        gold_share = sum(r.get("label") == label for r in records) / max(len(records), 1)
        if len(records) > 1 and count == len(records):
            out.append(f"predicts '{label}' for all {len(records)} eval examples")
        elif len(records) >= 20 and count >= 0.95 * len(records) > gold_share * len(records):
            out.append(f"predicts '{label}' for {count} of {len(records)} eval examples (gold: {gold_share:.0%})")
        accuracy, majority = metrics.get("accuracy"), baseline.get("majority_accuracy")
        if accuracy is not None and majority is not None and accuracy <= majority:
            out.append(f"accuracy {accuracy:.4f} is no better than the majority-class baseline {majority:.4f}")
        return out

    def prediction_records(self, dataset, predictions) -> list[dict]:
        import numpy as np

        d = self.data_cfg
        shifted = predictions - predictions.max(-1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
        records = []
        for i, row in enumerate(dataset):
            record = {"text": row[d.text_column]}
            if d.text_pair_column:
                record["text_pair"] = row[d.text_pair_column]
            best = int(probs[i].argmax())
            if LABEL_COLUMN in row:
                record["label"] = self.labels[row[LABEL_COLUMN]]
            record.update(prediction=self.labels[best], confidence=round(float(probs[i][best]), 4))
            records.append(record)
        return records
