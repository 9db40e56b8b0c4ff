"""Reading data: every odd or bad input file is read as written or refused in one line.

Values are read as the text of the file (a label "007" stays "007", "NA" is a class, a column
named twice is refused), each reader honours data.encoding, QA answers and chats are checked
before a model loads, IOB1 tags are converted to the BIO the CRF and the metrics assume, and
predict reads its input by the input's own extension (or predict.format), not the training
data's format. All in process: compose, validate, read.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_rows, write_csv


def compose(command: str, *overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmft.cli.app import config_dir
    from llmft.cli.validate import register_configs

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return hydra_compose(command, overrides=list(overrides))


def load(data: str, train: Path, *overrides: str) -> tuple[dict, object]:
    """The splits load_splits makes of ``train`` (+ the task that encoded them), nothing held out."""
    from llmft.cli.validate import validate
    from llmft.data.files import load_splits
    from llmft.tasks import TASKS

    cfg = compose("train", f"data={data}", f"data.train_file={train}", f"data.eval_file={train}",
                  "data.eval_fraction=0", *overrides)
    validate(cfg)
    task = TASKS.get(cfg.data.task)(cfg.data)
    return load_splits(cfg.data, task), task


def refused(data: str, train: Path, *overrides: str) -> str:
    from llmft.core.errors import UserError

    with pytest.raises(UserError) as err:
        load(data, train, *overrides)
    message = str(err.value)
    assert "\n" not in message
    return message


def jsonl(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding=encoding)
    return path


# ------------------------------------------------------------------ values read as written
CSV_AS_TEXT = [
    # (file text, labels read in row order, texts read in row order)
    ("text,label\nhello there,007\nbye now,010\nso so,007\nok then,NA\nwhat,null\n",
     ["007", "010", "007", "NA", "null"], ["hello there", "bye now", "so so", "ok then", "what"]),
    ("text,label\nNA,1\n0042,1.0\nnull,1\nN/A,1.0\n",  # 1 and 1.0 are two classes, not one float
     ["1", "1.0", "1", "1.0"], ["NA", "0042", "null", "N/A"]),
    ("text,label\nTrue,yes\nnan,no\n1e3,yes\n",
     ["yes", "no", "yes"], ["True", "nan", "1e3"]),
]


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
@pytest.mark.parametrize("text, labels, texts", CSV_AS_TEXT)
def test_csv_cells_are_read_as_their_text(tmp_path, suffix, text, labels, texts):
    if suffix == ".tsv":
        text = text.replace(",", "\t")
    path = tmp_path / f"train{suffix}"
    path.write_text(text)
    splits, task = load("csv", path)
    train = splits["train"]
    assert [task.labels[i] for i in train["labels"]] == labels
    assert task.labels == sorted(set(labels))
    assert train["text"] == texts


def test_json_labels_keep_their_text(tmp_path):
    path = jsonl(tmp_path / "train.jsonl", [{"text": "a b", "label": "007"}, {"text": "c", "label": "NA"},
                                            {"text": "d", "label": "null"}, {"text": "e", "label": "007"}])
    splits, task = load("csv", path)
    assert task.labels == ["007", "NA", "null"]
    assert [task.labels[i] for i in splits["train"]["labels"]] == ["007", "NA", "null", "007"]


def test_hub_class_label_ids_are_read_by_name():
    """Hub data sets store labels as ClassLabel ids; -1 marks a split without labels."""
    from datasets import ClassLabel, Dataset, Features, Value
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig
    from llmft.core.errors import UserError
    from llmft.tasks.classification import Classification

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    data = Dataset.from_dict({"text": ["a", "b", "c"], "label": [1, 0, 1]}, features=features)
    task = Classification(OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "hub"}))
    encoded = task.encode(data, "imdb[train]", is_train=True)
    assert task.labels == ["neg", "pos"] and encoded["labels"] == [1, 0, 1]
    unlabelled = Dataset.from_dict({"text": ["a", "b"], "label": [1, -1]}, features=features)
    with pytest.raises(UserError, match="imdb.test.: row 2: no label"):
        task.encode(unlabelled, "imdb[test]", is_train=False)


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_every_reader_honours_data_encoding(tmp_path, encoding):
    """csv, json lines, SQuAD JSON and CoNLL: the same non-ASCII text, read back exactly."""
    word = "café"
    csv_file = tmp_path / "train.csv"
    csv_file.write_text(f"text,label\n{word} x,a\ny,b\n", encoding=encoding)
    assert load("csv", csv_file, f"data.encoding={encoding}")[0]["train"]["text"] == [f"{word} x", "y"]

    lines = jsonl(tmp_path / "train.jsonl", [{"text": word, "label": "a"}, {"text": "y", "label": "b"}], encoding)
    assert load("csv", lines, f"data.encoding={encoding}")[0]["train"]["text"] == [word, "y"]

    conll = tmp_path / "train.conll"
    conll.write_text(f"{word} B-X\nwas O\n\nnice B-X\n", encoding=encoding)
    assert load("conll_file", conll, f"data.encoding={encoding}")[0]["train"]["tokens"] == [[word, "was"], ["nice"]]

    context = f"the {word} is open"
    squad = tmp_path / "train.json"
    squad.write_text(json.dumps({"data": [{"paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "what is open ?", "answers": [{"text": word, "answer_start": 4}]}]}]}]},
        ensure_ascii=False), encoding=encoding)
    train = load("squad_file", squad, f"data.encoding={encoding}")[0]["train"]
    assert train["context"] == [context] and train["answers"][0]["text"] == [word]


def test_a_reader_refuses_the_wrong_encoding_in_one_line(tmp_path):
    conll = tmp_path / "train.conll"
    conll.write_text("café B-X\nwas O\n", encoding="latin-1")
    assert "data.encoding" in refused("conll_file", conll)
    squad = tmp_path / "train.json"
    squad.write_text(json.dumps({"data": []}).replace("[]", '[{"paragraphs": []}], "t": "é"'), encoding="latin-1")
    assert "data.encoding" in refused("squad_file", squad)


# ----------------------------------------------------------------------- refused in one line
def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


CLASSIFICATION_REFUSALS = [
    ("dup_header.csv", "text,label,text\nhello,a,x\nbye,b,y\n", [], ["column 'text'", "more than once"]),
    ("dup_key.jsonl", '{"text": "a", "label": "x", "text": "b"}\n{"text": "c", "label": "y"}\n', [],
     ["Column(/text) was specified twice"]),
    ("dup_label.tsv", "label\ttext\tlabel\nx\thello\ta\ny\tbye\tb\n", [], ["column 'label'", "more than once"]),
    ("no_label.csv", "text,label\nhello,a\nbye,\nso,b\n", [], ["row 2", "no label in column 'label'"]),
    ("mixed.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": 5}\n{"text": "c", "label": "007"}\n', [],
     ["column 'label'", "mixes"]),
    ("float.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 2.5}\n', [], ["'label'", "text"]),
    ("number_text.jsonl", '{"text": 5, "label": "x"}\n{"text": 6, "label": "y"}\n', [], ["row 1", "'text'"]),
    ("pair.csv", "text,label\nhello,a\nbye,b\n", ["data.text_pair_column=label"],
     ["data.text_pair_column", "data.label_column"]),
    ("same.csv", "text,label\nhello,a\nbye,b\n", ["data.label_column=text"], ["data.text_column", "data.label_column"]),
]


@pytest.mark.parametrize("name, text, overrides, expected", CLASSIFICATION_REFUSALS,
                         ids=[c[0] for c in CLASSIFICATION_REFUSALS])
def test_classification_file_refused(tmp_path, name, text, overrides, expected):
    message = refused("csv", _write(tmp_path / name, text), *overrides)
    for part in expected:
        assert part in message, message


def _qa(rid="q1", question="what ?", context="the cat sat", answers=None) -> dict:
    return {"id": rid, "question": question, "context": context,
            "answers": {"text": ["cat"], "answer_start": [4]} if answers is None else answers}


QA_REFUSALS = [
    ("string_offsets", [_qa(answers={"text": ["cat"], "answer_start": ["4"]})], ["q1", "answer_start"]),
    ("answers_text", [_qa(answers="cat")], ["q1", "answers"]),
    ("answers_list", [_qa(answers=[{"text": "cat", "answer_start": 4}])], ["q1", "answers"]),
    ("lengths", [_qa(answers={"text": ["cat", "sat"], "answer_start": [4]})], ["q1", "answer_start"]),
    ("negative", [_qa(context="the cat.", answers={"text": ["cat"], "answer_start": [-4]})], ["q1", "offset -4"]),
    ("empty_answer", [_qa(answers={"text": [""], "answer_start": [4]})], ["q1", "empty"]),
    ("duplicate_ids", [_qa("q1"), _qa("q2"), _qa("q1")], ["q1", "more than once"]),
    ("number_question", [_qa("q1", question=7), _qa("q2", question=8)], ["row 1", "'question'"]),
]


@pytest.mark.parametrize("name, rows, expected", QA_REFUSALS, ids=[c[0] for c in QA_REFUSALS])
def test_qa_file_refused(tmp_path, name, rows, expected):
    message = refused("squad_file", jsonl(tmp_path / f"{name}.jsonl", rows))
    for part in expected:
        assert part in message, message


def test_qa_on_a_classification_file_names_the_columns(tmp_path):
    message = refused("squad_file", write_csv(tmp_path / "train.csv", make_rows(6, seed=1)))
    assert "no column 'question'" in message and "data.task=qa" in message


SFT_REFUSALS = [
    ("empty_assistant", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}],
     ["row 1", "assistant"]),
    ("blank_assistant", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}],
     ["row 1", "assistant"]),
    ("number_response", [{"prompt": "hi", "response": 5}, {"prompt": "yo", "response": 6}], ["row 1", "response"]),
]


@pytest.mark.parametrize("name, rows, expected", SFT_REFUSALS, ids=[c[0] for c in SFT_REFUSALS])
def test_sft_file_refused(tmp_path, name, rows, expected):
    message = refused("jsonl_sft", jsonl(tmp_path / f"{name}.jsonl", rows))
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize("data, overrides, expected", [
    ("jsonl_seq2seq", ["data.target_column=source"], ["data.source_column", "data.target_column"]),
    ("jsonl_sft", ["data.response_column=prompt"], ["data.prompt_column", "data.response_column"]),
])
def test_the_target_column_is_never_an_input_column(tmp_path, data, overrides, expected):
    from llmft.cli.validate import validate
    from llmft.core.errors import UserError

    cfg = compose("train", f"data={data}", f"data.train_file={tmp_path / 'x.jsonl'}", *overrides)
    (tmp_path / "x.jsonl").write_text('{"source": "a", "target": "b"}\n')
    with pytest.raises(UserError) as err:
        validate(cfg)
    for part in expected:
        assert part in str(err.value), err.value


def test_seq2seq_numbers_are_not_text(tmp_path):
    rows = [{"source": 5, "target": "a"}, {"source": 6, "target": "b"}]
    message = refused("jsonl_seq2seq", jsonl(tmp_path / "t.jsonl", rows))
    assert "row 1" in message and "'source'" in message


# --------------------------------------------------------------------------- tag schemes
IOB1 = [  # (IOB1 tags, the same entities in BIO)
    (["I-PER", "I-PER", "O", "I-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),
    (["I-PER", "B-PER", "I-LOC", "I-PER"], ["B-PER", "B-PER", "B-LOC", "B-PER"]),  # B- between two of a type
    (["O", "I-ORG", "I-ORG", "I-ORG"], ["O", "B-ORG", "I-ORG", "I-ORG"]),
]


def _ner_task():
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig
    from llmft.tasks.ner import NER

    return NER(OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "t", "task": "ner"}))


def test_iob1_tags_are_converted_to_bio():
    from datasets import Dataset
    from seqeval.metrics.sequence_labeling import get_entities

    task = _ner_task()
    rows = {"tokens": [[f"w{i}" for i in range(len(t))] for t, _ in IOB1], "tags": [t for t, _ in IOB1]}
    encoded = task.encode(Dataset.from_dict(rows), "iob1.conll", is_train=True)
    assert [[task.labels[i] for i in ids] for ids in encoded["tag_ids"]] == [bio for _, bio in IOB1]
    assert task.labels == ["O", "B-LOC", "B-ORG", "B-PER", "I-ORG", "I-PER"]
    assert task.data_report() == {"iob1_tags_converted": 6}
    for iob1, bio in IOB1:  # the entities seqeval reads are the same before and after
        assert get_entities(iob1) == get_entities(bio)


def test_converted_tags_are_paths_the_crf_allows():
    """Gold IOB1 paths would score -1e4 under the BIO-constrained CRF (a loss that trains nothing)."""
    import torch

    from llmft.models.crf import FORBIDDEN, CrfTagger

    task = _ner_task()
    from datasets import Dataset

    rows = {"tokens": [[f"w{i}" for i in range(len(t))] for t, _ in IOB1], "tags": [t for t, _ in IOB1]}
    encoded = task.encode(Dataset.from_dict(rows), "iob1.conll", is_train=True)
    tagger = CrfTagger(torch.nn.Linear(1, 1), task.labels)
    for ids in encoded["tag_ids"]:
        emissions = torch.zeros(1, len(ids), len(task.labels))
        score = tagger.crf._compute_score(emissions.transpose(0, 1), torch.tensor([ids]).T,
                                          torch.ones(len(ids), 1, dtype=torch.bool))
        assert score.item() > FORBIDDEN / 2


def test_a_crf_label_set_needs_the_b_tag_of_each_i_tag(tmp_path, ner_data):
    from llmft.cli.validate import validate
    from llmft.core.errors import UserError

    cfg = compose("train", "data=conll_file", f"data.train_file={ner_data['train']}", "model.crf=true",
                  "data.labels=[O,I-POS,B-NEG,I-NEG]")
    with pytest.raises(UserError, match="data.labels: I-POS .*B-POS"):
        validate(cfg)


# ----------------------------------------------------------------------- predict's input
def predict_cfg(input_file: Path, *overrides: str):
    return compose("predict", "model_dir=unused", f"predict.input_file={input_file}", *overrides)


def test_predict_reads_its_input_by_its_own_extension(tmp_path):
    """The run trained on CSV in latin-1 (the default experiment); the input is UTF-8 JSON lines."""
    from llmft.commands.predict import read_inputs
    from llmft.tasks import TASKS

    path = jsonl(tmp_path / "new.jsonl", [{"text": "café crème"}, {"text": "007"}])
    cfg = predict_cfg(path, "data.format=csv", "data.encoding=latin-1")
    task = TASKS.get("classification")(cfg.data, labels=["a", "b"])
    assert read_inputs(cfg, task)["text"] == ["café crème", "007"]

    odd = tmp_path / "inputs.txt"
    odd.write_text("text\ncafé\n", encoding="latin-1")
    cfg = predict_cfg(odd, "data.format=json", "predict.format=csv", "predict.encoding=latin-1")
    assert read_inputs(cfg, task)["text"] == ["café"]


@pytest.mark.parametrize("name, text, overrides, expected", [
    ("number.jsonl", '{"text": 5}\n{"text": 6}\n', [], ["row 1", "'text'", "int"]),
    ("empty.jsonl", '{"text": "fine"}\n{"text": ""}\n', [], ["row 2", "'text'", "empty"]),
    ("null.jsonl", '{"text": "fine"}\n{"text": null}\n', [], ["row 2", "'text'", "empty"]),
])
def test_predict_input_refused(tmp_path, name, text, overrides, expected):
    from llmft.commands.predict import read_inputs
    from llmft.core.errors import UserError
    from llmft.tasks import TASKS

    cfg = predict_cfg(_write(tmp_path / name, text), *overrides)
    task = TASKS.get("classification")(cfg.data, labels=["a", "b"])
    with pytest.raises(UserError) as err:
        read_inputs(cfg, task)
    for part in expected:
        assert part in str(err.value), err.value


@pytest.mark.parametrize("task_name, rows, expected", [
    ("qa", [_qa("a"), _qa("a")], ["'a'", "more than once"]),
    ("qa", [_qa(context=3)], ["row 1", "'context'"]),
    ("seq2seq", [{"source": ""}], ["row 1", "'source'"]),
    ("ner", [{"tokens": []}], ["row 1", "'tokens'"]),
    ("sft", [{"prompt": 5}], ["row 1", "'prompt'"]),
    ("sft", [{"messages": [{"role": "user", "content": 5}]}], ["row 1", "'messages'"]),
])
def test_predict_inputs_of_every_task_are_checked(tmp_path, task_name, rows, expected):
    from llmft.commands.predict import read_inputs
    from llmft.core.errors import UserError
    from llmft.tasks import TASKS

    cfg = predict_cfg(jsonl(tmp_path / "in.jsonl", rows), f"data.task={task_name}")
    task = TASKS.get(task_name)(cfg.data, labels=["O", "B-X"] if task_name == "ner" else None)
    with pytest.raises(UserError) as err:
        read_inputs(cfg, task)
    for part in expected:
        assert part in str(err.value), err.value


@pytest.mark.parametrize("overrides, expected", [
    (["predict.format=xml"], ["predict.format"]),
    (["predict.encoding=no-such-codec"], ["predict.encoding", "no-such-codec"]),
])
def test_predict_reading_knobs_are_validated(tmp_path, overrides, expected):
    from llmft.commands.predict import validate
    from llmft.core.errors import UserError

    path = jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    with pytest.raises(UserError) as err:
        from llmft.core.config import check_choices

        cfg = predict_cfg(path, *overrides)
        check_choices(cfg)
        validate(cfg)
    for part in expected:
        assert part in str(err.value), err.value


def test_predict_refuses_an_input_of_unknown_format_before_loading(tmp_path):
    from llmft.commands.predict import validate
    from llmft.core.errors import UserError

    path = tmp_path / "inputs.txt"
    path.write_text('{"text": "a"}\n')
    with pytest.raises(UserError, match="predict.format"):
        validate(predict_cfg(path))


def test_a_format_that_contradicts_the_extension_is_refused(tmp_path):
    """eval inherits the run's data.format: data.eval_file=new.jsonl after a run on CSV."""
    path = jsonl(tmp_path / "new.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    message = refused("csv", path, "data.format=csv")
    assert "new.jsonl is json by its extension but data.format=csv" in message
