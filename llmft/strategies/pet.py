"""PET (pattern-exploiting training): fine-tune the LM on the cloze task itself. The loss is
cross-entropy over the verbalizer words' scores at the mask / next-token position; prediction
then works as in zero_shot. ``strategy.params`` picks what trains: the whole LM (``full``), or a
LoRA / DoRA adapter on it (PEFT). model/ is the fine-tuned LM or the adapter, plus the prompt in
llmft.json."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from llmft.core.errors import require_one_of
from llmft.strategies.base import wrap_peft
from llmft.strategies.lora import LoraKnobs, check_lora_knobs, lora_config
from llmft.strategies.zero_shot import ZeroShot, ZeroShotStrategyConfig

PARAMS = ("full", "lora", "dora")


@dataclass
class PetStrategyConfig(LoraKnobs, ZeroShotStrategyConfig):  # LoraKnobs: for params=lora|dora
    name: str = "pet"
    calibrate: bool = False  # training removes most of the bias calibration corrects
    params: str = "full"  # full | lora | dora: the parameters PET trains


class PET(ZeroShot):
    name = "pet"
    config = PetStrategyConfig
    zero_stages = 2
    zero_note = "it saves the LM directly"
    trains = True

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        super().validate_config(run_cfg)
        s = run_cfg.strategy
        require_one_of("strategy.params", s.params, PARAMS)
        if s.params != "full":
            check_lora_knobs(s)

    def apply(self, model):
        if self.cfg.params == "full":
            model.requires_grad_(True)
            return self.classifier(model)
        lora = lora_config(self.cfg, "CAUSAL_LM" if self.kind == "causal" else None, self.cfg.params == "dora")
        return self.classifier(wrap_peft(model, lora))

    def save(self, trainer, model_dir: Path) -> None:
        if trainer.is_world_process_zero():
            trainer.model.lm.save_pretrained(str(model_dir))  # an adapter when the LM is a PeftModel
