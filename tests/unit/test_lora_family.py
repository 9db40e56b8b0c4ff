"""The LoRA family from PEFT: every strategy.init builds, trains a step through llmft's Trainer
and its saved adapter reloads with plain PEFT (PeftModel.from_pretrained on the untouched base) to
the trained model's outputs, merged too; PiSSA starts from the weights' SVD (a hand computation);
LoRA+ puts B at lr_ratio x A's rate in the optimizer's groups; VeRA trains and reloads; every bad
value is refused in one line."""
from __future__ import annotations

import json

import pytest
from conftest import compose_config, make_rows, refused


def compose(*overrides: str):
    return compose_config("train", *overrides)


def setup(model_path, strategy: str, *overrides: str):
    """(strategy, task, tokenizer, raw train rows, PEFT model) as train_model builds them."""
    import torch
    from datasets import Dataset
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig
    from llmft.models.loading import load_model, load_tokenizer
    from llmft.strategies import build_strategy
    from llmft.tasks import TASKS

    cfg = compose("model=hf", f"model.name_or_path={model_path}", f"strategy={strategy}", "train.batch_size=8",
                  *overrides)
    task = TASKS.get("classification")(OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "x"}))
    tokenizer = load_tokenizer(str(model_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    raw = task.encode(Dataset.from_list(make_rows(48, seed=2)), "train.jsonl", True)
    strategy = build_strategy(cfg, task)
    strategy.validate_config(cfg)
    strategy.prepare_data({"train": raw}, tokenizer)
    torch.manual_seed(0)
    model = load_model(str(model_path), task, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    return strategy, task, tokenizer, raw, strategy.apply(model)


def train_one_step(strategy, task, tokenizer, raw, model, out, lr=5e-2):
    from transformers import TrainingArguments

    from llmft.runtime.trainer import build_trainer

    args = TrainingArguments(output_dir=str(out), max_steps=1, learning_rate=lr, per_device_train_batch_size=8,
                             report_to="none", use_cpu=True, save_strategy="no", lr_scheduler_type="constant")
    trainer = build_trainer(args, model, tokenizer, task, task.tokenize(raw, tokenizer),
                            param_groups=strategy.param_groups(model))
    trainer.train()
    return trainer


def logits(model, task, tokenizer, raw):
    import torch

    rows = task.tokenize(raw.select(range(8)), tokenizer)
    batch = task.collator(tokenizer)([rows[i] for i in range(8)])
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


CASES = [("lora", "default", "tiny_bert"), ("lora", "gaussian", "tiny_bert"), ("lora", "pissa", "tiny_bert"),
         ("lora", "olora", "tiny_bert"), ("lora", "eva", "tiny_bert"), ("lora", "corda", "tiny_bert"),
         ("rslora", "pissa", "tiny_bert"), ("dora", "eva", "tiny_bert"),
         ("lora", "pissa", "tiny_llama"), ("lora", "corda", "tiny_llama")]


@pytest.mark.parametrize("strategy_name,init,model_name", CASES)
def test_every_init_trains_and_reloads_with_plain_peft_and_merges(strategy_name, init, model_name, request, tmp_path):
    """The reloaded adapter (and its merge, what export format=merged writes) on a freshly loaded,
    untouched base gives the trained model's logits. For pissa / olora / corda this holds only
    through the conversion to plain LoRA (their trained A, B belong to the residual base) and with
    the task head put back (PEFT's conversion drops it)."""
    import torch
    from peft import PeftModel

    from llmft.artifacts import plain_model
    from llmft.models.loading import load_model

    if init == "corda":
        pytest.importorskip("attr", reason="PEFT's CorDA imports attrs")
    path = request.getfixturevalue(model_name)
    strategy, task, tokenizer, raw, model = setup(path, strategy_name, f"strategy.init={init}", "strategy.init_batches=2")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    trainer = train_one_step(strategy, task, tokenizer, raw, model, tmp_path / "out")
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)  # it trained
    expected = logits(model, task, tokenizer, raw)
    strategy.save(trainer, tmp_path / "model")
    torch.manual_seed(123)  # a head loaded from anywhere but the adapter would differ
    base = load_model(str(path), task, tokenizer)
    base.config.pad_token_id = tokenizer.pad_token_id
    pretrained = {n: p.detach().clone() for n, p in base.named_parameters()}
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "model"))
    torch.testing.assert_close(logits(reloaded, task, tokenizer, raw), expected, atol=1e-4, rtol=1e-4)
    # a plain LoRA on the untouched base: PEFT did not re-derive a residual (an unconverted PiSSA
    # adapter reloads by redoing the SVD on the base; CorDA's could not reload at all)
    saved_init = json.loads((tmp_path / "model" / "adapter_config.json").read_text())["init_lora_weights"]
    assert saved_init is True if init in ("pissa", "olora", "corda") else saved_init in (True, init)
    for name, param in reloaded.base_model.model.named_parameters():
        if name.replace(".base_layer", "") in pretrained and "modules_to_save" not in name:
            assert torch.equal(param, pretrained[name.replace(".base_layer", "")]), name
    merged = reloaded.merge_and_unload()
    torch.testing.assert_close(logits(merged, task, tokenizer, raw), expected, atol=1e-4, rtol=1e-4)
    # what llmft eval loads and what llmft export format=merged writes
    ours = type(strategy).load_trained(tmp_path / "model", task, {"base_model": str(path)}, tokenizer)
    torch.testing.assert_close(logits(ours, task, tokenizer, raw), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits(plain_model(ours), task, tokenizer, raw), expected, atol=1e-4, rtol=1e-4)


def test_pissa_starts_from_the_top_of_the_weights_svd(tiny_bert):
    """PiSSA: scaling x B0 A0 = the rank-r truncated SVD of the pretrained weight, and the base
    keeps the rest (W - that), so the model's output is unchanged at the start."""
    import torch

    from llmft.models.loading import load_model

    strategy, task, tokenizer, _, model = setup(tiny_bert, "lora", "strategy.init=pissa", "strategy.r=4")
    torch.manual_seed(0)
    original = load_model(str(tiny_bert), task, tokenizer)
    w = original.bert.encoder.layer[0].attention.self.query.weight.detach()
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    top = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]
    update = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(update, top, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.base_layer.weight.detach(), w - top, atol=1e-5, rtol=1e-4)


def test_eva_a_is_orthonormal_and_b_zero(tiny_bert):
    """EVA: A's rows are principal directions of the layer's inputs (orthonormal), B starts at 0."""
    import torch

    _, _, _, _, model = setup(tiny_bert, "lora", "strategy.init=eva", "strategy.init_batches=2")
    layer = model.base_model.model.bert.encoder.layer[1].attention.self.value
    a = layer.lora_A["default"].weight.detach()
    torch.testing.assert_close(a @ a.T, torch.eye(a.shape[0]), atol=1e-4, rtol=1e-4)
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0


def test_lora_plus_puts_b_at_the_ratio_and_leaves_a_and_the_head(tiny_bert, tmp_path):
    """After one step the optimizer's groups hold: every lora_B at lr x 16, every lora_A and the
    classifier head at lr; all trainable parameters are in exactly one group."""
    strategy, task, tokenizer, raw, model = setup(tiny_bert, "lora_plus")
    trainer = train_one_step(strategy, task, tokenizer, raw, model, tmp_path, lr=1e-3)
    rate = {}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in rate
            rate[id(p)] = group["lr"]
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(rate) == {id(p) for p in named.values()}
    lr_of = {n: rate[id(p)] for n, p in named.items()}
    assert sorted({v for n, v in lr_of.items() if ".lora_B." in n}) == [pytest.approx(16e-3)]
    assert sorted({v for n, v in lr_of.items() if ".lora_A." in n}) == [pytest.approx(1e-3)]
    assert sorted({v for n, v in lr_of.items() if "classifier" in n}) == [pytest.approx(1e-3)]
    plain, *_, lora_model = setup(tiny_bert, "lora")
    assert plain.param_groups(lora_model) is None  # lr_ratio 1: the Trainer's own groups


def test_vera_trains_and_reloads(tiny_bert, tmp_path):
    import torch
    from peft import PeftModel

    from llmft.models.loading import load_model

    strategy, task, tokenizer, raw, model = setup(tiny_bert, "vera", "strategy.r=16",
                                                  "strategy.target_modules=[query,value,intermediate.dense]")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("vera_lambda_d" in n for n in trained) and not any("vera_A" in n for n in trained)
    trainer = train_one_step(strategy, task, tokenizer, raw, model, tmp_path / "out")
    expected = logits(model, task, tokenizer, raw)
    strategy.save(trainer, tmp_path / "model")
    base = load_model(str(tiny_bert), task, tokenizer)
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "model"))
    torch.testing.assert_close(logits(reloaded, task, tokenizer, raw), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits(reloaded.merge_and_unload(), task, tokenizer, raw), expected,
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("overrides,expected", [
    (["+strategy=lora", "strategy.init=loftq"], "strategy.init: loftq is not supported"),
    (["+strategy=lora", "strategy.init=svd"], "strategy.init"),
    (["+strategy=lora", "strategy.lr_ratio=0"], "strategy.lr_ratio must be > 0"),
    (["+strategy=lora", "strategy.init=eva", "strategy.init_batches=0"], "strategy.init_batches must be >= 1"),
    (["+strategy=dora", "strategy.init=pissa"], "does not compose with DoRA"),
    (["+strategy=dora", "strategy.init=corda"], "does not compose with DoRA"),
    (["+strategy=lora", "strategy.init=olora", "hardware.zero_stage=3"], "hardware.zero_stage"),
    (["+strategy=vera", "strategy.r=0"], "strategy.r: must be >= 1"),
    (["+strategy=vera", "strategy.d_initial=0"], "strategy.d_initial"),
    (["+strategy=vera", "strategy.vera_dropout=1"], "strategy.vera_dropout"),
])
def test_bad_values_are_refused_in_one_line(overrides, expected):
    assert expected in refused("train", *overrides)


def test_pet_takes_default_and_gaussian_only():
    assert "strategy.init: PET's adapter supports init=default|gaussian" in refused(
        "train", "+strategy=pet", "strategy.params=lora", "strategy.init=pissa", "model=smollm2")
    assert "strategy.lr_ratio: LoRA+ needs strategy.params=lora|dora" in refused(
        "train", "+strategy=pet", "strategy.lr_ratio=4", "model=smollm2")
