"""Token classification: words -> tags. NER (spans, ``data.tag_scheme=bio|bioes``): entity-level
metrics from seqeval; any other tag set (POS tags, ``data.tag_scheme=none``): token accuracy,
macro-F1 and per-tag scores from scikit-learn.

Data: CoNLL-style files (one ``token tag`` per line, a blank line between sentences; the tag is
the last field) or JSON lines with token and tag lists (``data.tokens_column``,
``data.tags_column``). Words are split into sub-words by the model's tokenizer; the first
sub-word of each word carries the word's tag, the rest are ignored in the loss and in scoring.
BIO: IOB1 (an entity may start with I-) is converted to BIO on reading. BIOES: every sentence
must open and close its spans (B-X [I-X ...] E-X, S-X), scored in seqeval's strict IOBES mode.
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict

from llmft.core.errors import UserError, require
from llmft.data.formats import bioes_allowed, bioes_may_end, check_bioes_sequence, check_tag, iob1_to_bio
from llmft.tasks.base import Task, check_finite

log = logging.getLogger(__name__)
LABELS = "labels"
IGNORE = -100
SPAN_METRICS = ("f1", "precision", "recall", "accuracy")
# data.tag_scheme -> (primary metric: what sweeps, early stopping and reports read; metrics computed during training)
SCHEMES = {"bio": ("f1", SPAN_METRICS), "bioes": ("f1", SPAN_METRICS), "none": ("accuracy", ("accuracy", "macro_f1"))}


class NER(Task):
    name = "ner"
    auto_model = "AutoModelForTokenClassification"
    logits = "token"
    crf = True
    peft_task_type = "TOKEN_CLS"
    loss_kind = "token"  # with model.crf: the CRF's sentence likelihood, one per row
    # an instance holds its tag scheme's (SCHEMES); the class, read by checks that run before a
    # task exists, the BIO primary metric and every scheme's loop metrics (validate_config narrows them)
    primary_metric = "f1"
    loop_metric_names = (*SPAN_METRICS, "macro_f1")

    def __init__(self, data_cfg, labels: list[str] | None = None, scheme: str | None = None):
        super().__init__(data_cfg, labels)
        self.scheme = scheme or getattr(data_cfg, "tag_scheme", None) or "bio"
        self.primary_metric, self.loop_metric_names = SCHEMES[self.scheme]

    def metadata(self) -> dict:
        return {**super().metadata(), "tag_scheme": self.scheme}

    @classmethod
    def from_metadata(cls, data_cfg, meta: dict) -> "NER":
        """The scheme the model was trained with wins (a model saved before schemes existed: BIO)."""
        scheme = meta.get("tag_scheme", "bio")
        given = getattr(data_cfg, "tag_scheme", None)
        if given and given != scheme:
            log.warning("data.tag_scheme=%s, but the model was trained with %s: tags are read and scored as %s",
                        given, scheme, scheme)
        return cls(data_cfg, labels=meta.get("labels"), scheme=scheme)

    def input_columns(self) -> list[str]:
        return [self.data_cfg.tokens_column]

    def required_columns(self) -> list[str]:
        return [self.data_cfg.tokens_column, self.data_cfg.tags_column]

    def encode(self, dataset, source: str, is_train: bool):
        d = self.data_cfg
        names = getattr(getattr(dataset.features.get(d.tags_column), "feature", None), "names", None)
        if names:  # hub datasets (e.g. conll2003) store tags as class ids: use their names
            named = [[names[t] for t in row] for row in dataset[d.tags_column]]
            dataset = dataset.remove_columns(d.tags_column).add_column(d.tags_column, named)
        tags = dataset[d.tags_column]
        for row, (tokens, row_tags) in enumerate(zip(dataset[d.tokens_column], tags)):
            where = f"{source}: sentence {row + 1}"
            for column, value in ((d.tokens_column, tokens), (d.tags_column, row_tags)):
                check_words(value, column, where)
            if len(tokens) != len(row_tags):
                raise UserError(f"{where}: {len(tokens)} tokens but {len(row_tags)} tags")
            for tag in row_tags:
                check_tag(tag, where, self.scheme)
            if self.scheme == "bioes":  # a span left open or never opened: refused, not guessed at
                check_bioes_sequence(row_tags, where)
        # BIO: IOB1 (an entity may start with I-) would be a path the CRF forbids and a label set
        # without B- tags: converted to BIO, the same entities, and counted in results.json
        converted = [iob1_to_bio(row_tags) if self.scheme == "bio" else (row_tags, 0) for row_tags in tags]
        changed = sum(n for _, n in converted)
        if changed:
            tags = [row_tags for row_tags, _ in converted]
            dataset = dataset.remove_columns(d.tags_column).add_column(d.tags_column, tags)
            self.iob1_converted = getattr(self, "iob1_converted", 0) + changed
            log.warning("%s: %d I- tags start an entity (IOB1, or stray I- tags); read as B- (BIO): the same "
                        "entities seqeval reads", source, changed)
        if self.labels is None:
            if not is_train:
                raise UserError("data.labels: cannot infer the tag set without a train split")
            found = {t for row_tags in tags for t in row_tags}
            if self.scheme == "none":
                if len(found) < 2:
                    raise UserError(f"{source}: every tag is {next(iter(found), '')!r}: nothing to learn "
                                    f"(give rows with two tags or more)")
                self.labels = sorted(found)
            else:
                if not found - {"O"}:
                    raise UserError(f"{source}: every tag is O: no entity to learn from")
                self.labels = ["O", *sorted(found - {"O"})]
        index = {tag: i for i, tag in enumerate(self.labels)}
        for row, row_tags in enumerate(tags):
            unknown = next((t for t in row_tags if t not in index), None)
            if unknown is not None:
                note = "; I- tags that start an entity are read as B- (IOB1 -> BIO)" if changed else ""
                raise UserError(f"{source}: sentence {row + 1}: tag {unknown!r} is not one of {self.labels} "
                                f"(set data.labels to the full tag set{note})")
        return dataset.add_column("tag_ids", [[index[t] for t in row_tags] for row_tags in tags])

    def check_inputs(self, dataset, source: str) -> None:
        for row, tokens in enumerate(dataset[self.data_cfg.tokens_column]):
            check_words(tokens, self.data_cfg.tokens_column, f"{source}: row {row + 1}")

    def data_report(self) -> dict:
        converted = getattr(self, "iob1_converted", 0)
        return {"iob1_tags_converted": converted} if converted else {}

    def model_kwargs(self) -> dict:
        return {"num_labels": len(self.labels), "id2label": dict(enumerate(self.labels)),
                "label2id": {t: i for i, t in enumerate(self.labels)}}

    def tokenize(self, dataset, tokenizer):
        if not tokenizer.is_fast:
            raise UserError("data.task=ner needs a fast tokenizer (word alignment); this model has none")
        d = self.data_cfg

        def encode(batch):
            enc = tokenizer(batch[d.tokens_column], is_split_into_words=True, truncation=True,
                            max_length=d.max_length)
            # kept for reading predictions off; the Trainer drops it before the forward pass
            enc["word_start"] = [[w is not None and w != p for w, p in zip(enc.word_ids(i), [None, *enc.word_ids(i)])]
                                 for i in range(len(batch[d.tokens_column]))]
            if "tag_ids" in batch:
                enc[LABELS] = [first_subword_labels(enc.word_ids(i), tags) for i, tags in enumerate(batch["tag_ids"])]
            return enc

        return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenize")

    def collator(self, tokenizer):
        from transformers import DataCollatorForTokenClassification

        pad = DataCollatorForTokenClassification(tokenizer)

        def collate(features):
            """Pads labels (-100) and, when the model takes them (a CRF), the word starts (False)."""
            import torch

            starts = [f.pop("word_start") for f in features] if "word_start" in features[0] else None
            batch = pad(features)
            if starts is not None:
                width = batch["input_ids"].shape[1]
                left = tokenizer.padding_side == "left"
                batch["word_start"] = torch.tensor([[False] * (width - len(s)) + s if left else s + [False] * (width - len(s))
                                                    for s in starts])
            return batch

        return collate

    def evaluate(self, trainer, tokenized, raw, generate_cfg=None) -> tuple[dict, list[dict]]:
        output = trainer.predict(tokenized, metric_key_prefix="eval")
        check_finite(output.predictions)
        ids = output.predictions.argmax(-1)
        gold, predicted = self.tag_sequences(ids, output.label_ids)
        metrics = self.scores(gold, predicted)
        metrics["loss"] = round(output.metrics["eval_loss"], 5)
        return metrics, self.records(raw, tokenized, ids)

    def scores(self, gold: list[list[str]], predicted: list[list[str]]) -> dict:
        """The scheme's metrics: entities (BIO: seqeval's default mode, as conlleval; BIOES: strict)
        or, without spans, tokens and tags."""
        return tag_metrics(gold, predicted) if self.scheme == "none" else entity_metrics(gold, predicted, self.scheme)

    def baseline(self, train, eval_split) -> dict:
        """Spans: tagging every token O, its token accuracy (a model that found no entity scores
        this). No spans: the train split's most frequent tag for every token (majority_accuracy,
        what the report sets beside accuracy), and each word's most frequent train tag
        (word_majority_accuracy: unseen words get the majority tag), the usual POS baseline."""
        gold = [self.labels[t] for row in eval_split["tag_ids"] for t in row]
        if self.scheme != "none":
            return {"majority_tag": "O", "majority_token_accuracy": sum(t == "O" for t in gold) / max(len(gold), 1),
                    "majority_f1": 0.0}
        column = self.data_cfg.tokens_column
        majority = self.labels[Counter(t for row in train["tag_ids"] for t in row).most_common(1)[0][0]]
        by_word = defaultdict(Counter)
        for tokens, row in zip(train[column], train["tag_ids"]):
            for word, tag in zip(tokens, row):
                by_word[word][tag] += 1
        words = [w for tokens in eval_split[column] for w in tokens]
        per_word = [self.labels[by_word[w].most_common(1)[0][0]] if w in by_word else majority for w in words]
        return {"majority_label": majority, "majority_accuracy": sum(t == majority for t in gold) / max(len(gold), 1),
                "majority_macro_f1": tag_metrics([gold], [[majority] * len(gold)])["macro_f1"],
                "word_majority_accuracy": sum(p == g for p, g in zip(per_word, gold)) / max(len(gold), 1)}

    def warnings(self, metrics: dict, baseline: dict, records: list[dict]) -> list[str]:
        predicted = {t for r in records for t in r["prediction"]}
        if self.scheme == "none":
            out = []
            gold = {t for r in records for t in r.get("label", ())}
            if len(predicted - {None}) == 1 and len(gold) > 1:
                out.append(f"tags every word {next(iter(predicted - {None}))!r} in {len(records)} eval sentences")
            accuracy, majority = metrics.get("accuracy"), baseline.get("majority_accuracy")
            if accuracy is not None and majority is not None and accuracy <= majority:
                out.append(f"token accuracy {accuracy:.4f} is no better than the majority-tag baseline {majority:.4f} "
                           f"(always {baseline.get('majority_label')!r})")
            return out
        if predicted <= {"O"}:
            return [f"tags every token O: no entity found in {len(records)} eval sentences (entity F1 0)"]
        return ["entity F1 is 0: no predicted entity matches a gold one"] if metrics.get("f1") == 0 else []

    @classmethod
    def validate_config(cls, cfg) -> None:
        scheme = cfg.data.tag_scheme
        labels = [str(t) for t in cfg.data.labels or []]
        for tag in labels:
            check_tag(tag, "data.labels", scheme)
        es = cfg.train.early_stopping if "train" in cfg else None
        if es is not None and es.patience > 0 and es.metric not in (None, "loss"):
            names = SCHEMES[scheme][1]
            require(es.metric in names, "train.early_stopping.metric",
                    f"data.tag_scheme={scheme} computes {', '.join(names)} (or loss), not {es.metric}; pick one of them")
        if "model" in cfg and cfg.model.crf:
            require(cfg.model.crf_lr_scale > 0, "model.crf_lr_scale", "must be > 0")
            for tag in labels if scheme == "bio" else ():  # the CRF starts an X entity only at B-X
                require(not tag.startswith("I-") or "B-" + tag[2:] in labels, "data.labels",
                        f"{tag} without B-{tag[2:]}: the CRF (model.crf) can start a {tag[2:]} entity only with "
                        f"B-{tag[2:]}; add it")
            for tag in labels if scheme == "bioes" else ():  # a B-X ... E-X span needs both ends
                for end in ("B-", "E-"):
                    require(tag[:2] not in ("B-", "I-", "E-") or end + tag[2:] in labels, "data.labels",
                            f"{tag} without {end}{tag[2:]}: a BIOES span of {tag[2:]} is B-{tag[2:]} ... "
                            f"E-{tag[2:]} (the CRF, model.crf, allows no other); add it")
            require("hardware" not in cfg or cfg.hardware.zero_stage < 3, "model.crf",
                    "does not run under ZeRO-3 yet; use zero_stage<=2")

    def crf_tagger(self, model, lr_scale: float = 1.0):
        """A CRF over ``model`` whose transitions follow the tag scheme (none: unconstrained)."""
        from llmft.models.crf import CrfTagger, allowed

        rules = {"bio": (allowed, None), "bioes": (bioes_allowed, bioes_may_end), "none": (None, None)}[self.scheme]
        return CrfTagger(model, self.labels, lr_scale, *rules)

    def wrap(self, model, param_groups, model_cfg) -> tuple:
        if not model_cfg.crf:
            return model, param_groups
        tagger = self.crf_tagger(model, model_cfg.crf_lr_scale)
        return tagger, tagger.param_groups(param_groups)

    def wrap_saved(self, model, model_dir, meta: dict):
        if not meta.get("crf"):
            return model
        return self.crf_tagger(model).load_crf(model_dir)

    def loop_metrics(self, eval_pred) -> dict:
        gold, predicted = self.tag_sequences(eval_pred.predictions.argmax(-1), eval_pred.label_ids)
        metrics = self.scores(gold, predicted)
        return {k: metrics[k] for k in self.loop_metric_names}

    def tag_sequences(self, ids, label_ids) -> tuple[list, list]:
        """Gold and predicted tags of every sentence, read at the positions that carry a label."""
        gold, predicted = [], []
        for pred_row, gold_row in zip(ids, label_ids):
            keep = [(p, g) for p, g in zip(pred_row, gold_row) if g != IGNORE]
            gold.append([self.labels[g] for _, g in keep])
            predicted.append([self.labels[p] for p, _ in keep])
        return gold, predicted

    def predict(self, trainer, inputs, generate_cfg=None) -> list[dict]:
        tokenized = self.tokenize(inputs, trainer.processing_class)
        return self.records(inputs, tokenized, trainer.predict(tokenized).predictions.argmax(-1))

    def records(self, raw, tokenized, ids) -> list[dict]:
        """Per sentence: its tokens, the predicted tag of each (read at its first sub-word; words
        cut off by max_length get O, or null without a scheme: no tag means "nothing"), and the
        gold tags when known."""
        d = self.data_cfg
        fill = None if self.scheme == "none" else "O"
        out = []
        for i, row in enumerate(raw):
            tokens = row[d.tokens_column]
            tags = [self.labels[t] for t, start in zip(ids[i], tokenized[i]["word_start"]) if start]
            record = {"tokens": tokens, "prediction": (tags + [fill] * len(tokens))[: len(tokens)]}
            if "tag_ids" in row:
                record["label"] = [self.labels[t] for t in row["tag_ids"]]
            out.append(record)
        return out


def check_words(value, column: str, where: str) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(x, str) and x.strip() for x in value):
        raise UserError(f"{where}: '{column}' must be a non-empty list of non-empty strings (got {str(value)[:60]!r})")


def first_subword_labels(word_ids: list, tags: list[int]) -> list[int]:
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE if word is None or word == previous else tags[word])
        previous = word
    return labels


def entity_metrics(gold: list[list[str]], predicted: list[list[str]], scheme: str = "bio") -> dict:
    """seqeval's entity-level precision / recall / F1 (+ token accuracy), per type too. BIO: its
    default mode (conlleval's reading); BIOES: strict mode, where a span counts only as a whole
    valid B-X [I-X ...] E-X or S-X (B-X I-X O is no entity)."""
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

    if scheme == "bioes":
        from seqeval.scheme import IOBES

        mode = {"mode": "strict", "scheme": IOBES}
    else:
        mode = {}
    report = classification_report(gold, predicted, output_dict=True, zero_division=0, **mode)
    per_type = {k: {"precision": round(v["precision"], 4), "recall": round(v["recall"], 4),
                    "f1": round(v["f1-score"], 4), "support": int(v["support"])}
                for k, v in report.items() if not k.endswith("avg")}
    return {
        "precision": float(precision_score(gold, predicted, zero_division=0, **mode)),
        "recall": float(recall_score(gold, predicted, zero_division=0, **mode)),
        "f1": float(f1_score(gold, predicted, zero_division=0, **mode)),
        "accuracy": float(accuracy_score(gold, predicted)),
        "per_type": per_type,
    }


def tag_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """Per-word scores without spans (data.tag_scheme=none; scikit-learn): token accuracy, and
    precision / recall / F1 per tag and their macro means, over the tags in gold or predicted (a
    tag absent from both has no F1 to average)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    y_true = [t for row in gold for t in row]
    y_pred = [t for row in predicted for t in row]
    if not y_true:
        return {"accuracy": 0.0, "macro_f1": 0.0, "macro_precision": 0.0, "macro_recall": 0.0, "per_tag": {}}
    tags = sorted(set(y_true) | set(y_pred))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=tags, zero_division=0)
    per_tag = {tag: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
                     "support": int(n)} for tag, p, r, f, n in zip(tags, precision, recall, f1, support)}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1.mean()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "per_tag": per_tag,
    }

