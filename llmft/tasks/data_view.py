"""What the loss will see, for ``llmft check``: token lengths and padding, labels per split, and
(SFT) rendered rows with the tokens that carry loss marked. Torch-free apart from what the task's
tokenizer needs. (Being written.)"""
from __future__ import annotations


def inspect(cfg, task, splits: dict, tokenized_train, tokenizer) -> dict:
    """JSON-able facts about the data as training would see it. ``splits``: the raw rows per split
    (after the strategy's prepare_data); ``tokenized_train``: ``task.tokenize(splits["train"], tokenizer)``."""
    return {}


def render(facts: dict) -> list[str]:
    """The lines ``llmft check`` prints for ``facts``."""
    return []
