"""PET (pattern-exploiting training): fine-tune the LM on the cloze task itself. The loss is
cross-entropy over the verbalizer words' scores at the mask / next-token position; prediction
then works as in zero_shot. ``strategy.params`` picks what trains: the whole LM (``full``), or a
LoRA / DoRA adapter on it (PEFT). model/ is the fine-tuned LM or the adapter, plus the prompt in
llmft.json."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from llmft.core.errors import UserError, require_one_of
from llmft.strategies.base import peft_target_error
from llmft.strategies.lora import target_modules
from llmft.strategies.zero_shot import ZeroShot, ZeroShotStrategyConfig

PARAMS = ("full", "lora", "dora")


@dataclass
class PetStrategyConfig(ZeroShotStrategyConfig):
    name: str = "pet"
    calibrate: bool = False  # training removes most of the bias calibration corrects
    params: str = "full"  # full | lora | dora: the parameters PET trains
    # LoRA / DoRA settings (params=lora|dora), as in strategy=lora
    r: int = 8
    alpha: float = 16
    dropout: float = 0.1
    target_modules: Optional[List[str]] = None


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
        if s.params != "full" and s.r < 1:
            raise UserError(f"strategy.r must be >= 1 (got {s.r})")

    def apply(self, model):
        if self.cfg.params == "full":
            model.requires_grad_(True)
            return self.classifier(model)
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            task_type="CAUSAL_LM" if self.kind == "causal" else None,
            r=self.cfg.r, lora_alpha=self.cfg.alpha, lora_dropout=self.cfg.dropout,
            target_modules=target_modules(self.cfg.target_modules), use_dora=self.cfg.params == "dora",
        )
        try:
            return self.classifier(get_peft_model(model, lora))
        except ValueError as err:
            raise peft_target_error(err, model) from None

    def save(self, trainer, model_dir: Path) -> None:
        if trainer.is_world_process_zero():
            trainer.model.lm.save_pretrained(str(model_dir))  # an adapter when the LM is a PeftModel
