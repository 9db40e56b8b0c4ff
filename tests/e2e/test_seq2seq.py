"""Encoder-decoder seq2seq: train, ROUGE/BLEU on generations, eval and predict."""
from __future__ import annotations

import json

import pytest
from conftest import read_jsonl, read_results, run_cli


def test_generation_metrics_on_a_hand_made_set():
    from llmft.models.generation import generation_metrics

    m = generation_metrics(["the cat sat on the mat", "a dog"], ["the cat sat on the mat", "the dog ran"], bleu=True)
    assert m["exact_match"] == 0.5 and m["rouge1"] == pytest.approx((1.0 + 0.4) / 2)
    assert 0 < m["bleu"] < 100 and m["generated"] == 2


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_seq2seq_run_eval_predict(tmp_path, tiny_t5, seq2seq_data, strategy):
    run_dir = tmp_path / "run"
    args = ["model=hf", f"model.name_or_path={tiny_t5}", "data=jsonl_seq2seq", f"data.train_file={seq2seq_data}",
            "data.eval_fraction=0.2", "train.epochs=2", "train.batch_size=8", "train.lr=3e-3",
            "generate.max_new_tokens=5", "print_config=false"]
    proc = run_cli("train", f"+strategy={strategy}", *args, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["task"] == "seq2seq"
    assert set(results["eval"]) >= {"loss", "rouge1", "rouge2", "rougeL", "bleu", "exact_match"}
    records = read_jsonl(run_dir / "predictions.jsonl")
    assert len(records) == 12 and all({"source", "reference", "generation"} <= set(r) for r in records)

    proc = run_cli("eval", f"model_dir={run_dir / 'model'}", "generate.max_new_tokens=5",
                   f"hydra.run.dir={tmp_path / 'eval'}", "print_config=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(tmp_path / "eval")["eval"]["loss"] == pytest.approx(results["eval"]["loss"], rel=1e-4)

    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"source": r["source"]}) + "\n" for r in records))
    proc = run_cli("predict", f"model_dir={run_dir / 'model'}", f"predict.input_file={inputs}",
                   "generate.max_new_tokens=5", f"hydra.run.dir={tmp_path / 'predict'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p["generation"] for p in read_jsonl(tmp_path / "predict" / "predictions.jsonl")] == \
        [r["generation"] for r in records]
