"""llmft prune (llmft/models/pruning.py, commands/prune.py) on a tiny BERT classifier in memory:
removing a head or an FFN channel is the same as silencing it (its output-projection columns
zeroed) in the unpruned model, the pruned folder reloads to the same logits, magnitude pruning
zeroes exactly round(amount x n) of each weight (the smallest), recovery fine-tuning leaves them
zero, and every bad value is refused in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import LABELS, make_rows, refused, write_csv

from llmft.models import pruning

HEADS, SIZE, LAYERS, FFN = 4, 16, 2, 128  # hidden 64


def tiny_classifier(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=200, hidden_size=HEADS * SIZE, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=64, num_labels=3,
                        id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)})
    return BertForSequenceClassification(config).eval()


def batch(seed: int = 1, labels: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {"input_ids": torch.randint(5, 200, (6, 10), generator=g), "attention_mask": torch.ones(6, 10, dtype=torch.long)}
    out["attention_mask"][:2, 7:] = 0  # padding in some rows
    if labels:
        out["labels"] = torch.randint(0, 3, (6,), generator=g)
    return out


def logits(model, inputs=None):
    with torch.no_grad():
        return model(**(inputs or batch())).logits


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_bert) -> Path:
    """A saved run's model/ folder: the tiny classifier, tiny_bert's tokenizer, llmft.json."""
    from transformers import AutoTokenizer

    run = tmp_path_factory.mktemp("prune-src") / "run"
    model_dir = run / "model"
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = tiny_classifier()
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "llmft.json").write_text(json.dumps({"task": "classification", "labels": LABELS, "strategy": "full"}))
    data = tmp_path_factory.mktemp("prune-data")
    write_csv(data / "train.csv", make_rows(48, seed=1))
    write_csv(data / "eval.csv", make_rows(24, seed=2))
    return model_dir


def data_args(source: Path) -> list[str]:
    data = next(p for p in source.parents[2].iterdir() if p.name.startswith("prune-data"))
    return ["data=csv", f"data.train_file={data / 'train.csv'}", f"data.eval_file={data / 'eval.csv'}"]


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmft.cli import normalize_overrides
    from llmft.cli.table import config_dir
    from llmft.cli.validate import register_configs

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return hydra_compose("prune", overrides=normalize_overrides(list(overrides), "prune"))


def run_prune(source: Path, tmp_path: Path, *overrides: str) -> dict:
    """llmft prune's main() in process on the composed, validated config."""
    from llmft.cli.validate import validate
    from llmft.commands import prune

    cfg = compose(f"model_dir={source}", *data_args(source), "prune.batch_size=8", *overrides)
    validate(cfg, "prune")
    (tmp_path / "cmd").mkdir()
    return prune.main(cfg, tmp_path / "cmd")


# ------------------------------------------------------------------ heads
def silenced_heads(model, drop: dict):
    """``model`` with heads ``drop[layer]`` silenced: their columns of the attention output zeroed."""
    with torch.no_grad():
        for i, heads in drop.items():
            for h in heads:
                pruning.layers(model)[i].attention.output.dense.weight[:, h * SIZE:(h + 1) * SIZE] = 0
    return model


def test_removing_heads_equals_silencing_them_and_shrinks_the_model():
    model, reference = tiny_classifier(), silenced_heads(tiny_classifier(), {0: [1, 2], 1: [0, 3]})
    before = pruning.count(model)
    pruning.prune_heads(model, [torch.tensor([0, 3]), torch.tensor([1, 2])])
    for block in pruning.layers(model):
        for name in ("query", "key", "value"):
            assert getattr(block.attention.self, name).weight.shape == (2 * SIZE, HEADS * SIZE)
        assert block.attention.output.dense.weight.shape == (HEADS * SIZE, 2 * SIZE)
    # per layer: q, k, v lose 32 rows of 64 (+ 32 biases), the output projection 32 columns of 64
    assert before - pruning.count(model) == LAYERS * (3 * (32 * 64 + 32) + 64 * 32)
    assert pruning.heads_kept(model) == [2, 2]
    torch.testing.assert_close(logits(model), logits(reference), atol=1e-5, rtol=1e-5)


def test_the_least_important_head_goes_first():
    model = silenced_heads(tiny_classifier(), {0: [2], 1: [1]})  # these two heads change nothing
    heads, _ = pruning.importance(model, [batch(labels=True), batch(seed=2, labels=True)])
    assert heads[0, 2] == 0 and heads[1, 1] == 0 and (heads[0, [0, 1, 3]] > 0).all()
    assert [k.tolist() for k in pruning.keep_top(heads, 3)] == [[0, 1, 3], [0, 2, 3]]


def test_channel_importance_is_the_gradient_of_a_mask_on_the_channel():
    """|sum W2[:, c] * dL/dW2[:, c]| is |dL/dm_c| for a mask m on channel c's activation."""
    model = tiny_classifier()
    inputs = batch(labels=True)
    _, channels = pruning.importance(model, [inputs])
    block = pruning.layers(model)[1]
    mask = torch.ones(FFN, requires_grad=True)
    hook = block.intermediate.register_forward_hook(lambda m, i, out: out * mask)
    model(**inputs).loss.backward()
    hook.remove()
    torch.testing.assert_close(channels[1], mask.grad.abs(), atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------ ffn
def test_removing_ffn_channels_equals_silencing_them():
    model, reference = tiny_classifier(), tiny_classifier()
    keep = [torch.arange(0, FFN, 2), torch.arange(FFN // 2)]
    with torch.no_grad():
        pruning.layers(reference)[0].output.dense.weight[:, 1::2] = 0
        pruning.layers(reference)[1].output.dense.weight[:, FFN // 2:] = 0
    pruning.prune_ffn(model, keep)
    assert model.config.intermediate_size == FFN // 2
    assert all(b.intermediate.dense.weight.shape == (FFN // 2, 64) for b in pruning.layers(model))
    torch.testing.assert_close(logits(model), logits(reference), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ magnitude
def test_magnitude_zeroes_exactly_the_smallest_weights_of_each_layer():
    model, original = tiny_classifier(), tiny_classifier()
    pruning.make_permanent(pruning.magnitude(model, 0.3))
    assert not any(name.endswith("_orig") for name in model.state_dict())  # a plain model again
    report = pruning.sparsity(model)
    for name, linear in pruning.encoder_linears(model).items():
        w, w0 = linear.weight, original.get_submodule("bert.encoder." + name).weight
        zeros = int(w.eq(0).sum())
        assert zeros == round(0.3 * w.numel()), name
        assert report["per_layer"][name] == round(zeros / w.numel(), 6)
        assert w0[w.eq(0)].abs().max() <= w0[w.ne(0)].abs().min()  # the smallest went
        torch.testing.assert_close(w[w.ne(0)], w0[w.ne(0)])
    assert torch.equal(model.classifier.weight, original.classifier.weight)  # head untouched
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, original.bert.embeddings.word_embeddings.weight)


def test_recovery_finetuning_keeps_magnitude_zeros(source, tmp_path):
    out = tmp_path / "pruned"
    result = run_prune(source, tmp_path, "prune.method=magnitude", "prune.amount=0.5", "prune.finetune_steps=3",
                       f"output_dir={out}")
    from transformers import AutoModelForSequenceClassification

    pruned = AutoModelForSequenceClassification.from_pretrained(out)  # a plain HF folder
    original = AutoModelForSequenceClassification.from_pretrained(source)
    moved = 0
    for name, linear in pruning.encoder_linears(pruned).items():
        w, w0 = linear.weight, original.get_submodule("bert.encoder." + name).weight
        assert int(w.eq(0).sum()) == round(0.5 * w.numel()), name
        moved += int((w[w.ne(0)] != w0[w.ne(0)]).sum())
    assert moved > 0  # the fine-tuning trained the kept weights
    assert result["sparsity"]["encoder_linear_weights"] == 0.5 and result["finetune"]["steps"] == 3
    assert (out / ".llmft-export").is_file() and json.loads((out / "llmft.json").read_text())["pruned"]["method"] == "magnitude"
    assert json.loads((tmp_path / "cmd" / "prune.json").read_text())["output_dir"] == str(out.resolve())


# ------------------------------------------------------------------ the command: saved, reloaded
def test_head_pruned_folder_reloads_through_llmft_only(source, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from llmft.artifacts import load_saved, read_metadata
    from llmft.tasks import TASKS

    result = run_prune(source, tmp_path, "prune.method=heads", "prune.amount=0.5")
    out = Path(result["output_dir"])
    assert out == source.parent / "pruned-heads-0.5"  # next to model/
    meta = read_metadata(out)
    assert meta["pruned"]["heads"] == [2, 2] and result["parameters_after"] < result["parameters_before"]
    assert result["check"]["max_abs_diff_reloaded"] == 0.0
    task = TASKS.get("classification").from_metadata(None, meta)
    model, _ = load_saved(out, task, meta)
    reference = silenced_heads(AutoModelForSequenceClassification.from_pretrained(source).eval(),
                               {i: sorted(set(range(HEADS)) - set(k)) for i, k in enumerate(meta["pruned"]["kept_heads"])})
    inputs = {k: v.clamp(max=len(model.bert.embeddings.word_embeddings.weight) - 1) for k, v in batch().items()}
    torch.testing.assert_close(logits(model, inputs), logits(reference, inputs), atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError):  # transformers cannot describe fewer heads: it refuses, never loads wrong
        AutoModelForSequenceClassification.from_pretrained(out)


def test_ffn_pruned_folder_is_a_plain_hf_model(source, tmp_path):
    from transformers import AutoModelForSequenceClassification

    result = run_prune(source, tmp_path, "prune.method=ffn", "prune.amount=0.25", f"output_dir={tmp_path / 'ffn'}")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ffn")
    assert model.config.intermediate_size == FFN - 32 == result["intermediate_size_after"]
    assert result["parameters_before"] - result["parameters_after"] == LAYERS * 32 * (64 + 1 + 64)


def test_a_foreign_output_dir_is_refused_untouched(source, tmp_path):
    from llmft.core.errors import UserError

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="did not write"):
        run_prune(source, tmp_path, "prune.method=ffn", f"output_dir={foreign}")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------ refusals (pre-flight, one line)
def folder(root: Path, name: str, meta: dict, config: dict, adapter: bool = False) -> Path:
    path = root / name / "model"
    path.mkdir(parents=True)
    (path / "llmft.json").write_text(json.dumps(meta))
    (path / "config.json").write_text(json.dumps(config))
    if adapter:
        (path / "adapter_config.json").write_text("{}")
    return path


BERT = {"model_type": "bert", "num_attention_heads": 4, "intermediate_size": 128}
CLS = {"task": "classification", "labels": LABELS, "strategy": "full"}
CASES = [
    ({}, ["prune.method=heads", "prune.amount=0"], "prune.amount: must be in (0, 1)"),
    ({}, ["prune.method=heads", "prune.amount=1"], "prune.amount: must be in (0, 1)"),
    ({}, ["prune.method=ffn", "prune.amount=-0.2"], "prune.amount: must be in (0, 1)"),
    ({}, ["prune.method=channels"], "prune.method='channels' is not one of: magnitude, heads, ffn"),
    ({}, [], "prune.method is required"),
    ({}, ["prune.method=heads", "prune.amount=0.1"], "prune.amount: 0.1 of 4 heads per layer removes 0"),
    ({}, ["prune.method=ffn", "prune.finetune_steps=-1"], "prune.finetune_steps: must be >= 0"),
    ({}, ["prune.method=ffn", "prune.importance_batches=0"], "prune.importance_batches: must be >= 1"),
    ({}, ["prune.method=ffn", "prune.finetune_lr=0"], "prune.finetune_lr: must be > 0"),
    ({}, ["prune.method=ffn", "check_examples=0"], "check_examples: must be >= 1"),
    ({"adapter": True, "meta": {**CLS, "strategy": "lora"}}, ["prune.method=heads"],
     "a 'lora' adapter; llmft prune prunes full models: merge it first (llmft export model_dir="),
    ({"config": {**BERT, "model_type": "llama"}}, ["prune.method=ffn"], "a llama model; llmft prune prunes BERT-family"),
    ({"meta": {**CLS, "task": "sft"}}, ["prune.method=ffn"], "prunes classification and ner models (this one is sft)"),
    ({"meta": {"task": "ner", "labels": ["O"], "crf": True}}, ["prune.method=ffn"], "a NER model with a CRF"),
    ({"meta": {**CLS, "format": "bf16"}}, ["prune.method=magnitude"], "a prompting run or an exported model"),
    ({"meta": {**CLS, "pruned": {"heads": [1, 1]}}}, ["prune.method=heads", "prune.amount=0.5"],
     "0.5 of 1 heads per layer removes 0"),
]


@pytest.mark.parametrize("case,overrides,expected", CASES, ids=[c[2][:40] for c in CASES])
def test_bad_values_are_refused_in_one_line(case, overrides, expected, tmp_path):
    model_dir = folder(tmp_path, "run", case.get("meta", CLS), case.get("config", BERT), case.get("adapter", False))
    message = refused("prune", f"model_dir={model_dir}", *overrides, f"hydra.run.dir={tmp_path / 'cmd'}")
    assert expected in message, message
    assert not (tmp_path / "cmd").exists()


def test_without_a_model_it_says_which_key_to_add(tmp_path):
    assert "model_dir is required" in refused("prune", "prune.method=heads", f"hydra.run.dir={tmp_path / 'cmd'}")
