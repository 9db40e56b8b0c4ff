"""Regularization knobs: model.dropout lands in the config the model is built from (and so in its
saved config.json) for each architecture's own names; train.l1's term equals a hand computation
(towards 0 and towards the pretrained weights) and is what metrics log as loss/l1; every bad value
is refused in one line; every knob of this release enters the config fingerprint."""
from __future__ import annotations

import json

import pytest
from conftest import compose_config, make_rows, refused

L1 = 1e-3


def data_cfg(**values):
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig

    return OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "x", **values})


def classification(model_path, rows: int = 8, dropout=None):
    """(task, model, tokenizer, tokenized rows) of the classification task on ``model_path``."""
    from datasets import Dataset

    from llmft.models.loading import load_model, load_tokenizer
    from llmft.tasks import TASKS

    task = TASKS.get("classification")(data_cfg())
    tokenizer = load_tokenizer(str(model_path))
    raw = task.encode(Dataset.from_list(make_rows(rows, seed=2)), "train.jsonl", True)
    import torch

    torch.manual_seed(0)
    return task, load_model(str(model_path), task, tokenizer, dropout=dropout), tokenizer, task.tokenize(raw, tokenizer)


def compose(*overrides: str):
    return compose_config("train", *overrides)


# ----------------------------------------------------------------------------- model.dropout
def test_dropout_lands_in_every_dropout_layer_and_the_saved_config(tiny_bert, tmp_path):
    """BERT: hidden, attention and the classifier's dropout (its classifier_dropout is null: "use
    the hidden one", set explicitly now); every nn.Dropout of the model has p=0.3, config.json too."""
    import torch

    _, plain, _, _ = classification(tiny_bert)
    assert {m.p for m in plain.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}  # the model's own
    _, model, _, _ = classification(tiny_bert, dropout=0.3)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert {k: saved[k] for k in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")} == \
        {"hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.3, "classifier_dropout": 0.3}
    _, off, _, _ = classification(tiny_bert, dropout=0.0)  # 0: every dropout off
    assert {m.p for m in off.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}


def test_dropout_takes_each_architectures_own_names(tiny_llama, tiny_t5):
    """Llama has attention dropout only (a float its attention reads, no nn.Dropout); T5 calls its
    dropout dropout_rate."""
    from transformers import AutoTokenizer

    from llmft.models.loading import load_model
    from llmft.tasks import TASKS

    task = TASKS.get("classification")(data_cfg())
    task.labels = ["a", "b"]
    llama = load_model(str(tiny_llama), task, AutoTokenizer.from_pretrained(tiny_llama), dropout=0.25)
    assert llama.config.attention_dropout == 0.25
    assert {layer.self_attn.attention_dropout for layer in llama.model.layers} == {0.25}

    import torch

    from llmft.models.loading import dropout_kwargs

    assert dropout_kwargs(str(tiny_t5), 0.2, False, None) == {"dropout_rate": 0.2, "classifier_dropout": 0.2}
    t5 = load_model(str(tiny_t5), TASKS.get("seq2seq")(data_cfg(task="seq2seq")), AutoTokenizer.from_pretrained(tiny_t5),
                    dropout=0.2)
    assert t5.config.dropout_rate == 0.2 and {m.p for m in t5.modules() if isinstance(m, torch.nn.Dropout)} == {0.2}


def test_a_model_without_dropout_names_is_refused_in_one_line(tmp_path):
    """Mamba's config names no dropout: model.dropout would do nothing, so it is refused."""
    from transformers import MambaConfig

    from llmft.core.errors import UserError
    from llmft.models.loading import dropout_kwargs

    MambaConfig(hidden_size=16, num_hidden_layers=1, vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(UserError) as err:
        dropout_kwargs(str(tmp_path), 0.3, False, None)
    assert str(err.value).startswith("model.dropout: the config of") and "model_type=mamba" in str(err.value)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------- train.l1
def objective_for(tiny_bert, l1_to: str, *extra: str):
    """(objective, model, batch) from the run's own builder (techniques/objective.from_config)."""
    from llmft.strategies import build_strategy
    from llmft.techniques.objective import from_config

    task, model, tokenizer, rows = classification(tiny_bert)
    cfg = compose("model=hf", f"model.name_or_path={tiny_bert}", f"train.l1={L1}", f"train.l1_to={l1_to}", *extra)
    strategy = build_strategy(cfg, task)
    model = strategy.apply(model)
    objective = from_config(cfg, task, strategy, model, rows, tokenizer)
    batch = task.collator(tokenizer)([rows[i] for i in range(4)])
    return objective, model, batch


def penalty(objective, model, batch) -> tuple[float, float]:
    """(the logged term, the objective's total minus the model's own loss)."""
    model.eval()  # no dropout: the model's own loss is the same in both calls
    outputs = model(**batch)
    total, terms = objective(model, batch, outputs)
    return terms["l1"].item(), (total - outputs.loss).item()


def test_l1_towards_zero_is_l1_times_the_sum_of_every_trainable_weight(tiny_bert):
    """Every trainable weight set to +-0.5 (biases, LayerNorm gains and the new head included),
    the embeddings frozen: the term is L1 x 0.5 x (trainable count), frozen weights left out."""
    import torch

    objective, model, batch = objective_for(tiny_bert, "zero")
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.fill_(0.5 if i % 2 else -0.5)
    model.bert.embeddings.requires_grad_(False)
    trainable = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("bert.embeddings."))
    assert trainable < sum(p.numel() for p in model.parameters())
    term, added = penalty(objective, model, batch)
    assert term == pytest.approx(L1 * 0.5 * trainable, rel=1e-6)
    assert added == pytest.approx(term, rel=1e-5)


def test_l1_towards_pretrained_counts_the_change_of_pretrained_weights_only(tiny_bert):
    """theta_0 is copied once: at the start the term is 0; +0.25 on every pretrained weight gives
    L1 x 0.25 x (pretrained count); the new head (no pretrained value) moves by 7 and adds nothing."""
    import torch

    objective, model, batch = objective_for(tiny_bert, "pretrained")
    assert penalty(objective, model, batch)[0] == 0.0
    pretrained = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("classifier."):
                p.add_(7.0)
            else:
                p.add_(0.25)
                pretrained += p.numel()
    term, added = penalty(objective, model, batch)
    assert term == pytest.approx(L1 * 0.25 * pretrained, rel=1e-5)
    assert added == pytest.approx(term, rel=1e-5)


def test_l1_to_pretrained_shares_one_copy_with_l2sp(tiny_bert):
    objective, _, _ = objective_for(tiny_bert, "pretrained", "train.retention.l2sp=0.1")
    assert objective.anchor is objective.l1_anchor and objective.anchor


def test_l1_off_adds_no_objective(tiny_bert):
    from llmft.strategies import build_strategy
    from llmft.techniques.objective import from_config

    task, model, tokenizer, rows = classification(tiny_bert)
    cfg = compose("model=hf", f"model.name_or_path={tiny_bert}", "train.l1_to=pretrained")
    assert from_config(cfg, task, build_strategy(cfg, task), model, rows, tokenizer) is None


@pytest.mark.parametrize("l1_to", ["zero", "pretrained"])
def test_the_logged_loss_l1_is_the_term_at_each_steps_weights(tiny_bert, tmp_path, l1_to):
    """Training with the objective: each logged loss/l1 (logging every step) equals L1 x the hand
    sum over the weights that step's forward saw (taken at the step's start)."""
    from transformers import TrainerCallback, TrainingArguments

    from llmft.runtime.trainer import build_trainer

    objective, model, _ = objective_for(tiny_bert, l1_to)
    task, _, tokenizer, rows = classification(tiny_bert)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected = []

    class Hand(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            total = 0.0
            for name, p in model.named_parameters():
                if l1_to == "zero":
                    total += p.detach().abs().sum().item()
                elif not name.startswith("classifier."):
                    total += (p.detach() - start[name]).abs().sum().item()
            expected.append(L1 * total)

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=0.05,
                             optim="sgd", lr_scheduler_type="constant", weight_decay=0.0, save_strategy="no",
                             report_to="none", use_cpu=True, logging_steps=1, disable_tqdm=True, seed=0)
    trainer = build_trainer(args, model, tokenizer, task, train_dataset=rows, callbacks=[Hand()], objective=objective)
    trainer.train()
    logged = [r["loss/l1"] for r in trainer.state.log_history if "loss/l1" in r]
    assert len(logged) == 3 and logged == pytest.approx(expected, rel=1e-4)
    assert (logged[0] == 0.0) == (l1_to == "pretrained") and logged[-1] > 0


# ------------------------------------------------------------------------------ refusals
CASES = [
    (["model.dropout=1.0"], "model.dropout: must be in [0, 1) (got 1.0)"),
    (["model.dropout=-0.1"], "model.dropout: must be in [0, 1) (got -0.1)"),
    (["model.dropout=0.3", "strategy=zero_shot", "data.prompt.template='{text}'",
      "data.prompt.verbalizer={negative:[bad],neutral:[ok],positive:[good]}"],
     "model.dropout: strategy=zero_shot trains nothing"),
    (["train.l1=-1e-5"], "train.l1: must be >= 0 (got -1e-05)"),
    (["train.l1=nan"], "train.l1: must be a finite number"),
    (["train.l1=1e-5", "train.l1_to=nearest"], "train.l1_to"),
    (["train.l1=1e-5", "train.l1_to=pretrained", "strategy=lora"],
     "train.l1_to: pretrained anchors pretrained weights; strategy=lora trains only new parameters"),
    (["train.l1=1e-5", "hardware=cpu_zero3"], "train.l1: needs whole parameters; under ZeRO-3"),
    (["train.l1=1e-5", "strategy=zero_shot", "data.prompt.template='{text}'",
      "data.prompt.verbalizer={negative:[bad],neutral:[ok],positive:[good]}"],
     "train.l1: strategy=zero_shot trains nothing"),
]


@pytest.mark.parametrize("overrides, expected", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_values_are_refused_in_one_line(overrides, expected, tmp_path):
    assert expected in refused("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}")


def test_valid_neighbours_pass(tmp_path):
    from conftest import preflight

    for overrides in (["model.dropout=0"], ["model.dropout=0.5", "strategy=lora"], ["train.l1=0", "strategy=lora"],
                      ["train.l1=1e-5", "strategy=lora"], ["train.l1=1e-5", "train.l1_to=pretrained"],
                      ["train.l1=1e-5", "hardware=cpu_zero2"]):
        preflight("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}")


# ----------------------------------------------------------------------------- fingerprint
# one non-default value of each knob of this release (those the schema holds)
NEW_KNOBS = {"model.dropout": 0.3, "train.l1": 1e-5, "train.l1_to": "pretrained", "data.augment.method": "eda",
             "data.augment.factor": 3, "data.augment.minority_only": True, "data.augment.alpha": 0.2,
             "train.adversarial.method": "fgm", "train.adversarial.epsilon": 0.5, "train.adversarial.steps": 5,
             "train.adversarial.alpha": 0.1, "data.tag_scheme": "bioes", "data.label_scale": "standard"}


def test_every_new_knob_changes_the_config_fingerprint():
    """The default config composed once, each knob set on a copy (a typed config: the value is
    checked against the schema as it is set)."""
    import copy

    from omegaconf import OmegaConf

    from llmft.runtime.run_dir import fingerprint

    cfg = compose()
    base = fingerprint(cfg)["fingerprint"]
    knobs = {k: v for k, v in NEW_KNOBS.items() if OmegaConf.select(cfg, k, default="absent") != "absent"}
    assert {"model.dropout", "train.l1", "train.l1_to"} <= set(knobs)
    prints = {}
    for key, value in knobs.items():
        changed = copy.deepcopy(cfg)
        OmegaConf.update(changed, key, value)
        prints[key] = fingerprint(changed)["fingerprint"]
    assert base not in prints.values(), prints
    assert len(set(prints.values())) == len(knobs), prints  # and each its own
