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


def test_first_subword_alignment():
    from llmft.tasks.ner import IGNORE, first_subword_labels

    assert first_subword_labels([None, 0, 0, 1, None], [3, 4]) == [IGNORE, 3, IGNORE, 4, IGNORE]


@pytest.mark.parametrize("fixture, strategy", [("tiny_bert", "full"), ("tiny_llama", "lora")])
def test_ner_run_eval_and_predict(request, tmp_path, ner_data, fixture, strategy):
    model = request.getfixturevalue(fixture)
    run_dir = tmp_path / "run"
    proc = run_cli("train", f"+strategy={strategy}", *ner_args(model, ner_data, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["task"] == "ner" and results["primary_metric"] == "f1"
    assert set(results["eval"]) >= {"precision", "recall", "f1", "accuracy", "per_type", "loss"}
    records = read_jsonl(run_dir / "predictions.jsonl")
    assert len(records) == 20
    assert all(len(r["prediction"]) == len(r["tokens"]) == len(r["label"]) for r in records)
    from llmft.tasks.ner import entity_metrics

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


def test_bad_bio_tag_names_file_and_line(tmp_path, tiny_bert, ner_data):
    bad = tmp_path / "bad.conll"
    bad.write_text("great B-POS\nday O\n\nawful B-NEG\nweek X-NEG\n")
    proc = run_cli("train", *ner_args(tiny_bert, {"train": bad, "eval": ner_data["eval"]}, tmp_path / "run"))
    assert proc.returncode == 2 and "bad.conll: line 5" in proc.stderr and "'X-NEG'" in proc.stderr


def test_hub_style_class_label_tags_are_read_by_name():
    """Hub datasets such as conll2003 store tags as ClassLabel ids."""
    from datasets import ClassLabel, Dataset, Features, Sequence, Value
    from omegaconf import OmegaConf

    from llmft.config import DataConfig
    from llmft.tasks.ner import NER

    features = Features({"tokens": Sequence(Value("string")), "tags": Sequence(ClassLabel(names=["O", "B-PER", "I-PER"]))})
    data = Dataset.from_dict({"tokens": [["Ada", "Lovelace", "wrote"]], "tags": [[1, 2, 0]]}, features=features)
    task = NER(OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "hub", "task": "ner"}))
    encoded = task.encode(data, "conll2003[train]", is_train=True)
    assert task.labels == ["O", "B-PER", "I-PER"] and encoded["tag_ids"] == [[1, 2, 0]]
