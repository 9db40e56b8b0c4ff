"""Token classification (NER): CoNLL files, first-sub-word alignment, seqeval metrics."""
from __future__ import annotations

import json

import pytest
from conftest import read_jsonl, read_results, run_cli


def ner_args(model, data, run_dir, *extra):
    return ["model=hf", f"model.name_or_path={model}", "data=conll_file", f"data.train_file={data['train']}",
            f"data.eval_file={data['eval']}", "train.epochs=3", "train.batch_size=8", "train.lr=5e-3",
            "train.logging_steps=2", "print_config=false", f"hydra.run.dir={run_dir}", *extra]


def test_entity_metrics_match_a_hand_computed_example():
    from llmft.tasks.ner import entity_metrics

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "B-PER"]]
    m = entity_metrics(gold, predicted)
    # entities: gold {PER(0-1), LOC(3), LOC(0)}; predicted {PER(0-1), LOC(0), PER(1)}: 2 right
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_type"]["LOC"]["recall"] == 0.5 and m["per_type"]["PER"]["precision"] == 0.5


def test_a_tagger_that_finds_no_entity_is_flagged():
    """Token accuracy 0.94 and F1 0: the all-O tagger must not pass for a result."""
    from datasets import Dataset
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig
    from llmft.tasks.ner import NER

    task = NER(OmegaConf.structured(DataConfig(name="x", task="ner")), labels=["O", "B-PER", "I-PER"])
    split = Dataset.from_dict({"tag_ids": [[0, 0, 1, 2], [0, 0, 0, 0]]})
    baseline = task.baseline(split, split)
    assert baseline["majority_token_accuracy"] == pytest.approx(6 / 8) and baseline["majority_f1"] == 0.0
    all_o = [{"prediction": ["O"] * 4}, {"prediction": ["O"] * 4}]
    assert "no entity found" in task.warnings({"f1": 0.0}, baseline, all_o)[0]
    found = [{"prediction": ["O", "O", "B-PER", "I-PER"]}, {"prediction": ["O"] * 4}]
    assert task.warnings({"f1": 1.0}, baseline, found) == []


def test_first_subword_alignment():
    from llmft.tasks.ner import IGNORE, first_subword_labels

    assert first_subword_labels([None, 0, 0, 1, None], [3, 4]) == [IGNORE, 3, IGNORE, 4, IGNORE]


@pytest.mark.parametrize("fixture, strategy, crf", [("tiny_bert", "full", False), ("tiny_llama", "lora", False),
                                                    ("tiny_bert", "lora", True)])
def test_ner_run_eval_and_predict(request, tmp_path, ner_data, fixture, strategy, crf):
    model = request.getfixturevalue(fixture)
    run_dir = tmp_path / "run"
    proc = run_cli("train", f"+strategy={strategy}", *ner_args(model, ner_data, run_dir), f"model.crf={crf}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["task"] == "ner" and results["primary_metric"] == "f1"
    assert set(results["eval"]) >= {"precision", "recall", "f1", "accuracy", "per_type", "loss"}
    records = read_jsonl(run_dir / "predictions.jsonl")
    assert len(records) == 20
    assert all(len(r["prediction"]) == len(r["tokens"]) == len(r["label"]) for r in records)
    from llmft.tasks.ner import entity_metrics

    if crf:  # Viterbi with BIO constraints: no I-X without a B-X or I-X of the same type before it
        from llmft.models.crf import allowed

        assert (run_dir / "model" / "crf.safetensors").is_file() and (run_dir / "model" / "adapter_config.json").is_file()
        assert all(allowed(prev, tag) for r in records for prev, tag in zip([None, *r["prediction"]], r["prediction"]))
    again = entity_metrics([r["label"] for r in records], [r["prediction"] for r in records])
    assert again["f1"] == pytest.approx(results["eval"]["f1"])  # the records are what was scored

    proc = run_cli("eval", f"model_dir={run_dir / 'model'}", f"hydra.run.dir={tmp_path / 'eval'}", "print_config=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(tmp_path / "eval")["eval"]["f1"] == pytest.approx(results["eval"]["f1"])

    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"tokens": r["tokens"]}) + "\n" for r in records))
    proc = run_cli("predict", f"model_dir={run_dir / 'model'}", f"predict.input_file={inputs}",
                   f"hydra.run.dir={tmp_path / 'predict'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted = read_jsonl(tmp_path / "predict" / "predictions.jsonl")
    assert [p["prediction"] for p in predicted] == [r["prediction"] for r in records]


def test_viterbi_decodes_a_hand_made_example():
    """Two tags (0, 1), three words. Emissions alone say 0 1 0; transitions 1->0 = -3 and
    0->0 = -0.5 make 0 1 1 best: 0 1 0 = 6-3 = 3, 0 1 1 = 4, 0 0 0 = 4-1 = 3, 1 1 1 = 2, 1 1 0 = 1."""
    import torch

    from llmft.models.crf import CrfTagger, pack_words

    tagger = CrfTagger(torch.nn.Linear(1, 1), ["O", "B-X"])  # the encoder is not used here
    with torch.no_grad():
        tagger.crf.start_transitions.zero_()
        tagger.crf.end_transitions.zero_()
        tagger.crf.transitions.copy_(torch.tensor([[-0.5, 0.0], [-3.0, 0.0]]))  # [from, to]
    emissions = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]])
    assert tagger.crf.decode(emissions) == [[0, 1, 1]]
    # words start at tokens 1, 2 and 4 (0 is [CLS], 3 a continuation): packing keeps those, in order
    logits = torch.zeros(1, 6, 2)
    logits[0, [1, 2, 4]] = emissions[0]
    packed, mask, positions = pack_words(logits, torch.tensor([[False, True, True, False, True, False]]))
    assert positions.tolist() == [[1, 2, 4]] and mask.all() and torch.equal(packed, emissions)


def test_crf_forbids_bio_invalid_transitions():
    import torch

    from llmft.models.crf import CrfTagger

    tagger = CrfTagger(torch.nn.Linear(1, 1), ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    # per-word scores alone say O I-PER I-PER: invalid; the decoded path must start the entity with B-PER
    emissions = torch.tensor([[[3.0, 0, 0, 0, 0], [0, 1.0, 2.0, 0, 0], [0, 0, 2.0, 0, 0]]])
    assert tagger.crf.decode(emissions) == [[0, 1, 2]]
    # B-LOC -> I-PER is forbidden too
    emissions = torch.tensor([[[0, 0, 0, 3.0, 0], [0, 0, 2.0, 0, 1.0]]])
    assert tagger.crf.decode(emissions) == [[3, 4]]


def test_crf_is_for_ner_only(tmp_path, tiny_bert, tiny_data):
    proc = run_cli("train", "model=hf", f"model.name_or_path={tiny_bert}", "data=csv",
                   f"data.train_file={tiny_data['train']}", "model.crf=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "model.crf" in proc.stderr and "ner" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_bad_bio_tag_names_file_and_line(tmp_path, tiny_bert, ner_data):
    bad = tmp_path / "bad.conll"
    bad.write_text("great B-POS\nday O\n\nawful B-NEG\nweek X-NEG\n")
    proc = run_cli("train", *ner_args(tiny_bert, {"train": bad, "eval": ner_data["eval"]}, tmp_path / "run"))
    assert proc.returncode == 2 and "bad.conll: line 5" in proc.stderr and "'X-NEG'" in proc.stderr


def test_hub_style_class_label_tags_are_read_by_name():
    """Hub datasets such as conll2003 store tags as ClassLabel ids."""
    from datasets import ClassLabel, Dataset, Features, Sequence, Value
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig
    from llmft.tasks.ner import NER

    features = Features({"tokens": Sequence(Value("string")), "tags": Sequence(ClassLabel(names=["O", "B-PER", "I-PER"]))})
    data = Dataset.from_dict({"tokens": [["Ada", "Lovelace", "wrote"]], "tags": [[1, 2, 0]]}, features=features)
    task = NER(OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "hub", "task": "ner"}))
    encoded = task.encode(data, "conll2003[train]", is_train=True)
    assert task.labels == ["O", "B-PER", "I-PER"] and encoded["tag_ids"] == [[1, 2, 0]]
