"""`llmft report` over seeds: runs that differ only by seed form one config with mean ± std, n, a
95 % bootstrap CI, mean costs and whether it differs from the best config beyond the seed spread.
Run folders are written by hand here (results.json through the schema, Hydra's .hydra/ files,
the resolved config.yaml, predictions.jsonl), so every expectation is worked out by hand."""
from __future__ import annotations

import itertools
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from llmft.commands import report
from llmft.runtime import results

LABELS = ["negative", "neutral", "positive"]


def config(strategy: str, seed: int, lr: float = 5e-5, **data) -> dict:
    return {"model": {"name": "tiny-bert"}, "data": {"name": "tiny", "task": "classification", "labels": LABELS,
                                                     "split_seed": 1234, **data},
            "strategy": {"name": strategy, "lr": lr}, "train": {"lr": lr, "batch_size": 8}, "seed": seed}


def make_run(path: Path, strategy: str, seed: int, test: float | None, validation: float | None = None, *,
             lr: float = 5e-5, overrides: list[str] | None = None, digest: str | None = None,
             hydra_config: dict | None = None, predictions: list[dict] | None = None, warnings=(),
             runtime: float = 10.0, trainable: int = 100, task: str = "classification", metric: str = "accuracy",
             **data) -> Path:
    """A run folder as `llmft train` leaves it (test=None: a run that died before results.json)."""
    (path / ".hydra").mkdir(parents=True)
    resolved = config(strategy, seed, lr, **data)
    resolved["data"]["task"] = task
    (path / "config.yaml").write_text(yaml.safe_dump(resolved))
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(hydra_config or resolved))
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides or [f"seed={seed}",
                                                                                f"+strategy={strategy}"]))
    if digest:
        manifest = {"seeds": {"seed": seed}, "inputs": {"data.train_file#sha256": digest}}
        (path / "manifest.json").write_text(json.dumps(manifest))
    if predictions is not None:
        (path / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in predictions),
                                                encoding="utf-8")
    if test is None:
        return path
    record = results.completed(
        "train", run_dir=str(path), task=task, data="tiny", strategy=strategy, primary_metric=metric,
        num_eval_examples=4, eval={metric: test}, baseline={f"majority_{metric}": 0.4}, warnings=list(warnings),
        fingerprint=f"{seed:016x}", experiment="e", model="tiny-bert", seed=seed, num_train_examples=8, aux=None,
        data_report={}, num_validation_examples=4 if validation is not None else 0,
        validation={metric: validation} if validation is not None else None,
        train={"steps": 2, "runtime_s": runtime, "tokens_per_s": 1000.0 * seed}, hardware={"name": "cpu"},
        memory={"peak_rss_mb": 500.0 + seed}, params={"trainable": trainable, "total": 1000, "trainable_pct": 10.0},
        strategy_report={}, retention=None, reevaluated=False, wall_time_s=1.0)
    (path / "results.json").write_text(json.dumps(record))
    return path


def summary(root: Path) -> tuple[list[str], dict[str, dict]]:
    """The per-config table, as {config label: {column: cell}}."""
    runs = [report.read_run(r) for r in report.find_runs(root)]
    groups = report.seed_groups(runs)
    assert groups is not None
    header, table, _ = report.seed_rows(groups, root)
    return header, {row[0]: dict(zip(header, row)) for row in table}


def sweep(root: Path, values: dict[str, list[float]]) -> None:
    """`-m seed=1,2,3 +strategy=...`: Hydra numbers the runs seed-major, like the real sweep."""
    num = 0
    for i, seed in enumerate((1, 2, 3)):
        for strategy, tests in values.items():
            if i < len(tests):
                make_run(root / str(num), strategy, seed, tests[i], validation=tests[i] - 0.05)
                num += 1


# ------------------------------------------------------------------ grouping
def test_mean_std_and_n_by_hand(tmp_path):
    sweep(tmp_path, {"full": [0.70, 0.71, 0.72], "lora": [0.60, 0.64, 0.62]})
    header, rows = summary(tmp_path)
    assert set(rows) == {"full", "lora"}
    full, lora = rows["full"], rows["lora"]
    assert full["test"] == "0.7100 ± 0.0100" and lora["test"] == "0.6200 ± 0.0200"  # sample std (n-1)
    assert full["validation"] == "0.6600 ± 0.0100"
    assert full["n"] == "3" and full["seeds"] == "1,2,3" and full["runs"] == "0, 2, 4"
    assert full["tokens/s"] == "2,000" and full["peak MB"] == "502" and full["runtime s"] == "10.0"  # means
    assert full["trainable params"] == "100" and full["baseline"] == "0.4000"
    assert full["CI over"] == "3 seeds (10,000 resamples)" and full["status"] == "completed"


def test_only_the_seed_is_ignored(tmp_path):
    make_run(tmp_path / "a1", "lora", 1, 0.7)
    make_run(tmp_path / "a2", "lora", 2, 0.8)
    # the same overrides, another resolved value (e.g. a strategy default edited between runs)
    make_run(tmp_path / "b1", "lora", 3, 0.9, lr=1e-3)
    # a key set to ${seed} changes with the seed: those runs differ only by seed too
    for name, seed in (("c1", 4), ("c2", 5)):
        hydra = config("lora", seed)
        hydra["data"]["split_seed"] = "${seed}"
        make_run(tmp_path / name, "lora", seed, 0.75, hydra_config=hydra, split_seed=seed)
    runs = [report.read_run(r) for r in report.find_runs(tmp_path)]
    groups = report.seed_groups(runs)
    assert [[r["path"].name for r in g] for g in groups] == [["a1", "a2"], ["b1"], ["c1", "c2"]]


def test_the_composed_train_config_differs_by_seed_only_in_seed(tmp_path):
    """What `llmft train -m seed=1,2 +strategy=full,lora` writes into its run folders (Hydra's
    config and the resolved config.yaml), composed here: two configs of two seeds each."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from llmft.cli.table import config_dir
    from llmft.cli.validate import register_configs
    from llmft.core.redact import to_yaml

    register_configs()
    for num, (seed, strategy) in enumerate((s, x) for s in (1, 2) for x in ("full", "lora")):
        with initialize_config_dir(config_dir(), version_base="1.3", job_name="train"):
            cfg = compose("train", overrides=[f"seed={seed}", f"strategy={strategy}"])
        run = tmp_path / str(num)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}", f"+strategy={strategy}"]))
        (run / "config.yaml").write_text(to_yaml(cfg))
    runs = [report.read_run(r) for r in report.find_runs(tmp_path)]
    assert [[r["path"].name for r in g] for g in report.seed_groups(runs)] == [["0", "2"], ["1", "3"]]


def test_another_data_digest_is_another_config(tmp_path):
    make_run(tmp_path / "0", "full", 1, 0.7, digest="aa")
    make_run(tmp_path / "1", "full", 2, 0.8, digest="aa")
    make_run(tmp_path / "2", "full", 3, 0.9, digest="bb")  # the data file was rewritten in between
    runs = [report.read_run(r) for r in report.find_runs(tmp_path)]
    assert [[r["path"].name for r in g] for g in report.seed_groups(runs)] == [["0", "1"], ["2"]]


def test_one_seed_per_config_reports_as_before(tmp_path):
    make_run(tmp_path / "0", "full", 42, 0.7, lr=1e-3, overrides=["+strategy=full", "train.lr=1e-3"])
    make_run(tmp_path / "1", "lora", 42, 0.6, lr=1e-3, overrides=["+strategy=lora", "train.lr=1e-3"])
    make_run(tmp_path / "2", "lora", 42, 0.65, lr=5e-3, overrides=["+strategy=lora", "train.lr=5e-3"])
    runs = [report.read_run(r) for r in report.find_runs(tmp_path)]
    assert report.seed_groups(runs) is None
    assert report.main([str(tmp_path)]) == 0
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert len(lines) == 5 and "Per config" not in "\n".join(lines)  # the per-run table alone, as before
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:3] == ["run", "strategy", "train.lr"]
    body = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    assert [(b["run"], b["strategy"], b["train.lr"], b["test"]) for b in body] == [
        ("0", "full", "0.001", "0.7000"), ("1", "lora", "0.001", "0.6000"), ("2", "lora", "0.005", "0.6500")]


def test_failed_seed_and_repeated_seed(tmp_path):
    make_run(tmp_path / "0", "full", 1, 0.70)
    make_run(tmp_path / "1", "full", 2, 0.72)
    make_run(tmp_path / "2", "full", 3, None)  # died before results.json
    make_run(tmp_path / "3", "full", 1, 0.99)  # the same config and seed again: not another sample
    _, rows = summary(tmp_path)
    full = rows["full"]
    assert full["n"] == "2 of 3" and full["test"] == "0.7100 ± 0.0141"
    assert "2 of 3 seeds completed" in full["status"] and "failed: 2" in full["status"]
    assert "repeats of a seed not counted: 3" in full["status"]


# ------------------------------------------------------------------ intervals and the verdict
def test_seed_bootstrap_is_seeded_and_holds_the_mean():
    values = [0.70, 0.74, 0.71]
    low, high = report._seed_ci(values)
    assert (low, high) == report._seed_ci(values)
    assert min(values) - 1e-12 <= low < statistics.mean(values) < high <= max(values) + 1e-12
    # percentile bootstrap of 3 values: the bounds are means of resamples (3 of the values / 3)
    means = [sum(c) / 3 for c in itertools.combinations_with_replacement(values, 3)]
    assert min(abs(low - m) for m in means) < 1e-9 and min(abs(high - m) for m in means) < 1e-9
    assert report._seed_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)


def welch_t(a: list[float], b: list[float]) -> float:
    return (statistics.mean(a) - statistics.mean(b)) / math.sqrt(statistics.variance(a) / len(a)
                                                                  + statistics.variance(b) / len(b))


@pytest.mark.parametrize("other, verdict", [
    ([0.60, 0.61, 0.62], "yes"),  # 0.2 apart, spreads of 0.01: far beyond them
    ([0.78, 0.68, 0.88], "no"),  # 0.02 apart, spreads of 0.1: within them
])
def test_beyond_the_seed_spread_both_ways(tmp_path, other, verdict):
    best = [0.80, 0.70, 0.90] if verdict == "no" else [0.80, 0.81, 0.82]
    sweep(tmp_path, {"full": best, "lora": other})
    _, rows = summary(tmp_path)
    assert rows["full"][report.SPREAD] == "best"
    cell = rows["lora"][report.SPREAD]
    assert cell.split()[0] == verdict
    from scipy.stats import t

    a, b = best, other  # the p-value from the Welch statistic and its Welch-Satterthwaite df, by hand
    va, vb = statistics.variance(a) / 3, statistics.variance(b) / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    p = 2 * t.sf(abs(welch_t(a, b)), df)
    assert float(cell.split("p=")[1].rstrip(")")) == pytest.approx(p, abs=1e-3 if p < 0.05 else 1e-2)


def test_one_seed_is_never_called_better_or_worse(tmp_path):
    sweep(tmp_path, {"full": [0.80, 0.81, 0.82], "lora": [0.10]})  # lora ran one seed only
    _, rows = summary(tmp_path)
    assert rows["lora"][report.SPREAD] == "n/a: one seed" and rows["full"][report.SPREAD] == "best"
    make_run(tmp_path / "x", "adapter", 1, 0.99)  # the highest value, but one seed: not the best
    _, rows = summary(tmp_path)
    assert rows["full"][report.SPREAD] == "best" and rows["adapter"][report.SPREAD] == "n/a: one seed"


def predictions(gold: list[str], predicted: list[str]) -> list[dict]:
    # a tweet may hold a line separator of its own (U+2028, \x85): still one row
    return [{"text": f"t{i} \u2028 \x85", "label": g, "prediction": p, "confidence": 0.9}
            for i, (g, p) in enumerate(zip(gold, predicted))]


def test_one_seed_bootstraps_its_test_rows(tmp_path):
    rng = np.random.default_rng(3)
    gold = [LABELS[i] for i in rng.integers(0, 3, 200)]
    predicted = [g if rng.random() < 0.7 else LABELS[(LABELS.index(g) + 1) % 3] for g in gold]
    accuracy = sum(g == p for g, p in zip(gold, predicted)) / 200
    sweep(tmp_path, {"full": [0.80, 0.81, 0.82]})
    make_run(tmp_path / "single", "lora", 1, accuracy, predictions=predictions(gold, predicted))
    _, rows = summary(tmp_path)
    lora = rows["lora"]
    assert lora["CI over"] == "200 test rows (1,000 resamples)" and lora["test"] == f"{accuracy:.4f}"
    low, high = (float(v) for v in lora["test 95% CI"].strip("[]").split(","))
    se = math.sqrt(accuracy * (1 - accuracy) / 200)  # the normal interval of a proportion, by hand
    assert low < accuracy < high
    assert low == pytest.approx(accuracy - 1.96 * se, abs=0.01)
    assert high == pytest.approx(accuracy + 1.96 * se, abs=0.01)
    assert summary(tmp_path)[1]["lora"]["test 95% CI"] == lora["test 95% CI"]  # seeded


def test_row_bootstrap_of_macro_f1(tmp_path):
    gold = ["negative", "neutral", "positive", "positive"] * 10
    predicted = ["negative", "positive", "positive", "positive"] * 10
    from sklearn.metrics import f1_score

    value = f1_score(gold, predicted, labels=LABELS, average="macro", zero_division=0)
    run = report.read_run(make_run(tmp_path / "r", "full", 1, value, metric="macro_f1",
                                   predictions=predictions(gold, predicted)))
    run["results"]["eval"]["per_class"] = {name: {} for name in LABELS}
    ci, over = report._row_ci(run, "macro_f1")
    assert over == "40 test rows (1,000 resamples)" and ci[0] < value < ci[1]


@pytest.mark.parametrize("task, rows, why", [
    ("sft", [{"prompt": "p", "prediction": "x", "label": "y"}], "none: sft task's rows are not rescored"),
    ("classification", [{"text": "t", "prediction": "negative"}], "none: predictions.jsonl has rows without a gold"),
    ("classification", predictions(["negative"] * 4, ["neutral"] * 4), "none: predictions.jsonl does not give"),
    ("classification", None, "none: no readable predictions.jsonl"),
])
def test_no_row_interval_and_why(tmp_path, task, rows, why):
    run = report.read_run(make_run(tmp_path / "r", "full", 1, 0.5, task=task, predictions=rows))
    ci, over = report._row_ci(run, "accuracy")
    assert ci is None and over.startswith(why)


def test_regression_rows_rescored_with_r2(tmp_path):
    rng = np.random.default_rng(0)
    gold = rng.normal(size=100)
    predicted = gold + rng.normal(scale=0.5, size=100)
    from sklearn.metrics import r2_score

    r2 = float(r2_score(gold, predicted))
    rows = [{"text": "t", "label": float(g), "prediction": float(p)} for g, p in zip(gold, predicted)]
    run = report.read_run(make_run(tmp_path / "r", "full", 1, r2, task="regression", metric="r2", predictions=rows))
    ci, over = report._row_ci(run, "r2")
    assert over == "100 test rows (1,000 resamples)" and ci[0] < r2 < ci[1]


# ------------------------------------------------------------------ the command
def test_report_writes_both_tables_and_error_bars(tmp_path, capsys):
    sweep(tmp_path, {"full": [0.70, 0.71, 0.72], "lora": [0.60, 0.64, 0.62]})
    make_run(tmp_path / "6", "adapter", 1, 0.5, warnings=["predicts 'neutral' for all 4 eval examples"])
    assert report.main([str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    per_run, per_config = text.split("## Per config, over seeds")
    assert len(per_run.strip().splitlines()) == 2 + 7  # every run still has its row
    assert "Welch" in per_config and "10,000 resamples" in per_config
    table = [line for line in per_config.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3
    adapter = next(line for line in table if line.startswith("| adapter"))
    assert "1 of 1: predicts 'neutral'" in adapter and "n/a: one seed" in adapter
    assert (tmp_path / "report.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "3 configs over seeds" in out


def test_resampled_metrics_equal_the_tasks_own():
    """The numpy scoring of many resamples at once gives what the task's metric function gives."""
    from omegaconf import OmegaConf

    from llmft.tasks import TASKS
    from llmft.tasks.regression import scores

    rng = np.random.default_rng(1)
    gold, predicted = rng.integers(0, 4, 60), rng.integers(0, 3, 60)  # label 3 never predicted
    idx = rng.integers(0, 60, (5, 60))
    idx[0] = np.where(gold != 2, np.arange(60), 0)[np.argsort(gold == 2)]  # a resample short of a label
    task = TASKS.get("classification")(OmegaConf.create({"labels": list("abcd")}), list("abcd"))
    for metric in ("accuracy", "macro_f1"):
        fast = report._class_metric(metric, gold[idx], predicted[idx], 4)
        own = [task.metrics(np.eye(4)[predicted[i]], gold[i])[metric] for i in idx]
        assert fast == pytest.approx(own, abs=1e-12)
    y, f = rng.normal(size=60), rng.normal(size=60)
    for metric in ("r2", "mse", "rmse", "mae"):
        assert report._regression_metric(metric, y[idx], f[idx]) == pytest.approx(
            [scores(f[i], y[i])[metric] for i in idx], abs=1e-12)


def test_ner_rows_rescored_by_the_taggers_own_scorer(tmp_path):
    found = [{"tokens": ["Ann", "ran"], "label": ["B-PER", "O"], "prediction": ["B-PER", "O"]}] * 7
    missed = [{"tokens": ["Bob", "sat"], "label": ["B-PER", "O"], "prediction": ["O", "O"]}] * 3
    f1 = 2 * 1.0 * 0.7 / (1.0 + 0.7)  # entities: precision 7/7, recall 7/10
    run = report.read_run(make_run(tmp_path / "r", "full", 1, f1, task="ner", metric="f1", predictions=found + missed,
                                   labels=["O", "B-PER", "I-PER"]))
    ci, over = report._row_ci(run, "f1")
    assert over == "10 test rows (200 resamples)" and ci[0] < f1 < ci[1] <= 1.0
