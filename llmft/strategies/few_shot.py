"""Few-shot prompting (in-context learning): k labelled demonstrations per label, drawn with a
seed from the train split, precede every prompt. No training. Each seed in ``seeds`` draws other
demonstrations; results.json gives each seed's metrics and their mean and standard deviation."""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from typing import List

from llmft.core.errors import UserError
from llmft.strategies.zero_shot import ZeroShot, ZeroShotStrategyConfig


@dataclass
class FewShotStrategyConfig(ZeroShotStrategyConfig):
    k: int = 2  # demonstrations per label
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    separator: str = "\n\n"


class FewShot(ZeroShot):
    config = FewShotStrategyConfig

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        super().validate_config(run_cfg)
        if run_cfg.strategy.k < 1 or not run_cfg.strategy.seeds:
            raise UserError("strategy.k must be >= 1 and strategy.seeds a non-empty list")

    def prepare_data(self, splits: dict, tokenizer) -> dict:
        from llmft.models.loading import resolve_model_path
        from llmft.models.prompting import text_budget

        self.raw = splits  # demonstrations come from the raw train split, per seed
        self.tokenizer = tokenizer
        if not hasattr(self, "kind"):
            self.model_class(resolve_model_path(self.run_cfg.model.name_or_path))
        self.fit_length(tokenizer)  # the longest seed's demonstrations
        for seed in self.cfg.seeds:  # every seed's demonstrations must fit, checked before the model loads
            self.seed = seed
            text_budget(self.template(), tokenizer, self.run_cfg.data.max_length,
                        what=f"data.prompt.template with {self.cfg.k} demonstration(s) per label (seed {seed})")
        self.seed = self.cfg.seeds[0]
        rendered = super().prepare_data(splits, tokenizer)
        self.raw_of = {id(rendered[name]): splits[name] for name in rendered}  # each seed renders the raw rows anew
        return rendered

    def template(self) -> str:
        return self.demonstrations(self.seed) + self.cfg.separator + self.cfg_prompt().template

    def templates(self) -> list[str]:
        out = []
        for seed in self.cfg.seeds:
            self.seed = seed
            out.append(self.template())
        self.seed = self.cfg.seeds[0]
        return out

    def demonstrations(self, seed: int) -> str:
        from llmft.models.prompting import render

        prompt, train = self.cfg_prompt(), self.raw["train"]
        column = self.run_cfg.data.text_column
        rng = random.Random(seed)
        by_label: dict[int, list[int]] = {}
        for i, label in enumerate(train["labels"]):
            by_label.setdefault(label, []).append(i)
        picks = []
        for label_id, name in enumerate(self.task.labels):
            rows = by_label.get(label_id, [])
            if len(rows) < self.cfg.k:
                raise UserError(f"strategy.k={self.cfg.k}: the train split has only {len(rows)} '{name}' examples")
            picks += [(i, name) for i in rng.sample(rows, self.cfg.k)]
        rng.shuffle(picks)
        shots = []
        for i, name in picks:
            word = prompt.verbalizer[name][0]
            filled = prompt.template.replace("{mask}", word.strip()) if self.kind == "masked" else \
                prompt.template + word
            shots.append(render(filled, train[i][column], self.tokenizer))
        return self.cfg.separator.join(shots)

    def before_eval(self, trainer) -> None:
        self.calibration = None  # per seed, in evaluate

    def evaluate(self, trainer, eval_set, raw_eval, generate_cfg):
        from llmft.models.prompting import calibrate

        per_seed, first_records = [], None
        for seed in self.cfg.seeds:
            self.seed = seed
            meta = self.prompt_meta()
            raw = self.raw_of.get(id(raw_eval), self.raw["eval"])  # the split asked for (eval or validation)
            rendered = self.render_splits({"eval": raw}, self.tokenizer, meta)["eval"]
            if self.cfg.calibrate:
                self.calibration = calibrate(trainer.model, self.tokenizer, self.template(),
                                             self.cfg_prompt().content_free, self.run_cfg.data.max_length)
            metrics, records = self.task.evaluate(trainer, self.task.tokenize(rendered, self.tokenizer), rendered)
            per_seed.append({"seed": seed, **{k: v for k, v in metrics.items() if isinstance(v, float)}})
            first_records = first_records or records
            if seed == self.cfg.seeds[0]:
                self.first = (self.calibration, meta)
        self.calibration, _ = self.first
        self.seed = self.cfg.seeds[0]
        summary = {}
        for key in (k for k in per_seed[0] if k != "seed"):
            values = [s[key] for s in per_seed]
            summary[key] = statistics.fmean(values)
            summary[f"{key}_std"] = statistics.pstdev(values)
        return {**summary, "per_seed": per_seed}, first_records
