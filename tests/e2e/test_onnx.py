"""ONNX Runtime exports (export.format=onnx|onnx-int8), predict.backend=onnxruntime and the
bench-infer rows, through the real CLI on tiny models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_user_error, read_jsonl, run_cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def snapshot(folder: Path) -> dict:
    """relative path -> sha256 of every file under ``folder``."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(trained_bert) -> Path:
    """A tiny BERT classifier trained enough that its logits are not all alike; returns its model/."""
    return trained_bert / "model"


def export(model_dir: Path, fmt: str, out: Path, log_dir: Path, *extra: str):
    return run_cli("export", f"model_dir={model_dir}", f"export.format={fmt}", f"export.output_dir={out}",
                   f"hydra.run.dir={log_dir}", *extra)


def predict(model_dir: Path, inputs: Path, run_dir: Path, *extra: str) -> list[dict]:
    proc = run_cli("predict", f"model_dir={model_dir}", f"predict.input_file={inputs}", f"hydra.run.dir={run_dir}",
                   "predict.batch_size=7", *extra)  # 7: batches of different lengths, a short last one
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_jsonl(run_dir / "predictions.jsonl")


@pytest.mark.parametrize("fmt, largest_diff", [("onnx", 1e-5), ("onnx-int8", 0.1)])
def test_onnx_export_reloads_agrees_and_predicts(tmp_path, trained, tiny_data, fmt, largest_diff):
    import torch

    out = tmp_path / fmt
    proc = export(trained, fmt, out, tmp_path / "export", "export.check_examples=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.loads((tmp_path / "export" / "export.json").read_text())["check"]
    assert check["passed"] and check["runtime"] == "onnxruntime" and check["examples"] == 16
    assert check["max_abs_diff_vs_fp32"] <= largest_diff, check  # measured: onnx ~1e-7, onnx-int8 ~1e-2
    assert check["argmax_agreement"] >= 0.9, check
    assert (out / "model.onnx").is_file() and (out / ".llmft-export").is_file() and (out / "config.json").is_file()
    assert not any(p.suffix in (".pt", ".bin", ".pkl") for p in out.iterdir())
    assert json.loads((out / "llmft.json").read_text())["format"] == fmt

    # the export's logits on the whole eval file, loaded the documented way, against the torch model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmft.models.onnx import OnnxModel

    texts = [line.split(",")[0] for line in tiny_data["eval"].read_text().splitlines()[1:]]
    batch = AutoTokenizer.from_pretrained(out)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = AutoModelForSequenceClassification.from_pretrained(trained).eval()(**batch).logits
    diff = (OnnxModel(out)(**batch).logits - reference).abs().max().item()
    assert diff <= largest_diff, diff

    torch_records = predict(trained, tiny_data["eval"], tmp_path / "torch")
    onnx_records = predict(out, tiny_data["eval"], tmp_path / "ort", "predict.backend=onnxruntime")
    assert len(onnx_records) == 30 and [r["text"] for r in onnx_records] == [r["text"] for r in torch_records]
    if fmt == "onnx":  # fp32: the same labels (int8 may flip a near tie)
        assert [r["prediction"] for r in onnx_records] == [r["prediction"] for r in torch_records]
        assert all(abs(a["confidence"] - b["confidence"]) < 1e-3 for a, b in zip(onnx_records, torch_records))
    else:
        agree = sum(a["prediction"] == b["prediction"] for a, b in zip(onnx_records, torch_records))
        assert agree >= 27, agree


def test_a_failed_onnx_check_keeps_the_previous_export(tmp_path, trained):
    out = tmp_path / "exports" / "onnx"
    proc = export(trained, "onnx-int8", out, tmp_path / "first")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = snapshot(out)
    proc = export(trained, "onnx-int8", out, tmp_path / "failed", "export.tolerance=1e-9")  # int8 is never that close
    assert_user_error(proc, "export check failed", "onnx-int8")
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["onnx"]  # no temp or set-aside folder left

    proc = export(trained, "onnx", tmp_path / "fresh", tmp_path / "failed2", "export.tolerance=1e-12")
    assert_user_error(proc, "export check failed")
    assert not (tmp_path / "fresh").exists() and not list(tmp_path.glob(".fresh*"))


def test_onnx_refusals_are_one_line(tmp_path, trained, tiny_data):
    # predicting an ONNX folder with torch, or a plain model with onnxruntime, or int8 on top
    out = tmp_path / "onnx"
    assert export(trained, "onnx", out, tmp_path / "export").returncode == 0
    cases = [
        ([f"model_dir={out}"], "predict.backend: model_dir="),
        ([f"model_dir={trained}", "predict.backend=onnxruntime"], "has no model.onnx"),
        ([f"model_dir={out}", "predict.backend=onnxruntime", "predict.precision=int8"], "predict.precision"),
        ([f"model_dir={out}", "predict.backend=onnxruntime", "predict.compile=true"], "predict.compile"),
    ]
    for i, (args, message) in enumerate(cases):
        proc = run_cli("predict", *args, f"predict.input_file={tiny_data['eval']}", f"hydra.run.dir={tmp_path / str(i)}")
        assert_user_error(proc, message)
        assert not (tmp_path / str(i)).exists()  # refused before the run folder is made


def test_onnx_export_refuses_other_tasks(tmp_path, tiny_t5, seq2seq_data):
    run_dir = tmp_path / "run"
    proc = run_cli("train", "model=hf", f"model.name_or_path={tiny_t5}", "data=jsonl_seq2seq",
                   f"data.train_file={seq2seq_data}", "data.eval_fraction=0.2", "train.max_steps=1",
                   "generate.max_new_tokens=2", "print_config=false", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = export(run_dir / "model", "onnx", tmp_path / "out", tmp_path / "export")
    assert_user_error(proc, "format: onnx exports classification and ner models")


def test_onnx_ner_export_and_predict(tmp_path, tiny_bert, ner_data):
    run_dir = tmp_path / "run"
    proc = run_cli("train", "model=hf", f"model.name_or_path={tiny_bert}", "data=conll_file",
                   f"data.train_file={ner_data['train']}", f"data.eval_file={ner_data['eval']}", "train.epochs=3",
                   "train.batch_size=8", "train.lr=5e-3", "print_config=false", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "onnx"
    proc = export(run_dir / "model", "onnx", out, tmp_path / "export")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "export" / "export.json").read_text())["check"]["max_abs_diff_vs_fp32"] < 1e-5
    records = read_jsonl(run_dir / "predictions.jsonl")
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"tokens": r["tokens"]}) + "\n" for r in records))
    predicted = predict(out, inputs, tmp_path / "ort", "predict.backend=onnxruntime")
    assert [p["prediction"] for p in predicted] == [r["prediction"] for r in records]


def test_bench_infer_onnx_rows(tmp_path, trained):
    run_dir = tmp_path / "bench"
    proc = run_cli("bench-infer", f"model_dir={trained}", "variants=[fp32,onnx,onnx-fused,onnx-int8]",
                   "latency_examples=10", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    rows = results["variants"]
    assert [r["variant"] for r in rows] == ["fp32", "onnx", "onnx-fused", "onnx-int8"]
    assert all(r["latency_p95_ms"] >= r["latency_p50_ms"] > 0 and r["throughput_ex_s"] > 0 for r in rows)
    assert rows[1]["metric_delta"] == rows[2]["metric_delta"] == 0 and abs(rows[3]["metric_delta"]) <= 0.1
    assert rows[3]["size_mb"] < rows[1]["size_mb"]
    report = (run_dir / "inference_report.md").read_text()
    assert "| onnx-int8 |" in report
    # the pick: the fastest row within accuracy_tolerance (0.01) of fp32, with this CPU's name beside it
    fastest = results["fastest"]
    within = [r for r in rows if abs(r["metric_delta"]) <= 0.01]
    assert fastest["variant"] == max(within, key=lambda r: r["throughput_ex_s"])["variant"]
    assert fastest["accuracy_tolerance"] == 0.01 and fastest["cpu"]["name"] and "flags" in fastest["cpu"]
    assert f"fastest within 0.01 accuracy of fp32 on {fastest['cpu']['name']}" in report
    assert "yes |" in next(line for line in report.splitlines() if line.startswith(f"| {fastest['variant']} |"))
