"""``llmft report DIR``: one table (and a plot) comparing every run found under DIR.

A run is a folder with Hydra's ``.hydra/`` (or a results.json). Completed runs give their
primary metric on the validation split (what a sweep selects on) and on the held-out test split
(what to report), the majority-class baseline, parameter counts, throughput and the run's
warnings (one class predicted for everything, no better than the baseline; the plot marks those
runs with a red cross and draws the baseline). Runs without a completed results.json are listed
as failed, with the reason when the run gave one. Columns show the strategy and every override
that differs between the runs.

When a config ran with several seeds (``-m seed=1,2,3``), a second table groups the runs that
differ only by seed (equal resolved configs and input digests) and gives per config mean ± std,
n, a 95 % bootstrap CI, the mean costs and whether it differs from the best config by more than
the seed spread (SEED_NOTE); the plot then draws each config's mean with its CI.
Writes DIR/report.md and DIR/report.png and prints the table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from llmft.core.config import flatten
from llmft.runtime.layout import NOT_RUNS


def find_runs(root: Path) -> list[Path]:
    found = {p.parent.parent for p in root.rglob(".hydra/config.yaml")} | {p.parent for p in root.rglob("results.json")}
    # a staged run's stages/ (self-training rounds, PET patterns) and set-aside replaced/ runs are not runs of their own
    runs = [r for r in found if not set(NOT_RUNS) & set(r.relative_to(root).parts)]
    # numbered sweep folders in numeric order; named ones after them (never int against str)
    return sorted(runs, key=lambda r: [(0, int(p), "") if p.isdigit() else (1, 0, p)
                                       for p in r.relative_to(root).parts])


def read_run(run: Path) -> dict:
    overrides = []
    if (run / ".hydra" / "overrides.yaml").is_file():
        try:
            overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
        except (OSError, yaml.YAMLError):
            overrides = []  # a cut-off file: the run is still listed, without its overrides
        overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
    results, failure = _read_results(run / "results.json")
    if results is not None and results.get("status") != "completed":  # e.g. diverged: {"status": "failed", "reason"}
        failure, results = results.get("reason"), None
    strategy = results.get("strategy") if results else None
    config = {}
    if (run / ".hydra" / "config.yaml").is_file():
        try:
            config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            config = {}
        config = config if isinstance(config, dict) else {}
    if strategy is None:
        strategy = (config.get("strategy") or {}).get("name")
    pairs = (o.split("=", 1) for o in overrides if "=" in o and not o.startswith("hydra"))
    seed, identity, resolved = _identity(run, config)
    return {"path": run, "overrides": {key: _canonical(value) for key, value in pairs},
            "results": results, "strategy": strategy, "failure": failure, "command": _command(config, results),
            "seed": seed, "identity": identity, "config": resolved}


def _identity(run: Path, hydra_config: dict) -> tuple[object, str | None, dict]:
    """(seed, what the run computes apart from its seed, the resolved config). The identity is the
    resolved config (config.yaml; else Hydra's, resolved here) without ``seed`` and the keys set
    to ``${seed}``, plus the input digests of manifest.json (a run without one groups only with
    runs without one). Runs with equal identities differ only by seed. None: the run left no config."""
    import json

    from omegaconf import OmegaConf

    config = {}
    try:
        config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    except (OSError, yaml.YAMLError):
        config = {}
    if not isinstance(config, dict) or not config:
        try:  # a run that stopped before writing config.yaml
            config = OmegaConf.to_container(OmegaConf.create(hydra_config), resolve=True)
        except Exception:  # an interpolation that does not resolve here (${now:...}, env): as written
            config = hydra_config
    if not config:
        return None, None, {}
    flat = flatten(config)
    seeded = {k for k, v in flatten(hydra_config).items() if isinstance(v, str) and "${seed}" in v}
    seed = flat.pop("seed", None)
    identity = {k: v for k, v in flat.items() if k not in seeded}
    identity.update(_input_digests(run / "manifest.json"))
    return seed, json.dumps(identity, sort_keys=True, default=str), config


def _input_digests(manifest: Path) -> dict:
    """The input digests the run recorded in manifest.json ("inputs": core/digest.py's
    {"data.train_file#sha256": ..., "data.hub_name#revision": ...}); none for a run without one."""
    import json

    try:
        inputs = json.loads(manifest.read_text()).get("inputs") if manifest.is_file() else None
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in inputs.items() if "#" in str(k)} if isinstance(inputs, dict) else {}



def _read_results(path: Path) -> tuple[dict | None, str | None]:
    """A run's results.json (runtime/results.py: this release's schema and the layout before it);
    a cut-off, hand-edited or newer one makes the run failed, with the reason."""
    from llmft.runtime.results import load

    return load(path) if path.is_file() else (None, None)


def _command(config: dict, results: dict | None) -> str:
    """Which command made the run: train (and distill), eval, or another (predict, export, ...),
    from its config's sections, else from what its results hold."""
    from llmft.runtime.results import kind_of

    kind = kind_of(results) if results else None
    if "train" in config or kind in ("train", "pet_ensemble"):
        return "train"
    if ("model_dir" in config and "predict" not in config and "format" not in config and "variants" not in config) \
            or kind == "eval":
        return "eval"
    return "other" if config or results else "train"


def _canonical(value: str) -> str:
    """One spelling per value, so 5e-5 / 5e-05 and false / False compare equal across runs."""
    try:
        return format(float(value), "g")
    except ValueError:
        return value.lower() if value.lower() in ("true", "false") else value


def rows(runs: list[dict], root: Path) -> tuple[list[str], list[list[str]]]:
    swept = sorted({k for r in runs for k in r["overrides"]
                    if len({r2["overrides"].get(k) for r2 in runs}) > 1 and k.lstrip("+") != "strategy"})
    header = ["run", "strategy", *swept, "metric", "validation", "test", "baseline", "trainable params",
              "trainable %", "drift", "CKA", "runtime s", "tokens/s", "peak MB", "warnings", "status"]
    table = []
    for r in runs:
        res = r["results"] or {}
        train, params = res.get("train") or {}, res.get("params") or {}
        metric = res.get("primary_metric", "")
        value = (res.get("eval") or {}).get(metric)  # the held-out test split
        selected_on = (res.get("validation") or {}).get(metric)
        memory = res.get("memory", {})
        peak = memory.get("peak_gpu_mb", memory.get("peak_rss_mb"))
        retention = res.get("retention") or {}  # the forgetting report: weight drift, CKA
        name = str(r["path"].relative_to(root)) or "."
        table.append([
            f"{name} (eval of {res.get('model_dir', 'a saved model')})" if r.get("command") == "eval" else name,
            str(r["strategy"] or "?"),
            *[r["overrides"].get(k, "") for k in swept],
            metric, _num(selected_on, ".4f"), _num(value, ".4f"), _num(baseline_value(res), ".4f"),
            _num(params.get("trainable"), ",d"), _num(params.get("trainable_pct"), ".3f"),
            _num((retention.get("drift") or {}).get("total"), ".4f"), _num(retention.get("cka_last_hidden"), ".4f"),
            _num(train.get("runtime_s"), ".1f"), _num(train.get("tokens_per_s"), ",.0f"), _num(peak, ",.0f"),
            "; ".join(res.get("warnings") or []),
            "completed" if r["results"] else ("failed: " + r["failure"] if r["failure"] else "failed"),
        ])
    return header, table


def baseline_value(results: dict) -> float | None:
    """The primary metric of the trivial predictor (majority class / all-O; regression: the train
    mean; preference: the reference model's own), where the task has one."""
    baseline, metric = results.get("baseline") or {}, results.get("primary_metric")
    value = baseline.get(f"majority_{metric}")
    value = baseline.get(f"mean_{metric}") if value is None else value
    return baseline.get(metric) if value is None else value


def _num(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


# ----------------------------------------------------------------- seeds
SEED_RESAMPLES = 10_000  # bootstrap resamples of a config's per-seed values
ROW_RESAMPLES = 1_000  # bootstrap resamples of a single run's test rows
SLOW_ROW_RESAMPLES = 200  # the same where each resample goes through the task's metric function (NER)
ALPHA = 0.05  # Welch's t-test level of the "beyond seed spread" column
SPREAD = f"beyond seed spread (Welch p<{ALPHA:g})"
SEED_NOTE = (f"test: mean ± sample std (n-1) over the seeds; 95 % CI: percentile bootstrap of the mean over "
             f"the seeds ({SEED_RESAMPLES:,} resamples, seeded; it never reaches past the lowest and highest "
             f"seed, so with 2-3 seeds it is rough and too narrow), for one seed over the test rows of "
             f"predictions.jsonl, each resample scored again ({ROW_RESAMPLES:,} resamples; NER "
             f"{SLOW_ROW_RESAMPLES}); {SPREAD}: Welch's t-test of this config's per-seed test metrics against "
             f"the best config's (highest mean among configs with 2+ seeds), two-sided, no correction for "
             f"several comparisons; never with one seed. Costs are means over the completed seeds.")


def seed_groups(runs: list[dict]) -> list[list[dict]] | None:
    """The runs grouped by what they compute apart from the seed (``_identity``), in report order;
    None when no config ran with two seeds or more (the report is then the per-run table alone)."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["identity"] or f"run {r['path']}", []).append(r)
    return list(groups.values()) if any(len({r["seed"] for r in g}) > 1 for g in groups.values()) else None


def seed_rows(groups: list[list[dict]], root: Path) -> tuple[list[str], list[list[str]], list[dict]]:
    """One row per config: its per-seed metrics summarized (see SEED_NOTE); also each row's numbers
    for the plot."""
    import numpy as np

    every = [r for g in groups for r in g]
    swept = sorted({k for r in every for k in r["overrides"] if k.lstrip("+") not in ("strategy", "seed")
                    and len({r2["overrides"].get(k) for r2 in every}) > 1})
    stats = [_group_stats(g, root) for g in groups]
    contenders = [s for s in stats if len(s["test"]) >= 2]
    best = max(contenders, key=lambda s: np.mean(s["test"])) if contenders else None
    header = ["config", "runs", "seeds", "n", "metric", "validation", "test", "test 95% CI", "CI over", "baseline",
              "trainable params", "runtime s", "tokens/s", "peak MB", SPREAD, "warnings", "status"]
    table = []
    for g, s in zip(groups, stats):
        first = s["runs"][0] if s["runs"] else g[0]
        label = " ".join([str(first["strategy"] or "?"),
                          *[f"{k}={first['overrides'][k]}" for k in swept if k in first["overrides"]]])
        ci, over = s["ci"], s["ci_over"]
        table.append([
            label, ", ".join(str(r["path"].relative_to(root)) or "." for r in g),
            ",".join(str(r["seed"]) for r in s["runs"]), f"{len(s['runs'])} of {s['seeds']}" if
            len(s["runs"]) < s["seeds"] else str(len(s["runs"])), s["metric"] or "",
            _mean_std(s["validation"]), _mean_std(s["test"]),
            f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "", over,
            _num(_mean(s["baseline"]), ".4f"), _num(_mean(s["trainable"], int), ",d"),
            _num(_mean(s["runtime"]), ".1f"), _num(_mean(s["tokens_per_s"]), ",.0f"), _num(_mean(s["peak"]), ",.0f"),
            _beyond_spread(best, s), s["warnings"], s["status"],
        ])
        s["label"] = label
    return header, table, stats


def _group_stats(group: list[dict], root: Path) -> dict:
    """A config's completed seeds (the first completed run of each seed; a second run of the same
    config and seed is a repeat, not another sample) and their numbers."""
    import numpy as np

    runs, repeats = {}, []
    for r in group:
        if r["results"] is not None:
            if r["seed"] in runs:
                repeats.append(r)
            else:
                runs[r["seed"]] = r
    done = list(runs.values())
    metric = next((r["results"].get("primary_metric") for r in done), None)

    def values(get) -> list[float]:
        out = [get(r["results"]) for r in done]
        return [float(v) for v in out if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)]

    memory = lambda res: (res.get("memory") or {}).get("peak_gpu_mb", (res.get("memory") or {}).get("peak_rss_mb"))
    stats = {
        "runs": done, "seeds": len({r["seed"] for r in group}), "metric": metric,
        "test": values(lambda res: (res.get("eval") or {}).get(metric)),
        "validation": values(lambda res: (res.get("validation") or {}).get(metric)),
        "baseline": values(baseline_value),
        "trainable": values(lambda res: (res.get("params") or {}).get("trainable")),
        "runtime": values(lambda res: (res.get("train") or {}).get("runtime_s")),
        "tokens_per_s": values(lambda res: (res.get("train") or {}).get("tokens_per_s")),
        "peak": values(memory),
    }
    if len(stats["test"]) >= 2:
        stats["ci"] = _seed_ci(stats["test"])
        stats["ci_over"] = f"{len(stats['test'])} seeds ({SEED_RESAMPLES:,} resamples)"
    elif len(stats["test"]) == 1:
        stats["ci"], stats["ci_over"] = _row_ci(done[0], metric)
    else:
        stats["ci"], stats["ci_over"] = None, ""
    warned = [r for r in done if r["results"].get("warnings")]
    stats["warnings"] = f"{len(warned)} of {len(done)}: {warned[0]['results']['warnings'][0]}" if warned else ""
    failed = [r for r in group if r["results"] is None]
    notes = [f"{len(done)} of {stats['seeds']} seeds completed" if len(done) < stats["seeds"] else "completed"]
    notes += [f"failed: {r['path'].relative_to(root)}" + (f": {r['failure']}" if r["failure"] else "") for r in failed]
    if repeats:
        notes.append("repeats of a seed not counted: " + ", ".join(str(r["path"].relative_to(root)) for r in repeats))
    stats["status"] = "; ".join(notes)
    return stats


def _mean(values: list[float], cast=float):
    return cast(round(sum(values) / len(values)) if cast is int else sum(values) / len(values)) if values else None


def _mean_std(values: list[float]) -> str:
    """mean ± sample standard deviation (n-1); one value alone: itself."""
    import statistics

    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _seed_ci(values: list[float]) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of the per-seed values (scipy's, seeded)."""
    import numpy as np
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=np.float64)
    if np.ptp(data) == 0:  # every seed gave the same value: scipy calls that degenerate
        return float(data[0]), float(data[0])
    result = bootstrap((data,), np.mean, n_resamples=SEED_RESAMPLES, method="percentile", confidence_level=0.95,
                       rng=np.random.default_rng(0))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _row_ci(run: dict, metric: str) -> tuple[tuple[float, float] | None, str]:
    """One seed: the 95 % percentile bootstrap interval of the test metric over the run's test rows
    (predictions.jsonl, every resample scored again), or None and why not."""
    import json

    import numpy as np
    from scipy.stats import bootstrap

    results = run["results"]
    try:
        # split on \n only: texts may hold U+2028 or \x85, which splitlines() breaks at
        records = [json.loads(line) for line in (run["path"] / "predictions.jsonl").read_text(encoding="utf-8")
                   .split("\n") if line.strip()]
    except (OSError, ValueError):
        return None, "none: no readable predictions.jsonl"
    scorer, why = _rescorer(results.get("task"), records, metric, run["config"], results)
    if scorer is None:
        return None, f"none: {why}"
    statistic, vectorized, resamples = scorer
    everything = np.arange(len(records))
    reported = (results.get("eval") or {}).get(metric)
    whole = statistic(everything[None, :], axis=-1)[0] if vectorized else statistic(everything)
    if not isinstance(reported, (int, float)) or not abs(whole - reported) <= 1e-4:
        return None, "none: predictions.jsonl does not give the reported test metric"
    result = bootstrap((everything,), statistic, vectorized=vectorized, n_resamples=resamples, method="percentile",
                       confidence_level=0.95, rng=np.random.default_rng(0), batch=100)
    low, high = result.confidence_interval.low, result.confidence_interval.high
    if not (np.isfinite(low) and np.isfinite(high)):
        return None, "none: the metric is undefined on resampled rows"
    return (float(low), float(high)), f"{len(records):,} test rows ({resamples:,} resamples)"


def _rescorer(task: str | None, records: list[dict], metric: str, config: dict, results: dict):
    """((statistic over row indices, vectorized, resamples), "") for the rows predictions.jsonl can
    score again, else (None, why). Classification's accuracy and macro-F1 and regression's errors
    and R^2 are computed for all resamples at once with numpy (the task's sklearn functions take
    seconds per thousand resamples; _row_ci checks the result equals the reported value on all
    rows); any other metric goes through the task's own function, row set by row set."""
    import numpy as np
    from omegaconf import OmegaConf

    from llmft.tasks import TASKS

    if task not in ("classification", "ner", "regression"):
        return None, f"{task or 'this'} task's rows are not rescored (one seed; run more seeds)"
    if not records or any("label" not in r or "prediction" not in r for r in records):
        return None, "predictions.jsonl has rows without a gold label"
    data_cfg = OmegaConf.create((config or {}).get("data") or {})
    if task == "regression":
        from llmft.tasks.regression import scores

        gold = np.asarray([r["label"] for r in records], dtype=np.float64)
        predicted = np.asarray([r["prediction"] for r in records], dtype=np.float64)
        if metric in ("r2", "mse", "rmse", "mae"):
            return (lambda idx, axis=-1: _regression_metric(metric, gold[idx], predicted[idx]), True,
                    ROW_RESAMPLES), ""
        return (lambda idx: _finite(scores(predicted[idx], gold[idx]).get(metric)), False, ROW_RESAMPLES), ""
    if task == "ner":
        if not data_cfg:
            return None, "the run's config is missing"
        tagger = TASKS.get("ner")(data_cfg)
        gold, predicted = [r["label"] for r in records], [r["prediction"] for r in records]
        return (lambda idx: _finite(tagger.scores([gold[i] for i in idx], [predicted[i] for i in idx]).get(metric)),
                False, SLOW_ROW_RESAMPLES), ""
    labels = list(((results.get("eval") or {}).get("per_class") or {})) or list(data_cfg.get("labels") or [])
    index = {name: i for i, name in enumerate(labels)}
    if not labels or any(r["label"] not in index or r["prediction"] not in index for r in records):
        return None, "the label set is not known"
    gold = np.asarray([index[r["label"]] for r in records])
    predicted = np.asarray([index[r["prediction"]] for r in records])
    if metric in ("accuracy", "macro_f1"):
        return (lambda idx, axis=-1: _class_metric(metric, gold[idx], predicted[idx], len(labels)), True,
                ROW_RESAMPLES), ""
    classifier = TASKS.get("classification")(data_cfg, labels)
    scores_ = np.eye(len(labels))[predicted]  # the predicted class scores highest
    return (lambda idx: _finite(classifier.metrics(scores_[idx], gold[idx]).get(metric)), False, SLOW_ROW_RESAMPLES), ""


def _class_metric(metric: str, gold, predicted, classes: int):
    """accuracy or macro-F1 (sklearn's: every label counts, an F1 with no support and no
    prediction is 0) of each row of (resamples, rows) label ids, from its confusion counts."""
    import numpy as np

    if metric == "accuracy":
        return (gold == predicted).mean(-1)
    sets = gold.shape[0]
    codes = (gold * classes + predicted) + (np.arange(sets) * classes * classes)[:, None]
    confusion = np.bincount(codes.ravel(), minlength=sets * classes * classes).reshape(sets, classes, classes)
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    denominator = confusion.sum(1) + confusion.sum(2)  # 2 tp + fp + fn
    f1 = np.divide(2 * hits, denominator, out=np.zeros(hits.shape), where=denominator > 0)
    return f1.mean(-1)


def _regression_metric(metric: str, gold, predicted):
    """r2, mse, rmse or mae (sklearn's definitions) of each row of (resamples, rows) values."""
    import numpy as np

    error = predicted - gold
    if metric == "mae":
        return np.abs(error).mean(-1)
    mse = (error ** 2).mean(-1)
    if metric != "r2":
        return mse if metric == "mse" else np.sqrt(mse)
    total = ((gold - gold.mean(-1, keepdims=True)) ** 2).mean(-1)
    return np.where(total > 0, 1 - mse / np.where(total > 0, total, 1), np.nan)


def _finite(value) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")


def _beyond_spread(best: dict | None, stats: dict) -> str:
    """Whether this config's test metric differs from the best config's by more than their seed
    spread: Welch's t-test (scipy) at ALPHA, with 2+ seeds on each side."""
    import numpy as np
    from scipy.stats import ttest_ind

    if best is None:
        return "n/a: no config has 2 seeds"
    if stats is best:
        return "best"
    if len(stats["test"]) < 2:
        return "n/a: one seed"
    if np.ptp(best["test"]) == 0 and np.ptp(stats["test"]) == 0:
        return "n/a: no seed spread"
    p = float(ttest_ind(best["test"], stats["test"], equal_var=False).pvalue)
    return f"yes (p={p:.3f})" if p < ALPHA else f"no (p={p:.2f})"


def write_markdown(path: Path, header: list[str], table: list[list[str]], seeds: tuple | None = None) -> None:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    if seeds:  # the per-config table after the per-run one
        seed_header, seed_table = seeds
        lines += ["", "## Per config, over seeds", "", SEED_NOTE, "",
                  "| " + " | ".join(seed_header) + " |", "|" + "---|" * len(seed_header)]
        lines += ["| " + " | ".join(row) + " |" for row in seed_table]
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, runs: list[dict], header: list[str], table: list[list[str]],
               seed_stats: list[dict] | None = None) -> None:
    """Each run's test metric against its trainable parameters; with seeds, each config's mean with
    its 95 % CI as error bars instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    swept = header[2:header.index("metric")]
    metric = next((r["results"].get("primary_metric") for r in runs if r["results"]), None) or "metric"
    baselines = set()
    for s in seed_stats or []:
        if not s["test"] or not s["trainable"]:
            continue  # no completed seed, or an eval run (no parameter count)
        x, y = _mean(s["trainable"]), _mean(s["test"])
        low, high = s["ci"] or (y, y)
        ax.errorbar(x, y, yerr=[[y - low], [high - y]], fmt="x" if s["warnings"] else "o", capsize=4,
                           color="red" if s["warnings"] else None)
        ax.annotate(f"{'! ' if s['warnings'] else ''}{s['label']} (n={len(s['test'])})", (x, y),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
        baselines.update(round(v, 6) for v in s["baseline"][:1])
    for r, row in zip(runs if seed_stats is None else [], table):
        if not r["results"]:
            continue
        x = (r["results"].get("params") or {}).get("trainable")
        y = (r["results"].get("eval") or {}).get(metric)
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            continue  # an eval run (no parameter count), or a run of another task's metric
        label = " ".join([row[1], *[f"{k}={v}" for k, v in zip(swept, row[2:2 + len(swept)]) if v]])
        if r["results"].get("warnings"):  # learned nothing useful: a red cross and a "!"
            ax.scatter(x, y, marker="x", color="red")
            label = f"! {label}"
        else:
            ax.scatter(x, y)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if baseline_value(r["results"]) is not None:
            baselines.add(round(baseline_value(r["results"]), 6))
    for i, value in enumerate(sorted(baselines)):
        ax.axhline(value, color="gray", linestyle="--", linewidth=1,
                   label="baseline (majority class; regression: the mean)" if i == 0 else None)
    if seed_stats is not None:  # what the bars are, in the legend
        ax.errorbar([], [], yerr=[], fmt="o", capsize=4, color="gray",
                    label="mean over seeds; bars: 95 % bootstrap CI (over seeds; one seed: over test rows)")
    if baselines or seed_stats is not None:
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{metric} on the held-out test split" + (" (mean over seeds)" if seed_stats is not None else ""))
    ax.set_title(("mean " if seed_stats is not None else "") + "test metric against trainable parameters "
                 "(! = no better than the baseline or one class)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="llmft report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a multirun folder, an outputs folder, or any folder of runs")
    parser.add_argument("--out", type=Path, default=None, help="where report.md/png go (default: DIR)")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    runs = [read_run(r) for r in find_runs(root)] if root.is_dir() else []
    others = [r for r in runs if r["command"] == "other"]
    runs = [r for r in runs if r["command"] != "other"]
    if others:  # predict, export, bench-infer, merge-adapters: no trained model's metrics to compare
        import sys

        print(f"llmft: skipped {len(others)} runs of other commands (predict, export, ...): "
              f"{', '.join(str(r['path'].relative_to(root)) for r in others[:5])}", file=sys.stderr)
    if not runs:
        import sys

        print(f"llmft: error: no runs under {args.dir} (a run folder has .hydra/ or results.json)", file=sys.stderr)
        return 2
    out = (args.out or root).resolve()
    from llmft.core.errors import UserError
    from llmft.runtime.ownership import check_report_out

    try:  # report.md and report.png replace only llmft report's own
        check_report_out(out)
    except UserError as err:
        import sys

        print(f"llmft: error: {err}", file=sys.stderr)
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file on its path, no permission
        import sys

        print(f"llmft: error: llmft report --out {out}: cannot create the folder ({err.strerror or err})",
              file=sys.stderr)
        return 2
    header, table = rows(runs, root)
    groups = seed_groups(runs)
    seed_header, seed_table, seed_stats = seed_rows(groups, root) if groups else (None, None, None)
    write_markdown(out / "report.md", header, table, (seed_header, seed_table) if groups else None)
    write_plot(out / "report.png", runs, header, table, seed_stats)

    from rich.console import Console
    from rich.table import Table

    view = Table(title=f"{len(runs)} runs under {root}", title_justify="left")
    for name in header:
        view.add_column(name, justify="right" if name not in ("run", "strategy", "metric", "warnings", "status") else "left")
    for row in table:
        view.add_row(*row)
    Console(width=200).print(view)
    if groups:
        view = Table(title=f"{len(groups)} configs over seeds", title_justify="left", caption=SEED_NOTE,
                     caption_justify="left")
        for name in seed_header:
            view.add_column(name, justify="left" if name in ("config", "runs", "seeds", "metric", "CI over", SPREAD,
                                                             "warnings", "status") else "right")
        for row in seed_table:
            view.add_row(*row)
        Console(width=200).print(view)
    print(f"wrote {out / 'report.md'} and {out / 'report.png'}")
    return 0
