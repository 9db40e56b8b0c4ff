"""Speed that does not cost correctness: batches grouped by length (every example once per epoch,
near-uniform batches, the same order after a resume), and the throughput figures in results.json
(real-token fraction, tokens/s, MFU) computed by hand on a known batch."""
from __future__ import annotations

import random
import shutil

import pytest
from conftest import LABELS, assert_user_error, read_jsonl, read_results, run_cli, tiny_train_args, write_csv

from llmft.data.grouping import WINDOW, grouped_order


def real_fraction(lengths, order, batch):
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    real = sum(lengths[i] for b in batches for i in b)
    return real / sum(max(lengths[i] for i in b) * len(b) for b in batches)


def test_grouped_order_sees_each_example_once_in_near_uniform_batches():
    rng = random.Random(0)
    lengths = [min(128, int(rng.lognormvariate(3.3, 0.5))) for _ in range(4003)]  # long-tailed, like tweets
    order = grouped_order(lengths, 32, seed=1)
    assert sorted(order) == list(range(4003))  # each example exactly once
    shuffled = random.Random(1).sample(range(4003), 4003)
    assert real_fraction(lengths, order, 32) > 0.95 > 0.7 > real_fraction(lengths, shuffled, 32)
    assert max(lengths[i] for i in order[:32]) == max(lengths)  # out of memory shows at step 1
    tops = [max(lengths[i] for i in order[b:b + 32]) for b in range(32, 32 * WINDOW, 32)]
    assert tops != sorted(tops, reverse=True)  # the batches are shuffled, not longest to shortest
    assert grouped_order(lengths, 32, seed=1) == order and grouped_order(lengths, 32, seed=2) != order
    # N processes of batch B draw what one process of batch N x B draws: the order is per global batch
    assert grouped_order(lengths, 16 * 2, seed=1) == order


def varied_data(root):
    rng = random.Random(3)
    rows = []
    for i in range(96):
        label = LABELS[i % 3]
        n = rng.choice([2, 3, 4, 6, 10, 20, 30])
        rows.append({"text": " ".join(rng.choice(["the", "a", "today", label, "my", "so"]) for _ in range(n)),
                     "label": label})
    return {"train": write_csv(root / "train.csv", rows), "eval": write_csv(root / "eval.csv", rows[:30])}


def test_grouped_run_resumes_in_the_uninterrupted_order_and_reports_its_throughput(tmp_path, tiny_bert):
    """Grouping is on by default for classification. A run resumed in its second epoch from a
    checkpoint logs the uninterrupted run's losses (a sampler that counted its own epochs would
    replay the first epoch's order); the
    real-token fraction beats the random order's on varied lengths; MFU is in (0, 1]."""
    data = varied_data(tmp_path)
    extra = ["train.epochs=2", "train.save_steps=6", "train.logging_steps=1", "train.save_total_limit=5"]
    whole, resumed, plain = tmp_path / "whole", tmp_path / "resumed", tmp_path / "plain"
    proc = run_cli("train", *tiny_train_args(tiny_bert, data, whole, *extra))
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copytree(whole / "checkpoints" / "checkpoint-18", resumed / "checkpoints" / "checkpoint-18")
    proc = run_cli("train", *tiny_train_args(tiny_bert, data, resumed, *extra))
    assert proc.returncode == 0, proc.stderr[-2000:]

    def losses(run):
        return {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r and r["step"] > 18}

    assert len(losses(whole)) == 6 and losses(resumed) == pytest.approx(losses(whole), rel=1e-5)
    grouped, again = read_results(whole)["train"], read_results(resumed)["train"]
    assert grouped["group_by_length"] is True and again["resumed_from_step"] == 18
    assert 0 < grouped["mfu"] <= 1 and grouped["model_flops_per_s"] > 0 and "matmul probe" in grouped["peak_source"]
    # tokens/s counts this session's tokens only: the resumed run trained the last 6 of 24 steps
    before = {r["step"]: r["num_input_tokens_seen"] for r in read_jsonl(whole / "metrics.jsonl") if "loss" in r}[18]
    session = again["tokens_per_s"] * again["runtime_s"]  # runtime_s is rounded to 10 ms
    assert session == pytest.approx(grouped["tokens_seen"] - before, rel=0.2) and session < 0.5 * again["tokens_seen"]

    proc = run_cli("train", *tiny_train_args(tiny_bert, data, plain, *extra, "data.group_by_length=false"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    random_order = read_results(plain)["train"]
    assert random_order["group_by_length"] is False
    assert grouped["real_token_fraction"] > 0.85 > 0.7 > random_order["real_token_fraction"] > 0
    assert grouped["tokens_seen"] == random_order["tokens_seen"]  # the same examples, less padding


def test_model_flops_by_hand():
    """A 2-layer model of width 4 with 100 matmul weights (60 trainable), 2 sequences of 3 and 5
    real tokens padded to 5: forward 2*100*8 + 4*2*4*(9+25) = 2688; training 2*2688 + 2*60*8 = 6336."""
    import torch

    from llmft.runtime.throughput import TokenCounter, model_shape, training_flops

    class Config:
        num_hidden_layers, hidden_size = 2, 4

    model = torch.nn.Sequential(torch.nn.Linear(10, 6), torch.nn.Linear(5, 8))  # 60 + 40 weights
    model[1].weight.requires_grad_(False)
    model.config = Config()
    counter = TokenCounter()
    counter.add({"input_ids": torch.zeros(2, 5, dtype=torch.long),
                 "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])})
    assert (counter.real, counter.processed, counter.squares) == (8, 10, 34) and counter.real_fraction == 0.8
    assert model_shape(model) == {"linear": 100, "trainable_linear": 60, "encoder_decoder": False, "layers": 2,
                                  "hidden": 4}
    assert training_flops(model_shape(model), counter) == 6336
    packed = TokenCounter()  # packed rows: positions restart at 0 for each sequence, no padding
    packed.add({"input_ids": torch.zeros(1, 8, dtype=torch.long),
                "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])})
    assert (packed.real, packed.processed, packed.squares) == (8, 8, 34)


def test_group_by_length_refuses_what_it_cannot_do(tmp_path, tiny_bert, tiny_data):
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, tmp_path / "r", "data.sampler=balanced",
                                             "data.group_by_length=true"))
    assert_user_error(proc, "data.group_by_length", "balanced")
    assert not (tmp_path / "r").exists()


def test_gradient_checkpointing_still_trains_the_adapter(tmp_path, tiny_bert, tiny_data):
    """Recomputed activations with frozen embeddings: a reentrant checkpoint would give LoRA no
    gradient at all (the run would finish, untrained). The adapter must move, the loss must match
    the run without checkpointing (same math, recomputed)."""
    from safetensors.torch import load_file

    runs = {}
    for on in (True, False):
        run = tmp_path / f"gc-{on}"
        proc = run_cli("train", "+strategy=lora", f"hardware.gradient_checkpointing={str(on).lower()}",
                       *tiny_train_args(tiny_bert, tiny_data, run, "train.max_steps=6"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[on] = read_results(run)["train"]["final_loss"]
        adapter = load_file(run / "model" / "adapter_model.safetensors")
        assert any("lora_B" in k and t.abs().max() > 0 for k, t in adapter.items())
    assert runs[True] == pytest.approx(runs[False], abs=1e-4)


def test_mfu_is_left_out_where_it_would_be_wrong_and_a_read_only_cache_costs_nothing(tmp_path, monkeypatch):
    """An encoder-decoder's decoder tokens are not counted: no MFU rather than a wrong one. An
    unwritable $LLMFT_CACHE must not fail a finished run at its results."""
    import torch

    from llmft.runtime.throughput import TokenCounter, summary

    counter = TokenCounter()
    counter.add({"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4)})
    model = torch.nn.Linear(4, 4)
    model.config = type("Config", (), {"is_encoder_decoder": True})()
    assert summary(model, counter, 1.0, "cpu", "fp32") == {"real_token_fraction": 1.0}
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LLMFT_CACHE", str(blocker / "cache"))  # below a file: mkdir fails
    model.config = type("Config", (), {"num_hidden_layers": 1, "hidden_size": 4})()
    figures = summary(model, counter, 1e-5, "cpu", "fp32")  # 1,792 FLOPs in 10 us
    assert 0 < figures["mfu"] <= 1 and "not writable" in figures["peak_source"]
