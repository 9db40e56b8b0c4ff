"""data.task=reward: the pairwise loss is TRL RewardTrainer's (its own compute_loss on the same
scores, margin and centring term included), pairwise accuracy / margin and the length and
majority baselines equal hand computations, the eval loss is the mean pair loss whatever the eval
batch size, and bad data and options are refused in one line. In process; no training here
(tests/e2e/test_reward.py trains, evaluates and predicts)."""
from __future__ import annotations

import json
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from conftest import preflight, refused

from llmft.core.errors import UserError

CHOSEN = torch.tensor([2.0, -1.0, 0.5, 3.0, 0.0])
REJECTED = torch.tensor([1.0, 0.5, 0.5, -2.0, 4.0])


class FixedScores(torch.nn.Module):
    """An 'encoder' whose score for a row is a number read off its input (input_ids[:, 0] / 10)."""

    config = None

    def forward(self, input_ids=None, attention_mask=None, **_):
        return SimpleNamespace(logits=(input_ids[:, :1].float() / 10))


def reward_model(center=None):
    from llmft.models.reward import RewardModel

    return RewardModel(FixedScores(), center)


def batch_of(chosen, rejected, margin=None) -> dict:
    ids = (torch.cat([chosen, rejected]) * 10).round().long()[:, None]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.zeros(len(chosen)) if margin is None else margin}


def trl_loss(chosen, rejected, margin=None, center=None) -> float:
    """TRL 1.16's RewardTrainer.compute_loss itself, on a model that returns these scores."""
    from trl.trainer.reward_trainer import RewardTrainer

    scores = torch.cat([chosen, rejected])[:, None]
    model = SimpleNamespace(training=True, __call__=None)
    trainer = SimpleNamespace(
        model=model, args=SimpleNamespace(center_rewards_coefficient=center),
        accelerator=SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(len(scores), 2, dtype=torch.long),
              "attention_mask": torch.ones(len(scores), 2, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin
    return float(RewardTrainer.compute_loss(trainer, lambda **_: SimpleNamespace(logits=scores), inputs))


@pytest.mark.parametrize("margin, center", [(None, None), (torch.tensor([0.5, 0.0, 1.0, -0.5, 0.2]), None),
                                            (None, 0.01), (torch.tensor([1.0, 1.0, 0.0, 0.0, 2.0]), 0.5)],
                         ids=["plain", "margin", "center", "margin+center"])
def test_the_training_loss_is_trls_reward_loss(margin, center):
    model = reward_model(center).train()
    out = model(**batch_of(CHOSEN, REJECTED, margin))
    assert float(out.loss) == pytest.approx(trl_loss(CHOSEN, REJECTED, margin, center), rel=1e-6)
    # and by hand: -log sigmoid(d) = log(1 + exp(-d))
    d = CHOSEN - REJECTED - (margin if margin is not None else 0)
    hand = torch.log1p(torch.exp(-d)).mean() + (center or 0) * ((CHOSEN + REJECTED) ** 2).mean()
    assert float(out.loss) == pytest.approx(float(hand), rel=1e-6)
    assert torch.equal(out.logits, torch.stack([CHOSEN, REJECTED], -1))  # [B, 2]: chosen's, rejected's


def test_unpaired_rows_get_one_score_each_and_eval_leaves_the_centring_out():
    model = reward_model(center=0.5).eval()
    with torch.no_grad():
        scores = model(input_ids=torch.tensor([[7], [-3]]), attention_mask=torch.ones(2, 1)).logits
        assert scores.view(-1).tolist() == pytest.approx([0.7, -0.3])
        out = model(**batch_of(CHOSEN, REJECTED))
    # llmft eval of the saved model knows no training knob: the eval loss is the pairwise loss alone
    assert float(out.loss) == pytest.approx(trl_loss(CHOSEN, REJECTED), rel=1e-6)


def test_the_split_loss_is_the_mean_pair_loss_whatever_the_eval_batch_size():
    from llmft.runtime.split_loss import SplitLoss, row_losses

    want = float(torch.log1p(torch.exp(-(CHOSEN - REJECTED))).mean())
    model = reward_model().eval()
    means = []
    for size in (1, 2, 5):  # 5 pairs: batches of 2 leave a short last one
        loss, batch_means = SplitLoss(), []
        for start in range(0, 5, size):
            with torch.no_grad():
                out = model(**batch_of(CHOSEN[start:start + size], REJECTED[start:start + size]))
            batch_means.append(float(out.loss))
            loss.add(*row_losses("row", out, {}, model))
        assert loss.value() == pytest.approx(want, rel=1e-6), size
        means.append(sum(batch_means) / len(batch_means))
    assert means[1] != pytest.approx(want, rel=1e-3)  # the Trainer's mean of batch means moves with the size


def test_pairwise_accuracy_and_margin_by_hand():
    from llmft.tasks.reward import pair_metrics

    scores = [[2.0, 1.0], [-1.0, 0.5], [0.5, 0.5], [3.0, -2.0], [0.0, 4.0]]
    metrics = pair_metrics(scores)
    assert metrics["accuracy"] == pytest.approx((1 + 0 + 0.5 + 1 + 0) / 5)  # the tie counts half
    assert metrics["margin"] == pytest.approx((1 - 1.5 + 0 + 5 - 4) / 5)
    assert metrics["reward_chosen"] == pytest.approx(4.5 / 5) and metrics["reward_rejected"] == pytest.approx(4.0 / 5)


def pairs(rows):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [r[0] for r in rows], "chosen": [r[1] for r in rows],
                              "rejected": [r[2] for r in rows]})


def test_the_length_baseline_counts_completion_tokens(tiny_bert):
    from transformers import AutoTokenizer

    from llmft.tasks.reward import completion_lengths, length_baseline

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    # tiny BERT: one token per word, and [SEP] closes the row; the prompt's length does not count
    eval_pairs = pairs([("the day was", " great love happy", " awful"),   # 4 vs 2: chosen longer, wins
                        ("it was", " bad", " nice best"),                # 2 vs 3: loses
                        ("so today a train", " table", " paper")])        # 2 vs 2: a tie, half
    lengths = completion_lengths(eval_pairs, tokenizer)
    assert lengths == [(4, 2), (2, 3), (2, 2)]
    assert length_baseline(lengths) == {"length_accuracy": pytest.approx(1.5 / 3), "length_ties": 1}


def test_the_majority_baseline_and_its_null_for_free_text():
    from llmft.tasks.reward import majority_baseline

    train = pairs([("p", "positive", "negative"), ("p", "positive", "neutral"), ("p", "neutral", "negative"),
                   ("p", "negative", "positive")])  # chosen: positive 2, neutral 1, negative 1
    eval_ = pairs([("q", "positive", "neutral"),    # 2 > 1: right
                   ("q", "neutral", "positive"),    # 1 < 2: wrong
                   ("q", "negative", "neutral")])   # 1 = 1: half
    got = majority_baseline(train, eval_)
    assert got["majority_accuracy"] == pytest.approx(1.5 / 3) and got["majority_coverage"] == 1.0
    free = majority_baseline(train, pairs([("q", "a long new answer", "positive"), ("q", "another", "x"),
                                           ("q", "positive", "neutral")]))
    assert free["majority_accuracy"] is None and "free-text completions: only 33%" in free["majority_note"]
    # chats count by their whole content
    chat = [{"role": "assistant", "content": "positive"}]
    assert majority_baseline(pairs([("p", chat, [{"role": "assistant", "content": "x"}])]),
                             pairs([("q", chat, [{"role": "assistant", "content": "x"}])]))["majority_accuracy"] == 1.0


# ------------------------------------------------------------------ bad data, bad options
def load(tmp_path, text: str, name: str = "train.jsonl"):
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig
    from llmft.data.files import load_splits
    from llmft.tasks.reward import Reward

    path = tmp_path / name
    path.write_text(text)
    cfg = OmegaConf.structured(DataConfig(name="t", task="reward", train_file=str(path), eval_file=str(path),
                                          eval_fraction=0.0))
    return load_splits(cfg, Reward(cfg))


def rows(*items) -> str:
    return "".join(json.dumps(r) + "\n" for r in items)


GOOD = {"prompt": "a day", "chosen": " great", "rejected": " awful"}
BAD_DATA = [
    (rows(GOOD, {"prompt": "p", "completion": "c", "label": True}), "row 2: column 'chosen' is empty"),
    (rows({"prompt": "p", "completion": "c", "label": True}), "unpaired rows ('completion'); a reward model"),
    (rows({"prompt": "p", "chosen": "c"}), "no column 'rejected' for the pair"),
    (rows(GOOD, {"prompt": "p", "chosen": "same", "rejected": "same"}), "row 2: 'chosen' and 'rejected' are identical"),
    (rows(GOOD, {"prompt": "p", "chosen": " ", "rejected": "b"}), "row 2: column 'chosen' is empty"),
    (rows({"text": "t", "label": "x"}), "no preference columns"),
]


@pytest.mark.parametrize("text, expected", BAD_DATA, ids=["unpaired-mixed", "unpaired", "no-rejected", "identical",
                                                          "empty", "classification-file"])
def test_bad_data_is_refused_in_one_line_with_file_and_row(tmp_path, text, expected):
    with pytest.raises(UserError) as err:
        load(tmp_path, text)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "train.jsonl")) and expected in message, message


def test_predict_inputs_are_checked_row_by_row(tmp_path):
    from datasets import Dataset
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig
    from llmft.tasks.reward import Reward

    task = Reward(OmegaConf.structured(DataConfig(name="t", task="reward")))
    assert task.input_columns() == ["prompt", "completion"]
    task.check_inputs(Dataset.from_dict({"prompt": ["a"], "completion": [" b"]}), "in.jsonl")
    with pytest.raises(UserError, match=r"^in.jsonl: row 2: column 'completion' is empty$"):
        task.check_inputs(Dataset.from_dict({"prompt": ["a", "b"], "completion": [" b", ""]}), "in.jsonl")


def test_options_that_mean_nothing_for_a_reward_model_are_refused_in_one_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(rows(GOOD, {"prompt": "b", "chosen": " x", "rejected": " y"}))
    base = ["data=csv", "data.task=reward", f"data.train_file={path}", f"hydra.run.dir={tmp_path / 'run'}"]
    cases = [
        (["strategy=zero_shot"], "scores label words: it needs data.task=classification (got reward)"),
        (["strategy=few_shot"], "scores label words: it needs data.task=classification (got reward)"),
        (["strategy=pet"], "needs data.task=classification (got reward)"),
        (["strategy=prompt_tuning", "strategy.head=verbalizer"], "strategy.head: verbalizer reads label words"),
        (["strategy=p_tuning", "strategy.head=verbalizer"], "strategy.head: verbalizer reads label words"),
        (["data.labels=[a,b]"], "data.labels: a reward model scores completions"),
        (["train.loss=focal"], "train.loss: applies to classification and ner (got data.task=reward)"),
        (["data.sampler=balanced"], "data.sampler: balanced applies to classification"),
        (["train.center_rewards_coefficient=-0.1"], "train.center_rewards_coefficient: must be >= 0 or null (got -0.1)"),
        (["train.center_rewards_coefficient=nan"], "train.center_rewards_coefficient: must be a finite number"),
    ]
    for overrides, expected in cases:
        message = refused("train", *base, *overrides)
        assert expected in message, (overrides, message)
    assert "train.center_rewards_coefficient: centres a reward model's scores: data.task=reward (got " \
           "classification)" in refused("train", "train.center_rewards_coefficient=0.01",
                                        f"hydra.run.dir={tmp_path / 'run'}")
    for overrides in (["strategy=lora"], ["strategy=prompt_tuning"], ["train.center_rewards_coefficient=0.01"]):
        preflight("train", *base, *overrides)
