"""scripts/benchmark_sft.py compares like with like: TRL's SFTTrainer and llmft get the same token
rows and label the same answer tokens from the script's data prep, their padding-free batches
hold the same tokens, labels and positions, and the one eval loss both are scored by is the token
mean over the labelled tokens. No training."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import make_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import benchmark_sft  # noqa: E402

IGNORE = -100


@pytest.fixture(scope="module")
def chat_rows() -> list[dict]:
    rows = make_rows(12, seed=3)
    # answers of different lengths, so batches need padding (or flattening)
    return [{"prompt": f"sentiment of : {r['text']}", "response": " ".join([r["label"]] * (1 + i % 3))}
            for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def lm(tiny_chat_llama):
    import torch
    from transformers import AutoModelForCausalLM

    from llmft.models.loading import load_tokenizer

    return (AutoModelForCausalLM.from_pretrained(str(tiny_chat_llama), dtype=torch.float32),
            load_tokenizer(str(tiny_chat_llama)))


def trl(lm, rows, padding_free: bool, tmp_path):
    model, tokenizer = lm
    return benchmark_sft.trl_trainer(model, tokenizer, rows, tmp_path / "trl", steps=1, batch_size=4, lr=1e-3,
                                     padding_free=padding_free, max_length=128, lora=False)


@pytest.mark.parametrize("padding_free", [True, False])
def test_trl_and_llmft_rows_and_labels_are_the_same(lm, chat_rows, padding_free, tmp_path):
    ours = benchmark_sft.llmft_tokens(chat_rows, lm[1], max_length=128)
    theirs = list(trl(lm, chat_rows, padding_free, tmp_path).train_dataset)
    assert len(ours) == len(theirs) == len(chat_rows)
    for o, t in zip(ours, theirs):
        assert o["input_ids"] == list(t["input_ids"])
        assert o["labels"] == list(t["labels"])
        labelled = [i for i, label in enumerate(o["labels"]) if label != IGNORE]
        # the answer and its end of turn, a span that ends the row (ChatML's last "\n" included)
        assert labelled and labelled == list(range(labelled[0], len(o["labels"])))
        assert lm[1].eos_token_id in [o["labels"][i] for i in labelled]


def test_padding_free_batches_are_the_same(lm, chat_rows, tmp_path):
    from llmft.data.packing import PackingCollator

    trainer = trl(lm, chat_rows, True, tmp_path)
    features = [trainer.train_dataset[i] for i in range(4)]
    theirs = trainer.data_collator(features)
    ours = PackingCollator(None)([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
    for key in ("input_ids", "labels", "position_ids"):
        assert theirs[key].tolist() == ours[key].tolist(), key
    assert "attention_mask" not in theirs and "attention_mask" not in ours
    assert int((ours["labels"] != IGNORE).sum()) == sum(sum(x != IGNORE for x in f["labels"]) for f in features)


def test_eval_loss_is_the_token_mean_over_labelled_tokens(lm, chat_rows):
    import torch

    model, tokenizer = lm
    examples = benchmark_sft.llmft_tokens(chat_rows[:5], tokenizer, max_length=128)
    loss, count = benchmark_sft.eval_loss(model, examples, tokenizer.pad_token_id, batch_size=2)
    # one row at a time, unpadded: each row's summed next-token cross-entropy, over all labelled tokens
    total = n = 0
    with torch.no_grad():
        for e in examples:
            logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
            target = torch.tensor(e["labels"][1:])
            keep = target != IGNORE
            total += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
            n += int(keep.sum())
    assert count == n == sum(sum(x != IGNORE for x in e["labels"][1:]) for e in examples)
    assert loss == pytest.approx(total / n, rel=1e-5)


def test_trl_padding_free_loss_on_sdpa_is_the_padded_loss(tiny_chat_llama, chat_rows, tmp_path):
    """TRL documents padding_free for FlashAttention; on the CPU (sdpa) its flattened batch must
    still keep the chats apart, or the trl-lora row would be fast for a wrong loss."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmft.models.loading import load_tokenizer

    losses = {}
    for padding_free in (True, False):
        model = AutoModelForCausalLM.from_pretrained(str(tiny_chat_llama), dtype=torch.float32,
                                                     attn_implementation="sdpa")
        trainer = trl((model, load_tokenizer(str(tiny_chat_llama))), chat_rows, padding_free, tmp_path)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        assert ("attention_mask" in batch) is not padding_free
        with torch.no_grad():
            losses[padding_free] = trainer.compute_loss(trainer.model.eval(), batch).item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
