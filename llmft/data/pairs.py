"""Preference rows: a prompt with a chosen and a rejected completion (DPO, IPO, ORPO, SimPO, reward
models), or one completion labelled desirable or not (KTO's unpaired rows).

Each prompt and completion is text or a list of {role, content} messages (a chat); a row mixing
both is read as a chat (a text prompt is the user's turn, a text completion the assistant's).
Chats without a prompt column share their prompt as the common first turns of chosen and
rejected (Anthropic HH's layout; TRL's implicit prompt). Torch-free apart from the tokenizer.
"""
from __future__ import annotations

from llmft.core.errors import UserError

PAIRED = ("prompt", "chosen", "rejected")
UNPAIRED = ("prompt", "completion", "desirable")
_LABEL_TEXT = {"true": True, "false": False}  # a CSV cell is text: the unpaired label as written


def is_paired(dataset) -> bool:
    return "chosen" in dataset.column_names


def encode_rows(dataset, source: str, data_cfg, allow_unpaired: bool):
    """Validate a raw split and return it with only the normalised columns: PAIRED, or UNPAIRED
    (``allow_unpaired``: KTO's train split). Every refusal names the file and row."""
    d = data_cfg
    columns = dataset.column_names
    found = ", ".join(columns)
    if d.chosen_column in columns or d.rejected_column in columns:
        missing = [c for c in (d.chosen_column, d.rejected_column) if c not in columns]
        if missing:
            raise UserError(f"{source}: no column '{missing[0]}' for the pair; the file's columns are: {found}")
        return _paired(dataset, source, d)
    if d.completion_column in columns:
        if d.label_column not in columns:
            raise UserError(f"{source}: unpaired rows need a '{d.label_column}' column (data.label_column: true for "
                            f"a desirable completion, false otherwise); the file's columns are: {found}")
        if not allow_unpaired:
            raise UserError(f"{source}: unpaired rows ('{d.completion_column}' + '{d.label_column}') train only "
                            f"train.preference.loss=kto, and eval/validation splits need pairs; give "
                            f"'{d.chosen_column}' and '{d.rejected_column}' columns")
        return _unpaired(dataset, source, d)
    raise UserError(f"{source}: no preference columns: pairs need '{d.prompt_column}', '{d.chosen_column}', "
                    f"'{d.rejected_column}' (data.prompt_column / chosen_column / rejected_column), unpaired rows "
                    f"'{d.prompt_column}', '{d.completion_column}', '{d.label_column}'; "
                    f"the file's columns are: {found}")


def _paired(dataset, source: str, d):
    from datasets import Dataset

    has_prompt = d.prompt_column in dataset.column_names
    if not has_prompt and not isinstance(dataset[0][d.chosen_column], list):
        raise UserError(f"{source}: no column '{d.prompt_column}' (data.prompt_column); text pairs need it (only "
                        f"chat pairs can share their prompt as common first turns); the file's columns are: "
                        f"{', '.join(dataset.column_names)}")
    prompts = dataset[d.prompt_column] if has_prompt else [None] * len(dataset)
    out = {name: [] for name in PAIRED}
    for row, (prompt, chosen, rejected) in enumerate(zip(prompts, dataset[d.chosen_column],
                                                          dataset[d.rejected_column]), 1):
        if prompt is None and not has_prompt:
            prompt, chosen, rejected = _shared_prompt(chosen, rejected, d, source, row)
        prompt = cell_value(prompt, d.prompt_column, source, row)
        chosen = cell_value(chosen, d.chosen_column, source, row)
        rejected = cell_value(rejected, d.rejected_column, source, row)
        prompt, chosen, rejected = as_chats(prompt, chosen, rejected)
        if chosen == rejected:
            raise UserError(f"{source}: row {row}: '{d.chosen_column}' and '{d.rejected_column}' are identical; "
                            f"a pair must differ (drop the row)")
        out["prompt"].append(prompt)
        out["chosen"].append(chosen)
        out["rejected"].append(rejected)
    return Dataset.from_dict(out)


def _unpaired(dataset, source: str, d):
    from datasets import Dataset

    csv = source.lower().endswith((".csv", ".tsv")) or getattr(d, "format", None) == "csv"
    if d.prompt_column not in dataset.column_names:
        raise UserError(f"{source}: no column '{d.prompt_column}' (data.prompt_column); the file's columns are: "
                        f"{', '.join(dataset.column_names)}")
    out = {name: [] for name in UNPAIRED}
    for row, (prompt, completion, label) in enumerate(zip(dataset[d.prompt_column], dataset[d.completion_column],
                                                          dataset[d.label_column]), 1):
        prompt = cell_value(prompt, d.prompt_column, source, row)
        completion = cell_value(completion, d.completion_column, source, row)
        prompt, completion = as_chats(prompt, completion)
        if isinstance(label, bool):
            desirable = label
        elif csv and isinstance(label, str) and label.strip().lower() in _LABEL_TEXT:
            desirable = _LABEL_TEXT[label.strip().lower()]
        else:
            raise UserError(f"{source}: row {row}: '{d.label_column}' is {label!r}; an unpaired label is true "
                            f"(desirable) or false (undesirable)")
        out["prompt"].append(prompt)
        out["completion"].append(completion)
        out["desirable"].append(desirable)
    return Dataset.from_dict(out)


def _shared_prompt(chosen, rejected, d, source: str, row: int):
    """A chat pair without a prompt column: the prompt is the turns chosen and rejected share."""
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise UserError(f"{source}: row {row}: without a '{d.prompt_column}' column, '{d.chosen_column}' and "
                        f"'{d.rejected_column}' must both be chats (lists of {{role, content}})")
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise UserError(f"{source}: row {row}: '{d.chosen_column}' and '{d.rejected_column}' share no first turns "
                        f"to read as the prompt; add a '{d.prompt_column}' column")
    return chosen[:n], chosen[n:], rejected[n:]


def cell_value(value, column: str, source: str, row: int):
    """Non-empty text, or a non-empty list of {role, content} messages with text content."""
    if isinstance(value, str):
        if not value.strip():
            raise UserError(f"{source}: row {row}: column '{column}' is empty")
        return value
    if isinstance(value, list) and value:
        for turn in value:
            if not (isinstance(turn, dict) and isinstance(turn.get("role"), str)
                    and isinstance(turn.get("content"), str)):
                raise UserError(f"{source}: row {row}: column '{column}' must be text or a list of {{role, content}} "
                                f"with text content")
            if not turn["content"].strip():
                raise UserError(f"{source}: row {row}: column '{column}': a {turn['role']} turn is empty")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    what = "empty" if value is None or value == [] else f"{type(value).__name__} {value!r}, not text"
    raise UserError(f"{source}: row {row}: column '{column}' is {what}")


def as_chats(prompt, *completions):
    """All text, or all chats: a text prompt becomes the user's turn, a text completion the assistant's."""
    if not any(isinstance(v, list) for v in (prompt, *completions)):
        return (prompt, *completions)
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return (prompt, *([{"role": "assistant", "content": c}] if isinstance(c, str) else c for c in completions))


def unpair(dataset):
    """Paired rows -> unpaired (TRL's unpair_preference_dataset): every chosen completion desirable,
    then every rejected one undesirable, so that row i's neighbour i+1 (KTO's mismatched pair for
    its KL estimate) has another prompt."""
    from datasets import Dataset

    n = len(dataset)
    return Dataset.from_dict({"prompt": list(dataset["prompt"]) * 2,
                              "completion": list(dataset["chosen"]) + list(dataset["rejected"]),
                              "desirable": [True] * n + [False] * n})


def token_ids(prompt, completion, tokenizer, max_length: int, *, source: str = "data", row: int = 0
              ) -> tuple[list[int], list[int], dict]:
    """(prompt ids, completion ids, what was cut) of one row; see pair_token_ids."""
    prompt_ids, (completion_ids,), cut = pair_token_ids(prompt, [completion], tokenizer, max_length,
                                                        source=source, row=row)
    return prompt_ids, completion_ids, {"prompt_cut": cut["prompt_cut"], "completion_cut": cut["completion_cut"][0]}


def pair_token_ids(prompt, completions: list, tokenizer, max_length: int, *, source: str = "data", row: int = 0
                   ) -> tuple[list[int], list[list[int]], dict]:
    """One prompt's ids and each completion's ids, cut to ``max_length`` together, so that a pair's
    chosen and rejected read the same (cut) prompt.

    Chats: the prompt is the chat template's rendering with the generation prompt, the completion
    what the template adds for the assistant turn up to its end-of-turn (the tokenizer's EOS; what
    follows it, e.g. ChatML's newline, is never generated). Text: the prompt as the tokenizer
    encodes it (with its BOS), the completion's tokens and EOS. The split point is where the prompt's
    ids and the whole row's diverge (as TRL's), so tokens merging across the boundary stay whole.

    Over ``max_length``: each completion keeps its start and at least half the budget (all of it when
    shorter); the prompt keeps its end (left truncation: the question, as few-shot prompt fitting
    keeps the query). Returns {"prompt_cut": n, "completion_cut": [n per completion]}."""
    if max_length < 2:
        raise UserError(f"data.max_length={max_length}: a prompt and a completion token need at least 2")
    chat = isinstance(prompt, list)
    eos = tokenizer.eos_token_id
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(f"{source}: row {row}: a chat (message list) needs the tokenizer's chat template and "
                            f"this model's tokenizer has none; use a chat model or give text")
        prompt_ids = _template(tokenizer, prompt, True, source, row)
        wholes = [_template(tokenizer, prompt + c, False, source, row) for c in completions]
    else:
        prompt_ids = _strip_eos(tokenizer(prompt)["input_ids"], eos)
        wholes = [_strip_eos(tokenizer(prompt + c)["input_ids"], eos) for c in completions]
    split = min(_common_prefix(prompt_ids, w) for w in wholes)
    if split == 0:
        raise UserError(f"{source}: row {row}: the prompt's tokens are not the start of prompt + completion "
                        f"(the chat template renders them differently); use a template that renders the prompt "
                        f"unchanged before the answer")
    prompt_ids = prompt_ids[:split]
    parts = []
    for whole in wholes:
        part = whole[split:]
        if chat and eos is not None and eos in part:  # up to and including the assistant turn's end
            part = part[: len(part) - part[::-1].index(eos)]
        elif not chat and eos is not None:
            part = part + [eos]
        if not part:
            raise UserError(f"{source}: row {row}: a completion has no tokens after the prompt")
        parts.append(part)
    longest = max(len(p) for p in parts)
    cut = {"prompt_cut": 0, "completion_cut": [0] * len(parts)}
    if len(prompt_ids) + longest > max_length:
        room = max(max_length - len(prompt_ids), min(longest, max_length // 2))
        keep = max_length - room
        cut["prompt_cut"] = len(prompt_ids) - min(len(prompt_ids), keep)
        prompt_ids = prompt_ids[len(prompt_ids) - min(len(prompt_ids), keep):]
        cut["completion_cut"] = [max(0, len(p) - room) for p in parts]
        parts = [p[:room] for p in parts]
    return prompt_ids, parts, cut


def _template(tokenizer, turns, generation_prompt: bool, source: str, row: int) -> list[int]:
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as err:
        roles = "/".join(m["role"] for m in turns)
        raise UserError(f"{source}: row {row}: the tokenizer's chat template refuses a chat of turns {roles}: "
                        f"{str(err).splitlines()[0][:200]}") from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes its own BOS


def _strip_eos(ids: list[int], eos) -> list[int]:
    return ids[:-1] if eos is not None and ids and ids[-1] == eos else ids


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
