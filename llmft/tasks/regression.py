"""Regression: text (or a text pair) -> one number. One linear output trained with MSE
(transformers' ``problem_type="regression"``); metrics from scikit-learn and scipy.

``data.label_scale`` (standard: zero mean and unit variance, minmax: [0, 1]) rescales the targets
the model trains on, fitted on the final train split only; every prediction is scaled back before
a metric or a prediction record, so results are always in the data's own units. The fitted scale
is saved with the model (model/llmft.json) and eval / predict of that model scale back the same way.
"""
from __future__ import annotations

import math
import re

from llmft.core.errors import UserError, require
from llmft.tasks.base import Task, check_finite, check_texts

LABEL_COLUMN = "labels"  # the column name HF models read the targets from
# a plain decimal number: "1,5", "1_000", "0x1f", "inf" and "nan" are refused, not read as something else
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class Regression(Task):
    name = "regression"
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    # R^2 = 1 - MSE / variance of the split's gold: it ranks runs exactly as MSE does, higher is better
    # (sweeps maximise, early stopping's auto mode and the report need no direction of their own),
    # and the mean predictor scores about 0 on it
    primary_metric = "r2"
    loss_kind = "squared"  # one squared error per row: the split's loss does not move with the batch size
    loop_metric_names = ("r2", "pearson", "spearman")  # higher is better, like every loop metric
    # no class scores: the cross-entropy techniques (class weights, focal loss, balanced sampling,
    # distillation, self-training, PET) refuse it; splits are held out plainly (nothing to stratify)
    logits = None
    stratify_column = None
    input_column_keys = ("text_column", "text_pair_column")
    answer_column_key = "label_column"

    @classmethod
    def validate_config(cls, cfg) -> None:
        super().validate_config(cfg)
        require(cfg.data.labels is None, "data.labels",
                "regression reads a number per row, not a label set; drop data.labels")

    def __init__(self, data_cfg, labels: list[str] | None = None):
        super().__init__(data_cfg, None)
        self.scale: dict | None = None  # {"method", "shift", "divisor"}: target = (value - shift) / divisor

    def input_columns(self) -> list[str]:
        return [c for c in (self.data_cfg.text_column, self.data_cfg.text_pair_column) if c]

    def required_columns(self) -> list[str]:
        return [*self.input_columns(), self.data_cfg.label_column]

    # ------------------------------------------------------------------ data
    def encode(self, dataset, source: str, is_train: bool):
        column = self.data_cfg.label_column
        feature = dataset.features[column]
        if getattr(feature, "names", None):  # a hub ClassLabel: class ids, not measured values
            raise UserError(f"{source}: column '{column}' holds class ids ({feature.names[:3]}...), not numbers; "
                            f"use data.task=classification")
        values = [_number(v, source, row, column) for row, v in enumerate(dataset[column])]
        check_texts(dataset, source, self.input_columns())
        if is_train and len(set(values)) < 2:
            raise UserError(f"{source}: every row has the label {values[0]:g}: there is nothing to regress on")
        from datasets import Value

        return dataset.add_column(LABEL_COLUMN, values, feature=Value("float64"))

    def fit(self, train) -> None:
        """The target scale, from the final train split (after held-out rows and caps); a scale
        saved with the model is kept."""
        if self.scale is not None:
            return
        import numpy as np

        # two numbers saved as JSON with the model (sklearn's scalers would need a pickle)
        values = np.asarray(train[LABEL_COLUMN], dtype=np.float64)
        method = self.data_cfg.label_scale
        if method == "standard":
            shift, divisor = float(values.mean()), float(values.std())
        elif method == "minmax":
            shift, divisor = float(values.min()), float(values.max() - values.min())
        else:
            shift, divisor = 0.0, 1.0
        if not divisor > 0:
            raise UserError(f"data.label_scale={method}: every train label is {values[0]:g}; nothing to scale")
        self.scale = {"method": method, "shift": shift, "divisor": divisor}

    def to_targets(self, values):
        """Values in the data's units -> the model's targets."""
        import numpy as np

        s = self._scale()
        return (np.asarray(values, dtype=np.float64) - s["shift"]) / s["divisor"]

    def to_values(self, outputs):
        """The model's outputs (n, 1) or targets -> values in the data's units (float64)."""
        import numpy as np

        s = self._scale()
        return np.asarray(outputs, dtype=np.float64).reshape(-1) * s["divisor"] + s["shift"]

    def _scale(self) -> dict:
        if self.scale is None:
            raise RuntimeError("regression: the label scale is not fitted (fit the train split, or load a saved model)")
        return self.scale

    def model_kwargs(self) -> dict:
        return {"num_labels": 1, "problem_type": "regression"}

    def tokenize(self, dataset, tokenizer):
        d = self.data_cfg
        labelled = LABEL_COLUMN in dataset.column_names

        def encode_batch(batch):
            pair = batch[d.text_pair_column] if d.text_pair_column else None
            out = tokenizer(batch[d.text_column], pair, truncation=True, max_length=d.max_length)
            if labelled:
                out[LABEL_COLUMN] = self.to_targets(batch[LABEL_COLUMN]).tolist()
            return out

        return dataset.map(encode_batch, batched=True, remove_columns=dataset.column_names, desc="tokenize")

    # --------------------------------------------------------------- results
    def evaluate(self, trainer, tokenized, raw, generate_cfg=None) -> tuple[dict, list[dict]]:
        """Metrics against the split's own values (not the float32 targets scaled back)."""
        output = trainer.predict(tokenized, metric_key_prefix="eval")
        outputs = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        check_finite(outputs)
        metrics = scores(self.to_values(outputs), raw[LABEL_COLUMN])
        if "eval_loss" in output.metrics:
            metrics["loss"] = round(output.metrics["eval_loss"], 5)  # MSE of the scaled targets
        return metrics, self.prediction_records(raw, outputs)

    def metrics(self, predictions, label_ids) -> dict:
        return scores(self.to_values(predictions), self.to_values(label_ids))

    def loop_metrics(self, eval_pred) -> dict:
        metrics = self.metrics(eval_pred.predictions, eval_pred.label_ids)
        # an undefined correlation (constant predictions) is nan to the Trainer: never the best
        return {k: float("nan") if metrics[k] is None else metrics[k] for k in self.loop_metric_names}

    def baseline(self, train, eval_split) -> dict:
        """The mean predictor: the train split's mean for every row (its correlations are undefined)."""
        import numpy as np

        mean = float(np.mean(np.asarray(train[LABEL_COLUMN], dtype=np.float64)))
        gold = eval_split[LABEL_COLUMN]
        constant = scores(np.full(len(gold), mean), gold)
        return {"mean_prediction": mean, **{f"mean_{k}": constant[k] for k in ("mse", "rmse", "mae", "r2")}}

    def warnings(self, metrics: dict, baseline: dict, records: list[dict]) -> list[str]:
        out = []
        predicted = {r["prediction"] for r in records}
        if len(records) > 1 and len(predicted) == 1:
            out.append(f"predicts {next(iter(predicted)):g} for all {len(records)} eval examples")
        mse, mean_mse = metrics.get("mse"), baseline.get("mean_mse")
        if mse is not None and mean_mse is not None and mse >= mean_mse:
            out.append(f"mse {mse:.4g} is no better than the mean predictor's {mean_mse:.4g} "
                       f"(always {baseline['mean_prediction']:.4g})")
        return out

    def prediction_records(self, dataset, predictions) -> list[dict]:
        d = self.data_cfg
        values = self.to_values(predictions)
        records = []
        for i, row in enumerate(dataset):
            record = {"text": row[d.text_column]}
            if d.text_pair_column:
                record["text_pair"] = row[d.text_pair_column]
            if LABEL_COLUMN in row:
                record["label"] = row[LABEL_COLUMN]
            record["prediction"] = float(values[i])
            records.append(record)
        return records

    def metadata(self) -> dict:
        return {"task": self.name, "label_scale": self._scale()}

    @classmethod
    def from_metadata(cls, data_cfg, meta: dict) -> "Regression":
        task = cls(data_cfg)
        task.scale = dict(meta["label_scale"])
        return task


def scores(predicted, gold) -> dict:
    """mse, rmse, mae, r2, pearson, spearman of values in the data's units; a correlation is None
    where it is undefined (fewer than 2 rows, or constant predictions or gold)."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    predicted, gold = np.asarray(predicted, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    mse = float(mean_squared_error(gold, predicted))
    varied = len(gold) > 1 and np.ptp(predicted) > 0 and np.ptp(gold) > 0
    return {"mse": mse, "rmse": math.sqrt(mse), "mae": float(mean_absolute_error(gold, predicted)),
            "r2": float(r2_score(gold, predicted)) if len(gold) > 1 else None,
            "pearson": float(pearsonr(predicted, gold).statistic) if varied else None,
            "spearman": float(spearmanr(predicted, gold).statistic) if varied else None}


def _number(value, source: str, row: int, column: str) -> float:
    """One label as a finite float: a JSON number, or a CSV cell that is a plain decimal number."""
    where = f"{source}: row {row + 1}: "
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{where}no label in column '{column}' (empty)")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"{where}label {value!r} in column '{column}' is not a number")
    if isinstance(value, str):
        text = value.strip()
        if not _NUMBER.fullmatch(text):
            raise UserError(f"{where}label {value!r} in column '{column}' is not a number (write e.g. 2.5 or -1e-3)")
        value = float(text)
    value = float(value)
    if not math.isfinite(value):
        raise UserError(f"{where}label {value!r} in column '{column}' is not a finite number")
    return value
