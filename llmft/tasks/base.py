"""The Task protocol: everything the recipe needs that depends on what is being predicted."""
from __future__ import annotations

from typing import ClassVar

from llmft.registry import Registry

TASKS = Registry("llmft.tasks", key="data.task")


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
    stratify_column: ClassVar[str | None] = None  # column to stratify seeded splits on

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        TASKS.register(cls)

    def __init__(self, data_cfg):
        self.data_cfg = data_cfg

    def required_columns(self) -> list[str]:
        raise NotImplementedError

    def encode(self, dataset, source: str, is_train: bool):
        """Validate and convert one raw split; ``source`` names its file for error messages."""
        raise NotImplementedError

    def model_kwargs(self) -> dict:
        return {}

    def tokenize(self, dataset, tokenizer):
        raise NotImplementedError

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def metrics(self, predictions, label_ids) -> dict:
        raise NotImplementedError

    def baseline(self, train, eval_split) -> dict:
        return {}

    def prediction_records(self, dataset, predictions) -> list[dict]:
        raise NotImplementedError

    def metadata(self) -> dict:
        """Saved next to the model (model/llmft.json) so eval can rebuild the task."""
        return {"task": self.name}

    @classmethod
    def from_metadata(cls, data_cfg, meta: dict) -> "Task":
        return cls(data_cfg)
