"""bench-infer's pick of the fastest variant within accuracy_tolerance of fp32, the CPU features that
choose ONNX Runtime's int8 settings, and the fused ONNX exports reloading as they were made."""
from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import LABELS, refused, untrained_classifier

from llmft.commands.bench_infer import choose, fastest_line, render
from llmft.models import formats
from llmft.runtime import cpu_features

ONNX = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnxscript") is not None


def row(name: str, ex_s: float, delta: float) -> dict:
    return {"variant": name, "throughput_ex_s": ex_s, "throughput_x": round(ex_s / 100, 2), "metric_delta": delta}


# ------------------------------------------------------------------ the pick
def test_the_fastest_within_tolerance_wins_and_a_faster_one_outside_does_not():
    rows = [row("fp32", 100, 0.0), row("bf16", 310, -0.0101), row("int8", 180, -0.004),
            row("onnx-int8", 250, -0.01), row("student", 400, -0.03)]
    assert choose(rows, 0.01) == {"variant": "onnx-int8", "throughput_x": 2.5, "metric_delta": -0.01}  # edge: in
    assert choose(rows, 0.005)["variant"] == "int8"
    assert choose(rows, 0.05)["variant"] == "student"
    assert choose(rows, 0.0)["variant"] == "fp32"  # nothing else holds fp32's accuracy exactly
    rows[2]["metric_delta"] = +0.02  # better than fp32 by more than the tolerance: also outside it
    assert choose(rows, 0.01)["variant"] == "onnx-int8"


def test_ties_go_to_the_smaller_accuracy_change_then_the_earlier_row():
    rows = [row("fp32", 100, 0.0), row("onnx", 200, -0.002), row("onnx-fused", 200, 0.001),
            row("onnx-int8", 200, 0.001)]
    assert choose(rows, 0.01)["variant"] == "onnx-fused"
    assert choose([row("fp32", 100, 0.0), row("onnx", 100, 0.0)], 0.01)["variant"] == "fp32"
    assert choose([], 0.01) is None


def test_the_table_and_the_line_name_the_pick_and_the_cpu():
    rows = [{**row("fp32", 100, 0.0), "size_mb": 1.0, "accuracy": 0.8, "latency_p50_ms": 2.0, "latency_p95_ms": 3.0},
            {**row("onnx-int8", 260, -0.003), "size_mb": 0.3, "accuracy": 0.797, "latency_p50_ms": 1.0,
             "latency_p95_ms": 1.5}]
    table = render(rows, "accuracy", ["accuracy"], "onnx-int8")
    assert table.splitlines()[0].endswith("| fastest |")
    assert table.splitlines()[2].endswith("| 1.00 |  |") and table.splitlines()[3].endswith("| 2.60 | yes |")
    cpu = cpu_features.describe({"avx2", "fma", "sse4_2"}, name="AMD EPYC")
    line = fastest_line({**choose(rows, 0.01), "accuracy_tolerance": 0.01, "metric": "accuracy", "batch_size": 32,
                         "cpu": cpu}, "fp32")
    assert line == ("fastest within 0.01 accuracy of fp32 on AMD EPYC (avx2, fma): onnx-int8, 2.60x fp32 at batch 32, "
                    "accuracy -0.0030")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_bert, tiny_data):
    """A classifier folder as training leaves it (weights, tokenizer, llmft.json), untrained."""
    return untrained_classifier(tmp_path_factory.mktemp("run") / "model", tiny_bert)


@pytest.mark.parametrize("value, says", [("-0.01", "in [0, 1] (got -0.01)"), ("1.5", "in [0, 1] (got 1.5)"),
                                         ("nan", "finite"), ("a", "accuracy_tolerance")])
def test_bad_tolerances_are_refused_in_one_line(saved_model, tiny_data, value, says):
    data = ["data=csv", f"data.train_file={tiny_data['train']}", f"data.eval_file={tiny_data['eval']}"]
    message = refused("bench-infer", f"model_dir={saved_model}", *data, f"accuracy_tolerance={value}")
    assert "accuracy_tolerance" in message and says in message, message


# ------------------------------------------------------------------ the CPU's features choose the int8 settings
CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse4_2 avx2 fma avx512f avx512_vnni amx_int8\n\n"


def test_flags_are_read_from_cpuinfo():
    assert cpu_features.cpu_flags(CPUINFO) >= {"avx2", "avx512_vnni", "amx_int8"}
    assert cpu_features.cpu_flags("processor : 0\n") == set()
    cpu = cpu_features.describe(cpu_features.cpu_flags(CPUINFO), name="Xeon")
    assert cpu["flags"] == ["avx2", "fma", "avx512f", "avx512_vnni", "amx_int8"]
    assert cpu["vnni"] and not cpu["bf16"] and not cpu["amx"]  # amx_tile absent


@pytest.mark.parametrize("flags, machine, seven_bit", [
    ({"avx2", "fma"}, "x86_64", True),  # AMD EPYC here: U8S8 on vpmaddubsw can saturate
    ({"avx2", "fma", "avx512f"}, "x86_64", True),  # AVX-512 without VNNI: the same
    ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", False),
    ({"avx2", "avx_vnni"}, "x86_64", False),
    ({"avx512f", "amx_tile", "amx_int8", "amx_bf16", "avx512_bf16"}, "x86_64", False),
    ({"asimd"}, "aarch64", False),
])
def test_int8_settings_follow_the_cpu(monkeypatch, flags, machine, seven_bit):
    from llmft.models.onnx import int8_settings

    monkeypatch.setattr(cpu_features.platform, "machine", lambda: machine)
    settings = int8_settings(cpu_features.describe(flags, name="cpu"))
    assert settings["reduce_range"] is seven_bit and settings["per_channel"] is True


# ------------------------------------------------------------------ the fused exports reload as they were made
@pytest.fixture(scope="module")
def classifier(tiny_bert):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=len(LABELS)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    texts = ["the train was late", "great wonderful morning today and we love it", "awful", "a table"]
    return model, dict(tokenizer(texts, padding=True, return_tensors="pt"))  # padded: the mask matters


@pytest.mark.skipif(not ONNX, reason="onnxruntime / onnxscript not installed")
def test_the_int8_export_is_fused_reloads_and_matches(tmp_path, classifier):
    """onnx-int8 through its entry: fused (SkipLayerNorm, MultiHeadAttention) before quantizing, the
    reloaded file gives the in-memory export's logits, and the settings for this CPU are recorded."""
    import onnx
    import torch

    from llmft.models.onnx import ONNX_FILE, int8_record, int8_settings

    model, batch = classifier
    entry = formats.FORMATS["onnx-int8"]
    made = entry.convert(model, batch, tmp_path)
    ops = {n.op_type for n in onnx.load(str(tmp_path / ONNX_FILE)).graph.node}
    assert {"SkipLayerNormalization", "MultiHeadAttention", "MatMulInteger"} <= ops, ops
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".onnx") == [ONNX_FILE]  # no scratch left
    loaded = entry.load(tmp_path, None, None, False)
    with torch.no_grad():
        reference = model(**batch).logits
    again = loaded(**batch).logits
    assert torch.equal(again, made(**batch).logits)  # the reloaded file is the one made
    assert (again - reference).abs().max().item() <= entry.tolerance * max(1.0, reference.abs().max().item())
    assert int8_record(tmp_path / ONNX_FILE) == json.loads(json.dumps(int8_settings(cpu_features.describe())))
