"""The real CLI end to end on tiny models: train, the run folder, eval, reloading the artifact."""
from __future__ import annotations

import json

import pytest
from conftest import LABELS, read_jsonl, read_results, run_cli, tiny_train_args

from llmft.runtime.results import COMMON, kind_of, problems


def _predict(model, tokenizer, texts):
    import torch

    with torch.no_grad():
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        return [model.config.id2label[i] for i in model(**batch).logits.argmax(-1).tolist()]


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_llama"])
@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_train_writes_a_complete_run_folder(request, tmp_path, tiny_data, model_fixture, strategy):
    model = request.getfixturevalue(model_fixture)
    run_dir = tmp_path / "run"
    proc = run_cli("train", f"+strategy={strategy}", *tiny_train_args(model, tiny_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]

    for name in ("config.yaml", ".hydra/config.yaml", "metrics.jsonl", "predictions.jsonl", "results.json"):
        assert (run_dir / name).is_file(), name
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["strategy"] == strategy
    assert kind_of(results) == "train" and problems(results) == []  # runtime/results.py's schema
    assert set(results["eval"]) >= {"accuracy", "macro_f1", "per_class", "loss"}
    assert 0.0 <= results["eval"]["accuracy"] <= 1.0
    assert results["num_eval_examples"] == 30 and results["num_train_examples"] == 96
    train = results["train"]
    assert train["steps"] == 24 and train["tokens_per_s"] > 0 and train["samples_per_s"] > 0
    assert results["memory"]["peak_rss_mb"] > 0
    params = results["params"]
    assert 0 < params["trainable"] <= params["total"]
    if strategy == "lora":
        assert params["trainable_pct"] < 50
    else:
        assert params["trainable"] == params["total"]

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics if "loss" in m][:3] == [2, 4, 6]
    predictions = read_jsonl(run_dir / "predictions.jsonl")
    assert len(predictions) == 30
    assert set(predictions[0]) >= {"text", "label", "prediction"}
    assert {p["label"] for p in predictions} <= set(LABELS)
    accuracy = sum(p["label"] == p["prediction"] for p in predictions) / len(predictions)
    assert accuracy == pytest.approx(results["eval"]["accuracy"])

    saved = run_dir / "model"
    meta = json.loads((saved / "llmft.json").read_text())
    assert meta["labels"] == LABELS and meta["strategy"] == strategy
    if strategy == "lora":
        assert (saved / "adapter_config.json").is_file() and (saved / "adapter_model.safetensors").is_file()
        assert not (saved / "model.safetensors").exists()
    else:
        assert (saved / "config.json").is_file() and (saved / "model.safetensors").is_file()


def test_eval_reproduces_the_run_and_the_adapter_reloads_through_peft(tmp_path, tiny_data, tiny_llama):
    run_dir = tmp_path / "run"
    proc = run_cli("train", "+strategy=lora", *tiny_train_args(tiny_llama, tiny_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = read_results(run_dir)

    # `llmft eval` with no data overrides reads the run's data config.
    eval_dir = tmp_path / "eval"
    proc = run_cli("eval", f"model_dir={run_dir / 'model'}", f"hydra.run.dir={eval_dir}", "print_config=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = read_results(eval_dir)
    assert kind_of(evaluated) == "eval" and problems(evaluated) == []
    assert set(COMMON) <= set(trained) & set(evaluated)
    assert evaluated["eval"]["accuracy"] == pytest.approx(trained["eval"]["accuracy"])
    assert evaluated["eval"]["macro_f1"] == pytest.approx(trained["eval"]["macro_f1"])
    assert evaluated["num_eval_examples"] == trained["num_eval_examples"]
    assert read_jsonl(eval_dir / "predictions.jsonl") == read_jsonl(run_dir / "predictions.jsonl")
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == [
        "config.yaml", "manifest.json", "metrics.jsonl", "model", "predictions.jsonl", "results.json", "retention.png",
        "train.log"]

    # A data.KEY override applies on top of the run's data config.
    proc = run_cli("eval", f"model_dir={run_dir / 'model'}", "data.max_eval_samples=10",
                   f"hydra.run.dir={tmp_path / 'eval10'}", "print_config=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(tmp_path / "eval10")["num_eval_examples"] == 10

    # The adapter loads with plain PEFT on the base model and predicts what predictions.jsonl says.
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_llama, num_labels=3, id2label=dict(enumerate(LABELS)), pad_token_id=tokenizer.pad_token_id)
    model = PeftModel.from_pretrained(base, run_dir / "model").eval()
    records = read_jsonl(run_dir / "predictions.jsonl")
    got = [_predict(model, tokenizer, [r["text"]])[0] for r in records]
    assert got == [r["prediction"] for r in records]


def test_predict_labels_unlabelled_inputs(tmp_path, tiny_data, tiny_bert):
    run_dir = tmp_path / "run"
    proc = run_cli("train", "+strategy=lora", *tiny_train_args(tiny_bert, tiny_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_jsonl(run_dir / "predictions.jsonl")
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in records))

    out = tmp_path / "labelled.jsonl"
    proc = run_cli("predict", f"model_dir={run_dir / 'model'}", f"predict.input_file={inputs}",
                   f"predict.output_file={out}", "predict.batch_size=7", f"hydra.run.dir={tmp_path / 'p'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted = read_jsonl(out)
    assert [p["prediction"] for p in predicted] == [r["prediction"] for r in records]
    assert all(set(p) == {"text", "prediction", "confidence"} for p in predicted)
    assert "examples/s" in proc.stdout

    missing = tmp_path / "bad.jsonl"
    missing.write_text('{"tweet": "hello"}\n')
    proc = run_cli("predict", f"model_dir={run_dir / 'model'}", f"predict.input_file={missing}",
                   f"hydra.run.dir={tmp_path / 'p2'}")
    assert proc.returncode == 2 and "no column 'text'" in proc.stderr


def test_full_model_reloads_with_transformers(tmp_path, tiny_data, tiny_bert):
    run_dir = tmp_path / "run"
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    records = read_jsonl(run_dir / "predictions.jsonl")
    assert _predict(model, tokenizer, [r["text"] for r in records]) == [r["prediction"] for r in records]


def test_jsonl_data_and_seeded_split(tmp_path, tiny_data, tiny_bert):
    """A JSON-lines train file with no eval file: a seeded fraction is held out."""
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_bert, tiny_data, run_dir)
    args = [a for a in args if not a.startswith(("data.train_file", "data.eval_file"))]
    proc = run_cli("train", *args, f"data.train_file={tiny_data['jsonl']}", "data.eval_fraction=0.25",
                   "train.max_steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["num_eval_examples"] == 24 and results["num_train_examples"] == 72
    assert results["train"]["steps"] == 3


def test_hub_style_dataset_folder(tmp_path, tiny_data, tiny_bert):
    """data=hub goes through datasets.load_dataset(name): a hub id online, or a folder of split files."""
    import shutil

    folder = tmp_path / "my_dataset"
    folder.mkdir()
    shutil.copy(tiny_data["train"], folder / "train.csv")
    shutil.copy(tiny_data["eval"], folder / "test.csv")
    run_dir = tmp_path / "run"
    args = [a for a in tiny_train_args(tiny_bert, tiny_data, run_dir) if not a.startswith("data")]
    proc = run_cli("train", *args, "data=hub", f"data.hub_name={folder}", "train.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["num_train_examples"] == 96 and results["num_eval_examples"] == 30


def test_wandb_offline_run_is_written(tmp_path, tiny_data, tiny_bert):
    run_dir = tmp_path / "run"
    proc = run_cli("train", "logger=wandb", "train.max_steps=4", *tiny_train_args(tiny_bert, tiny_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run_id = (run_dir / "wandb_run_id").read_text().strip()  # a resumed run logs into this same run
    assert runs[0].name.endswith(run_id)
    records = next(runs[0].glob("run-*.wandb")).read_bytes()  # wandb's record log (protobuf)
    # llmft's config, the Trainer's step metrics and the final eval summary all reached the run.
    for key in (b"name_or_path", b"train/loss", b"train/learning_rate", b"final/accuracy"):
        assert key in records, key
    assert (run_dir / "results.json").is_file()


def test_a_diverging_run_stops_at_the_step_with_one_line(tmp_path, tiny_data, tiny_bert):
    """Fault injection: lr 1e30 without warm-up or clipping blows the weights up after step 1;
    the nan loss of step 2 stops the run there, before its update, with one line."""
    import re

    run_dir = tmp_path / "run"
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.lr=1e30", "train.warmup_ratio=0",
                                             "train.max_grad_norm=0", "train.save_steps=1", "train.logging_steps=1"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("llmft: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    match = re.search(r"(loss|gradient norm) became (nan|inf|-inf) at step (\d+); last complete checkpoint: (\S+)\.",
                      lines[0])
    assert match, lines[0]
    step = int(match.group(3))
    assert match.group(4) == str(run_dir / "checkpoints" / f"checkpoint-{step - 1}")
    assert (run_dir / "checkpoints" / f"checkpoint-{step - 1}" / ".complete").is_file()  # kept
    assert not (run_dir / "model").exists()
    results = json.loads((run_dir / "results.json").read_text())  # strict JSON, says failed
    assert results["status"] == "failed" and results["step"] == step
    assert kind_of(results) == "failed" and problems(results) == []
    logged = read_jsonl(run_dir / "metrics.jsonl")  # steps before the failure, real values, valid JSON
    assert [m["step"] for m in logged if "loss" in m] == list(range(1, step))
