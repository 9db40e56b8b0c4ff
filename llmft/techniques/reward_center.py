"""``train.center_rewards_coefficient``: TRL RewardTrainer's centring term for reward models
(data.task=reward), + c x mean((r_chosen + r_rejected)^2) per batch, so scores stay near zero
(the pairwise loss alone leaves their offset free). models/reward.py adds it pair by pair."""
from __future__ import annotations

import math

from llmft.core.errors import require
from llmft.techniques import Technique

KEY = "train.center_rewards_coefficient"


class RewardCenter(Technique):
    keys = (KEY,)

    def validate(self, cfg, task, strategy) -> None:
        c = cfg.train.center_rewards_coefficient
        if c is None:
            return
        require(getattr(task, "scores_pairs", False), KEY,
                f"centres a reward model's scores: data.task=reward (got {cfg.data.task}); drop the key")
        require(math.isfinite(c) and c >= 0, KEY, f"must be >= 0 or null (got {c})")

    def train_set(self, run) -> None:
        c = run.cfg.train.center_rewards_coefficient
        if c and getattr(run.task, "scores_pairs", False):
            run.model.center = c  # models/reward.RewardModel: the wrapper the task put around the model


technique = RewardCenter()
