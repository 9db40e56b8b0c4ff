"""Metrics over a split are the split's, not its batches': every task's evaluation gives the same
numbers at any eval batch size and on 1 or 2 processes, and its loss is the model's own loss over
the whole split at once (token-weighted for token losses, row-weighted for row losses)."""
from __future__ import annotations

import json
import math
import os

import pytest
from conftest import make_rows, make_sentences

# zero_shot: the verbalizer classifier over a causal LM that zero_shot, few_shot and PET evaluate
CASES = ["classification", "zero_shot", "ner", "ner_crf", "qa", "sft", "sft_packed", "seq2seq"]
N = 7  # rows: batches of 2 or 3 leave a ragged last batch, 2 processes of 2 a repeated row


def gen_cfg():
    from omegaconf import OmegaConf

    from llmft.core.config import GenerateConfig

    return OmegaConf.merge(OmegaConf.structured(GenerateConfig),
                           {"max_new_tokens": 2, "max_examples": 3, "batch_size": 2})


def data_cfg(**values):
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig

    return OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "x", **values})


def qa_rows(n):
    words = ["the", "a", "today", "my", "was", "this", "it", "so", "and", "we"]
    rows = []
    for i in range(n):
        context = " ".join(words[(i + k) % len(words)] for k in range(6 + i)) + " great " + " ".join(words[:3])
        start = context.index(" great ") + 1
        rows.append({"id": f"q{i}", "question": "which word is nice ?", "context": context,
                     "answers": {"text": ["great"], "answer_start": [start]}})
    return rows


def build(case: str, models: dict):
    """(task, model, tokenizer, tokenized eval split, raw eval split) with seeded random heads."""
    import torch
    from datasets import Dataset

    from llmft.models.loading import load_model, load_tokenizer
    from llmft.tasks import TASKS

    if case == "classification":
        task, path = TASKS.get("classification")(data_cfg()), models["bert"]
        raw = Dataset.from_list(make_rows(N, seed=2))
    elif case == "zero_shot":
        task, path = TASKS.get("classification")(data_cfg()), models["chat"]
        raw = Dataset.from_list([{**r, "text": f"{r['text']} sentiment :"} for r in make_rows(N, seed=2)])
    elif case.startswith("ner"):
        task, path = TASKS.get("ner")(data_cfg(task="ner")), models["bert"]
        raw = Dataset.from_list([{"tokens": t, "tags": g} for t, g in make_sentences(N, seed=6)])
    elif case == "qa":
        task, path = TASKS.get("qa")(data_cfg(task="qa", max_length=24, doc_stride=8)), models["bert"]
        raw = Dataset.from_list(qa_rows(N))
    elif case.startswith("sft"):
        task = TASKS.get("sft")(data_cfg(task="sft", packing=case == "sft_packed"))
        path = models["chat"]
        # responses of 8 to 38 characters: rows with few and many target tokens
        raw = Dataset.from_list([{"prompt": f"sentiment of : {r['text']}",
                                  "response": f"{r['label']} {r['text']}"[:8 + 5 * i]}
                                 for i, r in enumerate(make_rows(N, seed=4))])
    else:
        task, path = TASKS.get("seq2seq")(data_cfg(task="seq2seq")), models["t5"]
        raw = Dataset.from_list([{"source": f"copy : {r['text']}", "target": " ".join(r["text"].split()[: 1 + i % 4])}
                                 for i, r in enumerate(make_rows(N, seed=7))])
    raw = task.encode(raw, "eval.jsonl", True)
    tokenizer = load_tokenizer(str(path))
    torch.manual_seed(0)
    if case == "zero_shot":
        from llmft.models.prompting import label_token_ids, prompt_classifier

        tokenizer.padding_side = "left"  # as zero_shot renders its prompts: the scored position is the last
        lm = load_model(str(path), task, tokenizer, auto_class="AutoModelForCausalLM")
        ids = label_token_ids({name: [name] for name in task.labels}, task.labels, tokenizer)
        return task, prompt_classifier(lm, ids, "causal", None).eval(), tokenizer, task.tokenize(raw, tokenizer), raw
    model = load_model(str(path), task, tokenizer)
    if case == "ner_crf":
        from omegaconf import OmegaConf

        model, _ = task.wrap(model, None, OmegaConf.create({"crf": True, "crf_lr_scale": 1.0}))
    return task, model.eval(), tokenizer, task.tokenize(raw, tokenizer), raw


def trainer_for(built, batch_size: int, out_dir):
    from omegaconf import OmegaConf

    from llmft.core.config import HardwareConfig
    from llmft.runtime.trainer import build_trainer, eval_arguments

    task, model, tokenizer, _, _ = built
    hardware = OmegaConf.structured(HardwareConfig(name="cpu", accelerator="cpu"))
    return build_trainer(eval_arguments(out_dir, batch_size, hardware), model, tokenizer, task)


def evaluate(built, batch_size: int, out_dir) -> tuple[dict, float]:
    """The task's metrics and the unrounded split loss at this eval batch size."""
    task, _, _, tokenized, raw = built
    trainer = trainer_for(built, batch_size, out_dir)
    metrics, _ = task.evaluate(trainer, tokenized, raw, gen_cfg())
    return metrics, trainer.evaluate(eval_dataset=tokenized)["eval_loss"]


def whole_split_loss(built, out_dir) -> float:
    """The model's own loss on the whole split as one batch: what every batching must report."""
    import torch

    tokenized = built[3]
    trainer = trainer_for(built, len(tokenized), out_dir)
    batch = next(iter(trainer.get_eval_dataloader(tokenized)))
    with torch.no_grad():
        return built[1](**batch).loss.item()


def rows_alone_loss(built, out_dir) -> float:
    """Each row run alone (no padding), its loss weighted by its targets: tokens for token losses
    (a causal LM scores the labels after the first), 1 for row losses."""
    import torch

    task, model, _, tokenized, _ = built
    total = count = 0.0
    with torch.no_grad():
        for batch in trainer_for(built, 1, out_dir).get_eval_dataloader(tokenized):
            labels = batch.get("labels")
            if task.loss_kind == "causal":
                n = int((labels[..., 1:] != -100).sum())
            elif task.loss_kind == "token" and not hasattr(model, "crf"):
                n = int((labels != -100).sum())
            else:
                n = 1
            total += model(**batch).loss.item() * n
            count += n
    return total / count


def same_metrics(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key in ("loss", "perplexity"):  # rounded to 5 / 4 decimals
            assert a[key] == pytest.approx(b[key], abs=2e-5 if key == "loss" else 2e-4), key
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def models(tiny_bert, tiny_chat_llama, tiny_t5) -> dict:
    return {"bert": tiny_bert, "chat": tiny_chat_llama, "t5": tiny_t5}


@pytest.fixture(scope="module")
def one_process(models, tmp_path_factory) -> dict:
    """Each case's metrics, split loss and whole-split loss on one process (eval batch 1, 3, all)."""
    out = {}
    for case in CASES:
        tmp = tmp_path_factory.mktemp(case)
        built = build(case, models)
        out[case] = {"batch_1": evaluate(built, 1, tmp), "batch_3": evaluate(built, 3, tmp),
                     "whole": whole_split_loss(built, tmp), "alone": rows_alone_loss(built, tmp)}
    return out


@pytest.mark.parametrize("case", CASES)
def test_metrics_do_not_depend_on_the_eval_batch_size(one_process, case):
    (m1, loss1), (m3, loss3) = one_process[case]["batch_1"], one_process[case]["batch_3"]
    whole, alone = one_process[case]["whole"], one_process[case]["alone"]
    assert loss1 == pytest.approx(alone, rel=1e-6, abs=1e-6)
    assert loss3 == pytest.approx(alone, rel=1e-6, abs=1e-6)
    if case != "qa":  # HF's QA loss scores padded positions as answer candidates: it moves with padding
        assert whole == pytest.approx(alone, rel=1e-6, abs=1e-6)
    same_metrics(m1, m3)
    assert m1["loss"] == pytest.approx(alone, abs=1e-5)
    if "perplexity" in m1:
        assert m1["perplexity"] == pytest.approx(math.exp(alone), rel=1e-4)


def _two_process_worker(rank: int, port: int, models: dict, out_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")
    import tempfile

    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            built = build(case, models)
            metrics, loss = evaluate(built, 2, tmp)
            results[case] = [metrics, loss]
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_report_what_one_does(one_process, models, tmp_path):
    """2 gloo processes, 2 rows each a step: 7 rows leave the sampler's repeated row in the last
    step, which the gather must drop before the metrics and the loss."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_file = tmp_path / "two.json"
    mp.start_processes(_two_process_worker, args=(port, {k: str(v) for k, v in models.items()}, str(out_file)),
                       nprocs=2, start_method="spawn")
    two = json.loads(out_file.read_text())
    for case in CASES:
        metrics, loss = two[case]
        reference, _ = one_process[case]["batch_1"]
        same_metrics(json.loads(json.dumps(reference)), metrics)
        assert loss == pytest.approx(one_process[case]["alone"], rel=1e-6, abs=1e-6), case
