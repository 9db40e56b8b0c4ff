"""`llmft merge-adapters`: LoRA adapters combined with PEFT's weighted merge, checked, and usable
by eval / predict / export like a trained adapter."""
from __future__ import annotations

import json

import pytest
from conftest import assert_user_error, read_jsonl, read_results, run_cli, tiny_train_args


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_bert, tiny_data) -> dict:
    """Two LoRA runs on the same base (different seeds and rates), trained once for the module."""
    root = tmp_path_factory.mktemp("merge-inputs")
    runs = {}
    for name, extra in (("a", ["seed=1"]), ("b", ["seed=2", "train.lr=1e-2"])):
        run_dir = root / name
        proc = run_cli("train", "+strategy=lora", *tiny_train_args(tiny_bert, tiny_data, run_dir), *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = run_dir
    return runs


def data_args(tiny_data) -> list[str]:
    return ["data=csv", f"data.train_file={tiny_data['train']}", f"data.eval_file={tiny_data['eval']}"]


def logits_of(model_dir, base, texts):
    """The adapter's logits, loaded with PEFT itself (not through llmft)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=3),
                                      str(model_dir)).eval()
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


def merge(tmp_path, adapters, name, *extra):
    run_dir = tmp_path / name
    proc = run_cli("merge-adapters", f"inputs=[{adapters['a'] / 'model'},{adapters['b'] / 'model'}]",
                   f"hydra.run.dir={run_dir}", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run_dir / "merged_adapter"
    assert str(out) in proc.stdout
    return run_dir, out


def test_linear_weights(tmp_path, adapters, tiny_bert, tiny_data):
    run_dir, out = merge(tmp_path, adapters, "first", "weights=[1,0]")
    record = json.loads((run_dir / "merge.json").read_text())
    assert record["status"] == "completed" and record["method"] == "linear" and record["weights"] == [1.0, 0.0]
    assert record["check"]["passed"] and record["check"]["max_abs_diff"] <= 1e-4
    assert record["check"]["inputs"][0]["max_abs_diff_vs_merged"] < 1e-5
    # a trained adapter's layout: the files at the top, not in a subfolder named after the adapter
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "merged").exists() and (out / "tokenizer.json").is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    meta = json.loads((out / "llmft.json").read_text())
    assert meta["strategy"] == "lora" and meta["method"] == "linear" and meta["weights"] == [1.0, 0.0]
    assert meta["merged_from"] == [str((adapters[k] / "model").resolve()) for k in "ab"]

    texts = [r["text"] for r in read_jsonl(adapters["a"] / "predictions.jsonl")]
    merged = logits_of(out, tiny_bert, texts)
    first, second = logits_of(adapters["a"] / "model", tiny_bert, texts), logits_of(adapters["b"] / "model", tiny_bert, texts)
    assert (merged - first).abs().max().item() < 1e-5
    assert (first - second).abs().max().item() > 1e-3  # the two adapters differ

    proc = run_cli("eval", f"model_dir={out}", *data_args(tiny_data), f"hydra.run.dir={tmp_path / 'eval'}",
                   "print_config=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_jsonl(tmp_path / "eval" / "predictions.jsonl") == read_jsonl(adapters["a"] / "predictions.jsonl")

    _, half = merge(tmp_path, adapters, "half", "weights=[0.5,0.5]")
    mixed = logits_of(half, tiny_bert, texts)
    assert (mixed - first).abs().max().item() > 1e-5 and (mixed - second).abs().max().item() > 1e-5

    proc = run_cli("export", f"model_dir={half}", f"hydra.run.dir={tmp_path / 'export'}")  # a mergeable LoRA adapter
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "export" / "export.json").read_text())["check"]["passed"]


def test_ties_evaluates(tmp_path, adapters, tiny_data):
    run_dir, out = merge(tmp_path, adapters, "ties", "method=ties", "density=0.5")
    record = json.loads((run_dir / "merge.json").read_text())
    assert record["method"] == "ties" and record["density"] == 0.5 and record["check"]["passed"]
    assert json.loads((out / "llmft.json").read_text())["density"] == 0.5
    proc = run_cli("eval", f"model_dir={out}", *data_args(tiny_data), f"hydra.run.dir={tmp_path / 'eval'}",
                   "print_config=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(tmp_path / "eval")
    assert results["strategy"] == "lora" and 0 <= results["eval"]["accuracy"] <= 1
    assert len(read_jsonl(tmp_path / "eval" / "predictions.jsonl")) == results["num_eval_examples"] == 30


def test_refusals(tmp_path, adapters, tiny_bert, tiny_data):
    full = tmp_path / "full"
    proc = run_cli("train", "train.max_steps=1", *tiny_train_args(tiny_bert, tiny_data, full))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = adapters["a"] / "model", adapters["b"] / "model"

    proc = run_cli("merge-adapters", f"inputs=[{a},{full / 'model'}]", f"hydra.run.dir={tmp_path / 'm1'}")
    assert_user_error(proc, "inputs[1]=", "'full' model, not an adapter")

    proc = run_cli("merge-adapters", f"inputs=[{a},{b}]", "weights=[0.5,0.3,0.2]", f"hydra.run.dir={tmp_path / 'm2'}")
    assert_user_error(proc, "weights:", "2 inputs, 3 weights")

    before = {p.name: p.read_bytes() for p in b.iterdir() if p.is_file()}
    proc = run_cli("merge-adapters", f"inputs=[{a},{b}]", f"output_dir={b}", f"hydra.run.dir={tmp_path / 'm3'}")
    assert_user_error(proc, f"output_dir={b}", "inputs[1]=")
    assert {p.name: p.read_bytes() for p in b.iterdir() if p.is_file()} == before
    assert not any((tmp_path / name).exists() for name in ("m1", "m2", "m3"))  # refused before any run folder
