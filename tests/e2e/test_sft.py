"""Causal-LM SFT with a chat template: response-only loss, generation metrics, SmolLM2."""
from __future__ import annotations

import json

import pytest
from conftest import read_jsonl, read_results, run_cli


def sft_args(model, train_file, run_dir, *extra):
    return ["model=hf", f"model.name_or_path={model}", "data=jsonl_sft", f"data.train_file={train_file}",
            "data.eval_fraction=0.2", "train.epochs=2", "train.batch_size=8", "train.lr=3e-3",
            "train.logging_steps=2", "generate.max_new_tokens=6", "generate.max_examples=8",
            "print_config=false", f"hydra.run.dir={run_dir}", *extra]


def test_loss_covers_the_response_only(tiny_chat_llama):
    from datasets import Dataset
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from llmft.core.config import DataConfig
    from llmft.tasks.sft import SFT

    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "x", "task": "sft", "max_length": 128})
    task = SFT(cfg)
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_llama)
    raw = task.encode(Dataset.from_list([{"prompt": "great day", "response": "positive"}]), "x.jsonl", True)
    row = task.tokenize(raw, tokenizer)[0]
    prompt = tokenizer.apply_chat_template(raw[0]["chat"][:-1], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert row["labels"][:n_prompt] == [-100] * n_prompt
    answer = row["labels"][n_prompt:]
    assert answer == row["input_ids"][n_prompt:]
    assert tokenizer.decode(answer).startswith("positive") and tokenizer.eos_token_id in answer  # learns to stop


def test_rows_without_a_target_token_are_dropped_and_counted(tiny_chat_llama):
    """A prompt that fills max_length leaves no response token: such rows are never trained on."""
    from datasets import Dataset
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from llmft.core.config import DataConfig
    from llmft.core.errors import UserError
    from llmft.tasks.sft import SFT

    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "x", "task": "sft", "max_length": 40})
    task = SFT(cfg)
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_llama)
    rows = [{"prompt": "great day", "response": "positive"}, {"prompt": "word " * 80, "response": "negative"}]
    raw = task.encode(Dataset.from_list(rows), "x.jsonl", True)
    kept = task.tokenize(raw, tokenizer)
    assert len(kept) == 1 and any(t != -100 for t in kept[0]["labels"])
    assert task.data_report() == {"dropped_no_target_tokens": 1}
    with pytest.raises(UserError, match="data.max_length=40"):
        task.tokenize(task.encode(Dataset.from_list(rows[1:]), "x.jsonl", True), tokenizer)


@pytest.mark.parametrize("layout, strategy", [("pairs", "full"), ("chats", "lora")])
def test_sft_run(tmp_path, tiny_chat_llama, sft_data, layout, strategy):
    run_dir = tmp_path / "run"
    proc = run_cli("train", f"+strategy={strategy}", *sft_args(tiny_chat_llama, sft_data[layout], run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["task"] == "sft" and results["primary_metric"] == "rougeL"
    assert set(results["eval"]) >= {"loss", "perplexity", "rougeL", "exact_match"}
    assert results["eval"]["generated"] == 8
    records = read_jsonl(run_dir / "predictions.jsonl")
    assert len(records) == 8 and all({"prompt", "reference", "generation"} <= set(r) for r in records)
    losses = [m["loss"] for m in read_jsonl(run_dir / "metrics.jsonl") if "loss" in m]
    assert losses[-1] < losses[0]

    proc = run_cli("eval", f"model_dir={run_dir / 'model'}", f"hydra.run.dir={tmp_path / 'eval'}",
                   "generate.max_new_tokens=6", "generate.max_examples=8", "print_config=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(tmp_path / "eval")["eval"]["loss"] == pytest.approx(results["eval"]["loss"], rel=1e-4)


def test_neftune_changes_training_and_nothing_else(tmp_path, tiny_chat_llama, sft_data):
    """train.neftune_alpha: the same seed trains on noisier embeddings (another loss curve from the
    first step), and the run completes, saves and evaluates like any other."""
    curves = {}
    for alpha in (0, 15):
        run_dir = tmp_path / f"alpha{alpha}"
        proc = run_cli("train", *sft_args(tiny_chat_llama, sft_data["pairs"], run_dir, "train.epochs=1",
                                          f"train.neftune_alpha={alpha}"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert read_results(run_dir)["status"] == "completed"
        curves[alpha] = [m["loss"] for m in read_jsonl(run_dir / "metrics.jsonl") if "loss" in m]
    assert curves[0][0] != curves[15][0]


def test_sft_needs_a_chat_template(tmp_path, tiny_llama, sft_data):
    proc = run_cli("train", *sft_args(tiny_llama, sft_data["pairs"], tmp_path / "run"))
    assert proc.returncode == 2 and "no chat template" in proc.stderr


def test_sft_rejects_a_chat_without_the_answer(tmp_path, tiny_chat_llama):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    proc = run_cli("train", *sft_args(tiny_chat_llama, bad, tmp_path / "run"))
    assert proc.returncode == 2 and "row 1" in proc.stderr and "assistant" in proc.stderr


def test_sft_distillation_and_l2sp_on_a_causal_lm(tmp_path, tiny_chat_llama, sft_data):
    """Token-level distillation (each next token against the teacher's) and L2-SP with the
    forgetting report's perplexity on a reference text, on a causal LM."""
    teacher = tmp_path / "teacher"
    proc = run_cli("train", *sft_args(tiny_chat_llama, sft_data["pairs"], teacher))
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = tmp_path / "reference.txt"
    reference.write_text("the train was late today and my report was great " * 20)
    student = tmp_path / "student"
    proc = run_cli("train", *sft_args(tiny_chat_llama, sft_data["pairs"], student), f"train.distill.teacher={teacher}",
                   "train.retention.l2sp=0.01", f"train.retention.eval_file={reference}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = read_jsonl(student / "metrics.jsonl")
    assert any("loss/distill" in r and "loss/l2sp" in r for r in lines)
    perplexity = read_results(student)["retention"]["perplexity"]
    assert perplexity["before"] > 0 and perplexity["after"] > 0


def test_sft_with_replayed_text(tmp_path, tiny_chat_llama, sft_data):
    """Rehearsal: plain text mixed into SFT as a next-token objective (data.aux kind=lm)."""
    text = tmp_path / "general.txt"
    text.write_text("my report was on the table and the train was late today " * 30)
    run_dir = tmp_path / "run"
    proc = run_cli("train", *sft_args(tiny_chat_llama, sft_data["pairs"], run_dir),
                   f"data.aux=[{{kind:lm,train_file:{text},weight:0.2}}]", "data.max_length=32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    aux = read_results(run_dir)["aux"]
    assert aux[0]["kind"] == "lm" and aux[0]["examples"] > 0


def test_sft_on_multi_turn_sharegpt(tmp_path, tiny_chat_llama):
    """A ShareGPT file (found by its keys) of two-exchange chats trains on both answers; generation
    is scored against the last one, prompted with everything before it."""
    from conftest import make_rows

    path = tmp_path / "sharegpt.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "conversations": [
        {"from": "human", "value": f"sentiment of : {r['text']}"}, {"from": "gpt", "value": r["label"]},
        {"from": "human", "value": "sentiment of : the report"}, {"from": "gpt", "value": "neutral"}]}) + "\n"
        for i, r in enumerate(make_rows(40, seed=5))))
    run_dir = tmp_path / "run"
    proc = run_cli("train", *sft_args(tiny_chat_llama, path, run_dir, "train.epochs=1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(run_dir)["status"] == "completed"
    records = read_jsonl(run_dir / "predictions.jsonl")
    assert records and all(r["reference"] == "neutral" and len(r["prompt"]) == 3 for r in records)
    assert [m["role"] for m in records[0]["prompt"]] == ["user", "assistant", "user"]
