"""Reading data through the CLI: the README's predict example on a run of the default data config.
The readers themselves (values read as written, encodings, refusals) are tested in process in
tests/unit/test_data_reading.py.
"""
from __future__ import annotations

import json
from pathlib import Path

from conftest import assert_user_error, read_jsonl, run_cli, tiny_train_args


def jsonl(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding=encoding)
    return path


def test_the_readme_predict_example_runs(tmp_path, tiny_data, tiny_bert):
    """README: `llmft predict model_dir=outputs/train/<run>/model predict.input_file=new.jsonl`, after a
    run on the default experiment's data config (a latin-1 CSV, data.format=csv)."""
    run_dir = tmp_path / "run"
    args = [a for a in tiny_train_args(tiny_bert, tiny_data, run_dir) if a != "data=csv"]
    proc = run_cli("train", *args, "data=tweet_sentiment", "data.label_column=label", "data.max_train_samples=null")
    assert proc.returncode == 0, proc.stderr[-3000:]
    texts = ["the best café today", "awful monday", "007"]
    new = jsonl(tmp_path / "new.jsonl", [{"text": t} for t in texts])
    proc = run_cli("predict", f"model_dir={run_dir / 'model'}", f"predict.input_file={new}",
                   f"hydra.run.dir={tmp_path / 'p'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_jsonl(tmp_path / "p" / "predictions.jsonl")
    assert [r["text"] for r in records] == texts
    assert all(r["prediction"] in ("negative", "neutral", "positive") for r in records)

    numbers = jsonl(tmp_path / "numbers.jsonl", [{"text": "fine"}, {"text": 5}])
    proc = run_cli("predict", f"model_dir={run_dir / 'model'}", f"predict.input_file={numbers}",
                   f"hydra.run.dir={tmp_path / 'p2'}")
    assert_user_error(proc, "numbers.jsonl", "'text'")
