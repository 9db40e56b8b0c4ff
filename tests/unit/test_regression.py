"""data.task=regression: one output trained with MSE, a float label per row read exactly as
written (anything that is not a finite decimal number is refused with its file and row), metrics
in the data's own units whatever data.label_scale (fitted on the train split only, saved with the
model), the mean predictor as the baseline, the eval loss independent of the eval batch size, and
the classification-only techniques refused in one line. In process, on tiny BERT."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config, make_rows, preflight, read_jsonl, refused

from llmft.core.errors import UserError

GOLD = [1.0, 2.0, 3.0, 4.0]
PRED = [1.5, 2.6, 2.5, 5.0]


def hand_scores(pred, gold) -> dict:
    """The textbook formulas, written out."""
    n = len(gold)
    errors = [p - g for p, g in zip(pred, gold)]
    mse = sum(e * e for e in errors) / n
    mp, mg = sum(pred) / n, sum(gold) / n
    cov = sum((p - mp) * (g - mg) for p, g in zip(pred, gold))
    pearson = cov / math.sqrt(sum((p - mp) ** 2 for p in pred) * sum((g - mg) ** 2 for g in gold))
    rank = lambda xs: [sorted(xs).index(x) + 1 for x in xs]  # noqa: E731  (no ties here)
    d2 = sum((a - b) ** 2 for a, b in zip(rank(pred), rank(gold)))
    return {"mse": mse, "rmse": math.sqrt(mse), "mae": sum(abs(e) for e in errors) / n,
            "r2": 1 - sum(e * e for e in errors) / sum((g - mg) ** 2 for g in gold),
            "pearson": pearson, "spearman": 1 - 6 * d2 / (n * (n * n - 1))}


def data_cfg(scale: str = "none", **extra):
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig

    cfg = OmegaConf.structured(DataConfig(name="t", task="regression", label_scale=scale))
    for key, value in extra.items():
        cfg[key] = value
    return cfg


def fitted(scale: str, train_values):
    from datasets import Dataset

    from llmft.tasks.regression import Regression

    task = Regression(data_cfg(scale))
    task.fit(Dataset.from_dict({"labels": list(map(float, train_values))}))
    return task


def test_metrics_equal_a_hand_computation():
    from llmft.tasks.regression import scores

    got, want = scores(PRED, GOLD), hand_scores(PRED, GOLD)
    assert want["spearman"] == pytest.approx(0.8) and want["mse"] == pytest.approx(0.465)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-12), name


def test_correlations_of_a_constant_prediction_are_undefined_not_nan():
    from llmft.tasks.regression import scores

    got = scores([2.5] * 4, GOLD)
    assert got["pearson"] is None and got["spearman"] is None
    assert got["mse"] == pytest.approx(1.25) and got["r2"] == pytest.approx(0.0)


@pytest.mark.parametrize("scale", ["none", "standard", "minmax"])
def test_label_scale_round_trip_and_metrics_in_the_data_units(scale):
    """A fixed model output (the same values in the data's units, expressed in each scale's
    targets) gives the same metrics whichever scale; the scale survives model/llmft.json."""
    from llmft.tasks.regression import Regression

    train = [10.0, 20.0, 30.0, 60.0]
    task = fitted(scale, train)
    shift, divisor = {"none": (0.0, 1.0), "standard": (30.0, math.sqrt(350.0)), "minmax": (10.0, 50.0)}[scale]
    assert task.scale == {"method": scale, "shift": pytest.approx(shift), "divisor": pytest.approx(divisor)}
    targets = task.to_targets(train)
    if scale == "standard":
        assert targets.mean() == pytest.approx(0.0) and targets.std() == pytest.approx(1.0)
    if scale == "minmax":
        assert (targets.min(), targets.max()) == (0.0, 1.0)
    outputs = task.to_targets(PRED)[:, None]  # what the model's single output would hold
    metrics = task.metrics(outputs, task.to_targets(GOLD))
    for name, value in hand_scores(PRED, GOLD).items():
        assert metrics[name] == pytest.approx(value, rel=1e-9), (scale, name)
    reloaded = Regression.from_metadata(data_cfg("none"), json.loads(json.dumps(task.metadata())))
    assert reloaded.to_values(outputs).tolist() == task.to_values(outputs).tolist()
    assert reloaded.to_values(outputs) == pytest.approx(PRED, rel=1e-12)


def test_a_constant_train_split_is_refused():
    from datasets import Dataset

    from llmft.tasks.regression import Regression

    with pytest.raises(UserError, match="every train label is 3"):
        Regression(data_cfg("standard")).fit(Dataset.from_dict({"labels": [3.0, 3.0]}))


# ------------------------------------------------------------------ reading labels
def load(tmp_path: Path, name: str, text: str, *overrides: str):
    from llmft.data.files import load_splits
    from llmft.tasks.regression import Regression

    path = tmp_path / name
    path.write_text(text)
    cfg = data_cfg(train_file=str(path), eval_file=str(path), eval_fraction=0.0)
    if any(o.startswith("eval_fraction=") for o in overrides):
        cfg.eval_file = None  # held out of the train file
    for item in overrides:
        key, value = item.split("=", 1)
        cfg[key] = value
    task = Regression(cfg)
    return load_splits(cfg, task), task


CSV_HEAD = "text,label\nthe best day,1.5\n"
BAD_CSV = [("", "no label in column 'label' (empty)"), ("NA", "'NA' in column 'label' is not a number"),
           ("abc", "'abc' in column 'label' is not a number"), ("inf", "'inf' in column 'label' is not a number"),
           ("nan", "'nan'"), ("1,5", "'1,5'"), ("1_000", "'1_000'"), ("0x10", "'0x10'"),
           ("1e400", "label inf in column 'label' is not a finite number")]


@pytest.mark.parametrize("value, expected", BAD_CSV, ids=[v or "empty" for v, _ in BAD_CSV])
def test_a_csv_label_that_is_not_a_finite_number_is_refused_with_file_and_row(tmp_path, value, expected):
    cell = f'"{value}"' if "," in value else value
    with pytest.raises(UserError) as err:
        load(tmp_path, "train.csv", CSV_HEAD + f"a bad day,{cell}\n")
    assert str(err.value).startswith(f"{tmp_path / 'train.csv'}: row 2: ") and expected in str(err.value)


BAD_JSONL = [('{"text": "a", "label": null}', "row 2: no label in column 'label'"),
             ('{"text": "a", "label": true}', "mixes value types"),
             ('{"text": "a", "label": "abc"}', "mixes value types")]


@pytest.mark.parametrize("line, expected", BAD_JSONL, ids=["null", "bool", "text"])
def test_a_json_label_that_is_not_a_number_is_refused(tmp_path, line, expected):
    with pytest.raises(UserError, match=expected):
        load(tmp_path, "train.jsonl", '{"text": "the best day", "label": 1.5}\n' + line + "\n")


def test_json_numbers_and_csv_text_read_as_the_same_floats(tmp_path):
    values = ["2.5", " -1e-3 ", "+3", "7", ".5"]
    csv_text = "text,label\n" + "".join(f"row {i},{v}\n" for i, v in enumerate(values))
    splits, _ = load(tmp_path, "train.csv", csv_text)
    assert splits["train"]["labels"] == [2.5, -0.001, 3.0, 7.0, 0.5]
    jsonl = "".join(json.dumps({"text": f"row {i}", "label": v}) + "\n" for i, v in enumerate([2.5, -1e-3, 3, 7, 0.5]))
    splits, _ = load(tmp_path, "train.jsonl", jsonl)
    assert splits["train"]["labels"] == [2.5, -0.001, 3.0, 7.0, 0.5]


def test_the_scale_is_fitted_on_the_train_split_only(tmp_path):
    """The rows held out for eval (data.eval_fraction, a plain seeded split) never enter the scale."""
    rows = "text,label\n" + "".join(f"row {i},{i * i}\n" for i in range(40))
    splits, task = load(tmp_path, "train.csv", rows, "eval_fraction=0.25", "label_scale=standard")
    train = np.asarray(splits["train"]["labels"])
    assert len(train) == 30 and len(splits["eval"]) == 10
    assert task.scale["shift"] == pytest.approx(train.mean()) and task.scale["divisor"] == pytest.approx(train.std())
    everything = np.arange(40) ** 2
    assert task.scale["shift"] != pytest.approx(everything.mean())


# ------------------------------------------------------------------ the eval loss
def test_the_split_loss_is_the_mean_squared_error_whatever_the_batches():
    import torch
    from types import SimpleNamespace

    from llmft.runtime.split_loss import SplitLoss, row_losses

    outputs = torch.tensor([[0.5], [2.0], [1.0], [4.0], [-1.0]])
    labels = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    want = ((0.5 - 1) ** 2 + 0 + 4 + 0 + 36) / 5
    for size in (1, 2, 5):
        loss = SplitLoss()
        for start in range(0, 5, size):
            out = SimpleNamespace(logits=outputs[start:start + size])
            loss.add(*row_losses("squared", out, {"labels": labels[start:start + size]}))
        assert loss.value() == pytest.approx(want, rel=1e-12), size


# ------------------------------------------------------------------ end to end, in process
def regression_rows(n: int, seed: int) -> list[dict]:
    """The sentiment rows with a number: 100 + 10 per sentiment step."""
    value = {"negative": 90.0, "neutral": 100.0, "positive": 110.0}
    return [{"text": r["text"], "label": value[r["label"]]} for r in make_rows(n, seed)]


def compose(command: str, *overrides: str):
    return compose_config(command, *overrides, validate=True)


def test_train_eval_and_predict_in_the_data_units(tmp_path, tiny_bert):
    """A few steps learn far better than the mean predictor (6 epochs: mse/mean-mse <= 0.02 over six
    initialisations, 0.15-0.58 at 3); predictions.jsonl, llmft eval of the saved
    model (at two eval batch sizes: same loss) and llmft predict agree, in the data's units."""
    from llmft.commands import evaluate, predict, train
    from llmft.tasks.regression import scores

    train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in regression_rows(96, 1)))
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in regression_rows(21, 2)))
    data = ["data=csv", "data.task=regression", f"data.train_file={train_file}", f"data.eval_file={eval_file}",
            "data.label_scale=standard"]
    cfg = compose("train", "model=hf", f"model.name_or_path={tiny_bert}", *data, "train.epochs=6",
                  "train.batch_size=8", "train.lr=3e-3", "train.retention.report=false", "print_config=false")
    results = train.main(cfg, tmp_path / "run")
    assert results["primary_metric"] == "r2" and results["task"] == "regression"
    baseline = results["baseline"]
    assert baseline["mean_prediction"] == pytest.approx(100.0)
    metrics = results["eval"]
    assert metrics["mse"] < 0.5 * baseline["mean_mse"], (metrics, baseline)
    assert metrics["pearson"] > 0.7 and not results["warnings"]
    records = read_jsonl(tmp_path / "run" / "predictions.jsonl")
    assert records[0]["label"] in (90.0, 100.0, 110.0) and 60 < records[0]["prediction"] < 140  # data units
    again = scores([r["prediction"] for r in records], [r["label"] for r in records])
    assert again == pytest.approx({k: v for k, v in metrics.items() if k != "loss"}, rel=1e-9)
    meta = json.loads((tmp_path / "run" / "model" / "llmft.json").read_text())
    assert meta["label_scale"]["method"] == "standard"
    assert meta["label_scale"]["shift"] == pytest.approx(100.0)

    losses = []
    for batch_size in (1, 8):  # 21 rows: a short last batch at 8
        eval_cfg = compose("eval", f"model_dir={tmp_path / 'run' / 'model'}", *data[:1], f"data.eval_file={eval_file}",
                           f"batch_size={batch_size}", "print_config=false")
        evaluated = evaluate.main(eval_cfg, tmp_path / f"eval{batch_size}")
        losses.append(evaluated["eval"].pop("loss"))
        assert evaluated["eval"] == pytest.approx({k: v for k, v in metrics.items() if k != "loss"}, rel=1e-5)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)

    inputs = tmp_path / "inputs.csv"
    inputs.write_text("text\n" + "".join(f"{r['text']}\n" for r in records[:3]))
    predict_cfg = compose("predict", f"model_dir={tmp_path / 'run' / 'model'}", f"predict.input_file={inputs}")
    predict.main(predict_cfg, tmp_path / "predict")
    predicted = read_jsonl(tmp_path / "predict" / "predictions.jsonl")
    assert [p["prediction"] for p in predicted] == pytest.approx([r["prediction"] for r in records[:3]], rel=1e-5)


# ------------------------------------------------------------------ what does not apply
def test_classification_only_options_are_refused_in_one_line(tmp_path):
    train_file = tmp_path / "train.csv"
    train_file.write_text("text,label\n" + "".join(f"row {i},{i}\n" for i in range(8)))
    base = ["data=csv", "data.task=regression", f"data.train_file={train_file}", f"hydra.run.dir={tmp_path / 'run'}"]
    early_stopping = ["train.early_stopping.patience=2", "train.eval_steps=5", "data.validation_fraction=0.2"]
    cases = [
        (["train.class_weights=balanced"], "train.class_weights: applies to classification and ner"),
        (["train.loss=focal"], "train.loss: applies to classification and ner"),
        (["data.sampler=balanced"], "data.sampler: balanced applies to classification"),
        (["data.labels=[a,b]"], "data.labels: regression reads a number per row"),
        (["train.distill.teacher=" + str(tmp_path)], "train.distill.teacher: distillation covers"),
        (["train.self_training.rounds=1", "data.unlabeled_from_train=2"], "data.task: train.self_training labels"),
        (["strategy=zero_shot"], "needs data.task=classification"),
        ([*early_stopping, "train.early_stopping.metric=mse"], "train.early_stopping.metric"),
    ]
    for overrides, expected in cases:
        message = refused("train", *base, *overrides)
        assert expected in message, (overrides, message)
    for overrides in (["data.label_scale=minmax", "strategy=lora"],
                      [*early_stopping, "train.early_stopping.metric=pearson"]):
        preflight("train", *base, *overrides)
    assert "data.label_scale: rescales regression targets (got data.task=classification)" in refused(
        "train", "data.label_scale=standard", f"hydra.run.dir={tmp_path / 'run'}")


def test_the_report_shows_the_mean_predictor_as_the_baseline():
    from llmft.commands.report import baseline_value

    assert baseline_value({"primary_metric": "r2", "baseline": {"mean_prediction": 3.0, "mean_r2": -0.02}}) == -0.02
    assert baseline_value({"primary_metric": "accuracy", "baseline": {"majority_accuracy": 0.4}}) == 0.4
