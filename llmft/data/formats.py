"""File layouts the generic readers (csv, json lines) do not cover; a task names the ones it
reads (``Task.file_layouts``), so the data loader needs no task names."""
from __future__ import annotations

import json

from llmft.core.errors import UserError


def check_bio(tag: str, where: str) -> None:
    if tag != "O" and not (len(tag) > 2 and tag[:2] in ("B-", "I-")):
        raise UserError(f"{where}: tag {tag!r} is not BIO (O, B-TYPE or I-TYPE)")


def iob1_to_bio(tags: list[str]) -> tuple[list[str], int]:
    """IOB1 (an entity starts with I-; B- only between two adjacent entities of one type) -> BIO,
    and how many tags changed. An I-X that does not continue an X entity starts one: B-X. The
    entities are the ones seqeval's default mode reads from either; BIO input is unchanged."""
    out, changed = [], 0
    for tag in tags:
        previous = out[-1] if out else "O"
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag, changed = "B-" + tag[2:], changed + 1
        out.append(tag)
    return out, changed


def read_squad(path, encoding: str = "utf-8") -> dict:
    """SQuAD's nested JSON -> flat columns (id, question, context, answers)."""
    with open(path, encoding=encoding) as f:
        data = json.load(f)["data"]
    rows = {"id": [], "question": [], "context": [], "answers": []}
    for article in data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows["id"].append(str(qa["id"]))
                rows["question"].append(qa["question"])
                rows["context"].append(paragraph["context"])
                rows["answers"].append({"text": [a["text"] for a in qa.get("answers", [])],
                                        "answer_start": [a["answer_start"] for a in qa.get("answers", [])]})
    return rows


def read_conll(path, encoding: str = "utf-8") -> dict:
    """A CoNLL-style file -> {"tokens": [[...]], "tags": [[...]]}; datasets has no builder for
    local CoNLL files. The tag is the last whitespace-separated field; -DOCSTART- lines are skipped."""
    sentences, tokens, tags = {"tokens": [], "tags": []}, [], []
    with open(path, encoding=encoding) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if tokens:
                    sentences["tokens"].append(tokens)
                    sentences["tags"].append(tags)
                    tokens, tags = [], []
                continue
            if len(fields) < 2:
                raise UserError(f"{path}: line {number}: expected 'token tag', got {line.strip()!r}")
            check_bio(fields[-1], f"{path}: line {number}")
            tokens.append(fields[0])
            tags.append(fields[-1])
    if tokens:
        sentences["tokens"].append(tokens)
        sentences["tags"].append(tags)
    return sentences


READERS = {"squad": read_squad, "conll": read_conll}  # layout -> reader returning {column: [values]}
