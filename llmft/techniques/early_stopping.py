"""Early stopping (``train.early_stopping``): evaluate on the validation split every
``train.eval_steps``, stop after ``patience`` evaluations without improvement, keep the best
checkpoint. transformers' EarlyStoppingCallback does the stopping; this picks the metric."""
from __future__ import annotations

from llmft.core.errors import UserError, require, require_one_of


def validate(cfg, task, strategy) -> None:
    t = cfg.train
    es = t.early_stopping
    if es.patience <= 0:
        return
    require(t.eval_steps > 0, "train.early_stopping", "needs train.eval_steps > 0 (how often to evaluate)")
    if es.metric is not None:
        require_one_of("train.early_stopping.metric", es.metric, ("loss", *task.loop_metric_names))
    require(t.save_steps == 0 or t.save_steps % t.eval_steps == 0, "train.save_steps",
            "must be a multiple of train.eval_steps with early stopping (the best checkpoint is kept)")


class EarlyStopping:
    """What the Trainer needs for it: the metric watched (None: off), the callbacks, the data and
    metric function of the periodic evaluations; ``report`` adds its summary to the train figures."""

    def __init__(self, metric: str | None = None, callbacks: list | None = None):
        self.metric = metric
        self.callbacks = callbacks or []

    @classmethod
    def from_config(cls, cfg, task, splits) -> "EarlyStopping":
        es = cfg.train.early_stopping
        if es.patience <= 0:
            return cls()
        if "validation" not in splits:
            raise UserError("train.early_stopping needs a validation split: set data.validation_fraction=0.1 "
                            "or data.validation_file=PATH (the eval split stays untouched for the final report)")
        from transformers import EarlyStoppingCallback

        metric = es.metric or (task.primary_metric if task.primary_metric in task.loop_metric_names else "loss")
        return cls(metric, [EarlyStoppingCallback(es.patience, es.threshold)])

    def eval_dataset(self, validation_set):
        return validation_set if self.metric else None

    def compute_metrics(self, task):
        return task.loop_metrics if self.metric not in (None, "loss") else None

    def report(self, trainer) -> dict:
        if not self.metric:
            return {}
        best = trainer.state.best_model_checkpoint
        return {"early_stopping": {
            "metric": self.metric, "best_step": int(best.rsplit("-", 1)[-1]) if best else None,
            "best_value": trainer.state.best_metric, "stopped_at_step": trainer.state.global_step,
            "stopped_early": trainer.state.global_step < trainer.state.max_steps}}
