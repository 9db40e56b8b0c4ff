"""Padding-free packing for SFT (data.packing=true): a packed batch gives the padded batch's loss
and each sequence's own logits (no attention across a boundary), the response-only labels
survive, a real run trains to the unpacked run's eval loss, and what cannot pack is refused."""
from __future__ import annotations

import json

import pytest
from conftest import assert_user_error, read_jsonl, read_results, run_cli

ROWS = [{"prompt": "great day today", "response": "positive"},
        {"prompt": "the train was late and my report was awful , so bad", "response": "negative"},
        {"prompt": "a table", "response": "neutral and the monday paper was on the window"},
        {"prompt": "love it", "response": "positive"}]


def sft_task(packing: bool):
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig
    from llmft.tasks.sft import SFT

    return SFT(OmegaConf.merge(OmegaConf.structured(DataConfig),
                               {"name": "x", "task": "sft", "max_length": 128, "packing": packing}))


def chat_tokenizer(path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.eos_token  # what llmft's loader does for a model without one
    return tokenizer


def encoded(tokenizer, rows=ROWS):
    from datasets import Dataset

    task = sft_task(False)
    tokens = task.tokenize(task.encode(Dataset.from_list(rows), "x.jsonl", True), tokenizer)
    return [tokens[i] for i in range(len(tokens))]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_logits_equal_the_unpacked_ones(tiny_chat_llama, attn):
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = chat_tokenizer(tiny_chat_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_llama, attn_implementation=attn).eval()
    assert model.config._attn_implementation == attn and model.config.use_cache  # the default that needs care
    features = encoded(tokenizer)
    lengths = [len(f["input_ids"]) for f in features]
    assert len(set(lengths)) == len(lengths)  # varied lengths: the padded batch has padding
    padded = sft_task(False).collator(tokenizer)(features)
    packed = sft_task(True).collator(tokenizer)(features)
    assert "attention_mask" in padded and "attention_mask" not in packed
    assert packed["input_ids"].shape == (1, sum(lengths)) and packed["use_cache"] is False

    with torch.no_grad():
        loss_padded = model(**padded).loss.item()
        loss_packed = model(**packed).loss.item()
        # the Trainer's normalisation: labels[..., 1:] != -100, the same response tokens either way
        counts = [int((b["labels"][..., 1:] != -100).sum()) for b in (padded, packed)]
        summed = [model(**b, num_items_in_batch=torch.tensor(c)).loss.item() for b, c in zip((padded, packed), counts)]
        logits = model(**packed).logits[0]
        start = 0
        for f, n in zip(features, lengths):
            alone = model(input_ids=torch.tensor([f["input_ids"]])).logits[0]
            assert torch.allclose(logits[start:start + n], alone, atol=1e-5, rtol=0), f"sequence at {start}"
            start += n
    assert loss_packed == pytest.approx(loss_padded, abs=1e-5)
    assert counts[0] == counts[1] and summed[1] == pytest.approx(summed[0], abs=1e-5)
    # and the mean loss of the sequences run one at a time, weighted by their response tokens
    with torch.no_grad():
        per = [(model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]])).loss.item(),
                sum(t != -100 for t in f["labels"][1:])) for f in features]
    assert loss_packed == pytest.approx(sum(loss * n for loss, n in per) / sum(n for _, n in per), abs=1e-5)


def test_a_cache_would_let_packed_sequences_see_each_other(tiny_chat_llama):
    """Why every packed batch says use_cache=False: with the config's use_cache=True a forward
    builds an empty cache and masking_utils then skips its packed-sequence detection."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmft.data.packing import check_model

    tokenizer = chat_tokenizer(tiny_chat_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_llama).eval()
    packed = sft_task(True).collator(tokenizer)(encoded(tokenizer)[:2])
    n = len(encoded(tokenizer)[0]["input_ids"])
    with torch.no_grad():
        second = model(input_ids=packed["input_ids"][:, n:]).logits
        right = model(**packed).logits[:, n:]
        leaky = model(**{k: v for k, v in packed.items() if k != "use_cache"}).logits[:, n:]
    assert torch.allclose(right, second, atol=1e-5)
    assert not torch.allclose(leaky, second, atol=1e-3)
    check_model(model)  # passes: sdpa keeps them apart
    model.config._attn_implementation = "my_kernel"
    from llmft.core.errors import UserError

    with pytest.raises(UserError, match="data.packing: .*'my_kernel'"):
        check_model(model)


def test_response_only_labels_survive_packing(tiny_chat_llama):
    tokenizer = chat_tokenizer(tiny_chat_llama)
    a, b = encoded(tokenizer, ROWS[:2])
    batch = sft_task(True).collator(tokenizer)([a, b])
    ids, labels, positions = (batch[k][0].tolist() for k in ("input_ids", "labels", "position_ids"))
    na = len(a["input_ids"])
    assert ids == a["input_ids"] + b["input_ids"]
    assert positions == list(range(na)) + list(range(len(b["input_ids"])))
    assert labels == [-100] + a["labels"][1:] + [-100] + b["labels"][1:]
    for raw, row, offset in ((ROWS[0], a, 0), (ROWS[1], b, na)):  # by hand: the prompt is masked, the answer not
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": raw["prompt"]}],
                                               tokenize=False, add_generation_prompt=True)
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert labels[offset:offset + n_prompt] == [-100] * n_prompt
        answer = labels[offset + n_prompt:offset + len(row["input_ids"])]
        assert answer == ids[offset + n_prompt:offset + len(row["input_ids"])] and -100 not in answer
        assert tokenizer.decode(answer).startswith(raw["response"].split()[0])
    # rows without labels (the retention report's hidden states) are padded, not packed
    plain = sft_task(True).collator(tokenizer)([{"input_ids": a["input_ids"], "attention_mask": a["attention_mask"]}])
    assert "attention_mask" in plain and "position_ids" not in plain


def sft_args(model, train_file, run_dir, *extra):
    return ["model=hf", f"model.name_or_path={model}", "data=jsonl_sft", f"data.train_file={train_file}",
            "data.eval_fraction=0.2", "train.epochs=1", "train.batch_size=8", "train.lr=3e-3",
            "train.logging_steps=1", "generate.max_new_tokens=4", "generate.max_examples=4",
            "print_config=false", f"hydra.run.dir={run_dir}", *extra]


def test_packed_run_trains_like_the_padded_one(tmp_path, tiny_chat_llama, sft_data):
    """The same seed, data and steps: the per-step losses and the eval loss match the padded run's;
    the packed run processed no padding."""
    results, losses = {}, {}
    for packing in (False, True):
        run_dir = tmp_path / f"packing-{packing}"
        proc = run_cli("train", "+strategy=full", *sft_args(tiny_chat_llama, sft_data["pairs"], run_dir),
                       f"data.packing={str(packing).lower()}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[packing] = read_results(run_dir)
        losses[packing] = [m["loss"] for m in read_jsonl(run_dir / "metrics.jsonl") if "loss" in m]
    assert len(losses[True]) == len(losses[False]) == 6
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)
    assert results[True]["eval"]["loss"] == pytest.approx(results[False]["eval"]["loss"], rel=1e-3)
    train = results[True]["train"]
    assert train["tokens_seen"] == results[False]["train"]["tokens_seen"]
    if "real_token_fraction" in train:  # runtime/throughput.py
        assert train["real_token_fraction"] == 1.0 >= results[False]["train"]["real_token_fraction"]
    # trained with sdpa per packed sequence (models/packed_attention.py), saved with the standard name
    saved = (tmp_path / "packing-True" / "model" / "config.json").read_text()
    assert "packed" not in saved and json.loads(saved).get("attn_implementation") in (None, "sdpa")


@pytest.mark.parametrize("extra, expected", [
    (["data=csv", "data.train_file=x.csv", "+strategy=full"], "data.packing: applies to data.task=sft"),
    (["data=jsonl_sft", "data.train_file=x.jsonl", "+strategy=prompt_tuning"], "strategy=prompt_tuning"),
    (["data=jsonl_sft", "data.train_file=x.jsonl", "train.neftune_alpha=5"], "train.neftune_alpha"),
])
def test_refusals(tmp_path, tiny_chat_llama, extra, expected):
    for name in ("x.csv", "x.jsonl"):
        (tmp_path / name).write_text("text,label\na,b\n")
    proc = run_cli("train", "model=hf", f"model.name_or_path={tiny_chat_llama}", *extra, "data.packing=true",
                   "print_config=false", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_user_error(proc, expected)
