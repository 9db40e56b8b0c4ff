"""``llmft export model_dir=RUN/model [format=merged|bf16|fp16|int8]``: a model ready to serve.

    merged (default)  a LoRA / DoRA / IA3 adapter merged into its base, saved as a plain HF model
    bf16, fp16        the model (adapters merged first) in half precision, a plain HF folder
    int8              dynamic int8 quantization of the linear layers (llmft/precision.py)

    model_dir/llmft.json -> the saved model -> logits on a few eval inputs -> convert -> save
        -> reload the saved folder -> its logits must match the source's within the format's
        tolerance, or nothing is left behind
Merged adapters that silently behave like the base model are a known failure; the merge check
says which of the two the result matches.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from llmft.errors import UserError
from llmft.run_dir import dumps

log = logging.getLogger(__name__)

MERGEABLE = ("lora", "dora", "ia3")
# max |logit - source logit| / max(1, max |source logit|) allowed per format
TOLERANCES = {"merged": 1e-4, "fp16": 1e-2, "bf16": 5e-2, "int8": 1e-1}


def main(cfg, run_path: str | Path) -> dict:
    import torch

    from llmft.crf import CRF_FILE
    from llmft.data import load_splits
    from llmft.display import console
    from llmft.models import META_FILE, load_model, load_saved, read_metadata
    from llmft.tasks import TASKS

    model_dir = Path(cfg.model_dir)
    meta = read_metadata(model_dir)
    fmt = cfg.format
    tolerance = cfg.tolerance if cfg.tolerance is not None else TOLERANCES[fmt]
    if fmt == "merged" and meta.get("strategy") not in MERGEABLE:
        raise UserError(f"model_dir={model_dir}: a '{meta.get('strategy')}' model; merging applies to "
                        f"{', '.join(MERGEABLE)} adapters (full models are already plain HF folders; "
                        f"format=bf16|fp16|int8 converts them)")
    if meta.get("lm_kind") or meta.get("format") not in (None, "fp32"):
        raise UserError(f"model_dir={model_dir}: format={fmt} converts fine-tuned models and adapters, "
                        f"not prompting runs or models already exported")
    out = Path(cfg.output_dir) if cfg.output_dir else model_dir.parent / fmt

    task = TASKS.get(meta["task"]).from_metadata(cfg.data, meta)
    splits = load_splits(cfg.data, task)
    model, tokenizer = load_saved(model_dir, task, meta)
    model = getattr(model, "encoder", model)  # a CRF tagger: merge its encoder, copy the CRF as it is
    sample = task.tokenize(splits["eval"].select(range(min(cfg.check_examples, len(splits["eval"])))), tokenizer)
    batch = {k: v for k, v in task.collator(tokenizer)([sample[i] for i in range(len(sample))]).items()
             if k not in ("labels", "word_start")}

    if fmt != "merged":
        return convert(cfg, fmt, tolerance, model, tokenizer, batch, meta, model_dir, out, run_path)
    with torch.no_grad():
        adapter_logits = model(**batch).logits
        with model.disable_adapter():
            base_logits = model(**batch).logits
        merged = model.merge_and_unload()
        if out.exists():
            shutil.rmtree(out)
        merged.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        if meta.get("crf"):
            shutil.copy(model_dir / CRF_FILE, out / CRF_FILE)
        reloaded = load_model(str(out), task, tokenizer, meta.get("trust_remote_code", False)).eval()
        merged_logits = reloaded(**batch).logits

    scale = max(1.0, adapter_logits.abs().max().item())
    vs_adapter = (merged_logits - adapter_logits).abs().max().item()
    vs_base = (merged_logits - base_logits).abs().max().item()
    adapter_effect = (adapter_logits - base_logits).abs().max().item()
    check = {
        "examples": len(sample),
        "tolerance": tolerance,
        "max_abs_diff_merged_vs_adapter": vs_adapter,
        "max_abs_diff_merged_vs_base": vs_base,
        "max_abs_diff_adapter_vs_base": adapter_effect,
        "passed": vs_adapter <= tolerance * scale,
    }
    if not check["passed"]:
        shutil.rmtree(out)
        raise UserError(f"export check failed: merged logits differ from the adapter's by {vs_adapter:.3g} "
                        f"(> {tolerance} x {scale:.3g}); nothing was saved")
    (out / META_FILE).write_text(json.dumps({**meta, "strategy": "full", "merged_from": meta["strategy"],
                                             "source": str(model_dir.resolve()),
                                             "merge_check": check}, indent=2) + "\n")
    console.print(
        f"merge check on {len(sample)} eval inputs: merged vs adapter max |dlogit| = {vs_adapter:.2e} "
        f"(tolerance {tolerance:g}): [bold green]OK[/]; the adapter moves logits by up to "
        f"{adapter_effect:.3g} from the base, the merged model by {vs_base:.3g}\nmerged model: {out}"
    )
    result = {"status": "completed", "output_dir": str(out), "source": str(model_dir), "check": check}
    (Path(run_path) / "export.json").write_text(dumps(result, indent=2) + "\n")
    return result


def convert(cfg, fmt, tolerance, model, tokenizer, batch, meta, model_dir: Path, out: Path, run_path) -> dict:
    """bf16 / fp16 / int8: convert the fp32 model (adapters merged), save, reload, compare."""
    import torch

    from llmft.crf import CRF_FILE
    from llmft.display import console
    from llmft.models import META_FILE
    from llmft.precision import load_int8, save_variant, size_on_disk, to_variant
    from llmft.retention import plain_model

    source = plain_model(model)
    if hasattr(source, "peft_config"):
        raise UserError(f"model_dir={model_dir}: a '{meta.get('strategy')}' adapter does not merge into its base; "
                        f"format={fmt} converts full models and {', '.join(MERGEABLE)} adapters")
    if out.exists():
        shutil.rmtree(out)
    with torch.no_grad():
        reference = source(**batch).logits.float()
        save_variant(to_variant(source, fmt), fmt, out)
        tokenizer.save_pretrained(str(out))
        if meta.get("crf"):
            shutil.copy(model_dir / CRF_FILE, out / CRF_FILE)
        if fmt == "int8":
            reloaded = load_int8(out)
        else:
            import transformers

            reloaded = getattr(transformers, source.config.architectures[0]).from_pretrained(str(out)).eval()
        logits = reloaded(**{k: v.to(reloaded.device) for k, v in batch.items()}).logits.float()
    scale = max(1.0, reference.abs().max().item())
    diff = (logits - reference).abs().max().item()
    agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    check = {"examples": len(reference), "tolerance": tolerance, "max_abs_diff_vs_fp32": diff,
             "argmax_agreement": agree, "passed": diff <= tolerance * scale,
             "dtype": str(next(reloaded.parameters()).dtype) if fmt != "int8" else "qint8"}
    if not check["passed"]:
        shutil.rmtree(out)
        raise UserError(f"export check failed: {fmt} logits differ from fp32 by {diff:.3g} "
                        f"(> {tolerance} x {scale:.3g}); nothing was saved")
    (out / META_FILE).write_text(json.dumps({**meta, "strategy": "full", "format": fmt, "source": str(model_dir.resolve()),
                                             "export_check": check}, indent=2) + "\n")
    size = size_on_disk(out)
    console.print(f"{fmt} export: max |dlogit| vs fp32 = {diff:.2e} (tolerance {tolerance:g}), argmax agreement "
                  f"{agree:.3f}: [bold green]OK[/]; {size / 2**20:.1f} MiB of weights\n{fmt} model: {out}")
    result = {"status": "completed", "format": fmt, "output_dir": str(out), "source": str(model_dir),
              "size_bytes": size, "check": check}
    (Path(run_path) / "export.json").write_text(dumps(result, indent=2) + "\n")
    return result
