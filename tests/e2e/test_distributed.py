"""Multi-process training: DeepSpeed ZeRO-2/3 over gloo on 2 CPU processes, started by llmft itself;
checkpoints that resume exactly; a killed run that resumes; hardware validation."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import cli_env, read_results, run_cli, tiny_train_args

# every ZeRO-3 test shards the tiny model (DeepSpeed keeps parameters under 1e5 elements whole)
SHARD = "hardware.zero3_persistence_threshold=0"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_bert, tiny_data):
    """The reference: one process, batch 16 = the 2-process runs' global batch (2 x 8)."""
    run_dir = tmp_path_factory.mktemp("one") / "run"
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.batch_size=16"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_results(run_dir)


@pytest.mark.parametrize("hardware, strategy", [("cpu_zero2", "full"), ("cpu_zero3", "full"), ("cpu_zero3", "lora")])
def test_zero_trains_like_one_process_and_reloads(tmp_path, tiny_bert, tiny_data, one_process, hardware, strategy):
    run_dir = tmp_path / "run"
    proc = run_cli("train", f"hardware={hardware}", SHARD, f"+strategy={strategy}",
                   *tiny_train_args(tiny_bert, tiny_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    stage = int(hardware[-1])
    assert results["hardware"] == {"name": hardware, "world_size": 2, "zero_stage": stage, "precision": "fp32"}
    assert len(results["memory"]["per_rank"]) == 2
    ds = json.loads((run_dir / "deepspeed.json").read_text())  # the Trainer refuses to run if DeepSpeed is off
    assert ds["zero_optimization"]["stage"] == stage and ds["train_batch_size"] == 16
    assert results["train"]["steps"] == one_process["train"]["steps"]
    if strategy == "full":  # same data, same global batch: the same loss up to float reordering
        assert results["train"]["final_loss"] == pytest.approx(one_process["train"]["final_loss"], abs=0.02)

    # model/ is in the standard format (ZeRO-3: gathered full weights / real adapter tensors)
    import torch
    from transformers import AutoModelForSequenceClassification

    if strategy == "full":
        model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
        assert all(p.numel() > 0 for p in model.parameters())
    else:
        from peft import PeftModel
        from safetensors.torch import load_file

        adapter = load_file(run_dir / "model" / "adapter_model.safetensors")
        assert all(t.numel() > 0 for t in adapter.values())
        assert any("lora_B" in k and t.abs().max() > 0 for k, t in adapter.items())
        base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
        model = PeftModel.from_pretrained(base, run_dir / "model")
    assert isinstance(model, torch.nn.Module)
    proc = run_cli("eval", f"model_dir={run_dir / 'model'}", f"hydra.run.dir={tmp_path / 'eval'}", "print_config=false",
                   "hardware.device_map=auto")  # accelerate places the layers (here: all on the CPU)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(tmp_path / "eval")["eval"]["accuracy"] == pytest.approx(results["eval"]["accuracy"])


def test_zero3_resume_from_a_mid_run_checkpoint_is_exact(tmp_path, tiny_bert, tiny_data):
    args = ["hardware=cpu_zero3", SHARD, "train.max_steps=8", "train.save_steps=4"]
    whole = tmp_path / "whole"
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, whole, *args))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any((whole / "checkpoints" / "checkpoint-4").glob("global_step*"))  # DeepSpeed's shards

    # the same folder, as if the job had died after step 4
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    for gone in ("checkpoints/checkpoint-8", "model", "results.json"):
        shutil.rmtree(cut / gone) if (cut / gone).is_dir() else (cut / gone).unlink()
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, cut, *args))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed, reference = read_results(cut), read_results(whole)
    assert resumed["train"]["resumed_from_step"] == 4
    assert resumed["eval"]["loss"] == pytest.approx(reference["eval"]["loss"], abs=1e-5)

    # another world size cannot load these shards: one line, exit 2
    shutil.rmtree(cut / "checkpoints" / "checkpoint-8")
    (cut / "results.json").unlink()
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, cut, *args, "hardware.nproc_per_node=1"))
    assert proc.returncode == 2 and "saved with ZeRO stage 3 on 2 processes" in proc.stderr, proc.stderr[-2000:]


def test_killed_run_resumes_when_rerun(tmp_path, tiny_bert, tiny_data):
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_bert, tiny_data, run_dir, "train.max_steps=1000", "train.save_steps=20",
                           "train.logging_steps=50")
    script = shutil.which("llmft") or "llmft"
    proc = subprocess.Popen([script, "train", *args], env=cli_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((run_dir / "checkpoints").glob("checkpoint-*/.complete")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, as a preempted job dies
    proc.wait()
    assert not (run_dir / "results.json").exists()

    proc = run_cli("train", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["train"]["resumed_from_step"] >= 20 and results["train"]["steps"] == 1000


@pytest.mark.parametrize("extra, message", [
    (["hardware.zero_stage=5"], "hardware.zero_stage: must be 0"),
    (["hardware=cpu_zero2", "hardware.accelerator=cuda", "hardware.offload_param=cpu"], "needs hardware.zero_stage>=3"),
    (["hardware=cpu_zero3", "hardware.offload_optimizer=cpu"], "everything is in CPU memory already"),
    (["hardware.precision=fp16"], "fp16 needs a GPU"),
    (["hardware=cpu_zero2", "+strategy=gradual_unfreeze"], "supports ZeRO up to stage 0"),
    (["hardware.nproc_per_node=4096"], "CPU cores"),
])
def test_hardware_errors_are_one_line(tmp_path, tiny_bert, tiny_data, extra, message):
    run_dir = tmp_path / "run"
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir, *extra))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "results.json").exists()


def test_zero3_prompt_tuning_saves_its_prompt(tmp_path, tiny_bert, tiny_data):
    """PEFT computes the prompt to save on rank 0 alone; under ZeRO-3 that waits forever unless
    the prompt encoder is gathered on every rank first."""
    run_dir = tmp_path / "run"
    proc = run_cli("train", "hardware=cpu_zero3", SHARD, "+strategy=prompt_tuning", "train.max_steps=4",
                   *tiny_train_args(tiny_bert, tiny_data, run_dir), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    prompt = load_file(run_dir / "model" / "adapter_model.safetensors")["prompt_embeddings"]
    assert prompt.shape[0] > 0 and prompt.abs().sum() > 0


def _batch_worker(rank: int, port: int, models: dict, out_file: str) -> None:
    """One of 2 gloo processes: one SGD step at batch 2 each (global batch 4), both loss kinds."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")
    import sys
    import tempfile

    import torch
    import torch.distributed as dist

    from conftest import UNIT

    sys.path.insert(0, str(UNIT))
    import test_hf_boundary as boundary

    dist.init_process_group("gloo", rank=rank, world_size=2)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, built in (("row_mean", boundary.classification(models["bert"])),
                            ("token_mean", boundary.sft(models["chat"]))):
            trainer = boundary.train(built, f"{tmp}/{kind}", batch=2, accum=1, ddp_backend="gloo")
            out[kind] = {"grad_norm": trainer.state.log_history[0]["grad_norm"], "weights": boundary.weights(trainer)}
    if rank == 0:
        torch.save(out, out_file)
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_at_half_the_batch_train_like_one(tmp_path, tiny_bert, tiny_chat_llama):
    """Batch 4 on one process = batch 2 on each of 2 (the unit tier checks B = B/k x k accumulation
    steps): transformers multiplies a loss it takes for token-normalised by the process count, so a
    row-mean loss would train at 2x the gradient; a token mean must count the tokens of both ranks."""
    import socket
    import sys

    import torch
    import torch.multiprocessing as mp
    from conftest import UNIT

    sys.path.insert(0, str(UNIT))
    import test_hf_boundary as boundary

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_file = tmp_path / "two.pt"
    mp.start_processes(_batch_worker, args=(port, {"bert": str(tiny_bert), "chat": str(tiny_chat_llama)},
                                            str(out_file)), nprocs=2, start_method="spawn")
    two = torch.load(out_file)
    for kind, built in (("row_mean", boundary.classification(tiny_bert)), ("token_mean", boundary.sft(tiny_chat_llama))):
        one = boundary.train(built, tmp_path / kind, batch=4, accum=1)
        assert two[kind]["grad_norm"] == pytest.approx(one.state.log_history[0]["grad_norm"], rel=1e-4), kind
        boundary.same_weights(boundary.weights(one), two[kind]["weights"])
