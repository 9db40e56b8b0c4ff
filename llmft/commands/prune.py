"""``llmft prune model_dir=RUN/model prune.method=heads|ffn|magnitude prune.amount=X``: a pruned
copy of a fine-tuned BERT-family classifier or tagger (what is removed and how it is chosen:
llmft/models/pruning.py).

    output_dir checked (before anything loads) -> model_dir/llmft.json -> the saved model -> its
        metrics on check_examples eval inputs -> importance on training batches (heads, ffn) ->
        prune -> recovery fine-tuning (prune.finetune_steps) -> save into a temp folder beside
        output_dir -> reload it with llmft's loader -> its logits must equal the pruned model's ->
        metrics on the same eval inputs (reported beside the source's: pruning changes outputs,
        so no tolerance) -> swap it in

The output folder is an export's (commands/export.py): default RUN/pruned-<method>-<amount>
[-ft<steps>], it carries the ``.llmft-export`` marker and replaces only an earlier export there.
"""
from __future__ import annotations

import random
from pathlib import Path

from llmft.core.errors import UserError

RELOAD_TOLERANCE = 1e-5  # saved and reloaded: the same weights, so the same logits (x the logit scale)
INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")  # what the importance pass feeds


def default_name(p) -> str:
    return f"pruned-{p.method}-{p.amount:g}" + (f"-ft{p.finetune_steps}" if p.finetune_steps else "")


def main(cfg, run_path: str | Path) -> dict:
    import torch

    from llmft.artifacts import load_saved, read_metadata
    from llmft.commands.bench_infer import scores
    from llmft.commands.export import finish, output_folder, publish, staging
    from llmft.data.files import load_splits
    from llmft.models import pruning
    from llmft.models.precision import size_on_disk
    from llmft.runtime.display import console
    from llmft.runtime.ownership import atomic_write
    from llmft.runtime.run_dir import dumps
    from llmft.tasks import TASKS

    torch.manual_seed(cfg.seed)
    p = cfg.prune
    model_dir = Path(cfg.model_dir)
    meta = read_metadata(model_dir)
    out = output_folder(cfg.output_dir, model_dir, default_name(p), run_path, name="output_dir")
    task = TASKS.get(meta["task"]).from_metadata(cfg.data, meta)
    splits = load_splits(cfg.data, task)
    model, tokenizer = load_saved(model_dir, task, meta, trust_remote_code=cfg.trust_remote_code)
    collate = task.collator(tokenizer)
    checks = task.tokenize(splits["eval"].select(range(min(cfg.check_examples, len(splits["eval"])))), tokenizer)
    checks = [checks[i] for i in range(len(checks))]
    source_metrics, source_logits = scores(model, task, checks, collate, p.batch_size)
    before = {"parameters": pruning.count(model), "heads": pruning.heads_kept(model),
              "intermediate_size": model.config.intermediate_size}

    structured = p.method in ("heads", "ffn")
    train_set = training_rows(splits["train"], task, tokenizer, p, structured, cfg.seed)
    record = {"method": p.method, "amount": p.amount}
    masked = []
    if p.method == "magnitude":
        masked = pruning.magnitude(model, p.amount)
        record["scope"] = "each encoder Linear weight separately (L1, unstructured)"
    else:
        heads, channels = pruning.importance(model, importance_batches(train_set, collate, p))
        record.update(importance="taylor", importance_batches=p.importance_batches)
        if p.method == "heads":
            n = before["heads"][0]
            keep = pruning.keep_top(heads, n - pruning.removed(p.amount, n))
            pruning.prune_heads(model, keep)
            record["kept_heads"] = [k.tolist() for k in keep]  # indices of the source's heads, per layer
        else:
            n = before["intermediate_size"]
            pruning.prune_ffn(model, pruning.keep_top(channels, n - pruning.removed(p.amount, n)))
    if p.finetune_steps:
        record["finetune"] = finetune(model, tokenizer, task, train_set, cfg, Path(run_path))
    pruning.make_permanent(masked)
    model.eval()
    if p.method == "magnitude":
        record["sparsity"] = pruning.sparsity(model)
    after_heads = pruning.heads_kept(model)
    if min(after_heads) < model.config.num_attention_heads:
        record["heads"] = after_heads  # the shape artifacts.load_saved rebuilds
    if meta.get("pruned"):
        record["previous"] = meta["pruned"]
    record.update(parameters_before=before["parameters"], parameters_after=pruning.count(model),
                  heads_before=before["heads"], heads_after=after_heads,
                  intermediate_size_before=before["intermediate_size"],
                  intermediate_size_after=model.config.intermediate_size)

    with staging(out) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        saved_meta = {**meta, "strategy": "full", "pruned": record}
        finish(tmp, model_dir, saved_meta, "pruned")
        reloaded, _ = load_saved(tmp, task, read_metadata(tmp), trust_remote_code=cfg.trust_remote_code)
        pruned_metrics, pruned_logits = scores(model, task, checks, collate, p.batch_size)
        _, reloaded_logits = scores(reloaded, task, checks, collate, p.batch_size)
        scale = max(1.0, pruned_logits.abs().max().item())
        drift = (reloaded_logits - pruned_logits).abs().max().item()
        if drift > RELOAD_TOLERANCE * scale:
            raise UserError(f"prune check failed: the saved model reloads with logits {drift:.3g} away from the "
                            f"pruned model's; nothing was saved (output_dir is as it was)")
        primary = task.primary_metric
        check = {"examples": len(checks), "source": rounded(source_metrics), "pruned": rounded(pruned_metrics),
                 f"{primary}_delta": round(pruned_metrics[primary] - source_metrics[primary], 4),
                 "argmax_agreement": round(agreement(source_logits, pruned_logits), 4),
                 "max_abs_diff_reloaded": drift, "size_bytes_before": size_on_disk(model_dir),
                 "size_bytes_after": size_on_disk(tmp)}
        record["check"] = check
        finish(tmp, model_dir, saved_meta, "pruned")  # llmft.json again, with the check
        publish(tmp, out)

    shrink = record["parameters_after"] / record["parameters_before"]
    extra = (f"; {100 * record['sparsity']['encoder_linear_weights']:.1f}% of the encoder's Linear weights are zero "
             f"(dense kernels run no faster)" if p.method == "magnitude" else "")
    console.print(f"{p.method} pruning, amount {p.amount:g}: {record['parameters_after']:,} parameters "
                  f"({100 * shrink:.1f}% of {record['parameters_before']:,}){extra}; {primary} on {len(checks)} eval "
                  f"inputs {source_metrics[primary]:.4f} -> {pruned_metrics[primary]:.4f}\npruned model: {out}")
    result = {"status": "completed", "output_dir": str(out), "source": str(model_dir), **record}
    atomic_write(Path(run_path) / "prune.json", dumps(result, indent=2) + "\n")
    return result


def rounded(metrics: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


def agreement(a, b) -> float:
    """The share of predictions (sequences, or scored tokens) on which two models' argmax agree."""
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()


def training_rows(train, task, tokenizer, p, structured: bool, seed: int):
    """The training rows this command uses, tokenized: a seeded sample of the train split large
    enough for the importance batches and for each fine-tuning step to see new rows (the held-out
    split never chooses what is kept); None when nothing trains."""
    need = max(p.importance_batches if structured else 0, p.finetune_steps) * p.batch_size
    if not need:
        return None
    rows = random.Random(seed).sample(range(len(train)), min(len(train), need))
    return task.tokenize(train.select(rows), tokenizer)


def importance_batches(train_set, collate, p):
    """The first prune.importance_batches batches of the (already shuffled) training rows."""
    rows = range(min(len(train_set), p.importance_batches * p.batch_size))
    for start in range(0, len(rows), p.batch_size):
        batch = collate([dict(train_set[i]) for i in rows[start:start + p.batch_size]])
        yield {k: v for k, v in batch.items() if k in INPUTS}


def finetune(model, tokenizer, task, train_set, cfg, run_path: Path) -> dict:
    """prune.finetune_steps steps of the HF Trainer (llmft's, runtime/trainer.py) on the train
    split; a magnitude-pruned weight keeps its mask meanwhile (torch's prune hook), so it stays 0."""
    import shutil

    from transformers import TrainingArguments

    from llmft.runtime.trainer import build_trainer, precision_flags, use_cpu

    p = cfg.prune
    work = run_path / "finetune"
    args = TrainingArguments(
        output_dir=str(work), seed=cfg.seed, max_steps=p.finetune_steps, learning_rate=p.finetune_lr,
        per_device_train_batch_size=p.batch_size, warmup_steps=0.06, weight_decay=0.01, lr_scheduler_type="linear",
        save_strategy="no", report_to=[], logging_steps=max(1, p.finetune_steps // 10), disable_tqdm=True,
        use_cpu=use_cpu(cfg.hardware), **precision_flags(cfg.hardware))
    trainer = build_trainer(args, model, tokenizer, task, train_dataset=train_set)
    output = trainer.train()
    shutil.rmtree(work, ignore_errors=True)
    model.cpu()
    return {"steps": p.finetune_steps, "lr": p.finetune_lr, "batch_size": p.batch_size,
            "train_loss": round(output.training_loss, 4)}


def validate(cfg) -> None:
    """llmft prune's own knobs and what model_dir holds (torch-free: llmft.json and config.json)."""
    import json

    from llmft.core.errors import require
    from llmft.models.loading import read_meta
    from llmft.models.pruning import ARCHITECTURES, removed

    p = cfg.prune
    require(0 < p.amount < 1, "prune.amount", f"must be in (0, 1), the fraction removed (got {p.amount})")
    for key in ("importance_batches", "batch_size"):
        require(p[key] >= 1, f"prune.{key}", f"must be >= 1 (got {p[key]})")
    require(p.finetune_steps >= 0, "prune.finetune_steps", f"must be >= 0 (0: no recovery fine-tuning; got "
            f"{p.finetune_steps})")
    require(p.finetune_lr > 0, "prune.finetune_lr", f"must be > 0 (got {p.finetune_lr})")
    require(cfg.check_examples >= 1, "check_examples", "must be >= 1 (the pruned model is checked on them)")
    if cfg.output_dir:
        require(not Path(cfg.output_dir).is_file(), "output_dir", f"{cfg.output_dir} is a file, not a folder")
    folder = Path(cfg.model_dir)
    key = f"model_dir={cfg.model_dir}"
    meta = read_meta(folder, key) or {}
    if (folder / "adapter_config.json").is_file():
        raise UserError(f"{key}: a '{meta.get('strategy')}' adapter; llmft prune prunes full models: merge it "
                        f"first (llmft export model_dir={cfg.model_dir}) and prune the merged folder")
    require(not meta.get("lm_kind") and not meta.get("format"), key,
            "a prompting run or an exported model; llmft prune prunes a trained fp32 model/ folder")
    require(meta.get("task") in ("classification", "ner"), key, f"llmft prune prunes classification and ner "
            f"models (this one is {meta.get('task')})")
    require(not meta.get("crf"), key, "a NER model with a CRF (model.crf=true); llmft prune prunes token "
            "classifiers without one")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{key}: no readable config.json; point model_dir at a run's model/ folder") from None
    kind = config.get("model_type")
    require(kind in ARCHITECTURES, key, f"a {kind} model; llmft prune prunes BERT-family encoders "
            f"({', '.join(ARCHITECTURES)})")
    if p.method == "heads":
        n = min((meta.get("pruned") or {}).get("heads") or [config["num_attention_heads"]])
        what = "heads"
    elif p.method == "ffn":
        n, what = config["intermediate_size"], "FFN channels"
    else:
        return
    cut = removed(p.amount, n)
    require(0 < cut < n, "prune.amount", f"{p.amount} of {n} {what} per layer removes {cut} (round(amount x "
            f"{n})); choose an amount that removes at least one and keeps at least one")
