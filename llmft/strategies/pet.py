"""PET (pattern-exploiting training): fine-tune the LM on the cloze task itself. The loss is
cross-entropy over the verbalizer words' scores at the mask / next-token position; prediction
then works as in zero_shot. ``strategy.params`` picks what trains: the whole LM (``full``), or a
LoRA / DoRA adapter on it (PEFT). model/ is the fine-tuned LM or the adapter, plus the prompt in
llmft.json."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from pathlib import Path
from llmft.core.config import choice
from llmft.core.errors import require
from llmft.strategies.base import wrap_peft
from llmft.strategies.lora import LoraKnobs, check_lora_knobs, lora_config, lora_plus_groups
from llmft.strategies.zero_shot import ZeroShot, ZeroShotStrategyConfig


@dataclass
class PetStrategyConfig(LoraKnobs, ZeroShotStrategyConfig):  # LoraKnobs: for params=lora|dora
    lr: float = 2e-5  # the whole LM trains on the cloze task (Schick & Schuetze: 1e-5)
    calibrate: bool = False  # training removes most of the bias calibration corrects
    params: str = choice("full", "lora", "dora")  # the parameters PET trains (LoRA knobs as in strategy=lora)
    # The method of the paper: one model per data.prompt.patterns entry, their ensemble, and with
    # unlabelled data a final classifier on its soft labels (techniques/pet_ensemble.py).
    ensemble: bool = False
    final: str = choice("classifier", "none")  # what the ensemble's soft labels train (with unlabelled data)
    generations: int = 1  # > 1: iPET
    temperature: float = 2.0  # soft labels: softmax(averaged scores / temperature)
    final_lr: float = 5e-5  # the final classifier's learning rate (full fine-tuning)
    # the final classifier's model (a path, or pkg:...); null: the LM the patterns trained. A smaller
    # encoder (e.g. MiniLM) distils the ensemble into a model that is cheap to train and serve.
    final_model: Optional[str] = None


class PET(ZeroShot):
    config = PetStrategyConfig
    zero_stages = 2
    zero_note = "it saves the LM directly"
    trains = True

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        s = run_cfg.strategy
        if s.ensemble:
            check_patterns(run_cfg)
        else:
            super().validate_config(run_cfg)
        require(s.generations >= 1, "strategy.generations", f"must be >= 1 (got {s.generations})")
        require(s.generations == 1 or s.ensemble, "strategy.generations", "iPET needs strategy.ensemble=true")
        require(s.temperature > 0, "strategy.temperature", f"must be > 0 (got {s.temperature})")
        require(not (s.ensemble and s.final == "classifier") or s.final_lr > 0, "strategy.final_lr",
                f"the final classifier's learning rate must be > 0 (got {s.final_lr})")
        if s.params != "full":
            check_lora_knobs(s)
        require(s.init in ("default", "gaussian"), "strategy.init",
                f"PET's adapter supports init=default|gaussian (got {s.init}: its data pass and weight "
                f"conversion run for strategy=lora|dora|rslora)")
        require(s.params != "full" or s.lr_ratio == 1, "strategy.lr_ratio", "LoRA+ needs strategy.params=lora|dora")

    # The ensemble of patterns (strategy.ensemble): what it is made of; techniques/pet_ensemble.py
    # runs its stages, scores and averages them, and trains the final classifier.
    @classmethod
    def pattern_ensemble(cls, run_cfg) -> bool:
        return bool(run_cfg.strategy.get("ensemble", False))

    @classmethod
    def trains_matrices(cls, run_cfg) -> bool:
        return run_cfg.strategy.params == "full"

    @classmethod
    def ensemble_patterns(cls, run_cfg) -> list[dict]:
        """[{template, verbalizer}] with a missing verbalizer taken from data.prompt.verbalizer."""
        from omegaconf import OmegaConf

        prompt = run_cfg.data.prompt
        default = OmegaConf.to_container(prompt.verbalizer) if prompt.verbalizer is not None else None
        out = []
        for p in prompt.patterns:
            p = OmegaConf.to_container(p) if OmegaConf.is_config(p) else dict(p)
            out.append({"template": p["template"], "verbalizer": p.get("verbalizer") or default})
        return out

    @classmethod
    def ensemble_stages(cls, run_cfg, generation: int) -> list[tuple[str, dict]]:
        """One generation's members: a stage per pattern, as (its name, the config changes it runs
        with: that pattern as the prompt, one model)."""
        one = run_cfg.strategy.generations == 1
        return [(f"pattern-{i}" if one else f"gen{generation}-pattern-{i}",
                 {"data.prompt.template": p["template"], "data.prompt.verbalizer": p["verbalizer"],
                  "strategy.ensemble": False})
                for i, p in enumerate(cls.ensemble_patterns(run_cfg))]

    @classmethod
    def final_classifier(cls, run_cfg) -> tuple[str, object, dict]:
        """The run that learns the ensemble's soft labels: its strategy (full: a sequence
        classification head on the same LM, or on strategy.final_model), that strategy's section
        (lr strategy.final_lr) and the other config changes."""
        from omegaconf import OmegaConf

        from llmft.strategies import strategy_configs

        s = run_cfg.strategy
        section = OmegaConf.merge(OmegaConf.structured(strategy_configs()["full"]), {"lr": s.final_lr})
        changes = {"train.lr": s.final_lr}
        if s.final_model:
            changes.update({"model.name_or_path": s.final_model, "model.name": s.final_model, "model.revision": None})
        return "full", section, changes

    def apply(self, model):
        if self.cfg.params == "full":
            model.requires_grad_(True)
            return self.classifier(model)
        lora = lora_config(self.cfg, "CAUSAL_LM" if self.kind == "causal" else None, self.cfg.params == "dora")
        return self.classifier(wrap_peft(model, lora))

    def param_groups(self, model):
        return lora_plus_groups(model, self.cfg.lr_ratio)

    def save(self, trainer, model_dir: Path) -> None:
        if trainer.is_world_process_zero():
            trainer.model.lm.save_pretrained(str(model_dir))  # an adapter when the LM is a PeftModel


def check_patterns(run_cfg) -> None:
    """strategy.ensemble: at least two patterns, each with a {text} slot and a verbalizer."""
    d = run_cfg.data
    require(run_cfg.data.task == "classification", "data.task", "PET scores label words: it needs classification")
    patterns = d.prompt.patterns or []
    require(len(patterns) >= 2, "data.prompt.patterns", f"strategy.ensemble needs at least 2 patterns "
            f"[{{template, verbalizer}}, ...] (got {len(patterns)})")
    for i, p in enumerate(patterns):
        require(hasattr(p, "get") and bool(p.get("template")) and "{text}" in p.get("template"),
                f"data.prompt.patterns[{i}].template", "is required and must contain the {text} slot")
        require(bool(p.get("verbalizer") or d.prompt.verbalizer), f"data.prompt.patterns[{i}].verbalizer",
                "is required (or data.prompt.verbalizer for all patterns)")
