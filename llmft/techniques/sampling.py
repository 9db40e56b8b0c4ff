"""How training examples are drawn: ``data.sampler`` (``random``: shuffled; ``balanced``: each label
drawn equally often) and ``data.group_by_length`` (batches of similar lengths, so less padding).

Every order here depends on (seed, epoch) only: the Trainer calls ``set_epoch`` each epoch and skips
the batches a resumed run already trained, so a resumed run sees the order the uninterrupted run
had. Grouping works in units of the global batch (per-device batch x processes), so N processes of
batch B draw the same batches as one process of batch N x B."""
from __future__ import annotations

from llmft.core.errors import require
from llmft.data.grouping import grouped, grouped_order  # the run's order (llmft check counts padding in it too)
from llmft.techniques import Technique


class Sampling(Technique):
    keys = ("data.sampler", "data.group_by_length")

    def validate(self, cfg, task, strategy) -> None:
        if cfg.data.sampler == "balanced":
            require(task.logits == "sequence", "data.sampler",
                    f"balanced applies to classification (got {cfg.data.task})")
        if cfg.data.group_by_length:
            require(cfg.data.sampler == "random", "data.group_by_length",
                    "groups the random order; data.sampler=balanced draws its own (set data.group_by_length=false)")
            require(not getattr(cfg.data, "packing", False), "data.group_by_length",
                    "data.packing already removes the padding (set data.group_by_length=false)")

    def trainer(self, run) -> None:
        run.sampler = train_sampler(run.cfg, run.train_set)

    def trained(self, run) -> None:
        if run.figures:
            run.figures["group_by_length"] = grouped(run.cfg)


technique = Sampling()


def sample_weights(cfg, train_set) -> list[float] | None:
    """data.sampler=balanced: each example drawn with probability 1 / (its label's count); None: random."""
    if cfg.data.sampler != "balanced" or train_set is None:
        return None
    from collections import Counter

    labels = train_set["labels"]
    counts = Counter(labels)
    return [1.0 / counts[y] for y in labels]


def train_sampler(cfg, train_set):
    """A factory ``(global_batch, seed) -> Sampler | None`` for the Trainer (None: its random order)."""
    weights = sample_weights(cfg, train_set)
    if weights is not None:
        return lambda batch, seed: EpochWeightedSampler(weights, seed)
    if train_set is None or not grouped(cfg):
        return None
    lengths = [len(ids) for ids in train_set["input_ids"]]
    return lambda batch, seed: LengthGroupedSampler(lengths, batch, seed)


def LengthGroupedSampler(lengths: list[int], batch: int, seed: int):
    """``grouped_order`` of (seed, epoch) as a torch Sampler (transformers' LengthGroupedSampler draws
    from the global RNG and does not shuffle its batches: a resume replays another order, and each
    window runs longest to shortest)."""
    import torch

    class Sampler(torch.utils.data.Sampler):
        epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)

        def __len__(self) -> int:
            return len(lengths)

        def __iter__(self):
            return iter(grouped_order(lengths, batch, seed * 1000 + self.epoch))

    return Sampler()


def EpochWeightedSampler(weights: list[float], seed: int):
    """torch's WeightedRandomSampler whose draws depend on (seed, epoch) only: the Trainer calls
    set_epoch each epoch, so a resumed run draws epoch k's order, not epoch 1's again."""
    import torch

    class Sampler(torch.utils.data.WeightedRandomSampler):
        def set_epoch(self, epoch: int) -> None:
            self.generator = torch.Generator().manual_seed(seed * 1000 + int(epoch))

    sampler = Sampler(weights, len(weights))
    sampler.set_epoch(0)
    return sampler
