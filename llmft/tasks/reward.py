"""Reward models: prompt + completion -> one score, trained on preference pairs (prompt, chosen,
rejected; data/pairs.py reads and checks them) with the pairwise loss of TRL's RewardTrainer
(models/reward.py). The model is the sequence classifier of the backbone with one output.

Each side is the prompt and its completion as one sequence (data/pairs.py's ids: chats through
the chat template, text as the tokenizer encodes prompt + completion, with its EOS); a pair's two
sides read the same prompt, cut the same way when too long. Metrics on the held-out pairs:
``accuracy`` (the chosen side scored above the rejected one; an exact tie counts half), the mean
margin and the split's loss. Baselines: the longer completion (in tokens) wins, and the completion
chosen most often in the train split wins (``majority``; null for free text, with the reason).
``llmft predict`` scores rows of prompt + completion, one score each.
"""
from __future__ import annotations

from collections import Counter

from llmft.core.errors import UserError, require
from llmft.tasks.base import Task, check_finite

# Majority baseline: null when fewer eval pairs than this have both completions among the train
# split's (free text: the counts say nothing about unseen completions).
MAJORITY_MIN_COVERAGE = 0.5


class Reward(Task):
    name = "reward"
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"  # PEFT keeps the score head trainable and saves it with the adapter
    primary_metric = "accuracy"
    # one loss per pair (the model hands them over as last_row_loss): the split's loss is their
    # mean, whatever the eval batch size
    loss_kind = "row"
    loop_metric_names = ("accuracy",)
    # no class scores: the cross-entropy techniques (class weights, focal loss, balanced sampling,
    # distillation, self-training, PET, augmentation by class) refuse it
    logits = None
    stratify_column = None
    input_column_keys = ("prompt_column", "completion_column")  # what llmft predict scores
    scores_pairs = True  # train.center_rewards_coefficient applies (techniques/reward_center.py)

    @classmethod
    def validate_config(cls, cfg) -> None:
        super().validate_config(cfg)
        require(cfg.data.labels is None, "data.labels",
                "a reward model scores completions, it has no label set; drop data.labels")
        # zero_shot, few_shot and pet refuse any task but classification themselves
        if "strategy" in cfg:
            require(cfg.strategy.get("head", "classifier") == "classifier", "strategy.head",
                    "verbalizer reads label words off the LM head; a reward model scores with its own "
                    "one-output head: use strategy.head=classifier")

    def __init__(self, data_cfg, labels: list[str] | None = None):
        super().__init__(data_cfg, None)
        self.tokenizer = None  # the one tokenize used: the length baseline counts its tokens
        self.cut = {"pairs": 0, "prompt_cut": 0, "completion_cut": 0}

    def input_columns(self) -> list[str]:
        return [self.data_cfg.prompt_column, self.data_cfg.completion_column]

    def required_columns(self) -> list[str]:
        return []  # data/pairs.py names what is missing, and an unpaired file as such

    # ------------------------------------------------------------------ data
    def encode(self, dataset, source: str, is_train: bool):
        from llmft.data.pairs import encode_rows

        d = self.data_cfg
        if d.chosen_column not in dataset.column_names and d.completion_column in dataset.column_names:
            raise UserError(f"{source}: unpaired rows ('{d.completion_column}'); a reward model trains and is "
                            f"evaluated on pairs: give '{d.chosen_column}' and '{d.rejected_column}' columns")
        return encode_rows(dataset, source, d, allow_unpaired=False)

    def check_inputs(self, dataset, source: str) -> None:
        """Rows of prompt + completion (text, or message lists), each non-empty."""
        from llmft.data.pairs import cell_value

        d = self.data_cfg
        for row, (prompt, completion) in enumerate(zip(dataset[d.prompt_column], dataset[d.completion_column]), 1):
            cell_value(prompt, d.prompt_column, source, row)
            cell_value(completion, d.completion_column, source, row)

    def tokenize(self, dataset, tokenizer):
        """Paired rows -> input_ids / attention_mask (prompt + chosen), rejected_input_ids /
        rejected_attention_mask (prompt + rejected), labels (each pair's margin: 0). Rows of prompt +
        completion (predict) -> input_ids / attention_mask."""
        from llmft.data.pairs import as_chats, pair_token_ids

        self.tokenizer = tokenizer
        d = self.data_cfg
        paired = "chosen" in dataset.column_names
        rows = {"input_ids": [], "attention_mask": [],
                **({"rejected_input_ids": [], "rejected_attention_mask": [], "labels": []} if paired else {})}
        prompts = dataset["prompt" if paired else d.prompt_column]
        sides = (zip(dataset["chosen"], dataset["rejected"]) if paired
                 else ([c] for c in dataset[d.completion_column]))
        for row, (prompt, completions) in enumerate(zip(prompts, sides), 1):
            prompt, *completions = as_chats(prompt, *completions)
            prompt_ids, parts, cut = pair_token_ids(prompt, completions, tokenizer, d.max_length,
                                                    source="data", row=row)
            rows["input_ids"].append(prompt_ids + parts[0])
            rows["attention_mask"].append([1] * len(rows["input_ids"][-1]))
            if paired:
                rows["rejected_input_ids"].append(prompt_ids + parts[1])
                rows["rejected_attention_mask"].append([1] * len(rows["rejected_input_ids"][-1]))
                rows["labels"].append(0.0)
                if cut["prompt_cut"] or any(cut["completion_cut"]):
                    self.cut["pairs"] += 1
                    self.cut["prompt_cut"] += cut["prompt_cut"]
                    self.cut["completion_cut"] += sum(cut["completion_cut"])
        from datasets import Dataset

        return Dataset.from_dict(rows)

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        pad = DataCollatorWithPadding(tokenizer)

        def collate(features):
            """Chosen rows, then rejected rows, padded together; labels: each pair's margin."""
            import torch

            rows = [{"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]} for f in features]
            if "rejected_input_ids" not in features[0]:
                return pad(rows)
            batch = pad(rows + [{"input_ids": f["rejected_input_ids"], "attention_mask": f["rejected_attention_mask"]}
                                for f in features])
            batch["labels"] = torch.tensor([float(f["labels"]) for f in features], dtype=torch.float32)
            return batch

        return collate

    def data_report(self) -> dict:
        """Pairs cut to data.max_length, and the tokens cut, over every split tokenized (as sft counts)."""
        if not self.cut["pairs"]:
            return {}
        return {"pairs_cut": self.cut["pairs"], "prompt_tokens_cut": self.cut["prompt_cut"],
                "completion_tokens_cut": self.cut["completion_cut"]}

    # ----------------------------------------------------------------- model
    def model_kwargs(self) -> dict:
        return {"num_labels": 1}

    def wrap(self, model, param_groups: list[dict] | None, model_cfg) -> tuple:
        from llmft.models.reward import RewardModel

        wrapped = RewardModel(model)
        return wrapped, wrapped.param_groups(param_groups)

    def wrap_saved(self, model, model_dir, meta: dict):
        from llmft.models.reward import RewardModel

        return RewardModel(model)

    # --------------------------------------------------------------- results
    def evaluate(self, trainer, tokenized, raw, generate_cfg=None) -> tuple[dict, list[dict]]:
        output = trainer.predict(tokenized, metric_key_prefix="eval")
        scores = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        check_finite(scores)
        metrics = pair_metrics(scores)
        if "eval_loss" in output.metrics:
            metrics["loss"] = round(output.metrics["eval_loss"], 5)  # the mean pair loss of the split
        return metrics, self.prediction_records(raw, scores)

    def predict(self, trainer, inputs, generate_cfg=None) -> list[dict]:
        output = trainer.predict(self.tokenize(inputs, trainer.processing_class))
        scores = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        check_finite(scores)
        d = self.data_cfg
        return [{"prompt": row[d.prompt_column], "completion": row[d.completion_column],
                 "score": float(scores[i].reshape(-1)[0])} for i, row in enumerate(inputs)]

    def metrics(self, predictions, label_ids) -> dict:
        return pair_metrics(predictions)

    def loop_metrics(self, eval_pred) -> dict:
        return {k: v for k, v in pair_metrics(eval_pred.predictions).items() if k in self.loop_metric_names}

    def baseline(self, train, eval_split) -> dict:
        """The length baseline (the longer completion in tokens wins, a tie counts half) and the
        majority baseline (the completion chosen more often in the train split wins; null, with
        the reason, when the completions are free text)."""
        if self.tokenizer is None:
            raise RuntimeError("reward: tokenize a split first (the length baseline counts that tokenizer's tokens)")
        lengths = completion_lengths(eval_split, self.tokenizer)
        return {**length_baseline(lengths), **majority_baseline(train, eval_split)}

    def warnings(self, metrics: dict, baseline: dict, records: list[dict]) -> list[str]:
        out = []
        if len(records) > 1 and len({(r["reward_chosen"], r["reward_rejected"]) for r in records}) == 1:
            out.append(f"gives the same scores to all {len(records)} eval pairs")
        accuracy = metrics.get("accuracy")
        for name in ("majority", "length"):
            value = baseline.get(f"{name}_accuracy")
            if accuracy is not None and value is not None and accuracy <= value:
                out.append(f"accuracy {accuracy:.4f} is no better than the {name} baseline {value:.4f}")
        return out

    def prediction_records(self, dataset, predictions) -> list[dict]:
        import numpy as np

        scores = np.asarray(predictions, dtype=np.float64)
        return [{"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
                 "reward_chosen": float(scores[i, 0]), "reward_rejected": float(scores[i, 1]),
                 "correct": bool(scores[i, 0] > scores[i, 1])} for i, row in enumerate(dataset)]


def pair_metrics(scores) -> dict:
    """scores [N, 2] (chosen, rejected) -> accuracy (ties count half), mean margin, mean rewards."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64).reshape(-1, 2)
    margin = scores[:, 0] - scores[:, 1]
    return {"accuracy": float(np.mean((margin > 0) + 0.5 * (margin == 0))) if len(margin) else None,
            "margin": float(margin.mean()) if len(margin) else None,
            "reward_chosen": float(scores[:, 0].mean()) if len(margin) else None,
            "reward_rejected": float(scores[:, 1].mean()) if len(margin) else None}


def completion_lengths(pairs, tokenizer) -> list[tuple[int, int]]:
    """Each pair's (chosen, rejected) completion length in tokens, uncut (its EOS / end-of-turn included)."""
    from llmft.data.pairs import as_chats, pair_token_ids

    out = []
    for row, (prompt, chosen, rejected) in enumerate(zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]), 1):
        prompt, chosen, rejected = as_chats(prompt, chosen, rejected)
        _, parts, _ = pair_token_ids(prompt, [chosen, rejected], tokenizer, 10**9, source="data", row=row)
        out.append((len(parts[0]), len(parts[1])))
    return out


def length_baseline(lengths: list[tuple[int, int]]) -> dict:
    """The longer completion wins; equal lengths count half."""
    if not lengths:
        return {"length_accuracy": None}
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in lengths)
    return {"length_accuracy": wins / len(lengths),
            "length_ties": sum(c == r for c, r in lengths)}


def _key(completion) -> str:
    """A completion as a hashable text: a chat's turns as JSON."""
    import json

    return completion if isinstance(completion, str) else json.dumps(completion, sort_keys=True)


def majority_baseline(train, eval_split) -> dict:
    """For each eval pair, the candidate chosen more often in the train split wins (a tie counts
    half). Null when under MAJORITY_MIN_COVERAGE of the eval pairs have both candidates among the
    train split's completions (free text: each is new, the counts say nothing)."""
    if train is None or not len(eval_split):
        return {"majority_accuracy": None, "majority_note": "no train split"}
    chosen = Counter(_key(c) for c in train["chosen"])
    seen = set(chosen) | {_key(r) for r in train["rejected"]}
    pairs = [(_key(c), _key(r)) for c, r in zip(eval_split["chosen"], eval_split["rejected"])]
    coverage = sum(c in seen and r in seen for c, r in pairs) / len(pairs)
    if coverage < MAJORITY_MIN_COVERAGE:
        return {"majority_accuracy": None, "majority_coverage": coverage,
                "majority_note": f"free-text completions: only {coverage:.0%} of the eval pairs have both "
                                 f"completions among the train split's, so how often a completion was chosen "
                                 f"in train says nothing about the rest"}
    wins = sum(1.0 if chosen[c] > chosen[r] else 0.5 if chosen[c] == chosen[r] else 0.0 for c, r in pairs)
    return {"majority_accuracy": wins / len(pairs), "majority_coverage": coverage,
            "majority_label": "the one more often chosen in train"}  # what the results table shows
