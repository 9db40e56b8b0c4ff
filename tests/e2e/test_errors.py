"""Bad input: one line naming the key/file/row and the fix, exit code 2, no traceback,
and no run folder that looks finished."""
from __future__ import annotations

import json

import pytest
from conftest import assert_user_error, make_rows, run_cli, tiny_train_args, write_csv


# The CLI prints each kind of refusal as one line (a composition error, a value an owner refuses,
# a bad value inside a sweep); every refused value is checked in process: tests/unit/test_config.py
@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["+strategy=nope"], ["strategy=nope", "available: adapter, bitfit, dora,", " full,", " lora,"]),
        (["-m", "+strategy=full,nope"], ["strategy=nope"]),
        (["train.lr=fast"], ["train.lr", "Float"]),
        (["+strategy=lora", "strategy.r=0"], ["strategy.r", ">= 1"]),
        (["-m", "train.lr=1e-4,-1"], ["train.lr", "> 0"]),
    ],
)
def test_config_errors_fail_before_anything_runs(tmp_path, overrides, expected):
    proc = run_cli("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_user_error(proc, *expected)
    assert not (tmp_path / "run").exists()  # composition failed before any run folder
    assert not (tmp_path / "multirun").exists()


def test_unknown_command():
    proc = run_cli("trian")
    assert_user_error(proc, "unknown command 'trian'", "train")


@pytest.fixture
def bad_files(tmp_path):
    rows = make_rows(12, seed=3)
    files = {
        "empty": tmp_path / "empty.csv",
        "no_label": write_csv(tmp_path / "no_label.csv", [{"text": r["text"]} for r in rows]),
        "bad_label": write_csv(tmp_path / "bad_label.csv", rows[:4] + [{"text": "x", "label": "angry"}] + rows[4:]),
        "latin1": write_csv(tmp_path / "latin1.csv", [{"text": "caf\u00e9 cr\u00e8me", "label": "neutral"}] + rows,
                            encoding="latin-1"),
        "good": write_csv(tmp_path / "good.csv", rows),
    }
    files["empty"].write_text("text,label\n")
    return files


@pytest.mark.parametrize(
    "train, extra, expected",
    [
        ("empty", [], ["empty.csv", "no rows"]),
        ("no_label", [], ["no_label.csv", "no column 'label'", "data.label_column", "columns are: text"]),
        ("good", ["data.text_column=tweet"], ["good.csv", "no column 'tweet'", "data.text_column"]),
        ("bad_label", ["data.labels=[negative,neutral,positive]"], ["bad_label.csv", "row 5", "'angry'"]),
        ("latin1", [], ["latin1.csv", "not valid utf-8", "data.encoding"]),
    ],
)
def test_data_errors_name_the_file_and_row(tmp_path, tiny_bert, tiny_data, bad_files, train, extra, expected):
    run_dir = tmp_path / "run"
    args = [a for a in tiny_train_args(tiny_bert, tiny_data, run_dir) if not a.startswith("data.train_file")]
    proc = run_cli("train", *args, f"data.train_file={bad_files[train]}", *extra)
    assert_user_error(proc, *expected)
    assert not (run_dir / "results.json").exists()
    assert not (run_dir / "model").exists()


def test_latin1_file_reads_with_the_encoding_knob(tmp_path, tiny_bert, tiny_data, bad_files):
    run_dir = tmp_path / "run"
    args = [a for a in tiny_train_args(tiny_bert, tiny_data, run_dir) if not a.startswith("data.train_file")]
    proc = run_cli("train", *args, f"data.train_file={bad_files['latin1']}", "data.encoding=latin-1",
                   "train.max_steps=1")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_eval_of_a_folder_that_is_not_a_model(tmp_path):
    proc = run_cli("eval", f"model_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert_user_error(proc, "model_dir=", "llmft.json")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    from conftest import write_conll

    root = tmp_path_factory.mktemp("odd")
    rows = make_rows(12, seed=4)
    return {
        "one_class": write_csv(root / "one_class.csv", [{**r, "label": "neutral"} for r in rows]),
        # a CSV cell is text ("42" is a text); JSON numbers are not
        "numbers": _jsonl(root / "numbers.jsonl", [{"text": i, "label": r["label"]} for i, r in enumerate(rows)]),
        "blank": write_csv(root / "blank.csv", rows[:3] + [{"text": "   ", "label": "neutral"}] + rows[3:]),
        "all_o": write_conll(root / "all_o.conll", [(["a", "b"], ["O", "O"])] * 4),
        "not_a_model": root / "empty_folder",
        "ref": root / "ref.txt",
    }


@pytest.mark.parametrize(
    "extra, expected",
    [  # combinations that would compute something other than they say
        (["data.aux=[{kind:classification,train_file:TRAIN}]", "train.class_weights=balanced"],
         ["train.class_weights", "data.aux of kind classification"]),
        (["data.aux=[{kind:classification,train_file:TRAIN}]", "train.loss=focal"], ["train.loss", "data.aux"]),
        (["data.aux=[{kind:classification,train_file:TRAIN}]", "data.sampler=balanced"], ["data.sampler", "data.aux"]),
        (["data.aux=[{kind:classification,train_file:TRAIN}]", "train.distill.teacher=TEACHER"],
         ["train.distill.teacher", "data.aux"]),
        (["train.retention.eval_file=REF"], ["train.retention.eval_file", "data.task=sft"]),
        # values only a second knob, the data or the model makes wrong
        (["data.labels=[negative,negative,positive]"], ["data.labels", "more than once"]),
        (["data.labels=[positive]"], ["data.labels", "at least 2"]),
        (["data.eval_fraction=0.5", "data.validation_fraction=0.5"], ["data.validation_fraction", "leave rows"]),
        (["data.max_length=1024"], ["data.max_length", "128 positions"]),
        (["model.name_or_path=NOT_A_MODEL"], ["model.name_or_path", "not a model", "config.json"]),
        (["generate.top_p=0"], ["generate.top_p"]),
        (["generate.num_beams=0"], ["generate.num_beams", ">= 1"]),
        (["+strategy=lora", "strategy.target_modules=[nope]"], ["strategy.target_modules", "query"]),
        (["data.train_file=ONE_CLASS"], ["one_class.csv", "at least 2 classes"]),
        (["data.train_file=NUMBERS"], ["numbers.jsonl", "row 1", "not text"]),
        (["data.train_file=BLANK"], ["blank.csv", "row 4", "empty"]),
    ],
)
def test_values_that_only_another_knob_makes_wrong(tmp_path, tiny_bert, tiny_data, odd_files, extra, expected):
    odd_files["not_a_model"].mkdir(exist_ok=True)
    odd_files["ref"].write_text("some reference text\n")
    names = {"TRAIN": tiny_data["train"], "TEACHER": tiny_bert, "REF": odd_files["ref"],
             "NOT_A_MODEL": odd_files["not_a_model"], "ONE_CLASS": odd_files["one_class"],
             "NUMBERS": odd_files["numbers"], "BLANK": odd_files["blank"]}
    for name, value in names.items():
        extra = [e.replace(name, str(value)) for e in extra]
    run_dir = tmp_path / "run"
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir, *extra))
    assert_user_error(proc, *expected)
    assert not (run_dir / "results.json").exists() and not (run_dir / "model").exists()


def test_ner_and_qa_shapes_are_checked(tmp_path, tiny_bert, ner_data, qa_data, odd_files):
    proc = run_cli("train", "model=hf", f"model.name_or_path={tiny_bert}", "data=conll_file",
                   f"data.train_file={odd_files['all_o']}", f"data.eval_file={ner_data['eval']}",
                   f"hydra.run.dir={tmp_path / 'ner'}")
    assert_user_error(proc, "all_o.conll", "every tag is O")
    proc = run_cli("train", "model=hf", f"model.name_or_path={tiny_bert}", "data=squad_file",
                   f"data.train_file={qa_data['train']}", "data.max_length=64", "data.doc_stride=64",
                   f"hydra.run.dir={tmp_path / 'qa'}")
    assert_user_error(proc, "data.doc_stride", "below data.max_length=64")


def test_a_model_class_the_task_cannot_use(tmp_path, tiny_bert, seq2seq_data):
    proc = run_cli("train", "model=hf", f"model.name_or_path={tiny_bert}", "data=jsonl_seq2seq",
                   f"data.train_file={seq2seq_data}", "data.max_length=128", f"hydra.run.dir={tmp_path / 'run'}",
                   "print_config=false")
    assert_user_error(proc, "model.name_or_path", "Seq2SeqLM head", "data.task=seq2seq")


@pytest.fixture(scope="module")
def trained(trained_bert):
    return trained_bert / "model"


@pytest.mark.parametrize("command, extra, expected", [
    ("predict", ["predict.input_file=EVAL", "predict.output_file=FOLDER"], ["predict.output_file", "is a folder"]),
    ("predict", ["predict.input_file=/no/such.jsonl"], ["predict.input_file", "not found"]),
    ("export", ["output_dir=EVAL"], ["output_dir", "is a file"]),
    ("export", ["format=bf16", "check_examples=0"], ["check_examples", ">= 1"]),
    ("bench-infer", ["variants=[fp32,int4]"], ["variants", "int4"]),
    ("bench-infer", ["latency_examples=0"], ["latency_examples"]),
])
def test_other_commands_check_their_knobs(tmp_path, trained, tiny_data, command, extra, expected):
    extra = [e.replace("EVAL", str(tiny_data["eval"])).replace("FOLDER", str(tmp_path)) for e in extra]
    proc = run_cli(command, f"model_dir={trained}", *extra, f"hydra.run.dir={tmp_path / 'out'}")
    assert_user_error(proc, *expected)
