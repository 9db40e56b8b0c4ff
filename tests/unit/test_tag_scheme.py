"""Token tagging by scheme (data.tag_scheme): BIO as before; BIOES validated per sentence, scored
in seqeval's strict mode, its CRF allowing only BIOES paths; none (POS tags, any tag set) scored
per token and per tag, its CRF unconstrained. Metrics against hand computations; one run of each
new scheme in process, its saved model predicting tags per word."""
from __future__ import annotations

import copy
import json
import random

import pytest
from conftest import compose_config, read_jsonl, refused

POS = {"the": "DT", "a": "DT", "my": "PRP$", "was": "VBD", "it": "PRP", "so": "RB", "today": "NN",
       "great": "JJ", "awful": "JJ", "table": "NN", "report": "NN", "love": "VBP", "hate": "VBP", ".": "."}


def compose(command: str, *overrides: str):
    return compose_config(command, *overrides)


def task_for(scheme: str, labels=None):
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig
    from llmft.tasks.ner import NER

    return NER(OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "t", "task": "ner", "tag_scheme": scheme}),
               labels=labels)


def pos_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    words = [w for w in POS if w != "."]
    out = []
    for _ in range(n):
        tokens = rng.sample(words, rng.randint(3, 6)) + ["."]
        out.append((tokens, [POS[w] for w in tokens]))
    return out


def bioes_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(2, 5)):
            kind = rng.choice(["O", "O", "POS"])
            if kind == "O":
                tokens.append(rng.choice(["the", "a", "today", "my", "was"]))
                tags.append("O")
            else:
                words = rng.sample(["great", "happy", "love", "nice"], rng.randint(1, 3))
                tokens += words
                tags += ["S-POS"] if len(words) == 1 else ["B-POS", *["I-POS"] * (len(words) - 2), "E-POS"]
        out.append((tokens, tags))
    return out


def write_conll(path, sentences):
    path.write_text("\n\n".join("\n".join(f"{t} {g}" for t, g in zip(*s)) for s in sentences) + "\n")
    return path


# --------------------------------------------------------------------------- metrics by hand
GOLD = [["DT", "NN", "VB"], ["DT", "NN"]]
PREDICTED = [["DT", "VB", "VB"], ["JJ", "NN"]]


def test_tag_metrics_match_a_hand_computation():
    """3 of 5 words right. DT: P 1/1 R 1/2; NN: P 1/1 R 1/2; VB: P 1/2 R 1/1 (F1 2/3 each); JJ is
    predicted, never gold: P 0 R 0 F1 0 and it counts in the macro mean (2/3 * 3 + 0) / 4."""
    from llmft.tasks.ner import tag_metrics

    m = tag_metrics(GOLD, PREDICTED)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["macro_f1"] == pytest.approx(0.5)
    assert m["per_tag"]["DT"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert m["per_tag"]["VB"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1}
    assert m["per_tag"]["JJ"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_precision"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)


def test_none_scores_only_each_words_first_subword_and_reports_accuracy_as_primary():
    """The Trainer's logits and labels: -100 marks [CLS], [SEP] and continuation pieces, never scored."""
    from types import SimpleNamespace

    import numpy as np

    labels = ["DT", "JJ", "NN", "VB"]
    task = task_for("none", labels)
    assert task.primary_metric == "accuracy" and task.loop_metric_names == ("accuracy", "macro_f1")
    gold_ids = np.full((2, 6), -100)
    predicted_ids = np.zeros((2, 6), dtype=int) + labels.index("VB")  # unscored positions say VB: must not count
    # sentence 1: words at 1, 2, 4 (3 is a continuation); sentence 2: words at 1, 2
    for row, positions, gold, pred in ((0, [1, 2, 4], GOLD[0], PREDICTED[0]), (1, [1, 2], GOLD[1], PREDICTED[1])):
        gold_ids[row, positions] = [labels.index(t) for t in gold]
        predicted_ids[row, positions] = [labels.index(t) for t in pred]
    logits = np.eye(len(labels))[predicted_ids]
    assert task.loop_metrics(SimpleNamespace(predictions=logits, label_ids=gold_ids)) == pytest.approx({"accuracy": 0.6, "macro_f1": 0.5})


def test_bioes_is_scored_strictly_a_span_with_a_wrong_end_counts_wrong():
    """Gold PER spans words 1-3 and LOC word 5. The prediction never closes PER (I-PER where E-PER
    belongs): BIO's default reading would still count it; strict BIOES finds only LOC: P 1/1, R 1/2."""
    from llmft.tasks.ner import entity_metrics

    gold = [["B-PER", "I-PER", "E-PER", "O", "S-LOC"]]
    predicted = [["B-PER", "I-PER", "I-PER", "O", "S-LOC"]]
    strict = task_for("bioes", ["O", "B-PER", "E-PER", "I-PER", "S-LOC"]).scores(gold, predicted)
    assert (strict["precision"], strict["recall"]) == (1.0, 0.5) and strict["f1"] == pytest.approx(2 / 3)
    assert strict["per_type"]["PER"]["f1"] == 0.0 and strict["per_type"]["LOC"]["f1"] == 1.0
    assert entity_metrics(gold, predicted)["f1"] == 1.0  # the lenient reading BIO keeps (conlleval's)


def test_baselines_by_scheme():
    """none: the train split's commonest tag everywhere (NN, 3 of 6 eval words) and each word's own
    commonest train tag (unseen words: NN): 'run' VB, 'slowly' NN (unseen, wrong: RB), so 5 of 6."""
    from datasets import Dataset

    task = task_for("none")
    train = task.encode(Dataset.from_dict({"tokens": [["dogs", "run", "home"], ["cats", "run", "fast"], ["home", "dogs"]],
                                           "tags": [["NN", "VB", "NN"], ["NN", "VB", "RB"], ["NN", "NN"]]}), "t", True)
    eval_ = task.encode(Dataset.from_dict({"tokens": [["dogs", "run", "slowly"], ["cats", "run", "home"]],
                                           "tags": [["NN", "VB", "RB"], ["NN", "VB", "NN"]]}), "e", False)
    assert task.labels == ["NN", "RB", "VB"]
    baseline = task.baseline(train, eval_)
    assert baseline["majority_label"] == "NN" and baseline["majority_accuracy"] == pytest.approx(3 / 6)
    assert baseline["word_majority_accuracy"] == pytest.approx(5 / 6)
    # macro-F1 of always-NN: NN P 3/6 R 3/3 F1 2/3; VB and RB 0
    assert baseline["majority_macro_f1"] == pytest.approx((2 / 3) / 3)
    records = [{"tokens": [], "prediction": ["NN", "NN", "NN"], "label": ["NN", "VB", "RB"]}]
    assert any("majority-tag baseline" in w for w in task.warnings({"accuracy": 0.5}, baseline, records))
    assert any("tags every word 'NN'" in w for w in task.warnings({"accuracy": 0.9}, baseline, records))


# --------------------------------------------------------------------------- the CRF by scheme
def _crf(scheme: str, labels: list[str]):
    import torch

    return task_for(scheme, labels).crf_tagger(torch.nn.Linear(1, 1))


BIOES_LABELS = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]


def test_crf_with_bioes_never_decodes_an_invalid_path():
    import torch

    from llmft.core.errors import UserError
    from llmft.data.formats import check_bioes_sequence
    from llmft.models.crf import FORBIDDEN

    tagger = _crf("bioes", BIOES_LABELS)
    t = BIOES_LABELS.index
    assert tagger.crf.transitions[t("O"), t("I-PER")] == FORBIDDEN
    assert tagger.crf.transitions[t("B-PER"), t("E-LOC")] == FORBIDDEN
    assert tagger.crf.transitions[t("E-PER"), t("I-PER")] == FORBIDDEN
    assert tagger.crf.transitions[t("B-PER"), t("O")] == FORBIDDEN  # a span left open
    assert tagger.crf.start_transitions[t("E-PER")] == FORBIDDEN
    assert tagger.crf.end_transitions[t("B-PER")] == FORBIDDEN and tagger.crf.end_transitions[t("I-LOC")] == FORBIDDEN
    assert tagger.crf.end_transitions[t("S-PER")] > FORBIDDEN / 2
    torch.manual_seed(0)
    paths = tagger.crf.decode(torch.randn(200, 6, len(BIOES_LABELS)) * 5)
    for path in paths:
        check_bioes_sequence([BIOES_LABELS[i] for i in path], "decoded")
    with pytest.raises(UserError):  # and the check above does catch what argmax alone gives
        check_bioes_sequence(["B-PER", "O"], "argmax")
    # the last word's scores alone say B-PER; BIOES cannot end there: S-PER
    emissions = torch.tensor([[[3.0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 3.0, 0, 0, 2.0, 0, 0, 0, 0]]])
    assert [BIOES_LABELS[i] for i in tagger.crf.decode(emissions)[0]] == ["O", "S-PER"]


def test_crf_without_a_scheme_allows_every_transition():
    import torch

    from llmft.models.crf import FORBIDDEN

    labels = ["DT", "I-NN", "NN", "VB"]  # I-NN is just a tag here, free to follow anything
    tagger = _crf("none", labels)
    for scores in (tagger.crf.transitions, tagger.crf.start_transitions, tagger.crf.end_transitions):
        assert (scores.abs() < 1).all() and not (scores == FORBIDDEN).any()
    emissions = torch.tensor([[[0, 3.0, 0, 0], [0, 3.0, 0, 0], [3.0, 0, 0, 0], [0, 3.0, 0, 0]]])
    assert tagger.crf.decode(emissions) == [[1, 1, 0, 1]]
    bio = _crf("bio", ["O", "B-NN", "I-NN"])
    assert bio.crf.decode(torch.tensor([[[0, 0, 3.0]]])) == [[1]]  # BIO's start rule still holds


# --------------------------------------------------------------------------- validating the data
BIOES_BAD = [  # (tags of sentence 2, what the one line says)
    (["B-PER", "O"], ["bad.conll: sentence 2: word 2: 'O' after 'B-PER'"]),
    (["I-PER", "E-PER"], ["sentence 2: word 1: 'I-PER' at the start"]),
    (["B-PER", "E-LOC"], ["word 2: 'E-LOC' after 'B-PER'"]),
    (["S-PER", "B-PER"], ["word 2: the sentence ends inside a span ('B-PER')"]),
    (["S-PER", "NOUN"], ["sentence 2: tag 'NOUN' is not BIOES", "data.tag_scheme=none"]),
]


@pytest.mark.parametrize("tags, expected", BIOES_BAD, ids=[" ".join(t) for t, _ in BIOES_BAD])
def test_bioes_sentences_that_do_not_open_and_close_their_spans_are_refused(tags, expected):
    from datasets import Dataset

    from llmft.core.errors import UserError

    rows = {"tokens": [["Ada", "wrote"], [f"w{i}" for i in range(len(tags))]], "tags": [["S-PER", "O"], tags]}
    with pytest.raises(UserError) as err:
        task_for("bioes").encode(Dataset.from_dict(rows), "bad.conll", is_train=True)
    for part in expected:
        assert part in str(err.value) and "\n" not in str(err.value), err.value


def test_a_file_whose_tags_do_not_fit_the_scheme_is_refused_at_its_line(tmp_path):
    from llmft.cli.validate import validate
    from llmft.core.errors import UserError
    from llmft.data.files import load_splits
    from llmft.tasks import TASKS

    pos = write_conll(tmp_path / "pos.conll", pos_sentences(3, seed=1))
    bioes = write_conll(tmp_path / "bioes.conll", [(["Ada", "Lovelace", "wrote"], ["B-PER", "E-PER", "O"])])
    for path, scheme, expected in ((pos, "bio", ["pos.conll: line 1", "is not BIO", "data.tag_scheme=none"]),
                                   (bioes, "bio", ["bioes.conll: line 2", "'E-PER'", "data.tag_scheme=bioes"]),
                                   (pos, "bioes", ["pos.conll: line 1", "is not BIOES", "data.tag_scheme=none"])):
        cfg = compose("train", "data=conll_file", f"data.train_file={path}", f"data.tag_scheme={scheme}")
        validate(cfg)
        with pytest.raises(UserError) as err:
            load_splits(cfg.data, TASKS.get("ner")(cfg.data))
        assert all(part in str(err.value) for part in expected), err.value
    cfg = compose("train", "data=conll_file", f"data.train_file={pos}", f"data.eval_file={pos}", "data.tag_scheme=none",
                  "data.eval_fraction=0")
    task = TASKS.get("ner")(cfg.data)
    splits = load_splits(cfg.data, task)
    assert "." in task.labels and splits["train"]["tags"][0][-1] == "."


CONFIG_REFUSALS = [  # (overrides, what the one line says)
    (["data=csv", "data.tag_scheme=none"],
     "data.tag_scheme: is for data.task=ner (got classification); drop data.tag_scheme=none"),
    (["data.tag_scheme=iob"], "data.tag_scheme"),
    (["data.labels=[O,NOUN]"], "data.labels: tag 'NOUN' is not BIO (O, B-TYPE, I-TYPE); other tags"),
    (["data.labels=[O,S-PER]"], "set data.tag_scheme=bioes"),
    (["data.tag_scheme=bioes", "data.labels=[O,B-X,I-X]", "model.crf=true"], "data.labels: B-X without E-X"),
    (["data.tag_scheme=bioes", "data.labels=[O,E-X]", "model.crf=true"], "E-X without B-X"),
    (["data.tag_scheme=none", "train.early_stopping.patience=2", "train.eval_steps=5",
      "train.early_stopping.metric=f1"],
     "train.early_stopping.metric: data.tag_scheme=none computes accuracy, macro_f1 (or loss), not f1"),
    (["train.early_stopping.patience=2", "train.eval_steps=5", "train.early_stopping.metric=macro_f1"],
     "data.tag_scheme=bio computes f1, precision, recall, accuracy"),
]


@pytest.mark.parametrize("overrides, expected", CONFIG_REFUSALS, ids=[" ".join(c[0]) for c in CONFIG_REFUSALS])
def test_a_scheme_that_does_not_fit_is_refused_in_one_line(overrides, expected, tmp_path, ner_data, tiny_data):
    data = ([f"data.train_file={tiny_data['train']}"] if "data=csv" in overrides
            else ["data=conll_file", f"data.train_file={ner_data['train']}"])
    assert expected in refused("train", *data, *overrides, f"hydra.run.dir={tmp_path / 'run'}")


def test_neighbours_pass(tmp_path, ner_data):
    from conftest import preflight

    for overrides in (["data.tag_scheme=none", "data.labels=[DT,NN,.]", "model.crf=true"],
                      ["data.tag_scheme=bioes", "data.labels=[O,B-X,I-X,E-X,S-Y]", "model.crf=true"],
                      ["data.tag_scheme=none", "train.early_stopping.patience=2", "train.eval_steps=5",
                       "train.early_stopping.metric=macro_f1"]):
        preflight("train", "data=conll_file", f"data.train_file={ner_data['train']}", *overrides,
                  f"hydra.run.dir={tmp_path / 'run'}")


def test_the_saved_scheme_wins_over_the_data_config():
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig
    from llmft.tasks.ner import NER

    task = task_for("none", ["DT", "NN"])
    assert task.metadata() == {"task": "ner", "labels": ["DT", "NN"], "tag_scheme": "none"}
    bio_cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "t", "task": "ner"})
    again = NER.from_metadata(bio_cfg, task.metadata())
    assert (again.scheme, again.primary_metric) == ("none", "accuracy")
    assert NER.from_metadata(bio_cfg, {"task": "ner", "labels": ["O", "B-X"]}).scheme == "bio"  # saved before schemes


# --------------------------------------------------------------------------- runs, in process
@pytest.mark.parametrize("scheme", ["none", "bioes"])
def test_a_run_trains_saves_and_predicts_tags_per_word(scheme, tmp_path, tiny_bert):
    """A few steps of tiny BERT + CRF: results carry the scheme's metrics and primary metric (none:
    early stopping watches it on the validation split), every predicted tag is one of the tag set
    (BIOES: only valid paths: the CRF's rules were used), and the saved model predicts tags per
    word through `llmft predict`."""
    from llmft.cli.app import prepare_config
    from llmft.cli.validate import validate
    from llmft.commands import predict, train
    from llmft.data.formats import check_bioes_sequence

    make = pos_sentences if scheme == "none" else bioes_sentences
    data = {"train": write_conll(tmp_path / "train.conll", make(24, seed=1)),
            "eval": write_conll(tmp_path / "eval.conll", make(8, seed=2))}
    watch = ([f"data.validation_file={data['eval']}", "train.early_stopping.patience=5", "train.eval_steps=1"]
             if scheme == "none" else [])
    cfg = compose("train", "model=hf", f"model.name_or_path={tiny_bert}", "data=conll_file",
                  f"data.train_file={data['train']}", f"data.eval_file={data['eval']}", f"data.tag_scheme={scheme}",
                  "model.crf=true", "train.max_steps=3", "train.batch_size=8", "train.lr=5e-3",
                  "train.retention.report=false", "print_config=false", *watch)
    validate(cfg)
    results = train.main(cfg, tmp_path / "run")
    records = read_jsonl(tmp_path / "run" / "predictions.jsonl")
    labels = json.loads((tmp_path / "run" / "model" / "llmft.json").read_text())["labels"]
    assert all(len(r["prediction"]) == len(r["tokens"]) and set(r["prediction"]) <= set(labels) for r in records)
    if scheme == "none":
        assert labels == sorted(set(POS.values())) and results["primary_metric"] == "accuracy"
        assert set(results["eval"]) >= {"accuracy", "macro_f1", "per_tag", "loss"}
        assert "majority_accuracy" in results["baseline"] and "word_majority_accuracy" in results["baseline"]
        assert results["train"]["early_stopping"]["metric"] == "accuracy" and "accuracy" in results["validation"]
        words = [(g, p) for r in records for g, p in zip(r["label"], r["prediction"])]
        assert results["eval"]["accuracy"] == pytest.approx(sum(g == p for g, p in words) / len(words))
    else:
        assert results["primary_metric"] == "f1" and "per_type" in results["eval"]
        for r in records:
            check_bioes_sequence(r["prediction"], "decoded")

    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"tokens": r["tokens"]}) + "\n" for r in records[:3]))
    overrides = [f"model_dir={tmp_path / 'run' / 'model'}", f"predict.input_file={inputs}"]
    pcfg = prepare_config("predict", copy.deepcopy(compose("predict", *overrides)), overrides)
    validate(pcfg, "predict")
    predict.main(pcfg, tmp_path / "predict")
    predicted = read_jsonl(tmp_path / "predict" / "predictions.jsonl")
    assert [p["prediction"] for p in predicted] == [r["prediction"] for r in records[:3]]
