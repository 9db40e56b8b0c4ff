"""Early stopping (``train.early_stopping``): evaluate on the validation split every
``train.eval_steps``, stop after ``patience`` evaluations without improvement, keep the best
checkpoint. transformers' EarlyStoppingCallback does the stopping; this picks the metric."""
from __future__ import annotations

from llmft.core.errors import UserError, require, require_one_of
from llmft.techniques import Technique


class EarlyStopping(Technique):
    """What the Trainer needs for it: the metric watched, the callback, the data and metric
    function of the periodic evaluations; its summary joins the train figures."""

    keys = ("train.early_stopping", "train.eval_steps")

    def validate(self, cfg, task, strategy) -> None:
        t = cfg.train
        es = t.early_stopping
        if es.patience <= 0:
            return
        require(t.eval_steps > 0, "train.early_stopping", "needs train.eval_steps > 0 (how often to evaluate)")
        if es.metric is not None:
            require_one_of("train.early_stopping.metric", es.metric, ("loss", *task.loop_metric_names))
        require(t.save_steps == 0 or t.save_steps % t.eval_steps == 0, "train.save_steps",
                "must be a multiple of train.eval_steps with early stopping (the best checkpoint is kept)")

    def trainer(self, run) -> None:
        es = run.cfg.train.early_stopping
        if es.patience <= 0:
            return
        if "validation" not in run.splits:
            raise UserError("train.early_stopping needs a validation split: set data.validation_fraction=0.1 "
                            "or data.validation_file=PATH (the eval split stays untouched for the final report)")
        from transformers import EarlyStoppingCallback

        task = run.task
        run.eval_metric = es.metric or (task.primary_metric if task.primary_metric in task.loop_metric_names
                                        else "loss")
        run.eval_set = run.sets["validation"]
        run.compute_metrics = task.loop_metrics if run.eval_metric != "loss" else None
        run.callbacks.append(EarlyStoppingCallback(es.patience, es.threshold))

    def trained(self, run) -> None:
        if run.figures is None or run.cfg.train.early_stopping.patience <= 0:
            return
        state = run.trainer.state
        best = state.best_model_checkpoint
        run.figures["early_stopping"] = {
            "metric": run.eval_metric, "best_step": int(best.rsplit("-", 1)[-1]) if best else None,
            "best_value": state.best_metric, "stopped_at_step": state.global_step,
            "stopped_early": state.global_step < state.max_steps}


technique = EarlyStopping()
