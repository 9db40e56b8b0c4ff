"""`llmft prune` from the command line: a head-pruned, fine-tuned copy next to model/, which
bench-infer then loads (through llmft's loader: a plain config cannot describe fewer heads) and
measures beside the fp32 model."""
from __future__ import annotations

import json
import shutil

from conftest import read_results, run_cli


def test_prune_heads_then_bench_infer(tmp_path, trained_bert, tiny_data):
    run = tmp_path / "run"
    shutil.copytree(trained_bert, run)  # prune writes next to model/: never into the shared run
    data = ["data=csv", f"data.train_file={tiny_data['train']}", f"data.eval_file={tiny_data['eval']}"]
    proc = run_cli("prune", f"model_dir={run / 'model'}", "prune.method=heads", "prune.amount=0.5",
                   "prune.finetune_steps=2", "prune.batch_size=8", *data, f"hydra.run.dir={tmp_path / 'prune'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run / "pruned-heads-0.5-ft2"
    summary = json.loads((tmp_path / "prune" / "prune.json").read_text())
    assert summary["output_dir"] == str(out.resolve()) and (out / ".llmft-export").is_file()
    assert summary["heads_before"] == [2, 2] and summary["heads_after"] == [1, 1] == summary["heads"]
    assert summary["parameters_after"] < summary["parameters_before"]
    assert summary["check"]["examples"] == 30 and summary["check"]["max_abs_diff_reloaded"] == 0.0
    assert "pruned model:" in proc.stdout

    proc = run_cli("bench-infer", f"model_dir={run / 'model'}", "variants=[fp32]", f"students=[{out}]", *data,
                   "latency_examples=2", "throughput_examples=8", "batch_size=4", f"hydra.run.dir={tmp_path / 'bench'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_results(tmp_path / "bench")["variants"]
    assert [r["variant"] for r in rows] == ["fp32", "pruned (pruned-heads-0.5-ft2)"]
    assert rows[1]["size_mb"] < rows[0]["size_mb"]
    assert rows[1]["accuracy"] == summary["check"]["pruned"]["accuracy"]  # the same model on the same 30 rows
