"""Preference tuning of a causal LM (DPO, IPO, ORPO, SimPO, KTO: train.preference).

Rows (data/pairs.py): a prompt with a chosen and a rejected completion, text or chat messages;
KTO also reads unpaired rows (a completion labelled desirable or not) for its train split. Each
row tokenizes to the prompt + completion ids and a completion mask (the completion and its EOS /
end-of-turn); a pair's two rows share the same (cut) prompt. The model and its loss:
models/preference.py, built by techniques/preference.py. Evaluation is on pairs: reward accuracy
(the loss's reward of chosen above rejected), margin, log-probs per token, the KL to the reference,
and the baseline, the reference model's own preference.
"""
from __future__ import annotations

from llmft.core.errors import UserError
from llmft.data import pairs
from llmft.tasks.base import Task


class Preference(Task):
    name = "preference"
    auto_model = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    primary_metric = "reward_accuracy"
    logits = None  # its outputs are per-pair statistics, not scores the logit techniques could reweight
    input_column_keys = ("prompt_column",)
    answer_column_key = "chosen_column"

    def __init__(self, data_cfg, labels=None, settings: dict | None = None):
        super().__init__(data_cfg, labels)
        self.settings = settings  # train.preference, resolved (models/preference.Settings); set by its technique
        self._baseline: dict = {}
        self._cut = {"prompts_cut": 0, "completions_cut": 0}

    def input_columns(self) -> list[str]:
        return [self.data_cfg.prompt_column]

    def required_columns(self) -> list[str]:
        return []  # paired or unpaired: encode checks which

    def check_inputs(self, dataset, source: str) -> None:
        if self.data_cfg.prompt_column not in dataset.column_names:
            raise UserError(f"{source}: no column '{self.data_cfg.prompt_column}' (data.prompt_column); the file's "
                            f"columns are: {', '.join(dataset.column_names)}")

    # ------------------------------------------------------------------ data
    def encode(self, dataset, source: str, is_train: bool):
        return pairs.encode_rows(dataset, source, self.data_cfg, allow_unpaired=is_train)

    def tokenize(self, dataset, tokenizer):
        max_length = self.data_cfg.max_length
        paired = pairs.is_paired(dataset)
        rows = list(zip(dataset["prompt"], dataset["chosen"], dataset["rejected"])) if paired else \
            list(zip(dataset["prompt"], dataset["completion"]))
        out = {"input_ids": [], "completion_mask": []}
        if not paired:
            out.update(desirable=list(dataset["desirable"]), kl_input_ids=[], kl_completion_mask=[])
        for row, (prompt, *completions) in enumerate(rows, 1):
            if not paired:  # KTO's mismatched pair: this prompt with the next row's completion (TRL's KL pairs)
                completions = [completions[0], rows[row % len(rows)][1]]
            prompt_ids, parts, cut = pairs.pair_token_ids(prompt, completions, tokenizer, max_length,
                                                          source="the split", row=row)
            self._cut["prompts_cut"] += bool(cut["prompt_cut"])
            self._cut["completions_cut"] += sum(bool(n) for n in cut["completion_cut"][: 2 if paired else 1])
            ids = [prompt_ids + p for p in parts]
            masks = [[0] * len(prompt_ids) + [1] * len(p) for p in parts]
            if paired:
                out["input_ids"].append(ids)
                out["completion_mask"].append(masks)
            else:
                out["input_ids"].append(ids[0])
                out["completion_mask"].append(masks[0])
                out["kl_input_ids"].append(ids[1])
                out["kl_completion_mask"].append(masks[1])
        from datasets import Dataset

        # readers of the plain columns (the retention report) find an attention mask too
        out["attention_mask"] = [[[1] * len(x) for x in ids] if paired else [1] * len(ids) for ids in out["input_ids"]]
        return Dataset.from_dict(out)

    def data_report(self) -> dict:
        return {key: n for key, n in self._cut.items() if n}

    def collator(self, tokenizer):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        return PreferenceCollator(pad)

    # ------------------------------------------------------------ evaluation
    def evaluate(self, trainer, tokenized, raw, generate_cfg=None) -> tuple[dict, list[dict]]:
        from llmft.models.preference import summarise

        if "desirable" in tokenized.column_names:  # e.g. llmft eval cutting its eval split from an unpaired file
            raise UserError("data.eval_file: the split to evaluate holds unpaired rows; reward accuracy needs pairs: "
                            "give data.eval_file=PATH with chosen and rejected columns")
        output = trainer.predict(tokenized, metric_key_prefix="eval")
        stats = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        metrics, self._baseline, records = summarise(stats, trainer.model.settings)
        for record, prompt in zip(records, raw["prompt"]):
            record["prompt"] = prompt
        return metrics, records

    def baseline(self, train, eval_split) -> dict:
        return dict(self._baseline)  # the reference's own preference on the eval split (set by evaluate)

    def warnings(self, metrics: dict, baseline: dict, records: list[dict]) -> list[str]:
        ours, reference = metrics.get("reward_accuracy"), baseline.get("reward_accuracy")
        if ours is None or reference is None or ours > reference:
            return []
        return [f"reward_accuracy {ours:.4f} is no better than the reference model's own preference accuracy "
                f"{reference:.4f}"]

    def predict(self, trainer, inputs, generate_cfg=None) -> list[dict]:
        """A completion generated for each prompt (text, or a chat through the chat template)."""
        from llmft.models.generation import generate

        self.check_inputs(inputs, "predict.input_file")
        tokenizer = trainer.processing_class
        prompts = list(inputs[self.data_cfg.prompt_column])
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if isinstance(p, list)
                 else p for p in prompts]
        model = getattr(trainer.model, "encoder", trainer.model)
        chat = any(isinstance(p, list) for p in prompts)
        generated = generate(model, tokenizer, texts, generate_cfg, add_special_tokens=not chat)
        return [{"prompt": p, "generation": g} for p, g in zip(prompts, generated)]

    # ------------------------------------------------------------ saved model
    def metadata(self) -> dict:
        return {"task": self.name, "preference": self.settings}

    @classmethod
    def from_metadata(cls, data_cfg, meta: dict) -> "Preference":
        return cls(data_cfg, settings=meta.get("preference"))

    def wrap_saved(self, model, model_dir, meta: dict):
        """The saved policy with its reference: the adapter disabled, or the base model loaded when
        first scored (a full model)."""
        from llmft.models.preference import PreferenceModel, Settings

        settings = Settings(**(self.settings or {}))

        def load_base():
            from llmft.models.loading import load_model, load_tokenizer, revision_kwargs

            trusted = bool(meta.get("trust_remote_code"))  # load_saved refused it unless the command line allows
            return load_model(meta["base_model"], self, load_tokenizer(str(model_dir), trusted), trusted,
                              **revision_kwargs(meta.get("revision")))

        return PreferenceModel(model, settings, load_reference=load_base)


class PreferenceCollator:
    """Rows -> one batch: pairs as [2B, T] (chosen rows, then rejected rows), unpaired rows as [B, T]
    with their KL rows; right padded; the attention mask from the lengths."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        first = features[0]
        if "desirable" in first:
            batch = self._pad([f["input_ids"] for f in features], [f["completion_mask"] for f in features])
            kl = self._pad([f["kl_input_ids"] for f in features], [f["kl_completion_mask"] for f in features])
            batch.update({f"kl_{k}": v for k, v in kl.items()})
            batch["desirable"] = torch.tensor([bool(f["desirable"]) for f in features])
            if "ref_logps" in first:
                batch["ref_logps"] = torch.tensor([f["ref_logps"] for f in features], dtype=torch.float32)
                batch["ref_kl_logps"] = torch.tensor([f["ref_kl_logps"] for f in features], dtype=torch.float32)
            return batch
        ids = [f["input_ids"][0] for f in features] + [f["input_ids"][1] for f in features]
        if "completion_mask" not in first:  # the ids alone (the retention report's hidden states)
            return self._pad(ids, [[] for _ in ids])
        masks = [f["completion_mask"][0] for f in features] + [f["completion_mask"][1] for f in features]
        batch = self._pad(ids, masks)
        if "ref_logps" in first:
            batch["ref_logps"] = torch.tensor([f["ref_logps"][0] for f in features] +
                                              [f["ref_logps"][1] for f in features], dtype=torch.float32)
        return batch

    def _pad(self, ids: list, masks: list) -> dict:
        import torch

        width = max(len(x) for x in ids)
        out = {"input_ids": torch.full((len(ids), width), self.pad_id, dtype=torch.long),
               "attention_mask": torch.zeros((len(ids), width), dtype=torch.long),
               "completion_mask": torch.zeros((len(ids), width), dtype=torch.long)}
        for i, (x, m) in enumerate(zip(ids, masks)):
            out["input_ids"][i, : len(x)] = torch.tensor(x)
            out["attention_mask"][i, : len(x)] = 1
            out["completion_mask"][i, : len(m)] = torch.tensor(m)
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"],
                "completion_mask": out["completion_mask"]}
