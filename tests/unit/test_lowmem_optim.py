"""train.optim=galore_adamw / apollo_adamw: transformers' integrations build the optimizer class it
documents, whose projected groups hold exactly the attention and MLP weights (BERT and Llama) with
the configured rank / gap / scale and llmft's weight decay and lr scales; the weights change; the
optimizer state is low-rank; a resumed run ends where the uninterrupted one does (the projectors
come back from the checkpoint); every bad value is refused in one line; every knob enters the
config fingerprint."""
from __future__ import annotations

import pytest
from conftest import compose_config, make_rows, refused

RANK, GAP = 4, 3
BERT_TARGETS = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense"]
LLAMA_TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def compose(*overrides: str):
    return compose_config("train", *overrides)


def optimizer_class(optim: str):
    """What transformers' docs name for each optim value (trainer_optimizer.py's mapping)."""
    if optim == "galore_adamw":
        from galore_torch import GaLoreAdamW

        return GaLoreAdamW
    from apollo_torch import APOLLOAdamW

    return APOLLOAdamW


def trainer_for(model_path, out, *overrides: str, steps: int = 2):
    """llmft's Trainer on 8 classification rows, its TrainingArguments from the composed config."""
    import torch
    from datasets import Dataset
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig
    from llmft.models.loading import load_model, load_tokenizer
    from llmft.runtime.trainer import build_trainer, training_arguments
    from llmft.strategies import build_strategy
    from llmft.tasks import TASKS

    cfg = compose("model=hf", f"model.name_or_path={model_path}", f"train.max_steps={steps}", "train.batch_size=4",
                  "train.lr=1e-2", "train.weight_decay=0.05", "train.warmup_ratio=0", "train.save_steps=0",
                  "train.logging_steps=1", "hardware=cpu", *overrides)
    task = TASKS.get("classification")(OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "x"}))
    tokenizer = load_tokenizer(str(model_path))
    rows = task.tokenize(task.encode(Dataset.from_list(make_rows(8, seed=2)), "train.jsonl", True), tokenizer)
    torch.manual_seed(0)
    model = load_model(str(model_path), task, tokenizer)
    strategy = build_strategy(cfg, task)
    model = strategy.apply(model)
    args = training_arguments(cfg, out, [])
    args.disable_tqdm = True
    return build_trainer(args, model, tokenizer, task, train_dataset=rows, param_groups=strategy.param_groups(model),
                         train_cfg=cfg.train), model


@pytest.mark.parametrize("optim", ["galore_adamw", "apollo_adamw"])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_two_steps_project_exactly_the_attention_and_mlp_weights(optim, arch, tiny_bert, tiny_llama, tmp_path):
    import torch

    path, suffixes = (tiny_bert, BERT_TARGETS) if arch == "bert" else (tiny_llama, LLAMA_TARGETS)
    trainer, model = trainer_for(path, tmp_path, f"train.optim={optim}", f"train.optim_rank={RANK}",
                                 f"train.optim_update_proj_gap={GAP}", "train.optim_scale=0.5")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert type(opt) is optimizer_class(optim)
    names = {id(p): n for n, p in model.named_parameters()}
    projected = {names[id(p)] for g in opt.param_groups if "rank" in g for p in g["params"]}
    layers = ["layer.0", "layer.1"] if arch == "bert" else ["layers.0", "layers.1"]
    prefix = "bert.encoder." if arch == "bert" else "model."
    hand = {f"{prefix}{layer}.{s}.weight" for layer in layers for s in suffixes}
    assert projected == hand and len(hand) == 2 * len(suffixes)
    for g in opt.param_groups:
        if "rank" in g:
            assert (g["rank"], g["update_proj_gap"], g["scale"]) == (RANK, GAP, 0.5)
            assert g["weight_decay"] == 0.05  # transformers' own groups leave it at the optimizer's 0
    everything = {names[id(p)] for g in opt.param_groups for p in g["params"]}
    assert everything == set(before)  # the rest trains as plain AdamW
    for name in (*sorted(hand)[:2], next(n for n in before if "embed" in n)):
        assert not torch.equal(before[name], dict(model.named_parameters())[name]), name
    weight = dict(model.named_parameters())[sorted(hand)[0]]
    state = opt.state[weight]
    assert RANK in state["exp_avg"].shape and state["exp_avg"].numel() < weight.numel()  # the low-rank state


def test_strategy_groups_keep_their_learning_rates(tiny_bert, tmp_path):
    """llrd's per-block lr scales: the same (name, lr, weight decay) groups as with AdamW, each
    split into its projected weights and the rest."""
    adamw, _ = trainer_for(tiny_bert, tmp_path / "a", "strategy=llrd", steps=1)
    galore, _ = trainer_for(tiny_bert, tmp_path / "g", "strategy=llrd", "train.optim=galore_adamw",
                            f"train.optim_rank={RANK}", steps=1)
    plain, low = adamw.create_optimizer(), galore.create_optimizer()
    key = lambda g: (g["name"], g["lr"], g["weight_decay"])  # noqa: E731
    assert {key(g) for g in low.param_groups} == {key(g) for g in plain.param_groups}
    assert len({g["lr"] for g in low.param_groups if "rank" in g}) == 2  # two blocks, two rates
    assert sum(len(g["params"]) for g in low.param_groups) == sum(len(g["params"]) for g in plain.param_groups)


@pytest.mark.parametrize("optim", ["galore_adamw", "apollo_adamw"])
def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights(optim, tiny_bert, tmp_path):
    """4 steps straight vs 2 steps, a checkpoint, and a new Trainer resuming it for steps 3-4.
    The gap of 3 makes step 3 project with the matrix saved at step 2 (a rebuilt projector would
    compute a new one); the checkpoint's projectors must load under the weights-only loader."""
    import torch

    knobs = (f"train.optim={optim}", f"train.optim_rank={RANK}", f"train.optim_update_proj_gap={GAP}")
    straight, model = trainer_for(tiny_bert, tmp_path / "straight", *knobs, steps=4)
    straight.train()
    from transformers import TrainerCallback

    class Killed(TrainerCallback):  # the run stops right after the step-2 checkpoint is written
        def on_save(self, args, state, control, **kwargs):
            control.should_training_stop = True

    first, _ = trainer_for(tiny_bert, tmp_path / "resumed", *knobs, "train.save_steps=2", steps=4)
    first.add_callback(Killed())
    first.train()
    assert first.state.global_step == 2
    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    assert (checkpoint / "optimizer.pt").exists()
    resumed, again = trainer_for(tiny_bert, tmp_path / "resumed", *knobs, "train.save_steps=2", steps=4)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for (name, a), (_, b) in zip(model.named_parameters(), again.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_targets_that_match_nothing_are_one_line(tiny_bert, tmp_path):
    from llmft.core.errors import UserError

    trainer, _ = trainer_for(tiny_bert, tmp_path, "train.optim=galore_adamw", "train.optim_target_modules=[nothing]")
    expected = r"train.optim_target_modules: no linear layer's name matches \['nothing'\]"
    with pytest.raises(UserError, match=expected) as err:
        trainer.create_optimizer()
    assert "\n" not in str(err.value)
    trainer, _ = trainer_for(tiny_bert, tmp_path / "f", "train.optim=galore_adamw", "strategy=freeze",
                             "strategy.trainable_layers=0")  # the head alone trains: nothing to project
    with pytest.raises(UserError, match="no weight that trains matches"):
        trainer.create_optimizer()


def test_the_mapping_into_training_arguments(tmp_path):
    from llmft.runtime.trainer import DEFAULT_TARGET_MODULES, optimizer_arguments

    cfg = compose("train.optim=apollo_adamw", "train.optim_rank=16")
    assert optimizer_arguments(cfg.train) == {"optim": "apollo_adamw", "optim_args": "rank=16,update_proj_gap=200",
                                              "optim_target_modules": DEFAULT_TARGET_MODULES}
    cfg = compose("train.optim=galore_adamw", "train.optim_scale=0.25", "train.optim_target_modules=[q_proj,v_proj]")
    assert optimizer_arguments(cfg.train)["optim_args"] == "rank=128,update_proj_gap=200,scale=0.25"
    assert optimizer_arguments(cfg.train)["optim_target_modules"] == ["q_proj", "v_proj"]
    assert optimizer_arguments(compose().train) == {"optim": "adamw_torch_fused", "optim_args": None}


# ------------------------------------------------------------------------------ refusals
GALORE = "train.optim=galore_adamw"
CASES = [
    ([GALORE, "train.optim_rank=0"], "train.optim_rank: must be >= 1 (got 0)"),
    (["train.optim=apollo_adamw", "train.optim_update_proj_gap=0"], "train.optim_update_proj_gap: must be >= 1"),
    ([GALORE, "train.optim_scale=0"], "train.optim_scale: must be > 0"),
    ([GALORE, "train.optim_target_modules=[]"], "train.optim_target_modules: must be null"),
    ([GALORE, "strategy=lora"], "train.optim: galore_adamw projects the gradients of whole weight matrices; "
                                "strategy=lora trains none"),
    (["train.optim=apollo_adamw", "strategy=bitfit"], "strategy=bitfit trains none"),
    ([GALORE, "strategy=adapter"], "strategy=adapter trains none"),
    ([GALORE, "strategy=prompt_tuning"], "strategy=prompt_tuning trains none"),
    (["train.optim=apollo_adamw", "strategy=gradual_unfreeze"], "train.optim: apollo_adamw seeds its projections"),
    ([GALORE, "hardware=cpu_zero2"], "hardware.zero_stage: train.optim=galore_adamw needs each weight as a matrix"),
]


@pytest.mark.parametrize("overrides, expected", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_values_are_refused_in_one_line(overrides, expected, tmp_path):
    assert expected in refused("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}")


def test_a_missing_package_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "apollo_torch" else real(name, *a))
    message = refused("train", "train.optim=apollo_adamw", f"hydra.run.dir={tmp_path / 'run'}")
    assert message.startswith("train.optim: apollo_adamw needs apollo_torch: pip install 'llmft[lowmem-optim]'")


def test_valid_neighbours_pass(tmp_path):
    from conftest import preflight

    for overrides in ([GALORE, "train.optim_rank=1"], [GALORE, "strategy=llrd"], [GALORE, "strategy=freeze"],
                      [GALORE, "strategy=gradual_unfreeze"],
                      ["train.optim=apollo_adamw", "train.optim_target_modules=[q_proj]"],
                      ["train.optim_rank=0"], ["strategy=lora", "hardware=cpu_zero2"]):  # unused knobs: not read
        preflight("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}")


def test_every_new_knob_changes_the_config_fingerprint():
    import copy

    from omegaconf import OmegaConf

    from llmft.runtime.run_dir import fingerprint

    cfg = compose()
    knobs = {"train.optim": "galore_adamw", "train.optim_rank": 64, "train.optim_update_proj_gap": 50,
             "train.optim_scale": 0.5, "train.optim_target_modules": ["q_proj"]}
    prints = set()
    for key, value in knobs.items():
        changed = copy.deepcopy(cfg)
        OmegaConf.update(changed, key, value)
        prints.add(fingerprint(changed)["fingerprint"])
    assert fingerprint(cfg)["fingerprint"] not in prints and len(prints) == len(knobs)
