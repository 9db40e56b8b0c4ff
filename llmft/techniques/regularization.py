"""Regularization knobs against overfitting:

    model.dropout   every dropout probability of the model (backbone hidden and attention, and
                    the task head's), set in the config it is built from (models/loading.py);
                    saved in model/config.json, and results.json names the keys it set
    train.l1        + l1 * sum |theta| over the weights that train (train.l1_to=zero), or
                    + l1 * sum |theta - theta_0| over the trainable pretrained ones (pretrained);
                    a term of the Objective (objective.py), logged as loss/l1

Weight decay (train.weight_decay) is the Trainer's, decoupled, and leaves biases and norm gains
out; L1 is a loss term and takes every trainable weight, biases and norm gains included (as L2-SP).
"""
from __future__ import annotations

import math

from llmft.core.errors import require
from llmft.techniques import Technique


class Regularization(Technique):
    keys = ("model.dropout", "train.l1", "train.l1_to")

    def validate(self, cfg, task, strategy) -> None:
        p = cfg.model.get("dropout")
        if p is not None:
            require(0 <= p < 1, "model.dropout", f"must be in [0, 1) (got {p}); null keeps the model's own")
            require(strategy.trains, "model.dropout",
                    f"strategy={cfg.strategy.name} trains nothing (dropout acts only while training); drop the key")
        t = cfg.train
        require(math.isfinite(t.l1) and t.l1 >= 0, "train.l1", f"must be >= 0 (got {t.l1}); 0 is off")
        if t.l1 > 0:
            require(strategy.trains, "train.l1", f"strategy={cfg.strategy.name} trains nothing; drop the key")
            require(cfg.hardware.zero_stage < 3, "train.l1",
                    "needs whole parameters; under ZeRO-3 they are sharded: use hardware.zero_stage<=2")
            require(t.l1_to == "zero" or not strategy.saves_adapter, "train.l1_to",
                    f"pretrained anchors pretrained weights; strategy={cfg.strategy.name} trains only new parameters "
                    f"(use train.l1_to=zero)")

    def train_set(self, run) -> None:
        """results.json's techniques.dropout: the config keys model.dropout set, as the model has them."""
        if run.cfg.model.get("dropout") is None:
            return
        from llmft.models.loading import dropout_keys

        config = run.model.config
        run.record.setdefault("techniques", {})["dropout"] = {k: getattr(config, k) for k in dropout_keys(config)}


technique = Regularization()
