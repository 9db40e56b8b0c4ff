"""The forgetting report: how far fine-tuning moved the model from what it was pretrained as.

    drift      ||theta - theta_0|| / ||theta_0|| per layer (embeddings, block.i, top) and in all;
               PEFT adapters that merge (LoRA, DoRA, IA3) are merged first, so their drift is the
               change they make to the weights; prompt methods leave the weights as they were
    cka        linear CKA (Kornblith et al., 2019) between the last hidden states (mean over
               tokens) of the pretrained and the fine-tuned model on the same eval inputs:
               1 = the same representation up to rotation and scale
    perplexity causal LMs with train.retention.eval_file: before and after, on that text

Written to results.json ("retention") and retention.png (drift per layer).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import logging
import math
from pathlib import Path

from llmft.core.errors import require
from llmft.tasks import tasks_that
from llmft.techniques import Technique



if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class Retention(Technique):
    keys = ("train.retention",)

    def validate(self, cfg, task, strategy) -> None:
        r = cfg.train.retention
        require(r.l2sp >= 0, "train.retention.l2sp", f"must be >= 0 (got {r.l2sp})")
        if r.l2sp > 0:
            require(strategy.trains and not strategy.saves_adapter, "train.retention.l2sp",
                    f"anchors pretrained weights; strategy={cfg.strategy.name} trains only new parameters "
                    f"(use train.weight_decay)")
            require(cfg.hardware.zero_stage < 3, "train.retention.l2sp",
                    "needs whole parameters; under ZeRO-3 they are sharded: use hardware.zero_stage<=2")
        if r.eval_file:
            require(Path(r.eval_file).is_file(), "train.retention.eval_file", f"file not found: {r.eval_file}")
            own_head = lambda t: t.logits == "causal"  # noqa: E731
            require(own_head(task), "train.retention.eval_file",
                    f"perplexity needs the model's own LM head, which data.task={tasks_that(own_head)} trains; a "
                    f"{cfg.data.task} model replaces it with a task head (drop the key)")

    def trained(self, run) -> None:
        run.record["retention"] = report_for(run.cfg, run.task, run.strategy, run.trainer, run.tokenizer,
                                             run.sets["eval"], run.dir.path, run.source)


technique = Retention()


def report_for(cfg, task, strategy, trainer, tokenizer, eval_set, run_path, base_path: str) -> dict | None:
    """results.json "retention" (None when off or nothing trained); never fails the run."""
    if not (cfg.train.retention.report and strategy.trains):
        return None
    from llmft.runtime.distributed import world_size

    if world_size(cfg.hardware) > 1:
        return {"skipped": "measured in 1-process runs only (the sharded weights are not gathered for it)"}
    if strategy.quantized_base:
        return {"skipped": "the base weights are 4-bit: drift against the fp32 checkpoint would measure quantization"}
    try:
        return report(cfg, task, strategy, trainer.model, tokenizer, eval_set, task.collator(tokenizer),
                      Path(run_path), base_path)
    except (RuntimeError, ValueError, TypeError, AttributeError) as err:  # the report must not cost the run
        log.warning("retention report skipped: %s", err)
        return {"skipped": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}

def weight_drift(before, after) -> dict:
    """Relative change per anatomy part (the task head, new in fine-tuning, is left out)."""
    from llmft.models.anatomy import parts

    ref = dict(before.named_parameters())
    sums: dict[str, list[float]] = {}
    labels = {n: p.label for n, p in parts(after).items() if p.kind != "head"}
    for name, p in after.named_parameters():
        if name not in labels or name not in ref or ref[name].shape != p.shape:
            continue
        theta0 = ref[name].detach().float().cpu()
        delta = (p.detach().float().cpu() - theta0).pow(2).sum().item()
        base = theta0.pow(2).sum().item()
        acc = sums.setdefault(labels[name], [0.0, 0.0])
        acc[0] += delta
        acc[1] += base
    per_layer = {k: round(math.sqrt(d / b), 6) if b else 0.0 for k, (d, b) in _ordered(sums).items()}
    total_d, total_b = sum(d for d, _ in sums.values()), sum(b for _, b in sums.values())
    return {"total": round(math.sqrt(total_d / total_b), 6) if total_b else 0.0, "per_layer": per_layer}


def _ordered(sums: dict) -> dict:
    def key(label):
        if label == "embeddings":
            return -1
        if label.startswith("block."):
            return int(label.split(".")[1])
        return 10**9
    return {k: sums[k] for k in sorted(sums, key=key)}


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Linear CKA between two (examples x features) matrices; None when either does not vary
    across examples (nothing to compare)."""

    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    denominator = (x.T @ x).norm() * (y.T @ y).norm()
    if denominator.item() < 1e-12:
        return None
    return float((x.T @ y).norm() ** 2 / denominator)


def last_hidden(model, batches) -> torch.Tensor:
    """Mean over real tokens of the last hidden state, one row per example."""
    import torch

    with torch.no_grad():
        rows = []
        for batch in batches:
            feed = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            out = model(**feed, output_hidden_states=True)
            hidden = out.hidden_states[-1].float()
            mask = feed["attention_mask"].unsqueeze(-1).float()
            rows.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
        return torch.cat(rows).cpu()


def perplexity(model, tokenizer, text: str, max_length: int, device) -> float:
    import torch

    with torch.no_grad():
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        nll, count = 0.0, 0
        for start in range(0, max(len(ids) - 1, 1), max_length):
            chunk = ids[start:start + max_length + 1].unsqueeze(0).to(device)
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk[:, :-1]).logits.float()
            nll += torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
            count += chunk.shape[1] - 1
        return round(math.exp(nll / max(count, 1)), 4)


def report(cfg, task, strategy, trained, tokenizer, eval_set, collator, run_path: Path, base_path: str) -> dict:
    """The retention entry of results.json, and retention.png."""
    from llmft.artifacts import plain_model
    from llmft.models.loading import load_model, revision_kwargs

    after = plain_model(trained)
    device = next(after.parameters()).device
    before = load_model(base_path, task, tokenizer, cfg.model.trust_remote_code, strategy.model_class(base_path),
                        **revision_kwargs(cfg.model.revision)).to(device).eval()
    was_training = after.training
    after.eval()
    out = {"drift": weight_drift(before, after)}
    n = min(cfg.train.retention.examples, len(eval_set))
    if n >= 2:
        columns = [c for c in eval_set.column_names if c in ("input_ids", "attention_mask", "token_type_ids")]
        rows = eval_set.select(range(n)).select_columns(columns)
        batches = [collator([rows[i] for i in range(s, min(s + 32, n))]) for s in range(0, n, 32)]
        batches = [{k: v.to(device) for k, v in b.items() if k in columns} for b in batches]
        try:
            cka = linear_cka(last_hidden(before, batches), last_hidden(after, batches))
            out["cka_last_hidden"] = round(cka, 6) if cka is not None else None
            out["cka_examples"] = n
        except (TypeError, AttributeError) as err:  # a model that does not return hidden states
            out["cka_last_hidden"] = None
            out["cka_skipped"] = str(err).splitlines()[0][:200]
    eval_file = cfg.train.retention.eval_file
    if eval_file and task.logits == "causal":
        text = Path(eval_file).read_text(encoding="utf-8")
        out["perplexity"] = {"file": str(eval_file),
                             "before": perplexity(before, tokenizer, text, cfg.data.max_length, device),
                             "after": perplexity(after, tokenizer, text, cfg.data.max_length, device)}
    after.train(was_training)
    plot(out["drift"]["per_layer"], run_path / "retention.png", f"{cfg.strategy.name}: drift per layer")
    return out


def plot(per_layer: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(per_layer) + 2), 3.2))
    ax.bar(list(per_layer), list(per_layer.values()), color="#4c72b0")
    ax.set_ylabel("||theta - theta_0|| / ||theta_0||")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
