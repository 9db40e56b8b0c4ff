"""Preference tuning (train.preference, data.task=preference): DPO, IPO, ORPO, SimPO, KTO.

Checks the knobs against the task and the strategy before anything loads; at the data it refuses
unpaired rows for a paired loss and turns pairs into KTO's unpaired rows; once the model is
built it wraps it with its reference (models/preference.py) and, for reference=precomputed, adds
the reference log-probs to the train set in one pass before training.
"""
from __future__ import annotations

import dataclasses
import math

from llmft.core.config import PreferenceConfig
from llmft.core.errors import UserError, require
from llmft.techniques import Technique

WITH_REFERENCE = ("dpo", "ipo", "kto")


class Preference(Technique):
    keys = ("train.preference",)

    def validate(self, cfg, task, strategy) -> None:
        p = cfg.train.preference
        if cfg.data.task != "preference":
            for f in dataclasses.fields(PreferenceConfig):
                default = f.default if f.default is not dataclasses.MISSING else None
                require(p[f.name] == default, f"train.preference.{f.name}",
                        f"is for data.task=preference (got {cfg.data.task}); drop it")
            return
        require(strategy.trains, "strategy",
                f"strategy={cfg.strategy.name} trains nothing; preference tuning trains the policy "
                f"(e.g. +strategy=lora)")
        require("num_virtual_tokens" not in cfg.strategy, "strategy",
                f"strategy={cfg.strategy.name} puts virtual tokens before the input, which shifts the completion's "
                f"log-probs; use lora, dora, full or another weight strategy")
        loss, reference = p.loss, p.reference
        if p.beta is not None:
            require(isinstance(p.beta, (int, float)) and math.isfinite(p.beta) and p.beta > 0,
                    "train.preference.beta", f"must be > 0 (got {p.beta}); null takes the loss's default")
        ls = p.label_smoothing
        require(isinstance(ls, (int, float)) and 0 <= ls < 0.5, "train.preference.label_smoothing",
                f"must be in [0, 0.5) (got {ls})")
        require(ls == 0 or loss in ("dpo", "simpo"), "train.preference.label_smoothing",
                f"is for loss dpo or simpo ({loss} has none); drop it")
        require(reference != "none" or loss not in WITH_REFERENCE, "train.preference.reference",
                f"=none: {loss} scores against a reference model; use model, precomputed or auto")
        require(reference in ("auto", "none") or loss in WITH_REFERENCE, "train.preference.reference",
                f"={reference}: {loss} uses no reference in its loss; use auto or none")
        require(math.isfinite(p.simpo_gamma) and p.simpo_gamma >= 0, "train.preference.simpo_gamma",
                f"must be >= 0 (got {p.simpo_gamma})")
        for key in ("desirable_weight", "undesirable_weight"):
            require(math.isfinite(p[key]) and p[key] > 0, f"train.preference.{key}", f"must be > 0 (got {p[key]})")
        require(not cfg.data.group_by_length, "data.group_by_length",
                "groups rows by length, and a preference row is a pair of sequences; set data.group_by_length=false")
        require(cfg.train.early_stopping.patience <= 0, "train.early_stopping",
                "does not cover data.task=preference yet (its evaluations during training score no preference "
                "metric); train a fixed number of steps and compare runs on their validation split")
        if not strategy.saves_adapter and cfg.hardware.zero_stage == 3:
            raise UserError("hardware.zero_stage: 3 shards the full model, and preference tuning scores a reference "
                            "model beside it (a frozen copy, or the base for the eval metrics) that ZeRO-3 cannot "
                            "run; use hardware.zero_stage<=2 or a PEFT strategy (its reference is the adapter "
                            "disabled)")

    def splits(self, run) -> None:
        """Unpaired train rows need kto (refused, naming the file, otherwise); kto reads pairs as
        unpaired rows; the eval and validation splits are pairs."""
        if run.cfg.data.task != "preference":
            return
        from llmft.data.pairs import is_paired, unpair
        from llmft.models.preference import Settings

        p = run.cfg.train.preference
        if getattr(run, "task", None) is not None:  # llmft check's context has none
            run.task.settings = Settings.from_config(p).as_dict()
        d = run.cfg.data
        for name in ("eval", "validation"):
            if name in run.splits and not is_paired(run.splits[name]):
                key = f"data.{name}_file"
                raise UserError(f"{key}: the {name} split holds unpaired rows (cut from the unpaired train file); "
                                f"reward accuracy needs pairs: give {key}=PATH with '{d.chosen_column}' and "
                                f"'{d.rejected_column}' columns")
        train = run.splits.get("train")
        if train is None:
            return
        if not is_paired(train):
            require(p.loss == "kto", "train.preference.loss",
                    f"={p.loss} trains on pairs and {d.train_file} holds unpaired rows ('{d.completion_column}' + "
                    f"'{d.label_column}'); use train.preference.loss=kto or give chosen/rejected columns")
        elif p.loss == "kto":
            run.splits = {**run.splits, "train": unpair(train)}  # a new dict: llmft check shares the one it read

    def train_set(self, run) -> None:
        """The policy wrapped with its reference; the train set's reference log-probs (precomputed)."""
        if run.cfg.data.task != "preference" or run.model is None:
            return
        from llmft.models.loading import load_backbone
        from llmft.models.preference import PreferenceModel, Settings, is_peft

        settings = Settings(**run.task.settings)
        policy = run.model
        frozen = None
        if not is_peft(policy) and settings.reference == "model":
            frozen = PreferenceModel.frozen_copy(policy)
        cfg, task, strategy, tokenizer, source = run.cfg, run.task, run.strategy, run.tokenizer, run.source

        def load_reference():  # the eval metrics of a full model trained without a live reference
            return load_backbone(cfg.model, task, strategy, tokenizer, source)

        run.model = PreferenceModel(policy, settings, frozen, load_reference)
        run.param_groups = run.model.param_groups(run.param_groups)
        if settings.reference == "precomputed" and run.train_set is not None:
            run.train_set = precompute(run.model, run.train_set, task.collator(tokenizer),
                                       cfg.train.eval_batch_size or 2 * cfg.train.batch_size, cfg.hardware)
        run.record.setdefault("techniques", {})["preference"] = settings.as_dict()


technique = Preference()


def precompute(model, dataset, collator, batch_size: int, hardware):
    """The reference log-probs of every train row, added as columns (ref_logps; KTO: ref_kl_logps),
    computed once by the untrained policy (the adapter disabled for PEFT) on the training device."""
    import torch

    from llmft.runtime.trainer import use_cpu

    import os

    # each rank scores on its own GPU (the Trainer has not placed the model yet)
    device = torch.device("cpu") if use_cpu(hardware) else torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if next(model.encoder.parameters()).device.type != device.type:  # a quantized base is placed at load already
        model.encoder.to(device)
    was_training = model.training
    model.eval()
    from llmft.runtime.precision import precision

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision(hardware))
    from llmft.models.preference_losses import completion_logps

    def score(input_ids, attention_mask, completion_mask):
        if model.has_live_reference():
            return model.reference_logps(input_ids, attention_mask, completion_mask)
        with torch.no_grad():  # a full model before training is its own reference
            logits = model.encoder(input_ids=input_ids, attention_mask=attention_mask).logits
        return completion_logps(logits, input_ids, completion_mask)[0]

    ref, ref_kl = [], []
    try:
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = {k: v.to(device) for k, v in collator(rows).items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logps = score(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
                if "desirable" in batch:
                    ref.extend(logps.float().tolist())
                    ref_kl.extend(score(batch["kl_input_ids"], batch["kl_attention_mask"],
                                        batch["kl_completion_mask"]).float().tolist())
                else:
                    n = len(rows)
                    ref.extend([[a, b] for a, b in zip(logps[:n].float().tolist(), logps[n:].float().tolist())])
    finally:
        model.train(was_training)
    dataset = dataset.add_column("ref_logps", ref)
    return dataset.add_column("ref_kl_logps", ref_kl) if ref_kl else dataset
