"""Prompt-based classification: a template turns an input into a cloze or a continuation, and a
verbalizer maps each label to words whose scores decide the label (zero_shot, few_shot, pet).

Scoring takes one forward pass per prompt and reads the LM's scores at one position only: the
mask token (masked LMs) or the next token after the prompt (causal LMs, left-padded so the
position is always the last and ``logits_to_keep=1`` skips the rest of the vocabulary matmuls).
A label's score is the log-sum-exp of its words' log-probabilities; a word of several tokens is
scored by its first token (use single-token words where the ranking matters).
"""
from __future__ import annotations

import logging

from llmft.core.errors import UserError

log = logging.getLogger(__name__)
MASK_SLOT = "{mask}"


def lm_kind(path: str, trust_remote_code: bool = False, revision: str | None = None) -> str:
    """"causal" or "masked": which LM head this model has (without loading its weights)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **({"revision": revision} if revision else {}))
    architectures = config.architectures or []
    if any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in architectures):
        return "masked"
    if any(a.endswith("ForCausalLM") for a in architectures) or (
            config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not architectures):
        return "causal"
    raise UserError(
        f"model.name_or_path={path}: prompting needs a model with a language-model head (a masked or "
        f"causal LM, e.g. model=smollm2); this one is {', '.join(architectures) or config.model_type}"
    )


def check_prompt(prompt_cfg, labels: list[str], kind: str) -> None:
    if not prompt_cfg.template or "{text}" not in prompt_cfg.template:
        raise UserError("data.prompt.template must contain the {text} slot, e.g. 'Tweet: {text}\\nSentiment:'")
    if kind == "masked" and MASK_SLOT not in prompt_cfg.template:
        raise UserError("data.prompt.template needs a {mask} slot for a masked LM, e.g. '{text} It was {mask}.'")
    if kind == "causal" and MASK_SLOT in prompt_cfg.template:
        raise UserError("data.prompt.template: a causal LM scores the next token; end the template where the "
                        "label word should follow instead of using {mask}")
    verbalizer = prompt_cfg.verbalizer or {}
    missing = [label for label in labels if not verbalizer.get(label)]
    if missing:
        raise UserError(f"data.prompt.verbalizer has no words for {missing}; give each label a list of words")


def render(template: str, text: str, tokenizer) -> str:
    return template.replace("{text}", text).replace(MASK_SLOT, tokenizer.mask_token or "")


def _length(prompt: str, tokenizer) -> int:
    return len(tokenizer(prompt)["input_ids"])  # with special tokens, as the task tokenizes it


def text_budget(template: str, tokenizer, max_length: int, what: str = "data.prompt.template") -> int:
    """Tokens left for {text} in prompts of ``template`` (demonstrations included) within
    ``max_length``; a template that leaves none is refused, naming both numbers."""
    fixed = _length(render(template, "", tokenizer), tokenizer)
    if fixed >= max_length:
        raise UserError(f"{what} takes {fixed} tokens without the input, data.max_length={max_length}: nothing "
                        f"is left for {{text}}; raise data.max_length (e.g. to {fixed + 64}) or shorten the prompt")
    return max_length - fixed


def typed(key: str) -> bool:
    """Whether ``key`` was given on the command line (Hydra's task overrides: a sweep's values
    included). Outside a Hydra job every value counts as given."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True
    return any(not o.startswith("~") and o.lstrip("+").split("=", 1)[0] == key
               for o in HydraConfig.get().overrides.task)


def prompt_length(templates: list[str], tokenizer, data_cfg) -> int:
    """data.max_length for prompts of ``templates`` (demonstrations included). As typed on the
    command line it is the whole prompt's length (a template that leaves no room is refused later,
    naming both numbers). Otherwise the data config's value is the input's budget and the longest
    template's tokens come on top, within the tokenizer's limit for the model."""
    if typed("data.max_length"):
        return data_cfg.max_length
    fixed = max(_length(render(t, "", tokenizer), tokenizer) for t in templates)
    wanted = fixed + data_cfg.max_length
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 10 ** 6:  # transformers' "no limit" is a huge int
        wanted = min(wanted, limit)
    if wanted > data_cfg.max_length:
        log.info("data.max_length=%d for the prompts: the template takes %d tokens, data.max_length=%d is left "
                 "for the input (data.max_length=N on the command line sets the whole prompt's length)",
                 wanted, fixed, data_cfg.max_length)
    return max(wanted, data_cfg.max_length)


def fit(template: str, text: str, tokenizer, max_length: int) -> tuple[str, bool]:
    """The prompt of ``text`` within ``max_length`` tokens: only the input is shortened (from its
    end), so the template, the demonstrations, the answer cue and the mask stay whole (tokenizing
    with truncation would cut the end: the cue a causal LM continues, or the mask). Returns the
    prompt and whether the input was cut."""
    prompt = render(template, text, tokenizer)
    if _length(prompt, tokenizer) <= max_length:
        return prompt, False
    budget = text_budget(template, tokenizer, max_length)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    while budget > 0:
        ids = encoding["input_ids"][:budget]
        # the original characters up to the last kept token (fast tokenizers), else the decoded ids
        head = text[: encoding["offset_mapping"][len(ids) - 1][1]] if tokenizer.is_fast else tokenizer.decode(ids)
        prompt = render(template, head, tokenizer)
        excess = _length(prompt, tokenizer) - max_length
        if excess <= 0:
            return prompt, True
        budget -= excess  # tokens merged differently at the seams: cut that many more
    return render(template, "", tokenizer), True


def label_token_ids(verbalizer: dict, labels: list[str], tokenizer) -> list[list[int]]:
    """The first token of each verbalizer word, per label (words as they follow the prompt)."""
    ids = []
    for label in labels:
        first = []
        for word in verbalizer[label]:
            tokens = tokenizer(word, add_special_tokens=False)["input_ids"]
            if not tokens:
                raise UserError(f"data.prompt.verbalizer: {word!r} ({label}) is no token at all")
            if len(tokens) > 1:
                log.warning("verbalizer word %r (%s) is %d tokens; its first token %r is scored",
                            word, label, len(tokens), tokenizer.decode(tokens[:1]))
            first.append(tokens[0])
        ids.append(sorted(set(first)))
    return ids


def prompt_classifier(lm, label_ids: list[list[int]], kind: str, mask_token_id: int | None):
    """Wrap an LM as a classifier whose logits are the verbalizer scores (one per label)."""
    import torch
    import torch.nn as nn
    from transformers.modeling_outputs import SequenceClassifierOutput

    class PromptClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm
            self.config = lm.config
            self.label_ids = label_ids
            self.register_buffer("calibration", torch.zeros(len(label_ids)), persistent=False)

        def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
            kwargs.pop("token_type_ids", None) if kind == "causal" else None
            if kind == "causal":  # left padding: the next-token scores sit at the last position
                out = self.lm(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, **kwargs)
                scores = out.logits[:, -1, :]
            else:
                out = self.lm(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
                has_mask = input_ids == mask_token_id
                if not bool(has_mask.any(-1).all()):  # argmax would silently score position 0
                    raise UserError("a prompt has no mask token left to score; raise data.max_length")
                positions = has_mask.float().argmax(-1)
                scores = out.logits[torch.arange(len(input_ids)), positions]
            logprobs = scores.float().log_softmax(-1)
            logits = torch.stack([logprobs[:, ids].logsumexp(-1) for ids in self.label_ids], -1)
            logits = logits - self.calibration
            loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return SequenceClassifierOutput(loss=loss, logits=logits)

    return PromptClassifier()


def calibrate(model, tokenizer, template: str, content_free: str, max_length: int) -> list[float]:
    """Contextual calibration (Zhao et al., 2021): the label scores of a content-free input
    become the offset every prediction is measured against (log p(label|x) - log p(label|N/A)).
    The content-free prompt is rendered and tokenized exactly as the scored ones are."""
    import torch

    model.calibration.zero_()
    prompt, _ = fit(template, content_free, tokenizer, max_length)
    batch = tokenizer([prompt], return_tensors="pt", truncation=True, max_length=max_length)
    batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
    with torch.no_grad():
        logits = model(**batch).logits[0]
    offset = logits.log_softmax(-1)
    model.calibration.copy_(offset)
    return [round(x, 4) for x in offset.tolist()]
