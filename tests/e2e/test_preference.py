"""Preference tuning from the CLI: LoRA + DPO on chat pairs trains, reports the preference metrics
and the reference's baseline, and `llmft eval` of the saved adapter reproduces them (the
reference rebuilt as the adapter disabled, at another eval batch size)."""
from __future__ import annotations

import json

import pytest

from conftest import LABELS, make_rows, read_jsonl, read_results, run_cli

METRICS = {"reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps", "kl", "preference_accuracy", "loss"}


def chat_pairs(path, n: int, seed: int):
    with path.open("w") as f:
        for r in make_rows(n, seed):
            wrong = LABELS[(LABELS.index(r["label"]) + 1) % len(LABELS)]
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"sentiment of : {r['text']}"}],
                                "chosen": [{"role": "assistant", "content": r["label"]}],
                                "rejected": [{"role": "assistant", "content": wrong}]}) + "\n")
    return path


def test_lora_dpo_trains_and_eval_of_the_saved_model_gives_the_same_metrics(tmp_path, tiny_chat_llama):
    train, evals = chat_pairs(tmp_path / "train.jsonl", 24, 1), chat_pairs(tmp_path / "eval.jsonl", 12, 2)
    run = tmp_path / "run"
    proc = run_cli("train", "model=hf", f"model.name_or_path={tiny_chat_llama}", "data=jsonl_preference",
                   f"data.train_file={train}", f"data.eval_file={evals}", "data.task=preference", "+strategy=lora",
                   "train.preference.loss=dpo", "train.batch_size=4", "train.lr=5e-3", "train.epochs=2",
                   "train.retention.report=false", "print_config=false", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run)
    assert results["task"] == "preference" and results["primary_metric"] == "reward_accuracy"
    metrics = results["eval"]
    assert set(metrics) == METRICS, metrics
    assert metrics["kl"] > 0 and metrics["reward_margin"] > 0  # it moved away from the reference, toward chosen
    assert set(results["baseline"]) == {"reward_accuracy"}
    assert results["techniques"]["preference"] == {"loss": "dpo", "beta": 0.1, "label_smoothing": 0.0,
                                                   "reference": "model", "simpo_gamma": 0.5,
                                                   "desirable_weight": 1.0, "undesirable_weight": 1.0}
    records = read_jsonl(run / "predictions.jsonl")
    assert len(records) == 12 and records[0]["prompt"][0]["role"] == "user"
    assert sum(r["correct"] for r in records) / 12 == pytest.approx(metrics["reward_accuracy"], abs=1e-5)
    assert not (run / "model" / "model.safetensors").exists()  # model/ holds the adapter, no reference copy

    proc = run_cli("eval", f"model_dir={run / 'model'}", "batch_size=5", "print_config=false",
                   f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = read_results(tmp_path / "eval")
    assert evaluated["eval"] == pytest.approx(metrics, abs=2e-5)  # batches of 5, not 8: padding differs
    assert evaluated["baseline"] == results["baseline"]
