"""How training examples are drawn: ``data.sampler`` (``random``: shuffled; ``balanced``: each label
drawn equally often) and ``data.group_by_length`` (batches of similar lengths, so less padding).

Every order here depends on (seed, epoch) only: the Trainer calls ``set_epoch`` each epoch and skips
the batches a resumed run already trained, so a resumed run sees the order the uninterrupted run
had. Grouping works in units of the global batch (per-device batch x processes), so N processes of
batch B draw the same batches as one process of batch N x B."""
from __future__ import annotations

from llmft.core.errors import require
from llmft.techniques import Technique

GROUPED_TASKS = ("classification", "regression", "ner", "qa")  # on by default: dynamic padding, short inputs of varied length
WINDOW = 50  # batches sorted together: 98 % real tokens on the tweets (59 % at random)


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


def grouped(cfg) -> bool:
    """data.group_by_length, its default (null) resolved: on for classification, regression, ner and qa, unless
    data.aux mixes in other sets (their rows differ in length from the main task's: grouped batches
    would each hold one task's rows, not the mix its weight asks for)."""
    if cfg.data.group_by_length is None:  # not with data.aux: batches would hold one task's rows each
        return (cfg.data.task in GROUPED_TASKS and cfg.data.sampler == "random" and not cfg.data.aux
                and not getattr(cfg.data, "packing", False))
    return bool(cfg.data.group_by_length)


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


def grouped_order(lengths: list[int], batch: int, seed: int) -> list[int]:
    """All indices once: shuffled, cut into windows of WINDOW batches, sorted by length inside each
    window (longest first), cut into batches, the full batches shuffled; the batch holding the
    longest example goes first (out-of-memory shows at step 1, as in transformers' old sampler) and
    a short last batch stays last (a short batch in the middle would shift every later batch)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=g).tolist()
    size = batch * WINDOW
    batches = []
    for start in range(0, len(order), size):
        window = sorted(order[start:start + size], key=lambda i: -lengths[i])
        batches += [window[i:i + batch] for i in range(0, len(window), batch)]
    short = [batches.pop()] if batches and len(batches[-1]) < batch else []
    batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    if batches:
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches.insert(0, batches.pop(longest))
    return [i for b in batches + short for i in b]


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
