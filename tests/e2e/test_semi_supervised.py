"""Unlabelled data: self-training (train.self_training) and PET's ensemble (strategy.ensemble,
final classifier on soft labels, iPET), each checked against figures computed here from the
saved stage models."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import (WORDS, assert_user_error, make_rows, prompt_args, read_jsonl, read_results, run_cli,
                      tiny_train_args, write_csv)

from llmft.runtime.results import kind_of, problems


def softmax(x, t=1.0):
    z = np.asarray(x, dtype="float64") / t
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def test_confident_rows_are_those_at_or_above_the_threshold():
    from llmft.techniques.self_training import confident

    probs = np.array([[0.95, 0.05], [0.5, 0.5], [0.1, 0.9], [0.2, 0.8], [0.99, 0.01]])
    assert confident(probs, 0.9, None) == [0, 2, 4]
    assert confident(probs, 0.9, 2) == [0, 4]  # the two most confident
    assert confident(probs, 1.0, None) == []


def test_soft_targets_are_cross_entropy_against_the_distribution():
    import torch

    from llmft.techniques.objective import Objective

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    loss, _ = Objective("sequence", soft=True)(None, {"labels": targets},
                                               type("Out", (), {"logits": logits, "loss": None})())
    expected = -(targets * logits.log_softmax(-1)).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)

    # only float lists are distributions: token ids (NER, SFT, seq2seq) and class ids are not
    from datasets import Dataset

    from llmft.techniques.objective import soft_targets

    assert soft_targets(Dataset.from_dict({"labels": [[0.7, 0.2, 0.1]]}))
    assert not soft_targets(Dataset.from_dict({"labels": [[5, 6, -100]]}))
    assert not soft_targets(Dataset.from_dict({"labels": [2]}))


def bert_scores(model_dir, texts):
    """Class probabilities of a saved full model, computed with transformers alone."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")).logits
    return softmax(logits.numpy())


def test_self_training_adds_exactly_the_confident_rows(tmp_path, tiny_data, tiny_bert):
    import random

    from conftest import _FILLER, _WORDS

    rng = random.Random(5)  # clear rows, and rows with a word of every label (the model is unsure of some)
    mixed = [" ".join(rng.sample(_FILLER, 3) + [rng.choice(_WORDS[k]) for k in sorted(_WORDS)]) for _ in range(20)]
    # and rows of filler words only: nothing to go by, so the model stays unsure of them whatever its init
    # (the tiny model's random weights differ per session; clear and mixed rows alone can all pass 0.95)
    filler = [" ".join(rng.sample(_FILLER, 6)) for _ in range(10)]
    pool = [{"text": r["text"]} for r in make_rows(20, seed=7)] + [{"text": t} for t in mixed + filler]
    unlabeled = write_csv(tmp_path / "unlabeled.csv", pool)
    run_dir = tmp_path / "run"
    threshold = 0.95
    proc = run_cli("train", "+strategy=full", f"data.unlabeled_file={unlabeled}", "train.self_training.rounds=2",
                   f"train.self_training.threshold={threshold}", "data.validation_fraction=0.2",
                   *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.epochs=20", "train.lr=1e-3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    rounds = results["self_training"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    labelled = rounds[0]["trained_on"]

    # round 0's model, read with transformers: the rows at or above the threshold are the ones added
    probs = bert_scores(run_dir / "stages" / "round-0" / "model", [r["text"] for r in pool])
    confident = [i for i in range(len(pool)) if probs[i].max() >= threshold]
    assert 0 < len(confident) < len(pool), "pick a threshold that splits this pool"
    assert rounds[0]["added"] == len(confident)
    added = read_jsonl(run_dir / "stages" / "round-0" / "pseudo_labels.jsonl")
    assert [r["text"] for r in added] == [pool[i]["text"] for i in confident]
    labels = json.loads((run_dir / "model" / "llmft.json").read_text())["labels"]
    assert [r["label"] for r in added] == [labels[int(probs[i].argmax())] for i in confident]
    assert rounds[1]["trained_on"] == labelled + len(confident)
    assert results["num_train_examples"] == labelled + len(confident) + rounds[1]["added"]
    assert rounds[0]["validation"] and "accuracy" in rounds[0]["validation"]
    assert (run_dir / "model" / "model.safetensors").is_file()  # the final model is the run's own

    # a rerun skips every finished stage and reports the same
    proc = run_cli("train", "+strategy=full", f"data.unlabeled_file={unlabeled}", "train.self_training.rounds=2",
                   f"train.self_training.threshold={threshold}", "data.validation_fraction=0.2",
                   *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.epochs=20", "train.lr=1e-3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_results(run_dir)
    timeless = lambda rs: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rs]  # noqa: E731
    assert again["reevaluated"] and timeless(again["self_training"]["rounds"]) == timeless(rounds)
    assert again["eval"] == results["eval"]


def cloze_pool(tmp_path):
    import random

    rng = random.Random(11)
    filler = ["the", "a", "today", "my", "was", "this", "it", "so"]
    rows = [{"text": " ".join(rng.sample(filler, 3) + [word])} for word in WORDS.values() for _ in range(6)]
    return write_csv(tmp_path / "pool.csv", rows), [r["text"] for r in rows]


PATTERNS = "data.prompt.patterns=[{template:'{text}'},{template:'so {text}'}]"


def member_scores(model_dir, texts):
    """A PET member's verbalizer scores, through llmft's loader (the prompt classifier)."""
    import torch
    from datasets import Dataset

    from llmft.artifacts import load_saved, read_metadata
    from llmft.strategies import strategy_class
    from llmft.tasks import TASKS

    meta = read_metadata(model_dir)
    task = TASKS.get("classification").from_metadata(None, meta)
    model, tokenizer = load_saved(model_dir, task, meta)
    prompts = strategy_class("pet").prepare_saved_data({"eval": Dataset.from_dict({"text": texts})},
                                                       tokenizer, meta)["eval"]
    prompts = list(prompts["text"])
    with torch.no_grad():
        return model(**tokenizer(prompts, padding=True, return_tensors="pt")).logits.numpy()


def test_pet_ensemble_averages_its_members_and_trains_the_final_classifier_on_their_soft_labels(
        tmp_path, echo_lm, cloze_data):
    pool_file, pool = cloze_pool(tmp_path)
    run_dir = tmp_path / "run"
    proc = run_cli("train", "+strategy=pet", "strategy.ensemble=true", PATTERNS, f"data.unlabeled_file={pool_file}",
                   "train.max_steps=2", "train.batch_size=8", "train.lr=1e-3", "strategy.final_lr=1e-3",
                   *prompt_args(echo_lm, cloze_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert kind_of(results) == "train" and problems(results) == []  # the final classifier's run, PET's report
    members = results["pet"]["generations"][0]["members"]
    assert [m["stage"] for m in members] == ["pattern-0", "pattern-1"]

    # the ensemble: each member's scores on the held-out split, averaged, then argmax
    eval_rows = read_jsonl(run_dir / "stages" / "pattern-0" / "predictions.jsonl")
    texts = [r["text"] for r in read_jsonl(run_dir / "predictions.jsonl")]
    labels = ["negative", "neutral", "positive"]
    gold = [labels.index(r["label"]) for r in eval_rows]
    scores = [member_scores(run_dir / "stages" / m["stage"] / "model", texts) for m in members]
    mean = np.mean(scores, axis=0)
    assert results["pet"]["ensemble"]["eval"]["accuracy"] == pytest.approx(float(np.mean(mean.argmax(-1) == gold)))

    # the soft labels: softmax(mean member scores / T=2) on the unlabelled rows
    soft = read_jsonl(run_dir / "soft_labels.jsonl")
    assert [r["text"] for r in soft] == pool
    member_pool = np.mean([member_scores(run_dir / "stages" / m["stage"] / "model", pool) for m in members], axis=0)
    assert np.allclose([r["probs"] for r in soft], softmax(member_pool, 2.0), atol=1e-4)

    # the final classifier (the run itself): a sequence classifier trained on labelled + soft rows
    meta = json.loads((run_dir / "model" / "llmft.json").read_text())
    assert meta["strategy"] == "full" and results["num_train_examples"] == 30 + len(pool)
    assert results["train"]["steps"] == 2


def test_ipet_trains_a_second_generation_on_the_other_patterns_labels(tmp_path, echo_lm, cloze_data):
    pool_file, pool = cloze_pool(tmp_path)
    run_dir = tmp_path / "run"
    proc = run_cli("train", "+strategy=pet", "strategy.ensemble=true", PATTERNS, f"data.unlabeled_file={pool_file}",
                   "strategy.generations=2", "strategy.final=none", "train.max_steps=2", "train.batch_size=8",
                   "train.lr=1e-3", *prompt_args(echo_lm, cloze_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert kind_of(results) == "pet_ensemble" and problems(results) == []
    gens = results["pet"]["generations"]
    assert [[m["stage"] for m in g["members"]] for g in gens] == [["gen0-pattern-0", "gen0-pattern-1"],
                                                                  ["gen1-pattern-0", "gen1-pattern-1"]]
    # generation 1: the 30 labelled rows + min(pool, 30 x 5) pseudo-labelled ones, in class proportions
    assert all(m["trained_on"] == 30 + len(pool) for m in gens[1]["members"])
    assert not (run_dir / "model").exists() and results["eval"] == results["pet"]["ensemble"]["eval"]

    # llmft report: the run is one row (its stages are not runs of their own)
    proc = run_cli("report", run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    body = (run_dir / "report.md").read_text().splitlines()[2:]
    assert len(body) == 1 and "pet" in body[0], body


@pytest.mark.parametrize("extra, message", [
    (["+strategy=pet", "strategy.ensemble=true", "data.prompt.patterns=[{template:'{text}'}]"],
     "data.prompt.patterns: strategy.ensemble needs at least 2 patterns"),
    (["+strategy=pet", "strategy.ensemble=true", PATTERNS, "strategy.generations=2"],
     "strategy.generations: iPET labels unlabelled data"),
    (["+strategy=full", "data.unlabeled_from_train=5"], "nothing reads unlabelled data"),
    (["+strategy=zero_shot", "train.self_training.rounds=1", "data.unlabeled_from_train=5"],
     "strategy=zero_shot trains nothing"),
    (["+strategy=full", "train.self_training.rounds=1"], "needs unlabelled inputs"),
])
def test_unlabelled_data_errors(tmp_path, echo_lm, cloze_data, extra, message):
    proc = run_cli("train", *extra, *prompt_args(echo_lm, cloze_data, tmp_path / "run"))
    assert_user_error(proc, message)
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_round_that_adds_nothing_is_reported(tmp_path, tiny_data, tiny_bert):
    run_dir = tmp_path / "run"
    proc = run_cli("train", "+strategy=full", "data.unlabeled_from_train=20", "train.self_training.rounds=1",
                   "train.self_training.threshold=1.0", *tiny_train_args(tiny_bert, tiny_data, run_dir,
                                                                          "train.max_steps=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["self_training"]["rounds"][0]["added"] == 0
    assert any("no unlabelled row reached train.self_training.threshold=1.0" in w for w in results["warnings"])
    # the 20 rows were taken out of the 96 labelled ones, never trained on with their labels
    assert results["num_train_examples"] == 96 - 20
