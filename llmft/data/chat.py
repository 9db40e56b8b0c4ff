"""Chat files for SFT: OpenAI-style ``messages``, ShareGPT ``conversations`` and Alpaca
``instruction``/``input``/``output`` rows, each read as a list of {role, content} turns.

The layout comes from ``data.format`` when it names one, else from the file's keys (columns);
keys of two layouts, or of none, are refused rather than guessed. Torch-free.
"""
from __future__ import annotations

from llmft.core.errors import UserError

CHAT_FORMATS = ("messages", "sharegpt", "alpaca")  # data.format values; each reads JSON / JSON lines
PAIRS = "pairs"  # prompt_column + response_column (no data.format value: found by its columns)
SHAREGPT_KEY = "conversations"
ALPACA_KEYS = ("instruction", "input", "output")
# ShareGPT speakers as FastChat's ShareGPT data and its cleaned copies write them -> chat template roles
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant",
                  "bard": "assistant", "assistant": "assistant", "system": "system"}


def detect(columns, given: str | None, messages_column: str, pair: tuple[str, ...], source: str) -> str:
    """The layout of a split: one of CHAT_FORMATS, or PAIRS when ``pair``'s columns are all there.

    ``given``: data.format; a chat format is taken as said (its key must be there), anything else
    (null, json, csv) lets the keys decide. Prompt/response columns are read only when no chat key
    is present, as before chat formats existed."""
    keys = {name: layout_key(name, messages_column) for name in CHAT_FORMATS}
    found = ", ".join(columns)
    if given in CHAT_FORMATS:
        if keys[given] not in columns:
            raise UserError(f"{source}: data.format={given} reads '{keys[given]}' and the file's keys are: {found}; "
                            f"set data.format to the file's layout (messages, sharegpt, alpaca) or null to detect it")
        return given
    matched = [name for name, key in keys.items() if key in columns]
    if len(matched) > 1:
        raise UserError(f"{source}: the keys ({found}) fit {' and '.join(matched)} chats; say which with "
                        f"{' or '.join(f'data.format={m}' for m in matched)}")
    if matched:
        return matched[0]
    if all(column in columns for column in pair):
        return PAIRS
    raise UserError(f"{source}: no chat layout in the keys ({found}); sft reads '{messages_column}' "
                    f"(data.messages_column), ShareGPT '{SHAREGPT_KEY}', Alpaca 'instruction'/'input'/'output', "
                    f"or {' + '.join(repr(c) for c in pair)}; rename the keys or set "
                    f"data.format=messages|sharegpt|alpaca")


def layout_key(layout: str, messages_column: str) -> str:
    """The key a chat layout is recognised by."""
    return {"messages": messages_column, "sharegpt": SHAREGPT_KEY, "alpaca": ALPACA_KEYS[0]}[layout]


def read_chats(dataset, layout: str, messages_column: str, source: str, labelled: bool = True) -> list[list[dict]]:
    """Every row of ``dataset`` as [{role, content}, ...]; a malformed row is refused by file and
    row. ``labelled`` false (predict inputs): Alpaca's output is not read."""
    if layout == "messages":
        return [_messages(value, messages_column, source, row)
                for row, value in enumerate(dataset[messages_column], 1)]
    if layout == "sharegpt":
        return [_sharegpt(value, source, row) for row, value in enumerate(dataset[SHAREGPT_KEY], 1)]
    if layout == "alpaca":
        columns = dataset.column_names
        if labelled and "output" not in columns:
            raise UserError(f"{source}: Alpaca rows need an 'output' (the answer); keys are: {', '.join(columns)}")
        none = [None] * len(dataset)
        inputs = dataset["input"] if "input" in columns else none
        outputs = dataset["output"] if labelled else none
        return [alpaca_turns(i, x, o, source, row)
                for row, (i, x, o) in enumerate(zip(dataset["instruction"], inputs, outputs), 1)]
    raise ValueError(layout)


def alpaca_turns(instruction, input_, output, source: str, row: int) -> list[dict]:
    """The user turn is the instruction, then a blank line and the input when there is one (Stanford
    Alpaca's own prompt puts them in that order); the output is the assistant's turn."""
    for key, value, required in (("instruction", instruction, True), ("input", input_, False),
                                 ("output", output, output is not None)):
        if value is None and not required:
            continue
        if not isinstance(value, str) or (required and not value.strip()):
            what = "empty" if isinstance(value, str) or value is None else f"{type(value).__name__}, not text"
            raise UserError(f"{source}: row {row}: '{key}' is {what}")
    user = instruction + ("\n\n" + input_ if input_ and input_.strip() else "")
    turns = [{"role": "user", "content": user}]
    return turns + [{"role": "assistant", "content": output}] if output is not None else turns


def _messages(value, column: str, source: str, row: int) -> list[dict]:
    ok = isinstance(value, list) and value and all(
        isinstance(m, dict) and m.get("role") and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise UserError(f"{source}: row {row}: '{column}' must be a list of {{role, content}} with text content")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _sharegpt(value, source: str, row: int) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{source}: row {row}: '{SHAREGPT_KEY}' must be a non-empty list of {{from, value}}")
    turns = []
    for number, turn in enumerate(value, 1):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise UserError(f"{source}: row {row}: turn {number} must be {{from, value}} with text value")
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise UserError(f"{source}: row {row}: turn {number}: unknown ShareGPT role from={speaker!r}; "
                            f"known: {', '.join(SHAREGPT_ROLES)}")
        turns.append({"role": SHAREGPT_ROLES[speaker], "content": turn["value"]})
    return turns
