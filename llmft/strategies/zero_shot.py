"""Zero-shot prompting: no training. Each input is rendered with data.prompt.template and the label
whose verbalizer words the LM scores highest wins (see llmft/models/prompting.py). With ``calibrate``,
contextual calibration divides out the label scores of a content-free input first."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import logging

from llmft.core.config import StrategyConfig
from llmft.core.errors import UserError
from llmft.strategies.base import Strategy

log = logging.getLogger(__name__)

LM_CLASSES = {"causal": "AutoModelForCausalLM", "masked": "AutoModelForMaskedLM"}


@dataclass
class ZeroShotStrategyConfig(StrategyConfig):
    calibrate: bool = True  # contextual calibration with data.prompt.content_free


class ZeroShot(Strategy):
    config = ZeroShotStrategyConfig
    zero_stages = 0
    zero_note = "nothing trains"
    trains = False

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        if run_cfg.data.task != "classification":
            raise UserError(f"strategy={run_cfg.strategy.name} scores label words: it needs data.task=classification "
                            f"(got {run_cfg.data.task})")
        prompt = run_cfg.data.prompt
        if not prompt.template or not prompt.verbalizer:
            raise UserError(f"strategy={run_cfg.strategy.name} needs data.prompt.template and data.prompt.verbalizer")

    # ------------------------------------------------------------------ run
    def model_class(self, path: str) -> str:
        from llmft.models.prompting import lm_kind

        self.kind = lm_kind(path, self.run_cfg.model.trust_remote_code, self.run_cfg.model.revision)
        return LM_CLASSES[self.kind]

    def prepare_data(self, splits: dict, tokenizer) -> dict:
        """Runs before the model loads: a prompt that cannot fit data.max_length fails here."""
        from llmft.models.loading import resolve_model_path
        from llmft.models.prompting import check_prompt

        if not hasattr(self, "kind"):
            self.model_class(resolve_model_path(self.run_cfg.model.name_or_path))
        check_prompt(self.run_cfg.data.prompt, self.task.labels, self.kind)
        self.tokenizer = tokenizer
        self.fit_length(tokenizer)
        self.truncated = {}
        return self.render_splits(splits, tokenizer, self.prompt_meta(), counts=self.truncated)

    def fit_length(self, tokenizer) -> None:
        """data.max_length from the template (models/prompting.py prompt_length), set once for
        everything that reads it: rendering, the task's tokenizing, calibration, llmft.json."""
        from llmft.models.prompting import prompt_length

        if not getattr(self, "length_fitted", False):
            self.run_cfg.data.max_length = prompt_length(self.templates(), tokenizer, self.run_cfg.data)
            self.length_fitted = True

    def templates(self) -> list[str]:
        """Every template this run renders (few_shot: one per seed)."""
        return [self.template()]

    def apply(self, model):
        model.requires_grad_(False)
        return self.classifier(model)

    def classifier(self, lm):
        """The LM as a classifier over the verbalizer's label words."""
        from llmft.models.prompting import label_token_ids, prompt_classifier

        ids = label_token_ids(self.cfg_prompt().verbalizer, self.task.labels, self.tokenizer)
        return prompt_classifier(lm, ids, self.kind, self.tokenizer.mask_token_id)

    def before_eval(self, trainer) -> None:
        from llmft.models.prompting import calibrate

        self.calibration = None
        if self.cfg.calibrate:
            self.calibration = calibrate(trainer.model, self.tokenizer, self.template(), self.cfg_prompt().content_free,
                                         self.run_cfg.data.max_length)

    def report(self) -> dict:
        out = {"inputs_truncated": self.truncated}  # inputs shortened so the prompt fits data.max_length
        return {**out, "calibration_offsets": self.calibration} if self.calibration else out

    # ------------------------------------------------------------ prompts
    def cfg_prompt(self):
        return self.run_cfg.data.prompt

    def template(self) -> str:
        return self.cfg_prompt().template

    def prompt_meta(self) -> dict:
        from omegaconf import OmegaConf

        return {"prompt": OmegaConf.to_container(self.cfg_prompt()), "lm_kind": self.kind,
                "template": self.template(), "text_column": self.run_cfg.data.text_column,
                "max_length": self.run_cfg.data.max_length}

    @classmethod
    def render_splits(cls, splits: dict, tokenizer, meta: dict, counts: dict | None = None) -> dict:
        """Each split's inputs rendered into prompts that fit max_length (only {text} is cut;
        llmft.models.prompting.fit); how many were cut per split goes into ``counts``."""
        from llmft.models.prompting import fit, text_budget

        if meta["lm_kind"] == "causal":
            tokenizer.padding_side = "left"  # the scored position is the last one
        column, template, max_length = meta["text_column"], meta["template"], meta.get("max_length", 512)
        text_budget(template, tokenizer, max_length)  # a template that leaves no room: one line, now
        out, cut = {}, {}

        def one(row):
            prompt, was_cut = fit(template, row[column], tokenizer, max_length)
            return {column: prompt, "_cut": was_cut}

        for name, ds in splits.items():
            ds = ds.map(one, desc="prompts")
            cut[name] = sum(ds["_cut"])
            out[name] = ds.remove_columns("_cut")
        if any(cut.values()):
            log.warning("inputs shortened to fit data.max_length=%d with the prompt: %s", max_length,
                        ", ".join(f"{k} {v}" for k, v in cut.items()))
        if counts is not None:
            counts.update(cut)
        return out

    # ------------------------------------------------------------ saving
    def metadata(self) -> dict:
        return {**self.prompt_meta(), "calibration": self.calibration}

    def save(self, trainer, model_dir: Path) -> None:
        model_dir.mkdir(parents=True, exist_ok=True)  # nothing trained: llmft.json says it all

    @classmethod
    def prepare_saved_data(cls, splits: dict, tokenizer, meta: dict) -> dict:
        return cls.render_splits(splits, tokenizer, meta)

    @classmethod
    def load_trained(cls, model_dir: Path, task, meta: dict, tokenizer, trust_remote_code: bool = False,
                     **load_kwargs):
        import torch

        from llmft.models.loading import load_model, revision_kwargs
        from llmft.models.prompting import label_token_ids, prompt_classifier

        if meta.get("max_length") and task.data_cfg is not None and task.data_cfg.max_length < meta["max_length"]:
            # the prompts are fitted to the length they were trained and evaluated with: the task's
            # tokenizing at the data config's shorter one would cut their end (the cue, the mask).
            # A copy: the command's own config keeps its value (a stage's config is copied from it).
            task.data_cfg = task.data_cfg.copy()
            task.data_cfg.max_length = meta["max_length"]
        own = (model_dir / "config.json").is_file()
        source = str(model_dir) if own else meta["base_model"]
        lm = load_model(source, task, tokenizer, trust_remote_code, LM_CLASSES[meta["lm_kind"]],
                        **({} if own else revision_kwargs(meta.get("revision"))), **load_kwargs)
        if (model_dir / "adapter_config.json").is_file():  # PET trained a LoRA / DoRA adapter
            from peft import PeftModel

            lm = PeftModel.from_pretrained(lm, str(model_dir))
        ids = label_token_ids(meta["prompt"]["verbalizer"], task.labels, tokenizer)
        model = prompt_classifier(lm, ids, meta["lm_kind"], tokenizer.mask_token_id)
        if meta.get("calibration"):
            model.calibration.copy_(torch.tensor(meta["calibration"]))
        return model
