"""Gradual unfreezing (ULMFiT): start with the head, unfreeze one more block from the top every
``unfreeze_every`` steps (or epochs), the embeddings last. Each unfreezing is logged and listed
in results.json. The optimizer holds every parameter from the start; frozen ones get no gradient,
so AdamW leaves them untouched until they thaw, and the schedule follows the global step (resumes
land in the same stage)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from llmft.core.config import StrategyConfig, choice
from llmft.core.errors import UserError
from llmft.strategies.base import Strategy, set_trainable
from llmft.strategies.llrd import depth_groups

log = logging.getLogger(__name__)


@dataclass
class GradualUnfreezeStrategyConfig(StrategyConfig):
    lr: float = 1e-4  # the head trains alone at first: a higher rate than full
    unfreeze_every: int = 50
    unit: str = choice("steps", "epochs")


class GradualUnfreeze(Strategy):
    config = GradualUnfreezeStrategyConfig
    zero_stages = 0
    zero_note = "it changes which parameters train mid-run; DeepSpeed fixes them at the start"
    unfreezes_later = True

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        s = run_cfg.strategy
        if s.unfreeze_every < 1:
            raise UserError(f"strategy.unfreeze_every must be >= 1 (got {s.unfreeze_every})")
        hw = run_cfg.hardware
        if hw.nproc_per_node * hw.nnodes > 1:  # DDP averages only what trained when it wrapped the model
            raise UserError(f"hardware.nproc_per_node={hw.nproc_per_node} (x {hw.nnodes} nodes): strategy="
                            f"gradual_unfreeze runs in one process; under DDP the blocks it unfreezes later are "
                            f"never averaged across ranks and drift apart. Use hardware.nproc_per_node=1")

    def __init__(self, run_cfg, task):
        super().__init__(run_cfg, task)
        self.schedule = Unfreezer(self.cfg.unfreeze_every, self.cfg.unit)

    def apply(self, model):
        self.schedule.set_stage(model, 0)
        return model

    def param_groups(self, model):
        return depth_groups(model, lambda part: 1.0)

    def callbacks(self):
        from transformers import TrainerCallback

        schedule = self.schedule

        class UnfreezeOnSchedule(TrainerCallback):
            def on_step_begin(self, args, state, control, model=None, **kwargs):
                schedule.on_step(model, state)

        return [UnfreezeOnSchedule()]

    def report(self) -> dict:
        return {"unfrozen_at_step": self.schedule.unfrozen_at}


class Unfreezer:
    def __init__(self, every: int, unit: str):
        self.every, self.unit = every, unit
        self.stage = None
        self.unfrozen_at: dict[str, int] = {}

    def set_stage(self, model, stage: int, step: int = 0) -> None:
        """Stage s: head, top and the s top-most blocks (the embeddings after every block) train."""
        if stage == self.stage:
            return
        from llmft.models.anatomy import num_blocks

        blocks = num_blocks(model)
        set_trainable(model, lambda name, part: part.kind in ("head", "top")
                      or part.kind == "block" and part.depth_from_top <= stage
                      or part.kind == "embeddings" and stage > blocks)
        for depth in range(1, min(stage, blocks + 1) + 1):
            label = "embeddings" if depth > blocks else f"block.{blocks - depth}"
            if label not in self.unfrozen_at:
                self.unfrozen_at[label] = step
                if step:
                    log.info("gradual_unfreeze: step %d: %s now trains", step, label)
        self.stage = stage

    def on_step(self, model, state) -> None:
        progress = state.global_step if self.unit == "steps" else int(state.epoch or 0)
        self.set_stage(model, progress // self.every, state.global_step)
