"""Bad input: one line naming the key/file/row and the fix, exit code 2, no traceback,
and no run folder that looks finished."""
from __future__ import annotations

import pytest
from conftest import make_rows, run_cli, tiny_train_args, write_csv


def assert_user_error(proc, *expected: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("llmft: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["+strategy=nope"], ["strategy=nope", "available: adapter, bitfit, dora,", " full,", " lora,"]),
        (["strategy=nope"], ["strategy=nope", "available:"]),
        (["model=nope"], ["model=nope", "minilm"]),
        (["-m", "+strategy=full,nope"], ["strategy=nope"]),
        (["train.lrr=1e-4"], ["train.lrr", "no such key"]),
        (["train.lr=fast"], ["train.lr", "Float"]),
        (["train.lr=-1e-4"], ["train.lr", "> 0"]),
        (["train.batch_size=0"], ["train.batch_size", ">= 1"]),
        (["train.batch_size=two"], ["train.batch_size"]),
        (["-m", "train.lr=1e-4,-1"], ["train.lr", "> 0"]),
        (["train.lr_scheduler=zigzag"], ["train.lr_scheduler", "cosine"]),
        (["+strategy=lora", "strategy.rank=4"], ["strategy.rank", "no such key"]),
        (["+strategy=lora", "strategy.r=0"], ["strategy.r", ">= 1"]),
        (["data=csv"], ["data.train_file", "required"]),
        (["data=csv", "data.train_file=/no/such.csv"], ["data.train_file", "/no/such.csv"]),
        (["model=hf"], ["model.name_or_path", "required"]),
        (["logger=wandb", "logger.mode=loud"], ["logger.mode", "offline"]),
        (["hydra/launcher=slurm_nope"], ["hydra/launcher=slurm_nope"]),
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
