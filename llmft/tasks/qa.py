"""Extractive question answering (SQuAD style): the answer is a span of the context.

Data: SQuAD JSON ({"data": [{"paragraphs": [{"context", "qas": [...]}]}]}) or JSON lines with
id / question / context / answers ({"text": [...], "answer_start": [...]}). Long contexts are
split into overlapping windows (``data.doc_stride``); training marks the answer's start/end
tokens (or the CLS token when a window does not hold it); evaluation picks the best span over
all windows of an example. Metrics: exact match and token F1 with SQuAD's answer normalisation
(written here: the `evaluate` package fetches its SQuAD script from the hub and fails offline).
"""
from __future__ import annotations

import collections
import re
import string

from llmft.core.errors import UserError, require
from llmft.tasks.base import Task, check_texts


class QA(Task):
    name = "qa"
    auto_model = "AutoModelForQuestionAnswering"
    peft_task_type = "QUESTION_ANS"
    loss_kind = "span"  # one loss per window
    primary_metric = "f1"
    file_layouts = {".json": "squad"}  # a .json file is SQuAD's nested JSON (.jsonl: one row a line)

    @classmethod
    def validate_config(cls, cfg) -> None:
        super().validate_config(cfg)
        d = cfg.data
        require(0 < d.doc_stride < d.max_length, "data.doc_stride",
                f"must be > 0 and below data.max_length={d.max_length} (got {d.doc_stride}): windows overlap by it")
        require(d.max_answer_length >= 1, "data.max_answer_length", "must be >= 1")

    def input_columns(self) -> list[str]:
        return ["question", "context"]

    def required_columns(self) -> list[str]:
        return ["question", "context", "answers"]

    def encode(self, dataset, source: str, is_train: bool):
        self.check_inputs(dataset, source)
        for i, row in enumerate(dataset):
            where = f"{source}: record {row.get('id', i + 1)}"
            answers = row["answers"]
            if not (isinstance(answers, dict) and isinstance(answers.get("text"), list)
                    and isinstance(answers.get("answer_start"), list)):
                raise UserError(f"{where}: answers must be {{\"text\": [...], \"answer_start\": [...]}} "
                                f"(got {str(answers)[:60]!r})")
            texts, starts = answers["text"], answers["answer_start"]
            if len(texts) != len(starts):
                raise UserError(f"{where}: {len(texts)} answer texts but {len(starts)} answer_start offsets")
            if is_train and not texts:
                raise UserError(f"{where}: no answer to train on")
            for text, start in zip(texts, starts):
                if not isinstance(start, int) or isinstance(start, bool):
                    raise UserError(f"{where}: answer_start {start!r} is not a whole number (a character offset "
                                    f"into the context: 12, not \"12\")")
                if not isinstance(text, str) or not text.strip():
                    raise UserError(f"{where}: an answer text is empty (got {text!r})")
                if start < 0 or row["context"][start:start + len(text)] != text:
                    raise UserError(f"{where}: answer {text!r} is not at offset {start} of its context")
        if "id" not in dataset.column_names:
            dataset = dataset.add_column("id", [str(i) for i in range(len(dataset))])
        return dataset

    def check_inputs(self, dataset, source: str) -> None:
        """Question and context are text; ids, when given, are unique (predictions are keyed by id)."""
        seen = set()
        for i, row_id in enumerate(dataset["id"] if "id" in dataset.column_names else []):
            if row_id is None or row_id in seen:
                raise UserError(f"{source}: row {i + 1}: " + ("the id is empty" if row_id is None else
                                f"id {row_id!r} is given more than once; each question needs its own id"))
            seen.add(row_id)
        check_texts(dataset, source, self.input_columns())

    def tokenize(self, dataset, tokenizer):
        d = self.data_cfg
        pad_right = tokenizer.padding_side == "right"

        def encode(batch):
            enc = tokenizer(
                batch["question"] if pad_right else batch["context"],
                batch["context"] if pad_right else batch["question"],
                truncation="only_second" if pad_right else "only_first",
                max_length=d.max_length, stride=d.doc_stride, return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
            sample = enc.pop("overflow_to_sample_mapping")
            context_index = 1 if pad_right else 0
            enc["example_id"], enc["start_positions"], enc["end_positions"], offsets = [], [], [], []
            for i, mapping in enumerate(enc["offset_mapping"]):
                seq = enc.sequence_ids(i)
                example = sample[i]
                enc["example_id"].append(batch["id"][example])
                offsets.append([o if seq[k] == context_index else None for k, o in enumerate(mapping)])
                answers = batch["answers"][example] if "answers" in batch else None
                start, end = span_positions(mapping, seq, context_index, answers)
                enc["start_positions"].append(start)
                enc["end_positions"].append(end)
            enc["offset_mapping"] = offsets
            return enc

        return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenize")

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        padding = DataCollatorWithPadding(tokenizer)

        def collate(features):  # offsets and ids stay with the dataset, not the model input
            return padding([{k: v for k, v in f.items() if k not in ("offset_mapping", "example_id")} for f in features])

        return collate

    def evaluate(self, trainer, tokenized, raw, generate_cfg=None) -> tuple[dict, list[dict]]:
        output = trainer.predict(tokenized, metric_key_prefix="eval")
        answers = self.best_spans(raw, tokenized, output.predictions)
        records = [{"id": row["id"], "question": row["question"], "prediction": answers[row["id"]],
                    "label": row["answers"]["text"]} for row in raw]
        metrics = squad_metrics([r["prediction"] for r in records], [r["label"] for r in records])
        if "eval_loss" in output.metrics:
            metrics["loss"] = round(output.metrics["eval_loss"], 5)
        return metrics, records

    def predict(self, trainer, inputs, generate_cfg=None) -> list[dict]:
        if "id" not in inputs.column_names:
            inputs = inputs.add_column("id", [str(i) for i in range(len(inputs))])
        tokenized = self.tokenize(inputs, trainer.processing_class)
        answers = self.best_spans(inputs, tokenized, trainer.predict(tokenized).predictions)
        return [{"id": row["id"], "question": row["question"], "prediction": answers[row["id"]]} for row in inputs]

    def best_spans(self, raw, tokenized, predictions) -> dict:
        """Per example, the highest-scoring valid span (start <= end, both in the context,
        at most data.max_answer_length tokens) over all its windows."""
        start_logits, end_logits = predictions
        windows = collections.defaultdict(list)
        for i, example_id in enumerate(tokenized["example_id"]):
            windows[example_id].append(i)
        offsets_all = tokenized["offset_mapping"]
        top, max_len = 20, self.data_cfg.max_answer_length
        answers = {}
        for row in raw:
            best, best_score = "", float("-inf")
            for i in windows[row["id"]]:
                offsets = offsets_all[i]
                starts = start_logits[i][: len(offsets)].argsort()[-top:][::-1]
                ends = end_logits[i][: len(offsets)].argsort()[-top:][::-1]
                for s in starts:
                    for e in ends:
                        if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_len:
                            continue
                        score = start_logits[i][s] + end_logits[i][e]
                        if score > best_score:
                            best_score, best = score, row["context"][offsets[s][0]:offsets[e][1]]
            answers[row["id"]] = best
        return answers


def span_positions(offsets, sequence_ids, context_index, answers) -> tuple[int, int]:
    """Token start/end of the first answer in this window; (0, 0) (the CLS token) if it is not inside."""
    if not answers or not answers["text"]:
        return 0, 0
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    context = [k for k, s in enumerate(sequence_ids) if s == context_index]
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0
    start = next(k for k in range(first, last + 1) if offsets[k][1] > start_char)
    end = next(k for k in range(last, first - 1, -1) if offsets[k][0] < end_char)
    return start, end



def normalize_answer(text: str) -> str:
    """SQuAD v1.1: lower case, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def squad_metrics(predictions: list[str], references: list[list[str]]) -> dict:
    """Exact match and token F1, each the max over an example's reference answers, in percent."""
    def f1(prediction: str, truth: str) -> float:
        p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
        common = sum((collections.Counter(p) & collections.Counter(t)).values())
        if not p or not t:
            return float(p == t)
        if common == 0:
            return 0.0
        precision, recall = common / len(p), common / len(t)
        return 2 * precision * recall / (precision + recall)

    n = max(len(predictions), 1)
    exact = sum(max(normalize_answer(p) == normalize_answer(t) for t in refs) for p, refs in zip(predictions, references) if refs)
    f1_total = sum(max(f1(p, t) for t in refs) for p, refs in zip(predictions, references) if refs)
    return {"exact_match": round(100 * exact / n, 4), "f1": round(100 * f1_total / n, 4)}
