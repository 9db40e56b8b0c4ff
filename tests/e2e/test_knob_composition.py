"""The knobs of this release together (model.dropout, train.l1 towards the pretrained weights,
data.augment=eda, train.adversarial=fgm): a sweep over train.l1 runs and `llmft report` lists its
points; a kill -9 mid-run, rerun, ends with the sweep point's exact metrics, predictions and
weights (augmented rows, dropout masks, perturbations and the L1 anchor are not redrawn or
re-copied from the checkpoint on resume). Their fingerprints: tests/unit/test_regularization.py."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import cli_env, read_jsonl, read_results, run_cli, tiny_train_args

STEPS, SAVE_STEPS = 40, 8


def knobs() -> list[str]:
    """Every knob of the release whose technique is in the package (augmentation and adversarial
    training are separate modules)."""
    out = ["model.dropout=0.2", "train.l1_to=pretrained"]
    if importlib.util.find_spec("llmft.techniques.augment"):
        out.append("data.augment.method=eda")
    if importlib.util.find_spec("llmft.techniques.adversarial"):
        out.append("train.adversarial.method=fgm")
    return out


def args(model, data, run_dir, *extra) -> list[str]:
    return tiny_train_args(model, data, run_dir, f"train.max_steps={STEPS}", f"train.save_steps={SAVE_STEPS}",
                           "train.save_total_limit=2", *knobs(), *extra)


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_a_sweep_over_l1_reports_and_a_killed_point_resumes_to_its_exact_result(tmp_path, tiny_bert, tiny_data):
    sweep = tmp_path / "sweep"
    sweep_args = [a for a in args(tiny_bert, tiny_data, tmp_path / "unused") if not a.startswith("hydra.run")]
    proc = run_cli("train", "-m", "train.l1=0,1e-3", *sweep_args, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    whole = sweep / "1"  # train.l1=1e-3
    results = read_results(whole)
    config = json.loads((whole / "model" / "config.json").read_text())
    assert config["hidden_dropout_prob"] == config["attention_probs_dropout_prob"] == 0.2
    assert results["techniques"]["dropout"]["classifier_dropout"] == 0.2
    if "data.augment.method=eda" in knobs():
        assert "augment" in results["techniques"]
    logged = [r for r in read_jsonl(whole / "metrics.jsonl") if "loss/l1" in r]
    assert logged and logged[0]["loss/l1"] >= 0 and logged[-1]["loss/l1"] > 0  # moved from the pretrained weights
    assert not any("loss/l1" in r for r in read_jsonl(sweep / "0" / "metrics.jsonl"))
    assert read_results(sweep / "0")["fingerprint"] != results["fingerprint"]

    proc = run_cli("report", sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (sweep / "report.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    assert "train.l1" in header, header
    assert sorted(float(r["train.l1"]) for r in body) == [0.0, 1e-3] and all(r["status"] == "completed" for r in body)

    # the same config as one run, killed (-9, its whole process group) once a checkpoint is complete
    killed = tmp_path / "killed"
    run_args = args(tiny_bert, tiny_data, killed, "train.l1=1e-3")
    script = Path(sys.executable).with_name("llmft")
    proc = subprocess.Popen([str(script), "train", *run_args], env=cli_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker = killed / "checkpoints" / f"checkpoint-{SAVE_STEPS}" / ".complete"
    deadline = time.time() + 300
    try:
        while not marker.is_file():
            assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stderr.read()[-2000:]}"
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (killed / "results.json").exists(), "the run finished before the kill"

    proc = run_cli("train", *run_args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = read_results(killed)
    assert 0 < resumed["train"]["resumed_from_step"] < STEPS
    assert resumed["eval"] == results["eval"]
    assert (killed / "predictions.jsonl").read_bytes() == (whole / "predictions.jsonl").read_bytes()
    got, want = weights(killed / "model"), weights(whole / "model")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in want)
    step = resumed["train"]["resumed_from_step"]
    after = lambda run: [{k: v for k, v in r.items() if k.startswith("loss")}  # noqa: E731
                         for r in read_jsonl(run / "metrics.jsonl") if r.get("step", 0) > step and "loss" in r]
    assert after(killed) and after(killed) == after(whole)
