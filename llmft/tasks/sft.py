"""Supervised fine-tuning of a causal LM on chats, with the tokenizer's chat template.

Each example is a chat whose last turn is the assistant's (a ``messages`` column, or a
prompt/response pair). The loss covers the response tokens only: everything the chat template
renders before the assistant's answer is masked (-100). Evaluation: loss and perplexity on the
eval split, then generation for the eval prompts (left padding, KV cache, stops at the template's
end-of-turn token), scored with ROUGE-L (rouge_score) and exact match. ``data.packing=true``: the
loss batches (train and eval) are packed into one row each, the same labels kept (data/packing.py);
generation never packs.
"""
from __future__ import annotations

import logging
import math

from llmft.core.errors import UserError, require
from llmft.models.generation import generate, generation_metrics
from llmft.tasks.base import Task, check_texts

log = logging.getLogger(__name__)
IGNORE = -100
CHAT = "chat"  # normalised column: the whole conversation


class SFT(Task):
    name = "sft"
    auto_model = "AutoModelForCausalLM"
    logits = "causal"
    aux_kinds = ("lm",)
    loss_counts_tokens = True
    loss_kind = "causal"
    peft_task_type = "CAUSAL_LM"
    primary_metric = "rougeL"
    input_column_keys = ("prompt_column",)
    answer_column_key = "response_column"

    @classmethod
    def validate_config(cls, cfg) -> None:
        super().validate_config(cfg)
        if cfg.data.packing and "strategy" in cfg:  # virtual tokens would be shared by every packed sequence
            require("num_virtual_tokens" not in cfg.strategy, "data.packing",
                    f"strategy={cfg.strategy.name} puts virtual tokens before the row, which every packed "
                    f"sequence would share; set data.packing=false")
        if cfg.data.packing and "train" in cfg and cfg.train.distill.teacher:  # it keys the cache by padded rows
            require(not cfg.train.distill.cache, "data.packing",
                    "does not combine with train.distill.cache=true (set one of them to false)")

    def input_columns(self) -> list[str]:
        return []  # a messages column or a prompt column: see prompts()

    def check_inputs(self, dataset, source: str) -> None:
        d = self.data_cfg
        if d.messages_column in dataset.column_names:
            for row, messages in enumerate(dataset[d.messages_column]):
                ok = isinstance(messages, list) and messages and all(
                    isinstance(m, dict) and m.get("role") and isinstance(m.get("content"), str) for m in messages)
                if not ok:
                    raise UserError(f"{source}: row {row + 1}: '{d.messages_column}' must be a list of "
                                    f"{{role, content}} with text content")
        elif d.prompt_column in dataset.column_names:
            check_texts(dataset, source, [d.prompt_column])

    def required_columns(self) -> list[str]:
        return []  # either layout is accepted; encode checks which one is there

    def model_kwargs(self) -> dict:
        return {}

    # ------------------------------------------------------------------ data
    def encode(self, dataset, source: str, is_train: bool):
        d = self.data_cfg
        columns = dataset.column_names
        if d.messages_column in columns:
            chats = [self._check_chat(m, source, row) for row, m in enumerate(dataset[d.messages_column])]
        elif d.prompt_column in columns and d.response_column in columns:
            system = [{"role": "system", "content": d.system_prompt}] if d.system_prompt else []
            chats = []
            check_texts(dataset, source, [d.prompt_column, d.response_column])
            for row, (prompt, response) in enumerate(zip(dataset[d.prompt_column], dataset[d.response_column])):
                chats.append([*system, {"role": "user", "content": prompt}, {"role": "assistant", "content": response}])
        else:
            raise UserError(f"{source}: needs a '{d.messages_column}' column (data.messages_column) or "
                            f"'{d.prompt_column}' + '{d.response_column}' columns; columns are: {', '.join(columns)}")
        return dataset.add_column(CHAT, chats)

    @staticmethod
    def _check_chat(messages, source: str, row: int) -> list[dict]:
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and m.get("role") and isinstance(m.get("content"), str) for m in messages)
        if not ok or messages[-1]["role"] != "assistant":
            raise UserError(f"{source}: row {row + 1}: messages must be a list of {{role, content}} ending "
                            f"with the assistant's turn")
        if not messages[-1]["content"].strip():  # nothing to learn, as an empty 'response' would be
            raise UserError(f"{source}: row {row + 1}: the assistant's turn (the target) is empty")
        return [{"role": m["role"], "content": m["content"]} for m in messages]

    def tokenize(self, dataset, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("data.task=sft: the model's tokenizer has no chat template; use an instruct/chat "
                            "model (e.g. model=smollm2) or add a chat_template to its tokenizer_config.json")
        max_length = self.data_cfg.max_length

        def encode(batch):
            out = {"input_ids": [], "attention_mask": [], "labels": []}
            for chat in batch[CHAT]:
                prompt = tokenizer.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True)
                full = tokenizer.apply_chat_template(chat, tokenize=False)
                prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
                labels = [IGNORE] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids):]
                out["input_ids"].append(ids)
                out["attention_mask"].append([1] * len(ids))
                out["labels"].append(labels)
            return out

        encoded = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenize")
        # A prompt that fills max_length leaves no response token: nothing to learn, and a batch of
        # only such rows divides the loss by zero. Dropped and counted (results.json "data_report").
        kept = encoded.filter(lambda row: any(t != IGNORE for t in row["labels"]), desc="drop rows without a target")
        dropped = len(encoded) - len(kept)
        if dropped:
            self.dropped_no_target = getattr(self, "dropped_no_target", 0) + dropped
            log.warning("sft: %d of %d examples have no response token within data.max_length=%d; dropped",
                        dropped, len(encoded), max_length)
        if len(encoded) and not len(kept):
            raise UserError(f"data.max_length={max_length}: every example's prompt fills it, so no response token "
                            f"is left to train or evaluate on; raise data.max_length")
        return kept

    def data_report(self) -> dict:
        dropped = getattr(self, "dropped_no_target", 0)
        return {"dropped_no_target_tokens": dropped} if dropped else {}

    def collator(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        padded = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE)  # pads labels with -100
        if not getattr(self.data_cfg, "packing", False):
            return padded
        from llmft.data.packing import PackingCollator

        return PackingCollator(padded)  # one row per batch, the response-only labels kept (data/packing.py)

    def wrap(self, model, param_groups, model_cfg) -> tuple:
        if getattr(self.data_cfg, "packing", False):
            from llmft.data.packing import check_model

            check_model(model)  # its attention keeps packed sequences apart, or a one-line refusal
        return model, param_groups

    # ------------------------------------------------------------ evaluation
    def evaluate(self, trainer, tokenized, raw, generate_cfg=None) -> tuple[dict, list[dict]]:
        loss = trainer.evaluate(eval_dataset=tokenized)["eval_loss"]
        metrics = {"loss": round(loss, 5), "perplexity": round(math.exp(min(loss, 50)), 4)}
        chats = raw[CHAT]
        if generate_cfg is not None and generate_cfg.max_examples is not None:
            chats = chats[: generate_cfg.max_examples]
        tokenizer = trainer.processing_class
        prompts = [tokenizer.apply_chat_template(c[:-1], tokenize=False, add_generation_prompt=True) for c in chats]
        generations = generate(trainer.model, tokenizer, prompts, generate_cfg)
        references = [c[-1]["content"] for c in chats]
        metrics.update(generation_metrics(generations, references))
        records = [{"prompt": c[:-1], "reference": ref, "generation": gen}
                   for c, ref, gen in zip(chats, references, generations)]
        return metrics, records

    def predict(self, trainer, inputs, generate_cfg=None) -> list[dict]:
        """Generate an answer for each input: a chat so far (messages) or a prompt."""
        d = self.data_cfg
        if d.messages_column in inputs.column_names:
            chats = [[{"role": m["role"], "content": m["content"]} for m in ms] for ms in inputs[d.messages_column]]
        elif d.prompt_column in inputs.column_names:
            system = [{"role": "system", "content": d.system_prompt}] if d.system_prompt else []
            chats = [[*system, {"role": "user", "content": p}] for p in inputs[d.prompt_column]]
        else:
            raise UserError(f"predict.input_file: needs a '{d.messages_column}' or '{d.prompt_column}' column")
        tokenizer = trainer.processing_class
        prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        generated = generate(trainer.model, tokenizer, prompts, generate_cfg)
        return [{"prompt": c, "generation": g} for c, g in zip(chats, generated)]
