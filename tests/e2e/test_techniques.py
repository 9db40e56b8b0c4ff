"""Training techniques (retention, imbalance, schedules, early stopping, distillation) and
inference variants (export formats, bench-infer, students). Loss and metric code is checked on
hand-made numbers; the rest runs the real CLI on the tiny models."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import LABELS, make_rows, read_jsonl, read_results, run_cli, tiny_train_args, write_csv


# ----------------------------------------------------------------------------- hand-made numbers
def test_focal_and_distillation_losses_match_hand_computation():
    from llmft.techniques.objective import Objective, distillation_loss, focal_loss

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    p = logits.softmax(-1)
    pt = torch.stack([p[0, 0], p[1, 2]])
    assert focal_loss(logits, labels, 0.0).item() == pytest.approx((-pt.log()).mean().item(), abs=1e-6)
    hand = (-(1 - pt) ** 2 * pt.log()).mean()
    assert focal_loss(logits, labels, 2.0).item() == pytest.approx(hand.item(), abs=1e-6)

    teacher = torch.tensor([[0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    t, s = (teacher / 2).softmax(-1), (logits / 2).softmax(-1)
    kl = (t * (t.log() - s.log())).sum(-1).mean()
    assert distillation_loss(logits, teacher, labels, 2.0).item() == pytest.approx(4 * kl.item(), abs=1e-6)

    # the combined objective: alpha * distill + (1 - alpha) * cross-entropy
    class Out:
        pass

    out = Out()
    out.logits = logits
    objective = Objective("sequence", teacher=lambda **kw: type("T", (), {"logits": teacher})(),
                          temperature=2.0, alpha=0.25)
    loss, terms = objective(None, {"input_ids": torch.zeros(2, 3, dtype=torch.long), "labels": labels}, out)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert loss.item() == pytest.approx(0.25 * 4 * kl.item() + 0.75 * ce.item(), abs=1e-6)
    assert set(terms) == {"task", "distill"}


def test_balanced_class_weights_and_cka_and_drift():
    from transformers import BertConfig, BertModel

    from llmft.techniques.objective import balanced_class_weights
    from llmft.techniques.retention import linear_cka, weight_drift

    assert balanced_class_weights([0, 0, 0, 1], 2).tolist() == pytest.approx([4 / 6, 2.0])
    x = torch.randn(40, 8)
    assert linear_cka(x, x) == pytest.approx(1.0)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    assert linear_cka(x, 3 * x @ rotation) == pytest.approx(1.0, abs=1e-9)  # rotation and scale do not count
    assert linear_cka(x, torch.ones(40, 8)) is None  # nothing varies: nothing to compare

    model = BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=16))
    assert weight_drift(model, model)["total"] == 0.0
    moved = BertModel(model.config)
    moved.load_state_dict(model.state_dict())
    with torch.no_grad():
        w = moved.encoder.layer[1].attention.self.query.weight
        w.mul_(1.1)  # one matrix 10 % larger: block.1 drifts, block.0 does not
    drift = weight_drift(model, moved)["per_layer"]
    assert drift["block.0"] == 0.0 and 0 < drift["block.1"] < 0.1


# ------------------------------------------------------------------------------------ training
def metrics_lines(run_dir):
    return read_jsonl(run_dir / "metrics.jsonl")


def test_l2sp_holds_weights_and_zero_is_a_plain_run(tmp_path, tiny_bert, tiny_data):
    runs = {}
    for name, extra in (("plain", []), ("zero", ["train.retention.l2sp=0"]), ("huge", ["train.retention.l2sp=1000"])):
        run_dir = tmp_path / name
        proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.lr=1e-3", *extra))
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = read_results(run_dir)
    assert runs["zero"]["eval"] == runs["plain"]["eval"] and runs["zero"]["train"]["final_loss"] == \
        runs["plain"]["train"]["final_loss"]
    assert runs["huge"]["retention"]["drift"]["total"] < 0.3 * runs["plain"]["retention"]["drift"]["total"]
    assert any("loss/l2sp" in line for line in metrics_lines(tmp_path / "huge"))
    assert (tmp_path / "plain" / "retention.png").is_file()
    assert 0 < runs["plain"]["retention"]["cka_last_hidden"] <= 1


def test_l2sp_anchors_the_blocks_gradual_unfreezing_opens_later(tmp_path, tiny_bert, tiny_data):
    """Blocks unfrozen mid-run are held to their pretrained values too (they used to be left out)."""
    drift = {}
    for name, extra in (("plain", []), ("l2sp", ["train.retention.l2sp=1000"])):
        run_dir = tmp_path / name
        proc = run_cli("train", "+strategy=gradual_unfreeze", "strategy.unfreeze_every=2",
                       *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.lr=1e-2", *extra))
        assert proc.returncode == 0, proc.stderr[-3000:]
        drift[name] = read_results(run_dir)["retention"]["drift"]["per_layer"]
    lowest = next(k for k in drift["plain"] if "block.0" in k or "layer.0" in k)  # frozen at step 0
    assert drift["plain"][lowest] > 0  # it did unfreeze and move
    assert drift["l2sp"][lowest] < 0.3 * drift["plain"][lowest]


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """Negative dominates the train file (100 : 8 : 8); the eval file is balanced."""
    rows = make_rows(300, seed=5)
    kept, seen = [], {label: 0 for label in LABELS}
    for row in rows:
        cap = 100 if row["label"] == "negative" else 8
        if seen[row["label"]] < cap:
            kept.append(row)
            seen[row["label"]] += 1
    root = tmp_path_factory.mktemp("skewed")
    return {"train": write_csv(root / "train.csv", kept), "eval": write_csv(root / "eval.csv", make_rows(60, seed=6))}


def test_balanced_class_weights_raise_minority_recall(tmp_path, tiny_bert, skewed):
    recall = {}
    for weights in ("none", "balanced"):
        run_dir = tmp_path / weights
        proc = run_cli("train", *tiny_train_args(tiny_bert, skewed, run_dir, "train.epochs=1", "train.lr=2e-3",
                                                 f"train.class_weights={weights}", "data.group_by_length=false"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        per_class = read_results(run_dir)["eval"]["per_class"]
        recall[weights] = per_class["neutral"]["recall"] + per_class["positive"]["recall"]
    assert recall["balanced"] > recall["none"]


@pytest.mark.parametrize("extra, expected", [
    (["train.lr_scheduler=cyclic", "train.cyclic.step_size=3", "train.cyclic.base_lr=0.001"],
     lambda s: 0.001 + (0.01 - 0.001) * max(0.0, 1 - abs(s / 3 - 2 * math.floor(1 + s / 6) + 1))),
    (["train.lr_scheduler=cosine_with_restarts", "train.num_cycles=2", "train.warmup_ratio=0"],
     lambda s: 0.01 * 0.5 * (1 + math.cos(math.pi * ((2 * s / 24) % 1.0)))),
    (["train.lr_scheduler=linear", "train.warmup_ratio=0"], lambda s: 0.01 * (24 - s) / 24),
    # one_cycle without warm-up anneals from the top at once (it used to warm up 30 % when told 0)
    (["train.lr_scheduler=one_cycle", "train.warmup_ratio=0"],
     lambda s: 0.01 / 25 / 1e4 + (0.01 - 0.01 / 25 / 1e4) * (1 + math.cos(math.pi * (s + 1) / 24)) / 2),
])
def test_logged_lr_follows_the_schedule(tmp_path, tiny_bert, tiny_data, extra, expected):
    run_dir = tmp_path / "run"
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.lr=0.01", "train.logging_steps=1",
                                             "train.max_steps=24", *extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = {r["step"]: r["learning_rate"] for r in metrics_lines(run_dir) if "learning_rate" in r}
    assert len(logged) >= 20
    # every strategy logs its optimizer groups' lr (full: one group, "all")
    assert all(r["lr/all"] == r["learning_rate"] for r in metrics_lines(run_dir) if "learning_rate" in r)
    for step, lr in logged.items():  # the lr logged at step s is the one step s used: schedule(s - 1)
        assert lr == pytest.approx(expected(step - 1), abs=1e-9), step


def test_sgd_and_focal_and_balanced_sampler_train(tmp_path, tiny_bert, skewed):
    run_dir = tmp_path / "run"
    proc = run_cli("train", *tiny_train_args(tiny_bert, skewed, run_dir, "train.optim=sgd", "train.loss=focal",
                                             "data.sampler=balanced", "train.lr_scheduler=one_cycle"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(run_dir)["train"]["steps"] > 0
    assert all("grad_norm" in r for r in metrics_lines(run_dir) if "loss" in r)


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, tiny_bert, tiny_data):
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.epochs=30", "train.eval_steps=4",
                                             "train.early_stopping.patience=2", "train.early_stopping.metric=loss",
                                             "data.validation_fraction=0.25", "train.lr=1e-2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    stopping = read_results(run_dir)["train"]["early_stopping"]
    assert stopping["stopped_early"] and stopping["best_step"] < stopping["stopped_at_step"]
    evals = [r for r in metrics_lines(run_dir) if "eval_loss" in r]
    assert min(evals, key=lambda r: r["eval_loss"])["step"] == stopping["best_step"]
    best = load_file(run_dir / "checkpoints" / f"checkpoint-{stopping['best_step']}" / "model.safetensors")
    final = load_file(run_dir / "model" / "model.safetensors")
    assert all(torch.equal(best[k], final[k]) for k in final)


@pytest.fixture(scope="module")
def teacher(trained_bert):
    return trained_bert


def test_cached_teacher_equals_uncached(tmp_path, tiny_bert, tiny_data, teacher):
    results = {}
    for cache in ("false", "true"):
        run_dir = tmp_path / cache
        proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir, f"train.distill.teacher={teacher}",
                                                 f"train.distill.cache={cache}"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[cache] = read_results(run_dir)
        assert any("loss/distill" in r for r in metrics_lines(run_dir))
    assert results["true"]["train"]["final_loss"] == pytest.approx(results["false"]["train"]["final_loss"], abs=1e-4)
    assert results["true"]["eval"]["accuracy"] == results["false"]["eval"]["accuracy"]


def test_distilled_student_is_smaller_and_beats_chance(tmp_path, teacher):
    run_dir = tmp_path / "student"
    proc = run_cli("distill", f"teacher={teacher}", "student.layers=1", "train.epochs=3", "train.batch_size=8",
                   "train.lr=5e-3", "print_config=false", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    student, big = read_results(run_dir), read_results(teacher)
    assert student["params"]["total"] < big["params"]["total"]
    assert student["eval"]["accuracy"] > 1 / 3 + 0.1
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(run_dir / "model").num_hidden_layers == 1  # a standard HF folder


def test_export_variants_reload_and_agree(tmp_path, teacher):
    from transformers import AutoModelForSequenceClassification

    for fmt, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("int8", None)):
        proc = run_cli("export", f"model_dir={teacher / 'model'}", f"export.format={fmt}",
                       f"output_dir={tmp_path / fmt}", f"hydra.run.dir={tmp_path / 'export' / fmt}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        check = json.loads((tmp_path / "export" / fmt / "export.json").read_text())["check"]
        assert check["passed"] and check["argmax_agreement"] >= 0.9, (fmt, check)
        if dtype is not None:  # a plain HF folder in that dtype
            model = AutoModelForSequenceClassification.from_pretrained(tmp_path / fmt)
            assert next(model.parameters()).dtype == dtype
    from llmft.models.precision import load_int8

    assert load_int8(tmp_path / "int8") is not None  # the documented one-liner
    proc = run_cli("eval", f"model_dir={tmp_path / 'int8'}", f"hydra.run.dir={tmp_path / 'eval'}", "print_config=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(tmp_path / "eval")["eval"]["accuracy"] == pytest.approx(
        read_results(teacher)["eval"]["accuracy"], abs=0.1)


def test_bench_infer_table(tmp_path, teacher):
    run_dir = tmp_path / "bench"
    proc = run_cli("bench-infer", f"model_dir={teacher / 'model'}", "latency_examples=10",
                   f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((run_dir / "results.json").read_text())["variants"]
    assert [r["variant"] for r in rows] == ["fp32", "bf16", "int8"]
    assert all(r["latency_p95_ms"] >= r["latency_p50_ms"] > 0 and r["throughput_ex_s"] > 0 for r in rows)
    assert rows[0]["throughput_x"] == 1.0 and rows[2]["size_mb"] < rows[0]["size_mb"]
    assert "| int8 |" in (run_dir / "inference_report.md").read_text()


def test_predict_in_int8(tmp_path, teacher, tiny_data):
    proc = run_cli("predict", f"model_dir={teacher / 'model'}", f"predict.input_file={tiny_data['eval']}",
                   "predict.precision=int8", f"hydra.run.dir={tmp_path / 'predict'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(read_jsonl(tmp_path / "predict" / "predictions.jsonl")) == 30


@pytest.mark.parametrize("extra, message", [
    (["train.retention.l2sp=-1"], "train.retention.l2sp: must be >= 0"),
    (["train.retention.l2sp=1", "+strategy=lora"], "trains only new parameters"),
    (["train.class_weights=[1,2]"], "2 weights but the task has 3 labels"),
    (["train.early_stopping.patience=2"], "needs train.eval_steps > 0"),
    (["train.early_stopping.patience=2", "train.eval_steps=5", "train.early_stopping.metric=rougeL"],
     "train.early_stopping.metric"),
    (["train.early_stopping.patience=2", "train.eval_steps=5"], "needs a validation split"),
    (["train.distill.teacher=/no/such/run"], "train.distill.teacher: not found"),
    (["train.loss=focal", "model.crf=true"], "model.crf"),
    (["train.neftune_alpha=5"], "train.neftune_alpha: noises the embeddings of instruction tuning: data.task=sft"),
])
def test_technique_errors_are_one_line(tmp_path, tiny_bert, tiny_data, extra, message):
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, tmp_path / "run", *extra))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_multi_task_trains_a_second_head_and_saves_the_main_model(tmp_path, tiny_bert, tiny_data):
    rows = [{"sentence": " ".join(["the"] * (2 if i % 2 else 7)), "kind": "short" if i % 2 else "long"}
            for i in range(40)]
    aux = write_csv(tmp_path / "aux.csv", rows)
    run_dir = tmp_path / "run"
    spec = f"[{{kind:classification,name:length,train_file:{aux},text_column:sentence,label_column:kind,weight:0.25}}]"
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir, f"data.aux={spec}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["aux"] == [{"name": "length", "kind": "classification", "file": str(aux), "examples": 32,
                               "weight": 0.25, "labels": 2}]  # 0.25 / 0.75 of the 96 main examples
    logged = [r for r in metrics_lines(run_dir) if "loss/task_length" in r]
    assert logged and all("loss/task_main" in r for r in logged)
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(run_dir / "model").config.num_labels == 3


@pytest.mark.parametrize("spec, message", [
    ("[{kind:lm,train_file:/no/such.txt}]", "kind=lm goes with data.task=sft"),
    ("[{kind:classification,train_file:/no/such.csv}]", "file not found"),
    ("[{kind:classification,train_file:FILE,weight:1.5}]", "weight: must be in (0, 1)"),
    ("[{kind:bogus,train_file:FILE}]", "data.aux[0].kind='bogus' is not one of: lm, classification"),
    ("[{kind:classification,train_file:FILE,colour:3}]", "colour: no such key"),
])
def test_aux_errors(tmp_path, tiny_bert, tiny_data, spec, message):
    spec = spec.replace("FILE", str(tiny_data["train"]))
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, tmp_path / "run", f"data.aux={spec}"))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_neftune_noises_embeddings_while_training_only(tiny_chat_llama):
    """Uniform noise within alpha / sqrt(length x width) in train mode, none in eval mode, and
    none once training ends (the hook is removed)."""
    import math

    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from llmft.techniques import neftune

    assert neftune.callbacks(OmegaConf.create({"train": {"neftune_alpha": 0.0}})) == []
    [callback] = neftune.callbacks(OmegaConf.create({"train": {"neftune_alpha": 5.0}}))
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_llama)
    embeddings = model.get_input_embeddings()
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    clean = embeddings.weight[ids].detach()
    bound = 5.0 / math.sqrt(ids.shape[1] * clean.shape[-1])
    callback.on_train_begin(None, None, None, model=model)
    model.train()
    noisy = embeddings(ids).detach()
    assert 0 < (noisy - clean).abs().max() <= bound + 1e-6
    model.eval()
    assert torch.equal(embeddings(ids), clean)
    callback.on_train_end(None, None, None, model=model)
    model.train()
    assert torch.equal(embeddings(ids).detach(), clean)
