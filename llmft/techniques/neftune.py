"""NEFTune (``train.neftune_alpha``): uniform noise of scale alpha / sqrt(length x width) added
to the input embeddings while training, none at evaluation (Jain et al. 2023: better instruction
tuning at no cost). transformers' own hook does the adding; this attaches it to the model llmft
trains (inside PEFT and llmft's wrappers) for the training loop only."""
from __future__ import annotations

from llmft.core.errors import require
from llmft.tasks import tasks_that
from llmft.techniques import Technique


class Neftune(Technique):
    keys = ("train.neftune_alpha",)

    def validate(self, cfg, task, strategy) -> None:
        alpha = cfg.train.neftune_alpha
        require(alpha >= 0, "train.neftune_alpha", f"must be >= 0 (0: off; the paper uses 5 to 15; got {alpha})")
        if alpha > 0:
            causal = lambda t: t.logits == "causal"  # noqa: E731
            require(causal(task), "train.neftune_alpha",
                    f"noises the embeddings of instruction tuning: data.task={tasks_that(causal)} "
                    f"(got {cfg.data.task})")
            require(strategy.trains, "train.neftune_alpha", f"strategy={cfg.strategy.name} trains nothing")
            # transformers scales the noise by the row's length: a packed row is every chat of the batch
            require(not cfg.data.get("packing", False), "train.neftune_alpha",
                    "scales its noise by alpha / sqrt(row length x width); a packed row holds the whole batch, so "
                    "the noise would be weaker than asked: set data.packing=false")

    def trainer(self, run) -> None:
        run.callbacks += callbacks(run.cfg)


technique = Neftune()


def callbacks(cfg) -> list:
    """The callback that holds the noise hook during training; none when alpha is 0."""
    if cfg.train.neftune_alpha <= 0:
        return []
    from transformers import TrainerCallback

    class NEFTune(TrainerCallback):
        def __init__(self, alpha: float):
            self.alpha, self.handle = alpha, None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            from transformers.integrations.neftune import activate_neftune

            self.handle = activate_neftune(model, self.alpha)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if self.handle is not None:
                self.handle.remove()
                self.handle = None

    return [NEFTune(float(cfg.train.neftune_alpha))]
