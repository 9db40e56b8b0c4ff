"""data.task=reward from the command line: a LoRA reward model (PEFT's SEQ_CLS keeps the score
head trained and saved with the adapter) trains on pairs, `llmft eval` of the saved model gives the
same metrics at another eval batch size, and `llmft predict` scores prompt + completion rows with
the scores the eval records hold."""
from __future__ import annotations

import json
import random

import pytest
from conftest import _WORDS, make_rows, read_jsonl, read_results, run_cli


def write_pairs(path, n: int, seed: int) -> None:
    """A tweet-like prompt; a positive word preferred to a negative one (learnable in a few steps)."""
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"prompt": r["text"], "chosen": " " + rng.choice(_WORDS["positive"]),
                                        "rejected": " " + rng.choice(_WORDS["negative"])}) + "\n"
                            for r in make_rows(n, seed)))


def test_train_eval_and_predict_a_lora_reward_model(tmp_path, tiny_bert):
    train, eval_ = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    write_pairs(train, 64, 1)
    write_pairs(eval_, 13, 2)
    run = tmp_path / "run"
    proc = run_cli("train", "+strategy=lora", "strategy.target_modules=[query,value]", "model=hf",
                   f"model.name_or_path={tiny_bert}", "data=csv", "data.task=reward", f"data.train_file={train}",
                   f"data.eval_file={eval_}", "train.epochs=3", "train.batch_size=8", "train.lr=1e-2",
                   "train.retention.report=false", "print_config=false", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run)
    metrics = results["eval"]
    assert results["task"] == "reward" and results["primary_metric"] == "accuracy"
    assert metrics["accuracy"] >= 0.9 and metrics["margin"] > 0, metrics
    # one-token completions on both sides: the length baseline is a coin (every pair a tie)
    assert results["baseline"]["length_accuracy"] == 0.5 and results["baseline"]["length_ties"] == 13
    records = read_jsonl(run / "predictions.jsonl")
    assert len(records) == 13
    assert sum(r["correct"] for r in records) / 13 == pytest.approx(metrics["accuracy"])

    evaluated = run / "eval"
    proc = run_cli("eval", f"model_dir={run / 'model'}", "data=csv", f"data.eval_file={eval_}", "batch_size=1",
                   "print_config=false", f"hydra.run.dir={evaluated}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_results(evaluated)["eval"]  # the train run evaluated in batches of 16 pairs, this one of 1
    assert again == pytest.approx(metrics, rel=1e-4, abs=1e-6)

    inputs = tmp_path / "score.jsonl"
    inputs.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": c}) + "\n"
                              for r in records[:2] for c in (r["chosen"], r["rejected"])))
    proc = run_cli("predict", f"model_dir={run / 'model'}", f"predict.input_file={inputs}",
                   f"hydra.run.dir={tmp_path / 'predict'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = [p["score"] for p in read_jsonl(tmp_path / "predict" / "predictions.jsonl")]
    want = [s for r in records[:2] for s in (r["reward_chosen"], r["reward_rejected"])]
    assert scores == pytest.approx(want, rel=1e-4, abs=1e-6)
