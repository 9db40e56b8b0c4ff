"""Robustness evaluation (``llmft eval eval.perturb=...``, data/perturb.py): the perturbed copy of
the eval split is seeded, changes only the input text columns and at the rate asked; bad values
are refused in one line."""
from __future__ import annotations

import random

import pytest
from datasets import Dataset
from omegaconf import OmegaConf

from llmft.commands.evaluate import validate
from llmft.core.errors import UserError
from llmft.data.perturb import perturb_dataset, typo_word, typoable

WORDS = ["good", "morning", "the", "train", "was", "late", "again", "hello", "coffee", "all", "is", "well"]


def split(n: int = 300, words: int = 12) -> Dataset:
    rng = random.Random(0)
    return Dataset.from_dict({
        "text": [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)],
        "text_pair": [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)],
        "note": [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)],  # not an input column
        "labels": [i % 3 for i in range(n)],
    })


def words_changed(before: list[str], after: list[str]) -> float:
    pairs = [(a, b) for x, y in zip(before, after) for a, b in zip(x.split(), y.split())]
    return sum(a != b for a, b in pairs) / len(pairs)


@pytest.mark.parametrize("method", ["typo", "swap", "delete"])
def test_the_copy_is_seeded_and_only_input_columns_change(method):
    data = split()
    a, _ = perturb_dataset(data, ["text", "text_pair"], method, 0.1, seed=7)
    b, _ = perturb_dataset(data, ["text", "text_pair"], method, 0.1, seed=7)
    c, _ = perturb_dataset(data, ["text", "text_pair"], method, 0.1, seed=8)
    assert a.to_list() == b.to_list()  # the same seed: the same copy
    assert a["text"] != c["text"]  # another seed: another copy
    assert a["labels"] == data["labels"] and a["note"] == data["note"]  # labels and other columns untouched
    assert a["text"] != data["text"] and a["text_pair"] != data["text_pair"]
    # a row's copy does not depend on which other rows are in the split
    part, _ = perturb_dataset(data.select(range(50)), ["text", "text_pair"], method, 0.1, seed=7)
    assert part["text"] == a["text"][:50]


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.3])
def test_typos_hit_the_rate_asked(rate):
    """12-word texts: "at least one word per text" would make 0.05 a rate of 1/12 = 0.083."""
    data = split(n=400)
    out, reported = perturb_dataset(data, ["text"], "typo", rate, seed=1)
    measured = words_changed(data["text"], out["text"])
    assert measured == pytest.approx(reported, abs=1e-4)
    assert measured == pytest.approx(rate, abs=0.15 * rate)
    assert all(len(x.split()) == len(y.split()) for x, y in zip(data["text"], out["text"]))  # typos keep the words


def test_delete_drops_the_rate_asked():
    data = split(n=400)
    out, reported = perturb_dataset(data, ["text"], "delete", 0.1, seed=1)
    kept = sum(len(t.split()) for t in out["text"]) / sum(len(t.split()) for t in data["text"])
    assert 1 - kept == pytest.approx(reported, abs=1e-4) == pytest.approx(0.1, abs=0.015)


def test_a_typo_always_changes_a_word_it_may_change():
    for seed in range(300):  # "hello" / "all": swapping the doubled letter would change nothing
        for word in ("hello", "all", "ab", "Coffee"):
            assert typo_word(word, random.Random(seed)) != word
    assert not any(typoable(w) for w in ("a", "@user", "http://x.y", "#tag", "42"))


def eval_cfg(task="classification", **eval_options) -> OmegaConf:
    return OmegaConf.create({"batch_size": 8, "data": {"task": task},
                             "eval": {"perturb": "typo", "perturb_rate": 0.1, **eval_options}})


BAD = [
    ({"perturb_rate": 0}, "eval.perturb_rate: must be in (0, 1]"),
    ({"perturb_rate": -0.1}, "eval.perturb_rate: must be in (0, 1]"),
    ({"perturb_rate": 1.5}, "eval.perturb_rate: must be in (0, 1]"),
    ({"perturb_rate": float("nan")}, "eval.perturb_rate: must be in (0, 1]"),
    ({"task": "ner"}, "eval.perturb: perturbs the input text of data.task=classification"),
    ({"task": "qa"}, "(got qa: its labels follow word positions"),
    ({"task": "sft"}, "(got sft"),
]


@pytest.mark.parametrize("options,expected", BAD, ids=[str(o) for o, _ in BAD])
def test_bad_values_are_refused_in_one_line(options, expected):
    task = options.pop("task", "classification")
    with pytest.raises(UserError) as err:
        validate(eval_cfg(task, **options))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_valid_neighbours_pass():
    validate(eval_cfg(perturb_rate=1.0))
    validate(eval_cfg("ner", perturb="none", perturb_rate=0))  # off: not read
