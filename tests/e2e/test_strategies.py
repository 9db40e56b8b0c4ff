"""Every strategy in configs/strategy/ on tiny BERT- and Llama-like models, through the real CLI.

For each: the run completes, the trainable-parameter count is what the method implies, frozen
parameters are bit-identical after training, and `llmft eval` (which reloads full models with
transformers and adapters with PEFT) reproduces predictions.jsonl. Resume from a mid-run
checkpoint continues the uninterrupted loss curve.
"""
from __future__ import annotations

import shutil

import pytest
from conftest import REPO, read_jsonl, read_results, run_cli, tiny_train_args

PROMPTING = {"zero_shot", "few_shot", "pet"}  # need an LM head and a prompt: tests/e2e/test_prompting.py
STRATEGIES = sorted(p.stem for p in (REPO / "configs" / "strategy").glob("*.yaml") if p.stem not in PROMPTING)
MODELS = ["tiny_bert", "tiny_llama"]
# Names of the parts of the two tiny models (2 blocks each).
TOP_BLOCK = {"tiny_bert": "bert.encoder.layer.1.", "tiny_llama": "model.layers.1."}
ABOVE_BLOCKS = {"tiny_bert": ("bert.pooler.",), "tiny_llama": ("model.norm.",)}
HEAD = {"tiny_bert": ("classifier.",), "tiny_llama": ("score.",)}
LORA_TARGETS = {"tiny_bert": ("query", "value"), "tiny_llama": ("q_proj", "v_proj")}
EXTRA = {  # short settings that make each method visible on a 24-step run
    "freeze": ["strategy.trainable_layers=1"],
    "gradual_unfreeze": ["strategy.unfreeze_every=10"],
    "prefix": ["strategy.num_virtual_tokens=4"],
    "prompt_tuning": ["strategy.num_virtual_tokens=4"],
    "p_tuning": ["strategy.num_virtual_tokens=4", "strategy.encoder_hidden_size=16"],
    "adapter": ["strategy.reduction_factor=4"],
}


def base_model(path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)


def expected_trainable(strategy: str, fixture: str, model) -> int | None:
    """The count each method implies, from the base model's own parameters (None: checked loosely)."""
    params = dict(model.named_parameters())
    n = lambda keep: sum(p.numel() for name, p in params.items() if keep(name))  # noqa: E731
    head = lambda name: name.startswith(HEAD[fixture])  # noqa: E731
    if strategy in ("full", "llrd"):
        return n(lambda name: True)
    if strategy == "freeze":
        return n(lambda name: name.startswith((TOP_BLOCK[fixture], *ABOVE_BLOCKS[fixture], *HEAD[fixture])))
    if strategy == "gradual_unfreeze":  # at the start: head and what is above the blocks
        return n(lambda name: name.startswith((*ABOVE_BLOCKS[fixture], *HEAD[fixture])))
    if strategy == "bitfit":
        return n(lambda name: head(name) or name.endswith(".bias"))
    if strategy in ("lora", "dora", "qlora", "rslora"):
        import torch.nn as nn

        r = 8
        total = n(head)
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.split(".")[-1] in LORA_TARGETS[fixture]:
                total += r * (module.in_features + module.out_features)
                total += module.out_features if strategy == "dora" else 0  # DoRA's magnitude vector
        return total
    return None


@pytest.mark.parametrize("fixture", MODELS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_trains_saves_and_reloads(request, tmp_path, tiny_data, strategy, fixture):
    model_path = request.getfixturevalue(fixture)
    run_dir = tmp_path / "run"
    proc = run_cli("train", f"+strategy={strategy}", *EXTRA.get(strategy, []),
                   *tiny_train_args(model_path, tiny_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["strategy"] == strategy
    assert results["train"]["steps"] == 24 and results["train"]["tokens_per_s"] > 0

    base = base_model(model_path)
    trainable, total = results["params"]["trainable"], results["params"]["total"]
    expected = expected_trainable(strategy, fixture, base)
    if expected is not None:
        assert trainable == expected
    else:
        assert 0 < trainable < 0.5 * total

    saved = run_dir / "model"
    if strategy in ("full", "freeze", "bitfit", "llrd", "gradual_unfreeze"):
        # A full HF model: compare every backbone tensor with the pretrained one.
        from transformers import AutoModelForSequenceClassification

        trained = dict(AutoModelForSequenceClassification.from_pretrained(saved).named_parameters())
        changed = {name for name, p in base.named_parameters()
                   if not name.startswith(HEAD[fixture]) and not p.detach().equal(trained[name].detach())}
        backbone = {name for name, _ in base.named_parameters() if not name.startswith(HEAD[fixture])}
        if strategy in ("full", "llrd"):
            assert len(changed) > 0.9 * len(backbone)
        elif strategy == "freeze":
            assert changed and all(name.startswith((TOP_BLOCK[fixture], *ABOVE_BLOCKS[fixture])) for name in changed)
        elif strategy == "bitfit":
            assert all(name.endswith(".bias") for name in changed)
            assert changed or fixture == "tiny_llama"  # Llama has no biases: only the head trains
        else:  # gradual_unfreeze every 10 steps over 24: the top block thawed at 10, block 0 at 20
            unfrozen = results["strategy_report"]["unfrozen_at_step"]
            assert unfrozen == {"block.1": 10, "block.0": 20}
            assert not any(name.startswith(("bert.embeddings", "model.embed_tokens")) for name in changed)
            assert any(name.startswith(TOP_BLOCK[fixture]) for name in changed)
    else:
        assert (saved / "adapter_model.safetensors").is_file()

    eval_dir = tmp_path / "eval"
    proc = run_cli("eval", f"model_dir={saved}", f"hydra.run.dir={eval_dir}", "print_config=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["prediction"] for r in read_jsonl(eval_dir / "predictions.jsonl")] == \
        [r["prediction"] for r in read_jsonl(run_dir / "predictions.jsonl")]
    assert read_results(eval_dir)["eval"]["accuracy"] == pytest.approx(results["eval"]["accuracy"])


def test_llrd_applies_decayed_learning_rates(tmp_path, tiny_data, tiny_bert):
    run_dir = tmp_path / "run"
    proc = run_cli("train", "+strategy=llrd", "strategy.decay=0.5", *tiny_train_args(tiny_bert, tiny_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "lr/head" in m]
    assert logged
    for m in logged:  # the optimizer's own rates, read at every logging step
        head = m["lr/head"]
        assert m["lr/top"] == pytest.approx(head)
        assert m["lr/block.1"] == pytest.approx(head * 0.5)
        assert m["lr/block.0"] == pytest.approx(head * 0.25)
        assert m["lr/embeddings"] == pytest.approx(head * 0.125)


@pytest.mark.parametrize("strategy, more", [("full", []), ("lora", []), ("gradual_unfreeze", []), ("adapter", []),
                                            ("p_tuning", []), ("prefix", []),
                                            ("prefix", ["strategy.prefix_projection=true"])])
def test_resume_from_a_mid_run_checkpoint_matches_an_uninterrupted_run(tmp_path, tiny_data, tiny_bert, strategy, more):
    extra = ["strategy.unfreeze_every=3"] if strategy == "gradual_unfreeze" else [*EXTRA.get(strategy, []), *more]
    args = ["train", f"+strategy={strategy}", *extra, "train.max_steps=8", "train.save_steps=4"]
    full_run, resumed = tmp_path / "full", tmp_path / "resumed"
    proc = run_cli(*args, *tiny_train_args(tiny_bert, tiny_data, full_run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The interrupted run: only the checkpoint at step 4 survived.
    shutil.copytree(full_run / "checkpoints" / "checkpoint-4", resumed / "checkpoints" / "checkpoint-4")
    proc = run_cli(*args, *tiny_train_args(tiny_bert, tiny_data, resumed))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(resumed)["train"]["resumed_from_step"] == 4
    losses = lambda run: {m["step"]: m["loss"] for m in read_jsonl(run / "metrics.jsonl") if "loss" in m}  # noqa: E731
    after = {step: loss for step, loss in losses(full_run).items() if step > 4}
    assert after and losses(resumed) == pytest.approx(after, rel=1e-5)
    assert read_results(resumed)["eval"]["accuracy"] == pytest.approx(read_results(full_run)["eval"]["accuracy"])


def test_incomplete_checkpoint_is_not_resumed(tmp_path, tiny_data, tiny_bert):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "checkpoint-6").mkdir(parents=True)  # a save killed half-way
    proc = run_cli("train", "train.max_steps=2", *tiny_train_args(tiny_bert, tiny_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(run_dir)["train"]["resumed_from_step"] == 0


def test_rslora_scales_the_update_by_the_square_root_of_the_rank(tiny_bert):
    """rsLoRA: alpha / sqrt(r) (LoRA: alpha / r), on every adapted layer."""
    import math

    from omegaconf import OmegaConf

    from llmft.strategies import strategy_class

    task = type("Task", (), {"peft_task_type": "SEQ_CLS"})()
    knobs = {"r": 4, "alpha": 16, "dropout": 0.0}
    scales = {}
    for name in ("lora", "rslora"):  # every other knob at the strategy's own default (its schema)
        schema = OmegaConf.structured(strategy_class(name).config(name=name, **knobs))
        strategy = strategy_class(name)(OmegaConf.create({"strategy": schema}), task)
        model = strategy.apply(base_model(tiny_bert))
        scales[name] = {m.scaling["default"] for m in model.modules() if isinstance(getattr(m, "scaling", None), dict)}
    assert scales == {"lora": {16 / 4}, "rslora": {16 / math.sqrt(4)}}
