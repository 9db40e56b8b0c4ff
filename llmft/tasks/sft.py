"""Supervised fine-tuning of a causal LM on chats, with the tokenizer's chat template.

Each example is a chat (OpenAI ``messages``, ShareGPT, Alpaca: data/chat.py; or a prompt/response
pair). The loss covers the assistant turns only (``data.train_on``: every one, or the last): each
one's tokens and its end of turn, everything else masked (-100); label_turns finds them from the
chat template. Evaluation: loss and perplexity on the eval split, then generation for the eval
prompts (everything before the last assistant turn; left padding, KV cache, stops at the
template's end-of-turn token), scored against that turn with ROUGE-L (rouge_score) and exact match.
``data.packing=true``: the loss batches (train and eval) are packed into one row each, the same
labels kept (data/packing.py); generation never packs.
"""
from __future__ import annotations

import logging
import math

from llmft.core.errors import UserError, require
from llmft.data import chat
from llmft.models.generation import generate, generation_metrics
from llmft.tasks.base import Task, check_texts

log = logging.getLogger(__name__)
IGNORE = -100
CHAT = "chat"  # normalised column: the whole conversation
FELL_BACK = "_last_turn_only"  # tokenize's per-row flag: the template was not prefix-stable (label_turns)


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
        return []  # a chat layout's key or a prompt column: see check_inputs()

    def check_inputs(self, dataset, source: str) -> None:
        self._input_chats(dataset, source)

    def required_columns(self) -> list[str]:
        return []  # any chat layout is accepted; encode checks which one is there

    def model_kwargs(self) -> dict:
        return {}

    # ------------------------------------------------------------------ data
    def encode(self, dataset, source: str, is_train: bool):
        d = self.data_cfg
        layout = chat.detect(dataset.column_names, d.format, d.messages_column, (d.prompt_column, d.response_column),
                             source)
        system = [{"role": "system", "content": d.system_prompt}] if d.system_prompt else []
        if layout == chat.PAIRS:
            check_texts(dataset, source, [d.prompt_column, d.response_column])
            chats = [[*system, {"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
                     for prompt, response in zip(dataset[d.prompt_column], dataset[d.response_column])]
        else:
            chats = chat.read_chats(dataset, layout, d.messages_column, source)
            if layout == "alpaca":  # one prompt/answer pair, like prompt/response rows
                chats = [[*system, *c] for c in chats]
        trailing = 0
        for row, turns in enumerate(chats, 1):
            trailing += self._check_chat(turns, source, row)
        if trailing:
            log.warning("sft: %s: %d chats end with turns after their last assistant turn; those turns are dropped "
                        "(data.train_on=all_assistant trains on the assistant turns before them)", source, trailing)
        return dataset.add_column(CHAT, chats)

    def _check_chat(self, turns: list[dict], source: str, row: int) -> int:
        """Refuse a chat with nothing to train on; drop (in place) the turns after its last assistant
        turn under train_on=all_assistant (returns 1 when it did), so the chat ends with its target."""
        last = max((i for i, m in enumerate(turns) if m["role"] == "assistant" and i > 0), default=None)
        if self.train_on == "last" and last != len(turns) - 1 or last is None:
            why = ("must end with the assistant's turn (data.train_on=last)" if last is not None
                   else "needs an assistant turn after a prompt turn")
            raise UserError(f"{source}: row {row}: the chat {why}")
        targets = [last] if self.train_on == "last" else range(1, last + 1)
        for i in targets:
            if turns[i]["role"] == "assistant" and not turns[i]["content"].strip():  # nothing to learn
                raise UserError(f"{source}: row {row}: turn {i + 1}, the assistant's (a target), is empty")
        dropped = len(turns) - 1 - last
        del turns[last + 1:]
        return int(dropped > 0)

    @property
    def train_on(self) -> str:
        return getattr(self.data_cfg, "train_on", None) or "all_assistant"  # a model saved before the key

    def _input_chats(self, inputs, source: str) -> list[list[dict]]:
        """Predict inputs as chats so far: any chat layout (an Alpaca row without its output) or a prompt."""
        d = self.data_cfg
        given = d.format if d.format in chat.CHAT_FORMATS else None
        if given is not None and chat.layout_key(given, d.messages_column) not in inputs.column_names:
            given = None  # the training data's layout need not be the inputs'
        layout = chat.detect(inputs.column_names, given, d.messages_column, (d.prompt_column,), source)
        if layout == chat.PAIRS:
            check_texts(inputs, source, [d.prompt_column])
            system = [{"role": "system", "content": d.system_prompt}] if d.system_prompt else []
            return [[*system, {"role": "user", "content": p}] for p in inputs[d.prompt_column]]
        chats = chat.read_chats(inputs, layout, d.messages_column, source, labelled=False)
        if layout == "alpaca" and d.system_prompt:
            chats = [[{"role": "system", "content": d.system_prompt}, *c] for c in chats]
        return chats

    def tokenize(self, dataset, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("data.task=sft: the model's tokenizer has no chat template; use an instruct/chat "
                            "model (e.g. model=smollm2) or add a chat_template to its tokenizer_config.json")
        max_length = self.data_cfg.max_length

        def encode(batch):
            out = {"input_ids": [], "attention_mask": [], "labels": [], FELL_BACK: []}
            for turns in batch[CHAT]:
                ids, labels, fell_back = label_turns(tokenizer, turns, self.train_on)
                out["input_ids"].append(ids[:max_length])
                out["attention_mask"].append([1] * len(ids[:max_length]))
                out["labels"].append(labels[:max_length])
                out[FELL_BACK].append(fell_back)
            return out

        encoded = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenize")
        fell_back = sum(encoded[FELL_BACK])
        encoded = encoded.remove_columns(FELL_BACK)
        if fell_back:
            self.last_turn_fallback = getattr(self, "last_turn_fallback", 0) + fell_back
            log.warning("sft: the chat template renders %d of %d chats differently when cut after an earlier "
                        "assistant turn (e.g. it drops earlier reasoning); those train on their last turn only",
                        fell_back, len(encoded))
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
        report = {"dropped_no_target_tokens": getattr(self, "dropped_no_target", 0),
                  "chats_trained_on_last_turn_only": getattr(self, "last_turn_fallback", 0)}
        return {key: n for key, n in report.items() if n}

    def collator(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        padded = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE)  # pads labels with -100
        if not getattr(self.data_cfg, "packing", False):
            return padded
        from llmft.data.packing import PackingCollator

        return PackingCollator(padded)  # one row per batch, the response-only labels kept (data/packing.py)

    def wrap(self, model, param_groups, model_cfg) -> tuple:
        if getattr(self.data_cfg, "packing", False):
            from llmft.data.packing import prepare_model

            prepare_model(model)  # sdpa per packed sequence; the probe: apart, or a one-line refusal
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
        chats = self._input_chats(inputs, "predict.input_file")
        tokenizer = trainer.processing_class
        prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        generated = generate(trainer.model, tokenizer, prompts, generate_cfg)
        return [{"prompt": c, "generation": g} for c, g in zip(chats, generated)]


def label_turns(tokenizer, turns: list[dict], train_on: str) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, fell back) of one chat ending with an assistant turn. Labels: each target
    turn's tokens as the template renders them after its generation prompt, up to the next turn
    (content, end of turn: the model learns to stop); -100 elsewhere.

    A turn's span is found by rendering the chat up to it with the generation prompt, and up to and
    including it, and reading both as token prefixes of the whole chat. A template that renders an
    earlier turn differently once later turns follow (one that drops earlier reasoning) breaks that:
    the row then trains on its last turn only (fell back). The last turn's prompt must be a prefix of
    the chat, or no label can be placed: refused."""
    from jinja2 import TemplateError

    def ids(chat_turns, generation_prompt=False):
        try:
            text = tokenizer.apply_chat_template(chat_turns, tokenize=False, add_generation_prompt=generation_prompt)
        except TemplateError as err:  # e.g. "roles must alternate user/assistant": the data's shape, said in one line
            roles = "/".join(m["role"] for m in turns)
            raise UserError(f"data.task=sft: the tokenizer's chat template refuses a chat of turns {roles}: "
                            f"{str(err).splitlines()[0][:200]}") from None
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    full = ids(turns)
    last = len(turns) - 1
    targets = [last] if train_on == "last" else [i for i, m in enumerate(turns) if m["role"] == "assistant" and i > 0]
    spans, fell_back = [], False
    for i in reversed(targets):  # the last first: it decides whether the row can be labelled at all
        prompt = ids(turns[:i], generation_prompt=True)
        upto = full if i == last else ids(turns[: i + 1])
        if upto[: len(prompt)] == prompt and full[: len(upto)] == upto and len(upto) > len(prompt):
            spans.append((len(prompt), len(upto)))
        elif i == last:
            raise UserError("data.task=sft: the tokenizer's chat template does not render a chat's prompt as the "
                            "start of the whole chat, so its answer tokens cannot be found; use a model whose "
                            "template renders the prompt unchanged before the answer (e.g. ChatML)")
        else:
            spans, fell_back = spans[:1], True
            break
    labels = [IGNORE] * len(full)
    for start, end in spans:
        labels[start:end] = full[start:end]
    return full, labels, fell_back
