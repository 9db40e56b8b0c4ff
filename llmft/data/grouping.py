"""Batches of similar lengths (``data.group_by_length``): the order the training sampler draws
(techniques/sampling.py) and its default, here so that ``llmft check`` (tasks/data_view.py)
counts the padding of the very batches a run trains on."""
from __future__ import annotations

GROUPED_TASKS = ("classification", "regression", "ner", "qa")  # on by default: dynamic padding, short inputs of varied length
WINDOW = 50  # batches sorted together: 98 % real tokens on the tweets (59 % at random)


def grouped(cfg) -> bool:
    """data.group_by_length, its default (null) resolved: on for classification, regression, ner and qa, unless
    data.aux mixes in other sets (their rows differ in length from the main task's: grouped batches
    would each hold one task's rows, not the mix its weight asks for)."""
    if cfg.data.group_by_length is None:  # not with data.aux: batches would hold one task's rows each
        return (cfg.data.task in GROUPED_TASKS and cfg.data.sampler == "random" and not cfg.data.aux
                and not getattr(cfg.data, "packing", False))
    return bool(cfg.data.group_by_length)


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
