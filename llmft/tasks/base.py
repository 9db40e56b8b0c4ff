"""The Task protocol: everything the recipe needs that depends on what is being predicted."""
from __future__ import annotations

from typing import ClassVar

from llmft.core.errors import UserError, require
from llmft.core.registry import Registry
from llmft.data.files import check_texts  # noqa: F401  (tasks import it from here)

TASKS = Registry("llmft.tasks", key="data.task", not_members=("base", "data_view"))  # data_view: llmft check's


class Task:
    """Subclasses set the class attributes and implement the methods below.

    Order of use: ``encode`` each raw split (validates rows, names file and row on bad data),
    ``model_kwargs`` for ``from_pretrained``, ``tokenize``, ``collator``, then after prediction
    ``metrics``, ``baseline`` and ``prediction_records``.
    """

    name: ClassVar[str]
    auto_model: ClassVar[str]  # the transformers Auto class that builds the model with its head
    peft_task_type: ClassVar[str]  # PEFT TaskType: keeps the head trainable and saved
    primary_metric: ClassVar[str]  # what sweeps optimise and reports sort by
    # True: the model's loss is a sum over tokens divided by the Trainer's token count
    # (num_items_in_batch: causal LM heads). Others return a mean the Trainer must not rescale.
    loss_counts_tokens: ClassVar[bool] = False
    # How the eval loss of a split adds up (runtime/split_loss.py): "causal" / "token" (token
    # losses, weighted by target tokens), "row" / "span" (one loss per row); None: the Trainer's.
    loss_kind: ClassVar[str | None] = None
    # metrics computed during training (early stopping) from logits + labels, besides "loss"
    loop_metric_names: ClassVar[tuple[str, ...]] = ()
    stratify_column: ClassVar[str | None] = None  # column to stratify seeded splits on
    # What the head scores, for the techniques that work on its logits (losses, distillation,
    # sampling, retention): "sequence" (labels per example), "token" (labels per token), "causal"
    # (the vocabulary per token: the LM's own head), or None (answer spans, generated text).
    logits: ClassVar[str | None] = None
    # data config keys naming the columns the model reads, and the one holding the answer (never one of them)
    input_column_keys: ClassVar[tuple[str, ...]] = ()
    answer_column_key: ClassVar[str | None] = None
    aux_kinds: ClassVar[tuple[str, ...]] = ()  # data.aux kinds it trains together with (multi-task)
    crf: ClassVar[bool] = False  # model.crf=true puts a CRF over its token scores (wrap)
    # file suffix -> a layout of llmft/data/formats.py that files of this task use (QA: SQuAD JSON)
    file_layouts: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # a task (a helper subclass without its own name is not)
            TASKS.register(cls)

    @classmethod
    def validate_config(cls, cfg) -> None:
        """The task's own keys and options in a run config (torch-free; before anything loads)."""
        if "model" in cfg and cfg.model.crf and not cls.crf:
            crf_tasks = " or ".join(n for n in TASKS.names() if TASKS.get(n).crf)
            raise UserError(f"model.crf: is for data.task={crf_tasks} (got {cfg.data.task}); drop model.crf=true")
        scheme = cfg.data.get("tag_scheme", "bio")
        if scheme != "bio" and cls.logits != "token":  # how tags name spans: only a token tagger has tags
            taggers = " or ".join(n for n in TASKS.names() if TASKS.get(n).logits == "token")
            raise UserError(f"data.tag_scheme: is for data.task={taggers} (got {cfg.data.task}); "
                            f"drop data.tag_scheme={scheme}")
        answer = cls.answer_column_key
        for key in cls.input_column_keys if answer else ():  # the gold answer as model input: inflated metrics
            require(not cfg.data[key] or cfg.data[key] != cfg.data[answer], f"data.{key}",
                    f"is the answer column '{cfg.data[answer]}' (data.{answer}): the model would read the "
                    f"answer; name an input column")

    def __init__(self, data_cfg, labels: list[str] | None = None):
        self.data_cfg = data_cfg
        # Label names in id order (tasks with a label set): saved ones win over the data config's.
        configured = data_cfg.labels if data_cfg is not None else None
        self.labels = list(labels or configured or []) or None

    def input_columns(self) -> list[str]:
        """Columns a prediction needs (``llmft predict`` inputs)."""
        raise NotImplementedError

    def required_columns(self) -> list[str]:
        """Columns a labelled split needs."""
        raise NotImplementedError

    def encode(self, dataset, source: str, is_train: bool):
        """Validate and convert one raw split; ``source`` names its file for error messages."""
        raise NotImplementedError

    def fit(self, train) -> None:
        """Statistics of the final train split (after held-out rows and caps) that tokenizing
        needs (regression: the target scale); load_splits calls it last."""

    def check_inputs(self, dataset, source: str) -> None:
        """Refuse unlabelled inputs (``llmft predict``) the model cannot read as written."""
        check_texts(dataset, source, self.input_columns())

    def model_kwargs(self) -> dict:
        return {}

    def tokenize(self, dataset, tokenizer):
        raise NotImplementedError

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def evaluate(self, trainer, tokenized, raw, generate_cfg=None) -> tuple[dict, list[dict]]:
        """Metrics and one prediction record per example. Default: ``trainer.predict`` (batched,
        with a progress bar), then ``metrics`` and ``prediction_records`` on its logits."""
        output = trainer.predict(tokenized, metric_key_prefix="eval")
        predictions = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        check_finite(predictions)
        metrics = self.metrics(predictions, output.label_ids)
        if "eval_loss" in output.metrics:
            metrics["loss"] = round(output.metrics["eval_loss"], 5)
        return metrics, self.prediction_records(raw, predictions)

    def predict(self, trainer, inputs, generate_cfg=None) -> list[dict]:
        """One record per unlabelled input (``llmft predict``)."""
        output = trainer.predict(self.tokenize(inputs, trainer.processing_class))
        predictions = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        return self.prediction_records(inputs, predictions)

    def metrics(self, predictions, label_ids) -> dict:
        raise NotImplementedError

    def baseline(self, train, eval_split) -> dict:
        return {}

    def data_report(self) -> dict:
        """What tokenizing changed in the data (e.g. rows dropped), for results.json."""
        return {}

    def warnings(self, metrics: dict, baseline: dict, records: list[dict]) -> list[str]:
        """Signs that a run learned nothing useful (one class for everything, no better than the
        baseline): results.json lists them under "warnings" and the report marks the run."""
        return []

    def prediction_records(self, dataset, predictions) -> list[dict]:
        raise NotImplementedError

    def loop_metrics(self, eval_pred) -> dict:
        """The Trainer's compute_metrics: scalar metrics from (logits, labels) of one evaluation."""
        raise NotImplementedError

    def wrap(self, model, param_groups: list[dict] | None, model_cfg) -> tuple:
        """The task's optional part over the strategy's model (NER: ``model.crf``), with the
        optimizer groups that go with it; unchanged when the option is off."""
        return model, param_groups

    def wrap_saved(self, model, model_dir, meta: dict):
        """The same part over a saved model, loaded from model/."""
        return model

    def metadata(self) -> dict:
        """Saved next to the model (model/llmft.json) so eval can rebuild the task."""
        return {"task": self.name, **({"labels": self.labels} if self.labels else {})}

    @classmethod
    def from_metadata(cls, data_cfg, meta: dict) -> "Task":
        return cls(data_cfg, labels=meta.get("labels"))


def check_finite(outputs) -> None:
    """Scores with nan/inf would be argmaxed to label 0 and reported as a plain number: refuse."""
    import numpy as np

    if not np.isfinite(np.asarray(outputs, dtype=np.float64)).all():
        from llmft.core.errors import UserError

        raise UserError("the model's outputs on the eval split are nan/inf: its weights are broken "
                        "(a diverged or badly converted model); nothing was reported")
