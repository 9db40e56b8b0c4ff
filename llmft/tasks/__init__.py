"""Tasks: what the model predicts, and how data, head, metrics and predictions fit that.

One module per ``data.task`` value; ``base.py`` has the protocol the recipe relies on.
"""
from llmft.tasks.base import TASKS, Task


def task_names() -> list[str]:
    return TASKS.names()


def tasks_that(capable) -> str:
    """The tasks for which ``capable(task_class)`` holds, as text for messages: "a, b and c"."""
    names = [name for name in task_names() if capable(TASKS.get(name))]
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def build_task(data_cfg) -> Task:
    return TASKS.get(data_cfg.task)(data_cfg)
