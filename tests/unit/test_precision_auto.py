"""hardware.precision=auto: bf16 only where the device multiplies bf16 natively (never fp16), fixed
once at the run's start, the same value in every reader (TrainingArguments, DeepSpeed, llmft check,
the manifest, QLoRA, results.json), and a resumed run keeps its checkpoint's precision. The device
capability is monkeypatched: this CPU has no bf16 instructions."""
from __future__ import annotations

import copy
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_config, refused

from llmft.core.errors import UserError
from llmft.runtime import hf_private, precision
from llmft.runtime.run_dir import CHECKPOINT_DONE


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    from llmft.runtime import throughput

    # bf16 matmuls are emulated on a CPU without bf16 (~80x slower here): no peak probe for MFU
    monkeypatch.setattr(throughput, "peak_flops", lambda device, dtype: (1e12, "fixed for the test"))
    precision.forget()
    yield
    precision.forget()


def device(monkeypatch, cpu_bf16=False, cuda=False, cuda_bf16=False):
    monkeypatch.setattr(hf_private, "cpu_has_bf16", lambda: cpu_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda_bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")


@pytest.mark.parametrize("accelerator, cpu_bf16, cuda, cuda_bf16, expected", [
    ("cpu", True, False, False, "bf16"),  # AVX512-BF16 / AMX
    ("cpu", False, False, False, "fp32"),  # AVX2 only (this machine)
    ("cpu", False, True, True, "fp32"),  # a GPU is there, but the run is told to use the CPU
    ("auto", True, False, False, "bf16"),  # no GPU: the CPU decides
    ("auto", False, True, True, "bf16"),  # a bf16 GPU
    ("cuda", True, True, False, "fp32"),  # a GPU without bf16 (V100, T4): fp32, never fp16
])
def test_auto_resolves_per_device(monkeypatch, accelerator, cpu_bf16, cuda, cuda_bf16, expected):
    device(monkeypatch, cpu_bf16, cuda, cuda_bf16)
    hw = SimpleNamespace(accelerator=accelerator, precision="auto")
    assert precision.precision(hw) == expected
    assert precision.resolve(hw, announce=False)["precision"] == expected
    for explicit in ("fp32", "bf16", "fp16"):  # set by name: as set
        assert precision.precision(SimpleNamespace(accelerator=accelerator, precision=explicit)) == explicit


def test_resolved_once_the_device_is_not_asked_again(monkeypatch, capsys):
    device(monkeypatch, cpu_bf16=True)
    hw = SimpleNamespace(accelerator="cpu", precision="auto")
    assert precision.resolve(hw) == {"precision": "bf16", "precision_requested": "auto",
                                     "precision_why": "this CPU has bf16 instructions (AVX512-BF16 or AMX)"}
    assert capsys.readouterr().err.count("hardware.precision=auto -> bf16") == 1
    monkeypatch.setattr(hf_private, "cpu_has_bf16", lambda: False)
    assert precision.precision(hw) == "bf16"  # the run's choice, not a second probe


def cfg_for(*extra):
    return compose_config("train", "hardware.precision=auto", *extra)


@pytest.mark.parametrize("cpu_bf16, used", [(True, "bf16"), (False, "fp32")])
def test_every_reader_sees_the_resolved_value(monkeypatch, cpu_bf16, used):
    """Each reader of auto gives what it gives for the resolved precision set by name."""
    from llmft.cli import check as check_cmd
    from llmft.runtime.distributed import deepspeed_config
    from llmft.runtime.manifest import hardware
    from llmft.runtime.trainer import precision_flags
    from llmft.strategies import build_strategy
    from llmft.tasks import build_task

    device(monkeypatch, cpu_bf16=cpu_bf16)
    auto, named = cfg_for("hardware=cpu_zero2"), compose_config("train", "hardware=cpu_zero2", f"hardware.precision={used}")
    precision.resolve(auto.hardware, announce=False)
    monkeypatch.setattr(hf_private, "cpu_has_bf16", lambda: True)  # named bf16 is refused without it
    assert precision_flags(auto.hardware) == precision_flags(named.hardware) == {"bf16": used == "bf16", "fp16": False}
    assert deepspeed_config(auto) == deepspeed_config(named)
    assert deepspeed_config(auto)["bf16"] == {"enabled": used == "bf16"}
    assert hardware(auto)["precision"] == used
    shape = {"hidden": 64, "layers": 2, "heads": 4, "vocab": None}
    params = {"total": 1000, "trainable": 100, "largest_layer": 10, "shape": shape}
    auto, named = copy.deepcopy(auto), copy.deepcopy(named)
    for cfg in (auto, named):  # ZeRO 0: no DeepSpeed import
        cfg.hardware.zero_stage, cfg.hardware.nproc_per_node = 0, 1
    activations = check_cmd.activations(auto, shape)
    assert activations == check_cmd.activations(named, shape)
    assert activations["bytes"] == (1 if used == "bf16" else 2) * 2 * 64 * 32 * 64 * (34 + 5 * 4 * 64 // 64)  # 64 tokens x 32
    memory = check_cmd.memory(auto, params)
    assert memory == check_cmd.memory(named, params) and memory["precision"] == used
    qlora = compose_config("train", "hardware.precision=auto", "model=smollm2", "strategy=qlora")
    strategy = build_strategy(qlora, build_task(qlora.data))
    assert strategy.quantization()["compute_dtype"] == used


def test_named_bf16_on_a_cpu_without_it_is_refused_and_auto_never_picks_it(monkeypatch):
    from llmft.runtime.trainer import precision_flags

    device(monkeypatch, cpu_bf16=False)
    with pytest.raises(UserError) as err:
        precision_flags(SimpleNamespace(accelerator="cpu", precision="bf16"))
    assert "\n" not in str(err.value) and "hardware.precision=bf16" in str(err.value)
    assert precision_flags(SimpleNamespace(accelerator="cpu", precision="auto")) == {"bf16": False, "fp16": False}


@pytest.mark.parametrize("override, expected", [
    ("hardware.precision=fp8", "hardware.precision"),
    ("hardware.precision=AUTO", "hardware.precision"),
])
def test_bad_values_are_refused_in_one_line(override, expected):
    assert expected in refused("train", override)


def test_auto_passes_validation_and_fp16_on_the_cpu_stays_refused():
    from conftest import preflight

    preflight("train", "hardware.precision=auto")
    assert "fp16 needs a GPU" in refused("train", "hardware.precision=fp16")


def run_args(bert, data, *extra):
    return ["model=hf", f"model.name_or_path={bert}", "data=csv", f"data.train_file={data['train']}",
            f"data.eval_file={data['eval']}", "data.max_train_samples=16", "train.batch_size=8",
            "train.lr=5e-3", "train.retention.report=false", "print_config=false", "hardware.precision=auto", *extra]


def two_steps(bert, data):
    return compose_config("train", *run_args(bert, data, "train.max_steps=2", "train.save_steps=1"))


def test_results_record_the_choice_and_the_trainer_trains_in_it(monkeypatch, tiny_bert, tiny_data, tmp_path):
    from llmft.commands import train
    from llmft.runtime.run_dir import fingerprint

    cfg = two_steps(tiny_bert, tiny_data)
    device(monkeypatch, cpu_bf16=False)
    fp32 = train.main(cfg, tmp_path / "fp32")
    assert fp32["hardware"]["precision"] == fp32["train"]["precision"] == "fp32"  # train's: TrainingArguments'
    assert fp32["hardware"]["precision_requested"] == "auto"
    assert "no bf16 instructions" in fp32["hardware"]["precision_why"]
    assert fp32["fingerprint"] == fingerprint(cfg)["fingerprint"]  # the config says auto: same on every machine
    manifest = json.loads((tmp_path / "fp32" / "manifest.json").read_text())
    assert manifest["hardware"]["precision"] == "fp32"


def test_a_resumed_run_keeps_its_checkpoints_precision(monkeypatch, tiny_bert, tiny_data, tmp_path):
    """Started where auto is bf16, resumed where it is fp32: it goes on in bf16 (never mixes), and
    says why; the checkpoint marker is what it reads."""
    from llmft.commands import train

    from llmft.runtime.run_dir import fingerprint

    cfg = two_steps(tiny_bert, tiny_data)
    run = tmp_path / "run"
    device(monkeypatch, cpu_bf16=True)
    whole = train.main(cfg, run)
    assert whole["hardware"]["precision"] == whole["train"]["precision"] == "bf16"
    assert whole["fingerprint"] == fingerprint(cfg)["fingerprint"]
    assert json.loads((run / "manifest.json").read_text())["hardware"]["precision"] == "bf16"
    assert json.loads((run / "checkpoints" / "checkpoint-1" / CHECKPOINT_DONE).read_text())["precision"] == "bf16"
    for name in ("results.json", "predictions.jsonl"):
        (run / name).unlink()
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoints" / "checkpoint-2")
    precision.forget()
    device(monkeypatch, cpu_bf16=False)  # another machine
    resumed = train.main(cfg, run)
    assert resumed["train"]["resumed_from_step"] == 1
    assert resumed["hardware"]["precision"] == resumed["train"]["precision"] == "bf16"
    assert "checkpoint-1" in resumed["hardware"]["precision_why"] and "here alone: fp32" in resumed["hardware"]["precision_why"]
    assert resumed["eval"]["loss"] == pytest.approx(whole["eval"]["loss"], rel=1e-4)


def test_a_bf16_checkpoint_on_a_gpu_without_bf16_is_refused(monkeypatch, tmp_path):
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / CHECKPOINT_DONE).write_text(json.dumps({"fingerprint": "x", "precision": "bf16"}))
    device(monkeypatch, cuda=True, cuda_bf16=False)
    with pytest.raises(UserError) as err:
        precision.resolve(SimpleNamespace(accelerator="cuda", precision="auto"), checkpoint, announce=False)
    assert "\n" not in str(err.value) and "train.resume" in str(err.value) and "trained in bf16" in str(err.value)
    device(monkeypatch, cpu_bf16=False)  # the CPU runs bf16 (emulated): kept
    assert precision.resolve(SimpleNamespace(accelerator="cpu", precision="auto"), checkpoint,
                             announce=False)["precision"] == "bf16"
