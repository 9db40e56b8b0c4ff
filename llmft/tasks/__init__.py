"""Tasks: what the model predicts, and how data, head, metrics and predictions fit that.

One module per ``data.task`` value; ``base.py`` has the protocol the recipe relies on.
"""
from llmft.tasks.base import TASKS, Task


def task_names() -> list[str]:
    return TASKS.names()


def build_task(data_cfg) -> Task:
    return TASKS.get(data_cfg.task)(data_cfg)
