"""Chunked cross-entropy (``train.loss_chunk_tokens``): a causal LM's head and loss computed a chunk
of labelled tokens at a time, never the full [tokens x vocab] fp32 logits (models/chunked_loss.py).
null: on for causal LM training (data.task=sft) where it gives the plain loss, in chunks of
AUTO_TOKENS; 0: off; N: chunks of N tokens. Installed when training starts and kept for the run's
evaluations (each position's loss goes to the split's per-sequence loss); forwards without labels
(generation) keep the full head."""
from __future__ import annotations

import logging

from llmft.core.errors import require
from llmft.tasks import tasks_that
from llmft.techniques import Technique

log = logging.getLogger(__name__)
KEY = "train.loss_chunk_tokens"
AUTO_TOKENS = 1024  # null: 1024 x 49k fp32 logits (SmolLM2) = 200 MB per chunk at most


def causal(task) -> bool:
    return task.loss_kind == "causal"


class LossChunks(Technique):
    keys = (KEY,)

    def validate(self, cfg, task, strategy) -> None:
        n = cfg.train.loss_chunk_tokens
        require(n is None or n >= 0, KEY, f"must be >= 0 (0: off; null: {AUTO_TOKENS} on causal LMs; got {n})")
        if not n:
            return
        require(causal(task), KEY, f"chunks a causal LM's next-token loss: data.task={tasks_that(causal)} "
                                   f"(got {cfg.data.task}); set it to null or 0")
        require(not cfg.train.distill.teacher, KEY,
                "distillation's KL term needs the student's logits over the whole vocabulary at every position; "
                "set it to 0 (or null: off with a teacher)")
        require(cfg.train.adversarial.method == "none", KEY,
                "adversarial training takes a second gradient through the same loss, which the chunked loss "
                "computes once; set it to 0 (or null)")
        require(not cfg.hardware.compile, KEY, "torch.compile runs the chunked loss eagerly; set it to 0 (or null)")

    def trainer(self, run) -> None:
        chunk = chunk_tokens(run.cfg, run.task, run.objective)
        if chunk and run.strategy.trains:
            run.callbacks.append(callback(chunk, run.record))


technique = LossChunks()


def chunk_tokens(cfg, task, objective=None) -> int:
    """The chunk size the run trains with; 0: the plain loss."""
    n = cfg.train.loss_chunk_tokens
    if n is not None:
        return int(n)
    if not causal(task) or cfg.train.distill.teacher or cfg.train.adversarial.method != "none" or cfg.hardware.compile:
        return 0
    if objective is not None and objective.replaces_model_loss:  # its own loss reads the logits
        return 0
    return AUTO_TOKENS


def callback(chunk: int, record: dict):
    """The callback that installs the chunked loss on the model when training starts; ``record`` (the
    training record) gets ``loss_chunk_tokens``: the chunk size, or 0 and ``loss_chunk_plain_because``."""
    from transformers import TrainerCallback

    from llmft.models.chunked_loss import chunked_loss

    class ChunkedCrossEntropy(TrainerCallback):
        def __init__(self):
            self.loss = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.loss, why = chunked_loss(model, chunk)
            record["loss_chunk_tokens"] = chunk if why is None else 0
            if why is not None:
                record["loss_chunk_plain_because"] = why
            if self.loss is not None:
                self.loss.install()

    return ChunkedCrossEntropy()
