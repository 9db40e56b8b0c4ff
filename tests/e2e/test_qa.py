"""Extractive QA: SQuAD files, windows with stride, span decoding, EM/F1."""
from __future__ import annotations

import json

import pytest
from conftest import read_jsonl, read_results, run_cli


def qa_args(model, data, run_dir, *extra):
    return ["model=hf", f"model.name_or_path={model}", "data=squad_file", f"data.train_file={data['train']}",
            f"data.eval_file={data['eval']}", "data.max_length=24", "data.doc_stride=8", "train.epochs=3",
            "train.batch_size=8", "train.lr=5e-3", "print_config=false", f"hydra.run.dir={run_dir}", *extra]


def test_squad_metrics_on_a_hand_made_set():
    from llmft.tasks.qa import squad_metrics

    m = squad_metrics(["The cat", "a big dog", ""], [["cat"], ["dog", "big dog!"], ["house"]])
    # "the cat" ~ "cat" exact after normalisation; "a big dog" ~ "big dog!" exact; "" wrong
    assert m["exact_match"] == pytest.approx(200 / 3, abs=1e-3) and m["f1"] == pytest.approx(200 / 3, abs=1e-3)
    assert squad_metrics(["big red dog"], [["red dog"]])["f1"] == pytest.approx(80.0)


def test_qa_run_eval_predict(tmp_path, tiny_bert, qa_data):
    run_dir = tmp_path / "run"
    proc = run_cli("train", *qa_args(tiny_bert, qa_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["task"] == "qa" and set(results["eval"]) >= {"exact_match", "f1", "loss"}
    records = read_jsonl(run_dir / "predictions.jsonl")
    assert len(records) == 20 and all(r["prediction"] in json.loads(qa_data["eval"].read_text())["data"][0]["paragraphs"][i]["context"]
                                      for i, r in enumerate(records))
    proc = run_cli("eval", f"model_dir={run_dir / 'model'}", f"hydra.run.dir={tmp_path / 'eval'}", "print_config=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(tmp_path / "eval")["eval"]["f1"] == pytest.approx(results["eval"]["f1"])

    paragraphs = json.loads(qa_data["eval"].read_text())["data"][0]["paragraphs"]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"id": p["qas"][0]["id"], "question": p["qas"][0]["question"],
                                          "context": p["context"]}) + "\n" for p in paragraphs))
    proc = run_cli("predict", f"model_dir={run_dir / 'model'}", f"predict.input_file={inputs}",
                   f"hydra.run.dir={tmp_path / 'predict'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p["prediction"] for p in read_jsonl(tmp_path / "predict" / "predictions.jsonl")] == \
        [r["prediction"] for r in records]


def test_answer_offsets_that_do_not_match_name_the_record(tmp_path, tiny_bert, qa_data):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"context": "we love it", "qas": [
        {"id": "x7", "question": "what ?", "answers": [{"text": "love", "answer_start": 0}]}]}]}]}))
    proc = run_cli("train", *qa_args(tiny_bert, {"train": bad, "eval": qa_data["eval"]}, tmp_path / "run"))
    assert proc.returncode == 2 and "bad.json: record x7" in proc.stderr and "offset 0" in proc.stderr
