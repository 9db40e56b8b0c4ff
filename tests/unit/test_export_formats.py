"""The export formats' registry (llmft/models/formats.py) is the only list of them: the config
checks accept exactly its names, bench-infer's variants are its timed entries, export checks each
format against the entry's tolerance, and a format added as one entry is accepted and exported
with no other edit."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from conftest import untrained_classifier

from llmft.cli import normalize_overrides
from llmft.core.errors import UserError
from llmft.models import formats

ONNX = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnxscript") is not None


def compose(command: str, *overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmft.cli.app import config_dir
    from llmft.cli.table import config_name
    from llmft.cli.validate import register_configs

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return hydra_compose(config_name(command), overrides=normalize_overrides(list(overrides), command))


def command_check(command: str, *overrides: str) -> None:
    """The command's own checks, as the CLI runs them on the composed config."""
    from llmft.cli.validate import check_command

    check_command(compose(command, "model_dir=/nowhere", *overrides), command)


def usable(name: str) -> bool:
    return formats.FORMATS[name].requires is None or ONNX


def test_export_format_accepts_exactly_the_registry():
    from llmft.core.config import ExportRunConfig

    assert ExportRunConfig.format == formats.names()[0] == "merged"  # the schema's default is the first entry
    for name in filter(usable, formats.names()):
        command_check("export", f"format={name}")
    with pytest.raises(UserError) as err:
        command_check("export", "format=int4")
    assert str(err.value) == f"format='int4' is not one of: {', '.join(formats.names())}"


def test_bench_infer_variants_are_the_timed_entries():
    assert formats.timed() == ["fp32", *(f.name for f in formats.FORMATS.values() if f.timed)]
    assert formats.timed() == ["fp32", "bf16", "fp16", "int8", "onnx", "onnx-fused", "onnx-int8"]
    command_check("bench-infer", f"variants=[{','.join(filter(lambda v: v == 'fp32' or usable(v), formats.timed()))}]")
    with pytest.raises(UserError) as err:
        command_check("bench-infer", "variants=[fp32,merged]")
    assert str(err.value) == f"variants='merged' is not one of: {', '.join(formats.timed())}"


def test_task_restrictions_come_from_the_entries():
    if not ONNX:
        pytest.skip("onnxruntime not installed")
    with pytest.raises(UserError, match="format: onnx exports classification and ner models .*"
                                        r"format=bf16\|fp16\|int8 converts the others"):
        command_check("export", "format=onnx", "data=jsonl_seq2seq", "data.train_file=x.jsonl")
    with pytest.raises(UserError, match="variants: onnx and onnx-fused and onnx-int8 run classification and ner models"):
        command_check("bench-infer", "variants=[fp32,onnx-int8]", "data=jsonl_seq2seq", "data.train_file=x.jsonl")


# ------------------------------------------------------------------ each entry's tolerance is the check's
class Fixed:
    """A model whose logits are given (a parameter so the check can read its dtype)."""

    def __init__(self, logits, base=None):
        import torch

        self.logits, self.base, self.adapter_on = logits, base, True
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def __call__(self, **batch):
        return SimpleNamespace(logits=self.logits if self.adapter_on else self.base)

    def parameters(self):
        return iter([self.weight])

    @contextmanager
    def disable_adapter(self):
        self.adapter_on = False
        yield
        self.adapter_on = True


@pytest.mark.parametrize("name", formats.names())
@pytest.mark.parametrize("inside", [True, False])
def test_export_checks_each_format_against_its_tolerance(name, inside, tmp_path):
    """Through export's own check code, with the entry's convert/load swapped for ones that shift
    the logits by just under / just over its tolerance x the logit scale (2)."""
    import torch

    from llmft.commands import export

    entry = formats.FORMATS[name]
    tolerance = formats.tolerance(name, None)
    assert tolerance == entry.tolerance and formats.tolerance(name, 0.5) == 0.5
    reference = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.5, -2.0]])
    shifted = reference + torch.tensor([[0.0, 0.0, (0.99 if inside else 1.01) * tolerance * 2]] * 2)
    fake = dataclasses.replace(entry, convert=lambda model, batch, folder: model,
                               load=lambda folder, task, tokenizer, trust: Fixed(shifted))
    tokenizer = SimpleNamespace(save_pretrained=lambda path: None)
    if entry.merges:
        run = lambda: export.merge(fake, Fixed(reference, base=reference - 1), tokenizer, {}, None,  # noqa: E731
                                   tolerance, False, tmp_path)
        failure = "merged logits differ from the adapter's"
    else:
        run = lambda: export.convert(fake, tolerance, Fixed(reference), tokenizer, {}, None, {},  # noqa: E731
                                     tmp_path, tmp_path)
        failure = f"{name} logits differ from fp32"
    if inside:
        record, _ = run()
        assert record["check"]["passed"] and record["check"]["tolerance"] == entry.tolerance
    else:
        with pytest.raises(UserError, match=f"export check failed: {failure}"):
            run()


# ------------------------------------------------------------------ a format added as one entry
def _copy(model, batch, folder):
    model.save_pretrained(str(folder))
    return model


def _load(offset: float):
    def load(folder, task, tokenizer, trust_remote_code):
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
        forward = model.forward
        model.forward = lambda **batch: SimpleNamespace(logits=forward(**batch).logits + offset)
        return model

    return load


@pytest.fixture
def saved_classifier(tmp_path, tiny_bert):
    """A classifier folder as training leaves it (weights, tokenizer, llmft.json), untrained."""
    return untrained_classifier(tmp_path / "run" / "model", tiny_bert)


def test_a_new_entry_is_validated_exported_and_timed(monkeypatch, tmp_path, saved_classifier, tiny_data):
    from llmft.cli.validate import check_command
    from llmft.commands import bench_infer, export

    monkeypatch.setitem(formats.FORMATS, "fp32-copy",
                        formats.ExportFormat("fp32-copy", 1e-3, _copy, _load(0.0), timed=True))
    data = ["data=csv", f"data.train_file={tiny_data['train']}", f"data.eval_file={tiny_data['eval']}"]
    for run in ("export_run", "export_run2", "bench_run"):  # the run folders the CLI would have made
        (tmp_path / run).mkdir()

    cfg = compose("export", f"model_dir={saved_classifier}", "format=fp32-copy", "check_examples=4",
                  f"output_dir={tmp_path / 'out'}", *data)
    check_command(cfg, "export")
    result = export.main(cfg, tmp_path / "export_run")
    assert result["format"] == "fp32-copy" and result["check"]["passed"] and result["check"]["tolerance"] == 1e-3
    assert json.loads((tmp_path / "out" / "llmft.json").read_text())["format"] == "fp32-copy"
    assert json.loads((tmp_path / "export_run" / "export.json").read_text())["check"] == result["check"]

    # the same entry, its reload off by more than its tolerance: refused, the previous export kept
    monkeypatch.setitem(formats.FORMATS, "fp32-copy", dataclasses.replace(formats.FORMATS["fp32-copy"],
                                                                          load=_load(0.01)))
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    with pytest.raises(UserError, match="export check failed: fp32-copy logits differ from fp32"):
        export.main(cfg, tmp_path / "export_run2")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before

    cfg = compose("bench-infer", f"model_dir={saved_classifier}", "variants=[fp32,fp32-copy]", "latency_examples=2",
                  "throughput_examples=8", "batch_size=8", *data)
    check_command(cfg, "bench-infer")
    rows = bench_infer.main(cfg, tmp_path / "bench_run")["variants"]
    assert [r["variant"] for r in rows] == ["fp32", "fp32-copy"] and rows[1]["metric_delta"] == 0
