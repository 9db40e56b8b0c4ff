"""Preference tuning (data.task=preference): pair reading and tokenizing, the reference model
(adapter disabled = a frozen copy), the loss of a step against a hand computation, precomputed
reference log-probs, metrics on a hand-made set, refusals, KTO from pairs, gradient accumulation
and resume. Each test fails on the behaviour it names."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from conftest import compose_config, LABELS, make_rows, read_jsonl, refused

from llmft.core.errors import UserError

DATA = SimpleNamespace(prompt_column="prompt", chosen_column="chosen", rejected_column="rejected",
                       completion_column="completion", label_column="label", format=None, labels=None)


def wrong(label: str) -> str:
    return LABELS[(LABELS.index(label) + 1) % len(LABELS)]


def pair_rows(n: int, seed: int, chat: bool) -> list[dict]:
    """The sentiment rows as pairs: the gold label chosen, another label rejected."""
    out = []
    for r in make_rows(n, seed):
        if chat:
            out.append({"prompt": [{"role": "user", "content": f"sentiment of : {r['text']}"}],
                        "chosen": [{"role": "assistant", "content": r["label"]}],
                        "rejected": [{"role": "assistant", "content": wrong(r["label"])}]})
        else:
            out.append({"prompt": f"sentiment of : {r['text']}", "chosen": f" {r['label']}",
                        "rejected": f" {wrong(r['label'])}"})
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


# ------------------------------------------------------------------ reading rows
def test_bad_rows_are_refused_naming_file_and_row():
    from llmft.data.pairs import encode_rows

    cases = [
        ([{"prompt": "a", "chosen": "x"}], False,
         "f.jsonl: no column 'rejected' for the pair; the file's columns are: prompt, chosen"),
        ([{"prompt": "a", "answer": "x"}], False, "no preference columns"),
        ([{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "chosen": " ", "rejected": "y"}], False,
         "f.jsonl: row 2: column 'chosen' is empty"),
        ([{"prompt": "a", "chosen": "x", "rejected": "x"}], False, "row 1: 'chosen' and 'rejected' are identical"),
        ([{"prompt": "a", "completion": "x", "label": True}], False,
         "unpaired rows ('completion' + 'label') train only"),
        ([{"prompt": "a", "completion": "x", "label": 1}], True, "row 1: 'label' is 1; an unpaired label is true"),
        ([{"prompt": "a", "completion": "x", "label": "true"}], True, "'label' is 'true'"),  # JSON text: no boolean
        ([{"prompt": "a", "completion": "x"}], True, "unpaired rows need a 'label' column"),
        ([{"chosen": "x", "rejected": "y"}], False, "no column 'prompt' (data.prompt_column); text pairs need it"),
        ([{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
           "rejected": [{"role": "assistant", "content": "y"}]}], False, "share no first turns"),
        ([{"prompt": "a", "chosen": [{"role": "assistant", "content": ""}], "rejected": "y"}], False,
         "column 'chosen': a assistant turn is empty"),
    ]
    for rows, unpaired, expected in cases:
        with pytest.raises(UserError) as err:
            encode_rows(dataset(rows), "f.jsonl", DATA, allow_unpaired=unpaired)
        assert expected in str(err.value) and "\n" not in str(err.value), (rows, str(err.value))


def test_rows_are_normalised():
    from llmft.data.pairs import encode_rows, unpair

    csv = encode_rows(dataset([{"prompt": "a", "completion": "x", "label": "False"}]), "f.csv", DATA, True)
    assert csv[0] == {"prompt": "a", "completion": "x", "desirable": False}  # CSV's text true/false
    turns = [{"role": "user", "content": "q"}]
    implicit = encode_rows(dataset([{"chosen": [*turns, {"role": "assistant", "content": "x"}],
                                     "rejected": [*turns, {"role": "assistant", "content": "y"}]}]), "f", DATA, False)
    assert implicit[0]["prompt"] == turns and implicit[0]["chosen"] == [{"role": "assistant", "content": "x"}]
    mixed = encode_rows(dataset([{"prompt": "q", "chosen": [{"role": "assistant", "content": "x"}],
                                  "rejected": [{"role": "assistant", "content": "y"}]}]), "f", DATA, False)
    assert mixed[0]["prompt"] == turns  # a text prompt beside chat completions is the user's turn
    pairs = encode_rows(dataset([{"prompt": "p1", "chosen": "a", "rejected": "b"},
                                 {"prompt": "p2", "chosen": "c", "rejected": "d"}]), "f", DATA, False)
    assert unpair(pairs).to_list() == [  # chosen then rejected: row i's next row has another prompt
        {"prompt": "p1", "completion": "a", "desirable": True}, {"prompt": "p2", "completion": "c", "desirable": True},
        {"prompt": "p1", "completion": "b", "desirable": False},
        {"prompt": "p2", "completion": "d", "desirable": False}]


# ------------------------------------------------------------------ tokenizing
def test_chat_and_text_pairs_tokenize_with_the_completion_masked_exactly(tiny_chat_llama):
    """Chat: the prompt is the template with its generation prompt, the completion mask covers the
    answer and the end-of-turn (not ChatML's newline after it). Text: tokenizer(prompt) (its BOS),
    the completion's tokens and EOS. A pair's two rows share one prompt."""
    from transformers import AutoTokenizer

    from llmft.tasks.preference import Preference

    tok = AutoTokenizer.from_pretrained(tiny_chat_llama)
    task = Preference(SimpleNamespace(**vars(DATA), max_length=128))
    chat = task.tokenize(dataset(pair_rows(1, 0, chat=True)), tok)[0]
    row = pair_rows(1, 0, chat=True)[0]
    prompt = tok(tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False)["input_ids"]
    for ids, mask, turn in zip(chat["input_ids"], chat["completion_mask"], (row["chosen"], row["rejected"])):
        assert ids[: len(prompt)] == prompt and mask == [0] * len(prompt) + [1] * (len(ids) - len(prompt))
        assert ids[len(prompt):] == tok(turn[0]["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    text_row = pair_rows(1, 0, chat=False)[0]
    text = task.tokenize(dataset([text_row]), tok)[0]
    prompt = tok(text_row["prompt"])["input_ids"]
    answers = (text_row["chosen"], text_row["rejected"])
    for ids, mask, answer in zip(text["input_ids"], text["completion_mask"], answers):
        assert ids == prompt + tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert sum(mask) == len(ids) - len(prompt) and mask[len(prompt)] == 1


def test_over_max_length_the_prompt_loses_its_start_and_a_pair_keeps_one_prompt(tiny_chat_llama):
    from transformers import AutoTokenizer

    from llmft.data.pairs import pair_token_ids

    tok = AutoTokenizer.from_pretrained(tiny_chat_llama)
    prompt = " ".join(["today the hate a bad and"] * 4)
    long, short = " great love happy wonderful best nice", " bad"
    full_prompt = tok(prompt)["input_ids"]
    full_long = tok(prompt + long)["input_ids"][len(full_prompt):] + [tok.eos_token_id]
    p, (c, r), cut = pair_token_ids(prompt, [long, short], tok, max_length=12)
    assert len(p) + len(c) <= 12 and p == full_prompt[-len(p):]  # the prompt keeps its end
    assert c == full_long[: len(c)] and len(c) >= 6  # the completion keeps its start and half the budget
    assert cut == {"prompt_cut": len(full_prompt) - len(p), "completion_cut": [len(full_long) - len(c), 0]}


# ------------------------------------------------------------------ model and loss
def lora_policy(path, seed=0):
    """tiny chat Llama under LoRA with B initialised away from zero, so the adapter changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return model


def batch_of(path, rows, max_length=128):
    from transformers import AutoTokenizer

    from llmft.tasks.preference import Preference

    tok = AutoTokenizer.from_pretrained(path)
    task = Preference(SimpleNamespace(**vars(DATA), max_length=max_length))
    tokenized = task.tokenize(dataset(rows), tok)
    return task.collator(tok)([tokenized[i] for i in range(len(tokenized))]), tokenized, task, tok


def hand_logps(logits, ids, mask):
    """Sum of log p(token) over the completion, one token at a time."""
    import torch

    out = []
    for row in range(len(ids)):
        total = 0.0
        for t in range(1, ids.shape[1]):
            if mask[row, t]:
                total += torch.log_softmax(logits[row, t - 1].double(), -1)[ids[row, t]].item()
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def test_the_peft_reference_is_the_base_model(tiny_chat_llama):
    """Adapter disabled = a frozen copy of the base: same log-probs on the same batch (and the policy's differ)."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmft.models.preference import PreferenceModel, Settings

    batch, *_ = batch_of(tiny_chat_llama, pair_rows(4, 1, chat=True))
    wrapper = PreferenceModel(lora_policy(tiny_chat_llama), Settings()).eval()
    copy = PreferenceModel(AutoModelForCausalLM.from_pretrained(tiny_chat_llama), Settings(),
                           frozen=AutoModelForCausalLM.from_pretrained(tiny_chat_llama).eval()).eval()
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    via_adapter, via_copy = wrapper.reference_logps(*args), copy.reference_logps(*args)
    assert torch.allclose(via_adapter, via_copy, atol=1e-5)
    from llmft.models.preference_losses import completion_logps

    policy = completion_logps(wrapper.encoder(input_ids=args[0], attention_mask=args[1]).logits, args[0], args[2])[0]
    assert (policy - via_copy).abs().max() > 1e-3  # the adapter moves the policy: the check is not vacuous
    assert not any(k.startswith("_frozen") for k in copy.state_dict())  # the copy is neither saved nor trained
    assert len(list(copy.parameters())) == len(list(copy.encoder.parameters()))


@pytest.mark.parametrize("loss", ["dpo", "ipo", "orpo", "simpo"])
def test_a_training_step_loss_is_pair_loss_of_hand_computed_logps(tiny_chat_llama, loss):
    import torch

    from llmft.models.preference import PreferenceModel, Settings
    from llmft.models.preference_losses import DEFAULT_BETA, pair_loss

    batch, *_ = batch_of(tiny_chat_llama, pair_rows(3, 2, chat=True))
    settings = Settings(loss=loss, beta=DEFAULT_BETA[loss], reference="none" if loss in ("orpo", "simpo") else "model")
    wrapper = PreferenceModel(lora_policy(tiny_chat_llama), settings).train()
    got = wrapper(**batch).loss
    ids, mask = batch["input_ids"], batch["completion_mask"]
    with torch.no_grad():
        policy = hand_logps(wrapper.encoder(input_ids=ids, attention_mask=batch["attention_mask"]).logits, ids, mask)
        with wrapper.encoder.disable_adapter():
            ref = hand_logps(wrapper.encoder(input_ids=ids, attention_mask=batch["attention_mask"]).logits, ids, mask)
    tokens = (mask[:, 1:].sum(1)).double()
    n = 3
    nll = -policy[:n] / tokens[:n] if loss == "orpo" else None
    want = pair_loss(loss, DEFAULT_BETA[loss], policy[:n], policy[n:], tokens[:n], tokens[n:], ref[:n], ref[n:],
                     chosen_nll=nll)[0].mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("peft", [True, False])
def test_precomputed_reference_gives_the_reference_models_loss(tiny_chat_llama, peft):
    from transformers import AutoModelForCausalLM

    from llmft.models.preference import PreferenceModel, Settings
    from llmft.techniques.preference import precompute

    batch, tokenized, task, tok = batch_of(tiny_chat_llama, pair_rows(4, 3, chat=True))
    policy = lora_policy(tiny_chat_llama) if peft else AutoModelForCausalLM.from_pretrained(tiny_chat_llama)
    live = PreferenceModel(policy, Settings(reference="model"),
                           frozen=None if peft else PreferenceModel.frozen_copy(policy)).train()
    if not peft:  # step 0 of a full model: the policy is its reference, so move it off it to make the check bite
        import torch
        with torch.no_grad():
            next(policy.parameters()).add_(0.05)
    pre = PreferenceModel(policy, Settings(reference="precomputed")).train()
    hardware = SimpleNamespace(accelerator="cpu", precision="fp32")
    if peft:
        with_ref = precompute(pre, tokenized, task.collator(tok), 3, hardware)
    else:  # what the train set hook computes before training: the untrained copy's log-probs
        with_ref = precompute(PreferenceModel(live._frozen[0], Settings()), tokenized, task.collator(tok), 3, hardware)
    pre_batch = task.collator(tok)([with_ref[i] for i in range(len(with_ref))])
    assert "ref_logps" in pre_batch
    assert pre(**pre_batch).loss.item() == pytest.approx(live(**batch).loss.item(), rel=1e-5)


# ------------------------------------------------------------------ metrics
def test_reward_accuracy_margin_and_baseline_on_a_hand_made_set():
    """Three pairs, log-probs chosen by hand. DPO (beta 0.5): rewards 0.5 x (policy - reference)."""
    import numpy as np

    from llmft.models.preference import STATS, Settings, summarise

    rows = [  # policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens, kl_c, kl_r
        (-4.0, -6.0, -5.0, -5.0, 2, 4, 0.2, 0.4),  # chosen up 1, rejected down 1: correct, margin 1.0
        (-3.0, -2.0, -2.0, -2.5, 1, 1, 0.1, 0.1),  # chosen down 1, rejected up 0.5: wrong, margin -0.75
        (-8.0, -8.0, -9.0, -8.5, 4, 2, 0.0, 0.2),  # chosen up 1, rejected 0.5 up: correct, margin 0.25
    ]
    assert len(rows[0]) == len(STATS)
    metrics, baseline, records = summarise(np.array(rows), Settings(loss="dpo", beta=0.5))
    assert metrics["reward_accuracy"] == pytest.approx(2 / 3, abs=1e-5)
    assert metrics["reward_margin"] == pytest.approx((1.0 - 0.75 + 0.25) / 3, abs=1e-5)
    assert metrics["chosen_logps"] == pytest.approx((-2 - 3 - 2) / 3, abs=1e-5)  # per token
    assert metrics["kl"] == pytest.approx(1.0 / 14, abs=1e-6)  # KL summed over 14 completion tokens
    assert metrics["preference_accuracy"] == pytest.approx(1 / 3, abs=1e-5)  # sums: only row 1 prefers chosen
    assert baseline == {"reward_accuracy": pytest.approx(1 / 3, abs=1e-5)}  # the reference: row 2 only (-2 > -2.5)
    assert [r["correct"] for r in records] == [True, False, True]
    from llmft.tasks.preference import Preference

    task = Preference(SimpleNamespace(**vars(DATA), max_length=64))
    assert task.warnings(metrics, baseline, records) == []  # 2/3 beats the reference's 1/3
    assert "no better than the reference" in task.warnings(baseline, metrics, records)[0]
    ipo, ipo_base, _ = summarise(np.array(rows), Settings(loss="ipo", beta=0.5))
    # per-token means: policy -2 vs -1.5, -3 vs -2, -2 vs -4 -> only row 3; the reference -2.5 vs -1.25,
    # -2 vs -2.5, -2.25 vs -4.25 -> rows 2 and 3
    assert ipo["preference_accuracy"] == pytest.approx(1 / 3, abs=1e-5)
    assert ipo_base["reward_accuracy"] == pytest.approx(2 / 3, abs=1e-5)


# ------------------------------------------------------------------ refusals
def test_every_bad_value_is_refused_in_one_line(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", pair_rows(8, 0, chat=False))
    base = ["data=jsonl_preference", f"data.train_file={train}", f"hydra.run.dir={tmp_path / 'run'}"]
    cases = [
        (["train.preference.beta=0"], "train.preference.beta: must be > 0"),
        (["train.preference.label_smoothing=0.5"], "train.preference.label_smoothing: must be in [0, 0.5)"),
        (["train.preference.loss=ipo", "train.preference.label_smoothing=0.1"], "is for loss dpo or simpo"),
        (["train.preference.reference=none"], "train.preference.reference: =none: dpo scores against a reference"),
        (["train.preference.loss=orpo", "train.preference.reference=precomputed"], "orpo uses no reference"),
        (["train.preference.desirable_weight=0"], "train.preference.desirable_weight: must be > 0"),
        (["train.preference.simpo_gamma=-1"], "train.preference.simpo_gamma: must be >= 0"),
        (["train.preference.loss=nope"], "train.preference.loss"),
        (["strategy=zero_shot"], "zero_shot"),
        (["strategy=pet"], "pet"),
        (["strategy=prefix"], "virtual tokens"),
        (["strategy=prompt_tuning"], "virtual tokens"),
        (["strategy=full", "hardware.zero_stage=3", "hardware.nproc_per_node=2"],
         "hardware.zero_stage: 3 shards the full"),
        (["data.group_by_length=true"], "data.group_by_length: groups rows by length"),
        (["train.early_stopping.patience=2", "train.eval_steps=2", "data.validation_fraction=0.2"],
         "train.early_stopping: does not cover data.task=preference"),
    ]
    for overrides, expected in cases:
        message = refused("train", *base, *overrides)
        assert expected in message, (overrides, message)
    message = refused("train", "data=csv", f"data.train_file={train}", f"hydra.run.dir={tmp_path / 'run'}",
                      "train.preference.loss=ipo")
    assert message.startswith("train.preference.loss: is for data.task=preference (got classification)"), message


def test_unpaired_rows_with_a_paired_loss_are_refused_at_the_data(tmp_path, tiny_chat_llama):
    from llmft.commands import train

    rows = [{"prompt": "a b", "completion": "c", "label": i % 2 == 0} for i in range(6)]
    unpaired = write_jsonl(tmp_path / "unpaired.jsonl", rows)
    evals = write_jsonl(tmp_path / "eval.jsonl", pair_rows(4, 1, chat=False))
    cfg = compose("train", "model=hf", f"model.name_or_path={tiny_chat_llama}", "data=jsonl_preference",
                  f"data.train_file={unpaired}", f"data.eval_file={evals}", "strategy=lora", "print_config=false")
    with pytest.raises(UserError, match=r"train.preference.loss: =dpo trains on pairs and .*unpaired.jsonl holds "
                                        r"unpaired rows"):
        train.main(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()
    cut = compose("train", "model=hf", f"model.name_or_path={tiny_chat_llama}", "data=jsonl_preference",
                  f"data.train_file={unpaired}", "train.preference.loss=kto", "strategy=lora", "print_config=false")
    with pytest.raises(UserError, match="data.eval_file: the eval split holds unpaired rows"):
        train.main(cut, tmp_path / "run2")


# ------------------------------------------------------------------ in-process runs
def compose(command: str, *overrides: str):
    return compose_config(command, *overrides, validate=True)


def run_args(path, tmp_path, *extra):
    train = write_jsonl(tmp_path / "train.jsonl", pair_rows(16, 5, chat=True))
    evals = write_jsonl(tmp_path / "eval.jsonl", pair_rows(6, 6, chat=True))
    return ["model=hf", f"model.name_or_path={path}", "data=jsonl_preference", f"data.train_file={train}",
            f"data.eval_file={evals}", "strategy=lora", "train.lr=5e-3", "train.retention.report=false",
            "train.logging_steps=1", "print_config=false", *extra]


def test_gradient_accumulation_matches_the_bigger_batch(tmp_path, tiny_chat_llama):
    """grad_accum=2 x 2 pairs = 4 pairs: the same loss and (SGD: the step follows the gradient) the same weights."""
    from safetensors.torch import load_file

    from llmft.commands import train

    out = {}
    for name, extra in (("accum", ["train.batch_size=2", "train.grad_accum=2"]), ("batch", ["train.batch_size=4"])):
        cfg = compose("train", *run_args(tiny_chat_llama, tmp_path, "train.max_steps=1", "train.optim=sgd",
                                         "train.lr=0.5", "train.warmup_ratio=0", "strategy.dropout=0", *extra))
        results = train.main(cfg, tmp_path / name)
        out[name] = (results["train"]["final_loss"], load_file(tmp_path / name / "model" / "adapter_model.safetensors"))
    assert out["accum"][0] == pytest.approx(out["batch"][0], rel=1e-4)
    for key, value in out["batch"][1].items():
        assert (out["accum"][1][key] - value).abs().max() < 1e-5, key
    assert any(v.abs().max() > 0 for k, v in out["batch"][1].items() if "lora_B" in k)  # it did train


def test_kto_from_pairs_trains_and_a_killed_run_resumes_to_the_same_result(tmp_path, tiny_chat_llama):
    """KTO reads pairs as desirable/undesirable rows and trains; a run stopped after its checkpoint at
    step 2 (its later files gone, as after a kill) resumes and ends with the uninterrupted run's metrics."""
    from llmft.commands import train

    cfg = compose("train", *run_args(tiny_chat_llama, tmp_path, "train.preference.loss=kto", "train.max_steps=4",
                                     "train.save_steps=2", "train.batch_size=4"))
    whole = train.main(cfg, tmp_path / "run")
    assert whole["num_train_examples"] == 32 and whole["train"]["steps"] == 4  # 16 pairs -> 32 rows
    assert whole["techniques"]["preference"]["loss"] == "kto"
    logged = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert logged and all(0 < r["loss"] < 2 for r in logged)
    run = tmp_path / "run"
    for name in ("results.json", "predictions.jsonl"):
        (run / name).unlink()
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    resumed = train.main(cfg, run)
    assert resumed["train"]["resumed_from_step"] == 2
    assert resumed["eval"] == pytest.approx(whole["eval"], rel=1e-4, abs=1e-6)
