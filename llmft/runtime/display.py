"""What the terminal shows: the composed config at start, a results table at the end."""
from __future__ import annotations

from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

console = Console(stderr=False)


def print_config(cfg, groups=("model", "data", "strategy", "hardware", "logger", "train")) -> None:
    """The config as a tree (secrets from the environment shown as their ${oc.env:...})."""
    import yaml

    from llmft.core.redact import redacted

    plain = redacted(cfg)
    tree = Tree("config", guide_style="dim")
    for group in [g for g in groups if g in plain] + [k for k in plain if k not in groups]:
        node = plain[group]
        if not isinstance(node, dict):
            tree.add(f"[bold]{group}[/bold]: {node}")
            continue
        text = yaml.safe_dump(node, sort_keys=False, allow_unicode=True).rstrip()
        tree.add(f"[bold]{group}[/bold]").add(Syntax(text, "yaml", background_color="default"))
    console.print(tree)


def print_results(results: dict) -> None:
    metrics = {k: v for k, v in results["eval"].items() if isinstance(v, (int, float))}
    table = Table(title=f"results: {results['run_dir']}", title_justify="left",
                  caption="eval: the held-out test split; validation: the split sweeps select on", caption_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(f"eval {name}", _fmt(value))
    baseline = dict(results.get("baseline", {}))
    if "majority_accuracy" in baseline:
        label = baseline.pop("majority_label", "?")
        table.add_row(f"majority-class baseline accuracy (always '{label}')", _fmt(baseline.pop("majority_accuracy")))
    for name, value in baseline.items():
        table.add_row(f"baseline {name}", _fmt(value))
    train = results.get("train")
    if train:
        table.add_row("train runtime", f"{train['runtime_s']:.1f} s")
        table.add_row("train tokens/s", f"{train['tokens_per_s']:.0f}")
        if train.get("mfu") is not None:  # real tokens: padding is work, not model FLOPs
            table.add_row("real tokens / processed", f"{train['real_token_fraction']:.1%}")
            table.add_row("MFU (model FLOP/s / peak)", f"{train['mfu']:.1%}")
    params = results.get("params")
    if params:
        table.add_row("trainable params", f"{params['trainable']:,} ({params['trainable_pct']:.2f} %)")
    table.add_row("eval examples", str(results["num_eval_examples"]))
    validation = results.get("validation")
    if validation and results.get("primary_metric") in validation:
        metric = results["primary_metric"]
        table.add_row(f"validation {metric} (what sweeps select on)", _fmt(validation[metric]))
    perturbed = results.get("perturbed")  # llmft eval eval.perturb=...
    if perturbed and results.get("primary_metric") in perturbed["metrics"]:
        metric = results["primary_metric"]
        table.add_row(f"eval {metric}, {perturbed['method']} at rate {perturbed['rate']:g}",
                      _fmt(perturbed["metrics"][metric]))
    console.print(table)
    for warning in results.get("warnings") or []:
        console.print(f"[bold yellow]warning:[/] {warning}")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
