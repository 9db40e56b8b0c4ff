"""``llmft report DIR``: one table (and a plot) comparing every run found under DIR.

A run is a folder with Hydra's ``.hydra/`` (or a results.json). Completed runs give their
primary metric on the validation split (what a sweep selects on) and on the held-out test split
(what to report), the majority-class baseline, parameter counts, throughput and the run's
warnings (one class predicted for everything, no better than the baseline; the plot marks those
runs with a red cross and draws the baseline). Runs without a completed results.json are listed
as failed, with the reason when the run gave one. Columns show the strategy and every override
that differs between the runs.
Writes DIR/report.md and DIR/report.png and prints the table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from llmft.runtime.layout import NOT_RUNS


def find_runs(root: Path) -> list[Path]:
    found = {p.parent.parent for p in root.rglob(".hydra/config.yaml")} | {p.parent for p in root.rglob("results.json")}
    # a staged run's stages/ (self-training rounds, PET patterns) and set-aside replaced/ runs are not runs of their own
    runs = [r for r in found if not set(NOT_RUNS) & set(r.relative_to(root).parts)]
    return sorted(runs, key=lambda r: [int(p) if p.isdigit() else p for p in r.relative_to(root).parts])


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
    return {"path": run, "overrides": {key: _canonical(value) for key, value in pairs},
            "results": results, "strategy": strategy, "failure": failure, "command": _command(config, results)}


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
    mean), where the task has one."""
    baseline, metric = results.get("baseline") or {}, results.get("primary_metric")
    value = baseline.get(f"majority_{metric}")
    return baseline.get(f"mean_{metric}") if value is None else value


def _num(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def write_markdown(path: Path, header: list[str], table: list[list[str]]) -> None:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, runs: list[dict], header: list[str], table: list[list[str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    swept = header[2:header.index("metric")]
    metric = next((r["results"].get("primary_metric") for r in runs if r["results"]), None) or "metric"
    baselines = set()
    for r, row in zip(runs, table):
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
    if baselines:
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{metric} on the held-out test split")
    ax.set_title("test metric against trainable parameters (! = no better than the baseline or one class)")
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
    write_markdown(out / "report.md", header, table)
    write_plot(out / "report.png", runs, header, table)

    from rich.console import Console
    from rich.table import Table

    view = Table(title=f"{len(runs)} runs under {root}", title_justify="left")
    for name in header:
        view.add_column(name, justify="right" if name not in ("run", "strategy", "metric", "warnings", "status") else "left")
    for row in table:
        view.add_row(*row)
    Console(width=200).print(view)
    print(f"wrote {out / 'report.md'} and {out / 'report.png'}")
    return 0
