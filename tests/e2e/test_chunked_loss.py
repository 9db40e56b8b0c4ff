"""train.loss_chunk_tokens through the CLI: SFT trains in chunks by default (recorded), with the
loss curve and the eval loss of the plain path (train.loss_chunk_tokens=0), gradient accumulation on."""
from __future__ import annotations

import json

import pytest

from tests.conftest import read_jsonl, read_results, run_cli


def test_sft_chunked_by_default_trains_like_the_plain_loss(tmp_path, tiny_chat_llama, sft_data):
    runs = {}
    for name, extra in (("chunked", []), ("plain", ["train.loss_chunk_tokens=0"])):
        run_dir = tmp_path / name
        proc = run_cli("train", "+strategy=full", "model=hf", f"model.name_or_path={tiny_chat_llama}", "data=jsonl_sft",
                       f"data.train_file={sft_data['pairs']}", "data.eval_fraction=0.2", "train.max_steps=4",
                       "train.batch_size=4", "train.grad_accum=2", "train.lr=3e-3", "train.logging_steps=1",
                       "generate.max_new_tokens=2", "generate.max_examples=2", "train.retention.report=false",
                       "print_config=false", f"hydra.run.dir={run_dir}", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        record = json.loads((run_dir / "model" / "llmft.json").read_text())
        runs[name] = ([m["loss"] for m in read_jsonl(run_dir / "metrics.jsonl") if "loss" in m],
                      read_results(run_dir)["eval"]["loss"], json.dumps(record))
    assert '"loss_chunk_tokens": 1024' in runs["chunked"][2] and "loss_chunk_tokens" not in runs["plain"][2]
    assert len(runs["chunked"][0]) == 4
    assert runs["chunked"][0] == pytest.approx(runs["plain"][0], rel=1e-4)
    assert runs["chunked"][1] == pytest.approx(runs["plain"][1], rel=1e-4)
