"""How training examples are drawn (``data.sampler``): ``random`` (the Trainer's shuffle) or
``balanced`` (each label drawn equally often; runtime/trainer.py's sampler draws per seed and epoch)."""
from __future__ import annotations

from llmft.core.errors import require


def validate(cfg, task, strategy) -> None:
    if cfg.data.sampler == "balanced":
        require(task.logits == "sequence", "data.sampler",
                f"balanced applies to classification (got {cfg.data.task})")


def sample_weights(cfg, train_set) -> list[float] | None:
    """data.sampler=balanced: each example drawn with probability 1 / (its label's count); None: random."""
    if cfg.data.sampler != "balanced" or train_set is None:
        return None
    from collections import Counter

    labels = train_set["labels"]
    counts = Counter(labels)
    return [1.0 / counts[y] for y in labels]
