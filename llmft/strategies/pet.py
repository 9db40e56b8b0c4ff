"""PET (pattern-exploiting training): fine-tune the LM on the cloze task itself. The loss is
cross-entropy over the verbalizer words' scores at the mask / next-token position; prediction
then works as in zero_shot. model/ is the fine-tuned LM plus the prompt in llmft.json."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmft.strategies.zero_shot import ZeroShot, ZeroShotStrategyConfig


@dataclass
class PetStrategyConfig(ZeroShotStrategyConfig):
    name: str = "pet"
    calibrate: bool = False  # training removes most of the bias calibration corrects


class PET(ZeroShot):
    name = "pet"
    config = PetStrategyConfig
    trains = True

    def save(self, trainer, model_dir: Path) -> None:
        if trainer.is_world_process_zero():
            trainer.model.lm.save_pretrained(str(model_dir))
