"""`llmft export` (merge + its check) and `llmft report` (a table and a plot of a sweep)."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import read_jsonl, read_results, run_cli, tiny_train_args


@pytest.mark.parametrize("strategy", ["lora", "dora", "ia3"])
def test_export_merges_and_checks(tmp_path, tiny_data, tiny_bert, strategy):
    run_dir = tmp_path / "run"
    proc = run_cli("train", f"+strategy={strategy}", *tiny_train_args(tiny_bert, tiny_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("export", f"model_dir={run_dir / 'model'}", f"hydra.run.dir={tmp_path / 'export'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "merge check" in proc.stdout and "OK" in proc.stdout
    check = json.loads((tmp_path / "export" / "export.json").read_text())["check"]
    assert check["passed"] and check["max_abs_diff_merged_vs_adapter"] < 1e-4
    assert check["max_abs_diff_adapter_vs_base"] > 1e-4  # the adapter learned something to merge

    merged = run_dir / "merged"
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    import torch

    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    records = read_jsonl(run_dir / "predictions.jsonl")
    with torch.no_grad():
        logits = model(**tokenizer([r["text"] for r in records], padding=True, return_tensors="pt")).logits
    assert [model.config.id2label[i] for i in logits.argmax(-1).tolist()] == [r["prediction"] for r in records]

    # The merged folder evaluates like the adapter did.
    proc = run_cli("eval", f"model_dir={merged}", f"data.train_file={tiny_data['train']}",
                   f"data.eval_file={tiny_data['eval']}", "data.format=csv", "data=csv",
                   f"hydra.run.dir={tmp_path / 'eval'}", "print_config=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(tmp_path / "eval")["eval"]["accuracy"] == pytest.approx(read_results(run_dir)["eval"]["accuracy"])


def test_export_refuses_a_full_model(tmp_path, tiny_data, tiny_bert):
    run_dir = tmp_path / "run"
    proc = run_cli("train", "train.max_steps=1", *tiny_train_args(tiny_bert, tiny_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("export", f"model_dir={run_dir / 'model'}", f"hydra.run.dir={tmp_path / 'export'}")
    assert proc.returncode == 2 and "llmft: error:" in proc.stderr and "'full' model" in proc.stderr


def test_report_on_a_sweep_with_a_failed_run(tmp_path, tiny_data, tiny_bert):
    sweep = tmp_path / "sweep"
    args = [a for a in tiny_train_args(tiny_bert, tiny_data, tmp_path) if not a.startswith("hydra.run.dir")]
    proc = run_cli("train", "-m", *args, "+strategy=full,lora,bitfit", "train.lr=1e-3,5e-3", "train.max_steps=2",
                   f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    failed = sweep / "6"  # a run that died before writing results.json
    shutil.copytree(sweep / "0" / ".hydra", failed / ".hydra")

    proc = run_cli("report", sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (sweep / "report.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:3] == ["run", "strategy", "train.lr"] and "trainable params" in header and "tokens/s" in header
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert len(body) == 7
    completed = [(r[1], float(r[2])) for r in body if r[-1] == "completed"]
    assert sorted(completed) == sorted((s, lr) for s in ("full", "lora", "bitfit") for lr in (1e-3, 5e-3))
    assert [r[0] for r in body if r[-1] == "failed"] == ["6"]
    assert {"validation", "test", "baseline", "warnings"} <= set(header)
    for row in body[:6]:  # warnings worked out here from each run's predictions and baseline
        cell = dict(zip(header, row))
        predictions = read_jsonl(sweep / row[0] / "predictions.jsonl")
        accuracy = sum(p["label"] == p["prediction"] for p in predictions) / len(predictions)
        majority = max(sum(p["label"] == label for p in predictions) for label in ("negative", "neutral", "positive"))
        top = max(sum(p["prediction"] == label for p in predictions) for label in ("negative", "neutral", "positive"))
        useless = top >= 0.95 * len(predictions) or accuracy <= majority / len(predictions)
        assert bool(cell["warnings"]) == useless, (row, accuracy)
        assert float(cell["test"]) == pytest.approx(accuracy, abs=1e-4)
    assert (sweep / "report.png").stat().st_size > 10_000
    assert "failed" in proc.stdout and "bitfit" in proc.stdout


def test_report_groups_the_seeds_of_a_sweep(tmp_path, tiny_data, tiny_bert):
    """Real run folders of `-m seed=1,2 +strategy=full,lora`: two configs of two seeds each."""
    sweep = tmp_path / "sweep"
    args = [a for a in tiny_train_args(tiny_bert, tiny_data, tmp_path) if not a.startswith("hydra.run.dir")]
    proc = run_cli("train", "-m", *args, "seed=1,2", "+strategy=full,lora", "train.max_steps=2",
                   "train.retention.report=false", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("report", sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_config = (sweep / "report.md").read_text().split("## Per config, over seeds")[1]
    lines = [line for line in per_config.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {r["config"]: r for r in (dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
                                      for line in lines[1:])}
    assert {k: (r["runs"], r["seeds"], r["n"]) for k, r in rows.items()} == {
        "full": ("0, 2", "1,2", "2"), "lora": ("1, 3", "1,2", "2")}
    tests = {k: [read_results(sweep / n)["eval"]["accuracy"] for n in r["runs"].split(", ")] for k, r in rows.items()}
    for name, values in tests.items():
        mean, std = (float(v) for v in rows[name]["test"].split(" ± "))
        assert mean == pytest.approx(sum(values) / 2, abs=1e-4)
        assert std == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-4)  # sample std of two


def test_report_on_an_empty_folder(tmp_path):
    proc = run_cli("report", tmp_path)
    assert proc.returncode == 2 and "no runs under" in proc.stderr
