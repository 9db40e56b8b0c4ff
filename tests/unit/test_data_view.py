"""``llmft check``'s data facts (tasks/data_view.py), against hand counts: lengths and padding as
the collator pads, labels per split, and for SFT what carries loss (rows left with no target,
the end-of-turn token trained or cut). In process, tiny tokenizers."""
from __future__ import annotations

import json

from conftest import compose_config, make_rows, write_csv

from llmft.tasks import data_view


def compose(*overrides: str):
    return compose_config("train", *overrides)


def facts_for(model, train, eval_, *overrides, data="csv"):
    """inspect() on what ``llmft check`` hands it: composed config, task, splits, tokenized train."""
    from llmft.data.files import load_splits
    from llmft.models.loading import load_tokenizer
    from llmft.tasks import build_task

    cfg = compose("model=hf", f"model.name_or_path={model}", f"data={data}", f"data.train_file={train}",
                  f"data.eval_file={eval_}", "data.eval_fraction=0", *overrides)
    task = build_task(cfg.data)
    splits = load_splits(cfg.data, task)
    tokenizer = load_tokenizer(str(model))
    tokenized = task.tokenize(splits["train"], tokenizer)
    return task, data_view.inspect(cfg, task, splits, tokenized, tokenizer), tokenized, tokenizer


# ------------------------------------------------------------------------------ lengths, padding
def test_length_quantiles_histogram_and_truncation_by_hand():
    f = data_view.length_facts(list(range(1, 11)), max_length=8)
    assert (f["p50"], f["p90"], f["p99"], f["max"], f["mean"]) == (5, 9, 10, 10, 5.5)
    # 10 lengths, 8 buckets wanted: integer width 2 -> 5 buckets of 2
    assert f["histogram"] == [[1, 2, 2], [3, 4, 2], [5, 6, 2], [7, 8, 2], [9, 10, 2]]
    assert (f["truncated"], f["truncated_share"]) == (2, 0.2)  # 9 and 10


def test_padding_of_hand_made_batches():
    lengths = [3, 5, 2, 2]  # 12 real tokens
    assert data_view.real_share(lengths, [0, 1, 2, 3], 2) == round(12 / (5 * 2 + 2 * 2), 4)
    assert data_view.real_share(lengths, [0, 2, 1, 3], 2) == round(12 / (3 * 2 + 5 * 2), 4)
    assert data_view.real_share(lengths, [1, 0, 2], 2) == round(10 / (5 * 2 + 2 * 1), 4)  # a short last batch


def test_padding_equals_the_collators_own_padding(tiny_bert, tmp_path):
    """The share counted for batches of 4 in row order is what the task's collator produces."""
    train = write_csv(tmp_path / "train.csv", make_rows(30, seed=3))
    task, facts, tokenized, tokenizer = facts_for(tiny_bert, train, train, "train.batch_size=4",
                                                  "data.max_length=12")
    collate = task.collator(tokenizer)
    real = padded = 0
    for start in range(0, len(tokenized), 4):
        batch = collate([tokenized[i] for i in range(start, min(start + 4, len(tokenized)))])
        real += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
    lengths = data_view.row_lengths(tokenized)
    assert sum(lengths) == real == facts["padding"]["real_tokens"]
    assert data_view.real_share(lengths, list(range(len(lengths))), 4) == round(real / padded, 4)
    assert facts["padding"]["at_max_length"] == round(real / (30 * 12), 4)
    # classification groups by length by default; grouped batches pad less than random ones
    assert facts["padding"]["run"] == "grouped"
    assert facts["padding"]["grouped"] >= facts["padding"]["random"]


# ------------------------------------------------------------------------------------- labels
def test_label_only_in_eval_is_named_and_rare_class_hinted(tiny_bert, tmp_path):
    rows = make_rows(90, seed=3)
    negative = [r for r in rows if r["label"] == "negative"][:24]
    neutral = [r for r in rows if r["label"] == "neutral"][:1]
    train = write_csv(tmp_path / "train.csv", negative + neutral)
    eval_ = write_csv(tmp_path / "eval.csv", rows[:9])  # 3 of each label
    _, facts, _, _ = facts_for(tiny_bert, train, eval_, "data.labels=[negative,neutral,positive]")
    labels = facts["labels"]
    assert labels["splits"]["train"]["counts"] == {"negative": 24, "neutral": 1, "positive": 0}
    assert labels["splits"]["eval"]["counts"] == {"negative": 3, "neutral": 3, "positive": 3}
    assert labels["only_in"] == {"eval": ["positive"]} and labels["absent_from"] == {"eval": []}
    assert labels["rare"] == [{"label": "neutral", "share": 0.04}, {"label": "positive", "share": 0.0}]
    lines = "\n".join(data_view.render(facts))
    assert "in eval but never in train: positive" in lines
    assert "imbalance: neutral is 4.0 % of train rows" in lines and "train.class_weights=balanced" in lines


def test_ner_tags_per_split_and_a_rare_entity_tag(tiny_bert, tmp_path):
    from conftest import write_conll

    train = write_conll(tmp_path / "train.conll", [(["the", "great"], ["O", "B-POS"])] * 20
                        + [(["the", "awful", "bad"], ["O", "B-NEG", "I-NEG"])])
    eval_ = write_conll(tmp_path / "eval.conll", [(["nice", "the"], ["B-POS", "O"])] * 2)
    _, facts, _, _ = facts_for(tiny_bert, train, eval_, data="conll_file")
    labels = facts["labels"]
    assert labels["kind"] == "tag"
    assert labels["splits"]["train"]["counts"] == {"O": 21, "B-NEG": 1, "B-POS": 20, "I-NEG": 1}
    assert labels["splits"]["eval"]["counts"] == {"O": 2, "B-NEG": 0, "B-POS": 2, "I-NEG": 0}
    assert labels["only_in"] == {"eval": []} and labels["absent_from"] == {"eval": ["B-NEG", "I-NEG"]}
    # among the 22 entity tags (O left out): B-NEG and I-NEG 1 each
    assert labels["rare"] == [{"label": "B-NEG", "share": round(1 / 22, 4)}, {"label": "I-NEG", "share": round(1 / 22, 4)}]
    lines = "\n".join(data_view.render(facts))
    assert "(under 5.0 %): consider train.class_weights=balanced\n" in lines + "\n"
    assert "data.sampler" not in lines  # the balanced sampler draws rows by their class: not for tags
    assert "in train but not in eval: B-NEG, I-NEG" in lines


def test_regression_values_per_split_and_eval_outside_the_train_range(tiny_bert, tmp_path):
    rows = make_rows(5, seed=3)
    train = write_csv(tmp_path / "train.csv", [{"text": r["text"], "label": v} for r, v in zip(rows, ["0", "1", "2", "3"])])
    eval_ = write_csv(tmp_path / "eval.csv", [{"text": r["text"], "label": v} for r, v in zip(rows, ["1", "5"])])
    _, facts, _, _ = facts_for(tiny_bert, train, eval_, "data.task=regression")
    labels = facts["labels"]
    assert labels["splits"]["train"] == {"rows": 4, "mean": 1.5, "std": round(1.25 ** 0.5, 4), "min": 0.0, "max": 3.0}
    assert labels["splits"]["eval"]["mean"] == 3.0 and labels["outside_train_range"] == {"eval": 1}
    assert "eval: 1 row(s) outside the train range" in "\n".join(data_view.render(facts))


# ---------------------------------------------------------------------------------------- sft
def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


# The tiny chat tokenizer: one token per word, "\n" dropped; a chat of u user words and a assistant
# words is <|im_start|> user u.. <|im_end|> <|im_start|> assistant a.. <|im_end|>: prompt u + 5
# tokens, whole chat u + a + 6; labels on the a words and the last <|im_end|> (the eos).
CHATS = [chat("the a today", "positive"),              # 8 + 2 = 10 tokens: whole at max_length 10
         chat("the a today my was", "negative"),       # prompt 10: no target left -> dropped
         chat("the a", "happy great nice"),            # 7 + 4 = 11: the end token is cut -> partial
         chat("today", "neutral")]                     # 6 + 2 = 8


def test_sft_loss_tokens_no_target_rows_and_the_end_token(tiny_chat_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(data_view, "SHOWN", 3)  # every kept row rendered
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    _, facts, tokenized, _ = facts_for(tiny_chat_llama, path, path, "data.max_length=10", data="jsonl_sft")
    assert len(tokenized) == 3
    assert facts["lengths"]["histogram"][0][0] == 8 and facts["lengths"]["max"] == 12
    assert facts["lengths"]["truncated"] == 2  # 12 (no target) and 11 (end token cut)
    loss = facts["loss"]
    assert loss["eos"]["token"] == "<|im_end|>" and loss["end_of_turn"] == loss["eos"]
    assert (loss["no_target"], loss["no_target_share"], loss["no_target_in_sample"]) == (1, 0.25, 1)
    assert (loss["partial"], loss["partial_share"]) == (1, 0.25)
    assert (loss["rows_read"], loss["eos_trained"], loss["end_of_turn_trained"]) == (3, 2, 2)
    assert loss["loss_token_share"] == round((2 + 3 + 2) / (10 + 10 + 8), 4)
    shown = {e["loss_tokens"]: e for e in loss["examples"]}
    assert shown[3]["text"].endswith("[[happy great nice]]") and not shown[3]["stops"]
    assert shown[2]["stops"] and shown[2]["eos_trained"] and "]]" in shown[2]["text"]
    normal = next(e for e in loss["examples"] if "positive" in e["text"])
    assert normal["text"].endswith("[[positive <|im_end|>]]") and normal["at_max_length"]
    assert facts["padding"]["run"] == "random"
    assert facts["padding"]["at_max_length"] == round(28 / 30, 4)
    lines = "\n".join(data_view.render(facts))
    assert "end of turn trained: NO" in lines and "end of turn trained: yes" in lines
    assert "33.3 % of the rows never learn to stop" in lines
    assert "rows with no target token left at data.max_length=10: 1 (25.0 % of train; dropped)" in lines


def test_sft_packing_pads_nothing(tiny_chat_llama, tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    _, facts, _, _ = facts_for(tiny_chat_llama, path, path, "data.max_length=32", "data.packing=true",
                               data="jsonl_sft")
    assert facts["padding"]["run"] == "packed" and facts["padding"]["packed"] == 1.0
    assert facts["loss"]["eos_trained"] == 4 and facts["loss"]["no_target"] == 0


def test_render_is_empty_without_facts():
    assert data_view.render({}) == []


