"""``llmft bench-infer model_dir=RUN/model``: the inference variants of one trained model, measured
in one run on the same eval split against the fp32 original.

    model_dir -> fp32 model (adapters merged) -> each variant (an export format that bench-infer can
        time, converted by its entry in llmft/models/formats.py into a temp folder; ONNX ones run by
        ONNX Runtime with torch's thread count) and each student model -> size on disk, task metrics,
        latency p50/p95 at batch 1, throughput at batch_size -> the fastest row within
        accuracy_tolerance of fp32's primary metric, for this CPU (its name and flags beside it) ->
        table (printed), inference_report.md, results.json

Every variant sees the same tokenized examples in the same order; timings exclude warm-up.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path


from llmft.core.errors import UserError


def main(cfg, run_path: str | Path) -> dict:
    import torch

    from llmft.data.files import load_splits
    from llmft.runtime.display import console
    from llmft.artifacts import load_saved, read_metadata
    from llmft.models import formats
    from llmft.models.precision import size_on_disk, to_variant
    from llmft.artifacts import plain_model
    from llmft.tasks import TASKS, tasks_that

    torch.manual_seed(cfg.seed)
    model_dir = Path(cfg.model_dir)
    meta = read_metadata(model_dir)
    labelled = lambda t: t.logits in ("sequence", "token")  # noqa: E731  (scored by loop_metrics on logits)
    if not labelled(TASKS.get(meta["task"])) or meta.get("lm_kind"):
        raise UserError(f"model_dir={model_dir}: bench-infer measures {tasks_that(labelled)} models "
                        f"(got {meta.get('lm_kind') and 'a prompting run' or meta['task']})")
    task = TASKS.get(meta["task"]).from_metadata(cfg.data, meta)
    splits = load_splits(cfg.data, task)
    model, tokenizer = load_saved(model_dir, task, meta, trust_remote_code=cfg.trust_remote_code)
    reference = plain_model(model)
    if hasattr(reference, "peft_config"):
        raise UserError(f"model_dir={model_dir}: a '{meta.get('strategy')}' adapter does not merge into its base; "
                        f"bench-infer compares full models")
    eval_set = task.tokenize(splits["eval"], tokenizer)
    collate = task.collator(tokenizer)
    features = [eval_set[i] for i in range(len(eval_set))]

    example = {k: v for k, v in collate([dict(f) for f in features[:8]]).items() if k not in ("labels", "word_start")}
    # each candidate: folder -> the model to time, its weights saved into folder (for the size)
    candidates = [(v, lambda folder, v=v: formats.FORMATS[v].convert(reference, example, folder)
                   if v != formats.REFERENCE else saved(to_variant(reference, v), folder)) for v in cfg.variants]
    for student in cfg.students:  # distilled students and pruned models (llmft prune's folders)
        student_meta = read_metadata(Path(student))
        folder = Path(student).resolve()
        label = f"pruned ({folder.name})" if student_meta.get("pruned") else f"student ({folder.parent.name})"
        candidates.append((label,
                           lambda folder, s=student, m=student_meta: saved(plain_model(
                               load_saved(Path(s), task, m, trust_remote_code=cfg.trust_remote_code)[0]), folder)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in candidates:
            folder = Path(tmp) / name.replace(" ", "_")
            variant = make(folder).eval()
            row = {"variant": name, "size_mb": round(size_on_disk(folder) / 2**20, 2)}
            row.update(measure(variant, task, features, collate, cfg))
            rows.append(row)
            console.print(f"{name}: {row}")
    base = rows[0]
    for row in rows:
        row["throughput_x"] = round(row["throughput_ex_s"] / base["throughput_ex_s"], 2)
        row["metric_delta"] = round(row[task.primary_metric] - base[task.primary_metric], 4)
    from llmft.runtime.cpu_features import describe

    fastest = {**(choose(rows, cfg.accuracy_tolerance) or {}), "accuracy_tolerance": cfg.accuracy_tolerance,
               "metric": task.primary_metric, "batch_size": cfg.batch_size, "cpu": describe()}
    table = render(rows, task.primary_metric, task.loop_metric_names, fastest.get("variant"))
    summary = fastest_line(fastest, base["variant"])
    console.print(table)
    console.print(summary)
    from llmft.runtime.ownership import atomic_write

    run = Path(run_path)
    atomic_write(run / "inference_report.md",
        f"# Inference variants of {model_dir}\n\n{len(features)} eval examples; latency at batch 1 over "
        f"{cfg.latency_examples} examples, throughput at batch {cfg.batch_size}; "
        f"{torch.get_num_threads()} CPU threads.\n\n{table}\n\n{summary}\n")
    results = {"status": "completed", "model_dir": str(model_dir), "primary_metric": task.primary_metric,
               "eval_examples": len(features), "variants": rows, "fastest": fastest}
    from llmft.runtime.run_dir import dumps

    atomic_write(run / "results.json", dumps(results, indent=2) + "\n")
    return results


def saved(model, folder: Path):
    """``model``, its weights saved into ``folder`` as they are."""
    from llmft.models.precision import save_variant

    save_variant(model, "fp32", folder)
    return model


def runner(model, collate):
    """features -> (logits, labels) of ``model`` on one batch of them."""
    import torch

    device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else "cpu"
    inputs = ("input_ids", "attention_mask", "token_type_ids")

    def run(batch_features):
        batch = collate([dict(f) for f in batch_features])
        with torch.no_grad():
            return model(**{k: v.to(device) for k, v in batch.items() if k in inputs}).logits, batch["labels"]

    return run


def scores(model, task, features, collate, batch_size: int) -> tuple:
    """(the task's metrics, the logits) of ``model`` over ``features``, in order; token logits
    padded to one width (labels -100 there: not scored)."""
    import torch

    from transformers import EvalPrediction

    run = runner(model, collate)
    logits, labels = [], []
    for start in range(0, len(features), batch_size):
        out, gold = run(features[start:start + batch_size])
        logits += list(out.float().cpu())
        labels += list(gold)
    width = max(x.shape[0] for x in logits) if logits[0].dim() > 1 else None
    if width:  # token classification: pad every row to one width (-100: not scored)
        logits = [torch.nn.functional.pad(x, (0, 0, 0, width - x.shape[0])) for x in logits]
        labels = [torch.nn.functional.pad(y, (0, width - y.shape[0]), value=-100) for y in labels]
    logits = torch.stack(logits)
    return task.loop_metrics(EvalPrediction(predictions=logits.numpy(), label_ids=torch.stack(labels).numpy())), logits


def measure(model, task, features, collate, cfg) -> dict:
    run = runner(model, collate)
    metrics, _ = scores(model, task, features, collate, cfg.batch_size)  # metrics over the whole eval split

    singles = features[: cfg.latency_examples + 5]
    for f in singles[:5]:
        run([f])
    times = []
    for f in singles[5:]:
        start = time.perf_counter()
        run([f])
        times.append(1000 * (time.perf_counter() - start))
    batches = [features[s:s + cfg.batch_size] for s in range(0, min(len(features), cfg.throughput_examples),
                                                            cfg.batch_size)]
    run(batches[0])
    start = time.perf_counter()
    for b in batches:
        run(b)
    seconds = time.perf_counter() - start
    return {**{k: round(v, 4) for k, v in metrics.items()},
            "latency_p50_ms": round(statistics.median(times), 2),
            "latency_p95_ms": round(sorted(times)[max(0, int(0.95 * len(times)) - 1)], 2),
            "throughput_ex_s": round(sum(len(b) for b in batches) / seconds, 1)}


def choose(rows: list[dict], tolerance: float) -> dict | None:
    """The row with the highest throughput among those whose ``metric_delta`` (against the first,
    fp32) is within ``tolerance``: {"variant", "throughput_x", "metric_delta"}. Equal throughputs:
    the smaller |delta|, then the earlier row (fp32 before any variant). None: no rows."""
    within = [(i, r) for i, r in enumerate(rows) if abs(r["metric_delta"]) <= tolerance + 1e-12]  # rounded deltas
    if not within:
        return None
    _, best = min(within, key=lambda ir: (-ir[1]["throughput_ex_s"], abs(ir[1]["metric_delta"]), ir[0]))
    return {k: best[k] for k in ("variant", "throughput_x", "metric_delta")}


def fastest_line(fastest: dict, reference: str) -> str:
    cpu = fastest["cpu"]
    where = f"{cpu['name']} ({', '.join(cpu['flags']) or 'no AVX2'})"
    return (f"fastest within {fastest['accuracy_tolerance']} {fastest['metric']} of {reference} on {where}: "
            f"{fastest['variant']}, {fastest['throughput_x']:.2f}x {reference} at batch {fastest['batch_size']}, "
            f"{fastest['metric']} {fastest['metric_delta']:+.4f}")


def render(rows: list[dict], primary: str, metric_names, fastest: str | None = None) -> str:
    metrics = [m for m in metric_names if m in rows[0]]
    head = ["variant", "size MB", *metrics, f"d{primary}", "p50 ms (b=1)", "p95 ms (b=1)", "ex/s (b=32)", "x fp32",
            "fastest"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"], f"{r['size_mb']:.1f}", *(f"{r[m]:.4f}" for m in metrics), f"{r['metric_delta']:+.4f}",
                 f"{r['latency_p50_ms']:.2f}", f"{r['latency_p95_ms']:.2f}", f"{r['throughput_ex_s']:.1f}",
                 f"{r['throughput_x']:.2f}", "yes" if r["variant"] == fastest else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def validate(cfg) -> None:
    """llmft bench-infer's own knobs (torch-free)."""
    from llmft.core.errors import require, require_one_of
    from llmft.models import formats

    for variant in cfg.variants:
        require_one_of("variants", variant, formats.timed())
    entries = [formats.FORMATS[v] for v in cfg.variants if v != formats.REFERENCE]
    for entry in entries:
        if entry.tasks is not None:
            require(cfg.data.task in entry.tasks, "variants", f"{' and '.join(formats.same_tasks(entry))} run "
                    f"{' and '.join(entry.tasks)} models (this one is data.task={cfg.data.task})")
    for entry in entries:
        if entry.requires is not None:
            entry.requires(f"variants=[{entry.name}...]")
    for key in ("latency_examples", "throughput_examples", "batch_size"):
        require(cfg[key] >= 1, key, f"must be >= 1 (got {cfg[key]})")
    tolerance = cfg.accuracy_tolerance
    require(isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and 0 <= tolerance <= 1,
            "accuracy_tolerance", f"the largest |metric - fp32's| the fastest row may have, in [0, 1] "
            f"(got {tolerance})")
