"""Prompt-based classification (zero_shot, few_shot, pet) on a tiny causal LM whose scores we
control: its blocks are switched off (zero output projections), so the next-token scores after a
prompt depend only on the prompt's last token, through the tied embedding matrix: the token
itself scores highest. A text ending in a label word must therefore get that label."""
from __future__ import annotations


import pytest
from conftest import WORDS, blockless_llama, prompt_args, read_jsonl, read_results, run_cli, write_csv


@pytest.fixture(scope="module")
def biased_lm(tmp_path_factory, tiny_llama):
    """Like echo_lm, plus a bias toward "great": every embedding shares a vector c and the output
    row of "great" carries 3c, so uncalibrated it wins for every input."""
    import torch
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("biased-lm")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = blockless_llama(tokenizer, tie=False)
    great = tokenizer("great", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed.normal_()
        common = torch.randn(64)
        embed += common
        model.lm_head.weight.copy_(embed)
        model.lm_head.weight[great] += 2 * common
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_zero_shot_verbalizer_picks_the_label_the_model_scores(tmp_path, echo_lm, cloze_data):
    run_dir = tmp_path / "run"
    proc = run_cli("train", "+strategy=zero_shot", "strategy.calibrate=false", *prompt_args(echo_lm, cloze_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["eval"]["accuracy"] == 1.0 and results["train"] is None
    assert results["params"]["trainable"] == 0

    proc = run_cli("eval", f"model_dir={run_dir / 'model'}", f"hydra.run.dir={tmp_path / 'eval'}", "print_config=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_jsonl(tmp_path / "eval" / "predictions.jsonl") == read_jsonl(run_dir / "predictions.jsonl")


def test_calibration_removes_a_label_bias(tmp_path, biased_lm, cloze_data):
    import torch

    from llmft.artifacts import load_saved, read_metadata
    from llmft.models.prompting import render
    from llmft.tasks import TASKS

    raw_dir, calibrated_dir = tmp_path / "raw", tmp_path / "calibrated"
    proc = run_cli("train", "+strategy=zero_shot", "strategy.calibrate=false", *prompt_args(biased_lm, cloze_data, raw_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {r["prediction"] for r in read_jsonl(raw_dir / "predictions.jsonl")} == {"positive"}  # the bias
    proc = run_cli("train", "+strategy=zero_shot", "data.prompt.content_free=the",
                   *prompt_args(biased_lm, cloze_data, calibrated_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(calibrated_dir)["eval"]["accuracy"] == 1.0  # calibration removed it

    # After calibration the content-free input scores every label the same.
    meta = read_metadata(calibrated_dir / "model")
    assert meta["calibration"] == read_results(calibrated_dir)["strategy_report"]["calibration_offsets"]
    task = TASKS.get("classification").from_metadata(None, meta)
    model, tokenizer = load_saved(calibrated_dir / "model", task, meta)
    with torch.no_grad():
        logits = model(**tokenizer([render("{text}", "the", tokenizer)], return_tensors="pt")).logits[0]
    assert torch.allclose(logits.log_softmax(-1), torch.full((3,), -torch.log(torch.tensor(3.0))), atol=1e-4)


def test_few_shot_reports_every_seed(tmp_path, echo_lm, cloze_data):
    run_dir = tmp_path / "run"
    proc = run_cli("train", "+strategy=few_shot", "strategy.k=1", "strategy.seeds=[1,2]",
                   *prompt_args(echo_lm, cloze_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert [s["seed"] for s in results["eval"]["per_seed"]] == [1, 2]
    assert "accuracy_std" in results["eval"]
    first = read_jsonl(run_dir / "predictions.jsonl")[0]["text"]
    assert first.count("\n\n") == 3  # three demonstrations (k=1 per label) before the prompt


@pytest.mark.parametrize("params", ["full", "lora"])
def test_pet_trains_the_cloze_and_reloads(tmp_path, echo_lm, cloze_data, params):
    run_dir = tmp_path / "run"
    # LoRA on the blocks' (zeroed) output projections: the only place an update changes the scores
    lora = ["strategy.target_modules=[o_proj,down_proj]"] if params == "lora" else []
    proc = run_cli("train", "+strategy=pet", f"strategy.params={params}", *lora, "train.max_steps=4",
                   "train.batch_size=8", "train.lr=1e-3", *prompt_args(echo_lm, cloze_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["train"]["steps"] == 4 and results["params"]["trainable"] > 0
    if params == "full":
        assert (run_dir / "model" / "model.safetensors").is_file()
    else:  # only the adapter is saved, and it trained
        from safetensors.torch import load_file

        assert results["params"]["trainable_pct"] < 10
        adapter = load_file(run_dir / "model" / "adapter_model.safetensors")
        assert any("lora_B" in k and v.abs().max() > 0 for k, v in adapter.items())
    proc = run_cli("eval", f"model_dir={run_dir / 'model'}", f"hydra.run.dir={tmp_path / 'eval'}", "print_config=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(tmp_path / "eval")["eval"]["accuracy"] == pytest.approx(results["eval"]["accuracy"])


@pytest.mark.parametrize("extra, message", [
    (["data.prompt.template='Sentiment:'"], "{text} slot"),
    (["data.prompt.template='{text} It was {mask}.'"], "causal LM scores the next token"),
    ([], "no words for ['neutral', 'positive']"),
])
def test_prompt_errors(tmp_path, echo_lm, cloze_data, extra, message):
    words = WORDS if extra else {"negative": "awful"}
    proc = run_cli("train", "+strategy=zero_shot", *prompt_args(echo_lm, cloze_data, tmp_path / "run", words=words),
                   *extra)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_prompting_needs_an_lm_head(tmp_path, tiny_llama, cloze_data):
    proc = run_cli("train", "+strategy=zero_shot", *prompt_args(tiny_llama, cloze_data, tmp_path / "run"))
    assert proc.returncode == 2 and "language-model head" in proc.stderr


def test_zero_shot_needs_classification(tmp_path, echo_lm, ner_data):
    proc = run_cli("train", "+strategy=zero_shot", "model=hf", f"model.name_or_path={echo_lm}", "data=conll_file",
                   f"data.train_file={ner_data['train']}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "data.task=classification" in proc.stderr


def test_long_inputs_are_cut_inside_the_prompt_never_the_cue(tmp_path, echo_lm, cloze_data):
    """An input 10x longer than max_length: the text is shortened and the template's end (the
    answer cue the causal LM continues) survives; the echo model still reads the cue's last word."""
    from transformers import AutoTokenizer

    from llmft.models.prompting import fit

    tokenizer = AutoTokenizer.from_pretrained(echo_lm)
    template = "Review: {text} Overall it was great"
    long_text = " ".join(["awful table"] * 200)
    prompt, cut = fit(template, long_text, tokenizer, max_length=32)
    ids = tokenizer(prompt)["input_ids"]
    assert cut and len(ids) <= 32 and prompt.endswith(" Overall it was great")
    assert tokenizer(prompt, truncation=True, max_length=32)["input_ids"] == ids  # the model sees all of it
    assert tokenizer.decode(ids, skip_special_tokens=True).endswith("it was great")
    assert prompt.startswith("Review: awful table")

    # Through the CLI: every eval text is long; the cue after it decides (echo: "great" -> positive).
    evals = write_csv(tmp_path / "e.csv", [{"text": long_text, "label": "positive"}] * 6)
    run_dir = tmp_path / "run"
    proc = run_cli("train", "+strategy=zero_shot", "strategy.calibrate=false", "data.max_length=24",
                   *prompt_args(echo_lm, (cloze_data[0], evals), run_dir), "data.prompt.template='{text} so great'")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["eval"]["accuracy"] == 1.0
    assert results["strategy_report"]["inputs_truncated"]["eval"] == 6
    assert all(r["text"].endswith(" so great") for r in read_jsonl(run_dir / "predictions.jsonl"))


def test_a_masked_lm_prompt_keeps_its_mask(tiny_bert):
    from transformers import AutoTokenizer

    from llmft.models.prompting import fit

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    prompt, cut = fit("{text} it was {mask} .", " ".join(["great"] * 100), tokenizer, max_length=16)
    ids = tokenizer(prompt)["input_ids"]
    assert cut and len(ids) == 16 and ids[-3] == tokenizer.mask_token_id  # ... [MASK] . [SEP]
    assert tokenizer(prompt, truncation=True, max_length=16)["input_ids"] == ids


def test_demonstrations_that_cannot_fit_are_refused_before_the_model_loads(tmp_path, echo_lm, cloze_data):
    proc = run_cli("train", "+strategy=few_shot", "strategy.k=2", "data.max_length=12",
                   *prompt_args(echo_lm, cloze_data, tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = [x for x in proc.stderr.splitlines() if x.startswith("llmft: error:")][0]
    assert "2 demonstration(s) per label" in line and "data.max_length=12" in line and "tokens" in line
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("strategy", ["prompt_tuning", "p_tuning"])
def test_soft_prompt_read_through_the_verbalizer_saves_no_classifier(tmp_path, tiny_chat_llama, cloze_data, strategy):
    """A causal LM with working blocks (echo_lm's ignore everything before the last token)."""
    import json

    import torch
    from safetensors.torch import load_file

    from llmft.artifacts import load_saved, read_metadata
    from llmft.tasks import TASKS

    run_dir = tmp_path / "run"
    proc = run_cli("train", f"+strategy={strategy}", "strategy.head=verbalizer", "strategy.num_virtual_tokens=4",
                   "train.max_steps=4", "train.batch_size=8", *prompt_args(tiny_chat_llama, cloze_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    # only the virtual tokens train (p_tuning: their encoder; PEFT saves its output): no head of any kind
    saved = load_file(run_dir / "model" / "adapter_model.safetensors")
    assert list(saved) == ["prompt_embeddings"] and saved["prompt_embeddings"].shape[0] == 4, list(saved)
    meta = read_metadata(run_dir / "model")
    assert meta["lm_kind"] == "causal" and meta["template"] == "{text}"
    if strategy == "prompt_tuning":
        assert results["params"]["trainable"] == 4 * 64
    assert results["params"]["trainable"] < 0.5 * results["params"]["total"]

    # the saved prompt is what the LM reads: changing it changes the label scores
    task = TASKS.get("classification").from_metadata(None, meta)
    model, tokenizer = load_saved(run_dir / "model", task, meta)
    batch = tokenizer(["the a so great", "my was it awful"], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**batch).logits
        model.lm.prompt_encoder.default.embedding.weight.mul_(3.0)
        assert not torch.allclose(before, model(**batch).logits)

    proc = run_cli("eval", f"model_dir={run_dir / 'model'}", f"hydra.run.dir={tmp_path / 'eval'}", "print_config=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_jsonl(tmp_path / "eval" / "predictions.jsonl") == read_jsonl(run_dir / "predictions.jsonl")
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["eval"] == results["eval"]
