"""``llmft export``: merge a LoRA / DoRA / IA3 adapter into its base and save a plain HF model.

    model_dir/llmft.json -> adapter on its base -> logits on a few eval inputs
        -> merge_and_unload -> save -> reload the saved folder -> its logits must equal the
        adapter's (within export.tolerance), and must differ from the bare base's
Merged adapters that silently behave like the base model are a known failure; the check says
which of the two the result matches and refuses to leave a folder that fails it.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from llmft.errors import UserError

log = logging.getLogger(__name__)

MERGEABLE = ("lora", "dora", "ia3")


def main(cfg, run_path: str | Path) -> dict:
    import torch

    from llmft.crf import CRF_FILE
    from llmft.data import load_splits
    from llmft.display import console
    from llmft.models import META_FILE, load_model, load_saved, read_metadata
    from llmft.tasks import TASKS

    model_dir = Path(cfg.model_dir)
    meta = read_metadata(model_dir)
    if meta.get("strategy") not in MERGEABLE:
        raise UserError(f"model_dir={model_dir}: a '{meta.get('strategy')}' model; merging applies to "
                        f"{', '.join(MERGEABLE)} adapters (full models are already plain HF folders)")
    out = Path(cfg.output_dir) if cfg.output_dir else model_dir.parent / "merged"

    task = TASKS.get(meta["task"]).from_metadata(cfg.data, meta)
    splits = load_splits(cfg.data, task)
    model, tokenizer = load_saved(model_dir, task, meta)
    model = getattr(model, "encoder", model)  # a CRF tagger: merge its encoder, copy the CRF as it is
    sample = task.tokenize(splits["eval"].select(range(min(cfg.check_examples, len(splits["eval"])))), tokenizer)
    batch = {k: v for k, v in task.collator(tokenizer)([sample[i] for i in range(len(sample))]).items()
             if k not in ("labels", "word_start")}

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
        "tolerance": cfg.tolerance,
        "max_abs_diff_merged_vs_adapter": vs_adapter,
        "max_abs_diff_merged_vs_base": vs_base,
        "max_abs_diff_adapter_vs_base": adapter_effect,
        "passed": vs_adapter <= cfg.tolerance * scale,
    }
    if not check["passed"]:
        shutil.rmtree(out)
        raise UserError(f"export check failed: merged logits differ from the adapter's by {vs_adapter:.3g} "
                        f"(> {cfg.tolerance} x {scale:.3g}); nothing was saved")
    (out / META_FILE).write_text(json.dumps({**meta, "strategy": "full", "merged_from": meta["strategy"],
                                             "merge_check": check}, indent=2) + "\n")
    console.print(
        f"merge check on {len(sample)} eval inputs: merged vs adapter max |dlogit| = {vs_adapter:.2e} "
        f"(tolerance {cfg.tolerance:g}): [bold green]OK[/]; the adapter moves logits by up to "
        f"{adapter_effect:.3g} from the base, the merged model by {vs_base:.3g}\nmerged model: {out}"
    )
    result = {"status": "completed", "output_dir": str(out), "source": str(model_dir), "check": check}
    (Path(run_path) / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
