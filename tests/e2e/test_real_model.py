"""The default experiment on the real pretrained MiniLM and the real tweets, shortened.

Same command as `llmft train` with fewer steps and a smaller eval set, so it fits CI. It must
learn: accuracy clearly above the majority-class baseline of the same held-out tweets.
"""
from __future__ import annotations

import pytest
from conftest import read_jsonl, read_results, run_cli

pytestmark = pytest.mark.real_model


def test_default_experiment_learns_on_real_data(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("train", "train.max_steps=40", "data.max_eval_samples=400", "print_config=false",
                   f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["model"] == "minilm" and results["data"] == "tweet_sentiment"
    assert results["params"]["total"] == pytest.approx(22.7e6, rel=0.01)
    baseline = results["baseline"]["majority_accuracy"]
    assert 0.38 < baseline < 0.46  # negative is ~42 % of the tweets
    assert results["eval"]["accuracy"] > baseline + 0.08, results["eval"]
    assert "eval accuracy" in proc.stdout and "majority-class baseline" in proc.stdout
    assert len(read_jsonl(run_dir / "predictions.jsonl")) == 400


def test_the_cards_lora_command_learns_at_its_own_defaults(tmp_path):
    """`llmft train +strategy=lora` with nothing else about the method: LoRA's own lr applies and
    the model beats the majority class (at full fine-tuning's 5e-5 it stayed at it)."""
    run_dir = tmp_path / "run"
    proc = run_cli("train", "+strategy=lora", "train.max_steps=40", "data.max_eval_samples=400",
                   "print_config=false", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["strategy"] == "lora" and results["params"]["trainable_pct"] < 2
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()
    assert [m["learning_rate"] for m in read_jsonl(run_dir / "metrics.jsonl") if "learning_rate" in m][0] <= 2e-3
    assert max(m["learning_rate"] for m in read_jsonl(run_dir / "metrics.jsonl") if "learning_rate" in m) > 1e-3
    baseline = results["baseline"]["majority_accuracy"]
    assert results["eval"]["accuracy"] > baseline + 0.05, results["eval"]
    assert results["warnings"] == [] and results["validation"]["accuracy"] > baseline
