"""File layouts the generic readers (csv, json lines) do not cover; a task names the ones it
reads (``Task.file_layouts``), so the data loader needs no task names."""
from __future__ import annotations

import json

from llmft.core.errors import UserError


PREFIXES = {"bio": ("B-", "I-"), "bioes": ("B-", "I-", "E-", "S-")}  # data.tag_scheme -> span prefixes besides O


def check_tag(tag: str, where: str, scheme: str = "bio") -> None:
    """A tag of ``scheme`` (data.tag_scheme); ``none`` takes any tag. The refusal names the scheme
    the tag would fit."""
    prefixes = PREFIXES.get(scheme)
    if prefixes is None or tag == "O" or (len(tag) > 2 and tag[:2] in prefixes):
        return
    spelled = "O, " + ", ".join(p + "TYPE" for p in prefixes)
    fix = ("BIOES tags (E-TYPE, S-TYPE): set data.tag_scheme=bioes" if len(tag) > 2 and tag[:2] in PREFIXES["bioes"]
           else "other tags (POS tags, any tag set): set data.tag_scheme=none")
    raise UserError(f"{where}: tag {tag!r} is not {scheme.upper()} ({spelled}); {fix}")


def bioes_allowed(previous: str | None, tag: str) -> bool:
    """May ``tag`` follow ``previous`` in BIOES? (``previous`` None: the sentence's start.) I-X and
    E-X continue a B-X or I-X; every other tag follows a finished span (O, E-, S-) or the start."""
    if tag[:2] in ("I-", "E-"):
        return previous is not None and previous[:2] in ("B-", "I-") and previous[2:] == tag[2:]
    return previous is None or previous == "O" or previous[:2] in ("E-", "S-")


def bioes_may_end(tag: str) -> bool:
    """May a sentence end on ``tag`` in BIOES (not inside an open span)?"""
    return tag[:2] not in ("B-", "I-")


def check_bioes_sequence(tags: list[str], where: str) -> None:
    """Refuse a BIOES sentence whose spans do not open and close (B-X ... E-X, S-X), naming the word."""
    previous = None
    for number, tag in enumerate(tags, 1):
        if not bioes_allowed(previous, tag):
            after = f"after {previous!r}" if previous is not None else "at the start"
            raise UserError(f"{where}: word {number}: {tag!r} {after} is not BIOES (a span is B-X [I-X ...] E-X "
                            f"or S-X); fix the tags, or set data.tag_scheme=bio or none if they are not BIOES")
        previous = tag
    if previous is not None and not bioes_may_end(previous):
        raise UserError(f"{where}: word {len(tags)}: the sentence ends inside a span ({previous!r}) and BIOES closes "
                        f"each with E-X or S-X; fix the tags, or set data.tag_scheme=bio or none if they are not BIOES")


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


def read_conll(path, encoding: str = "utf-8", scheme: str = "bio") -> dict:
    """A CoNLL-style file -> {"tokens": [[...]], "tags": [[...]]}; datasets has no builder for
    local CoNLL files. The tag is the last whitespace-separated field, checked against ``scheme``
    (data.tag_scheme) here, where the line is known; -DOCSTART- lines are skipped."""
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
            check_tag(fields[-1], f"{path}: line {number}", scheme)
            tokens.append(fields[0])
            tags.append(fields[-1])
    if tokens:
        sentences["tokens"].append(tokens)
        sentences["tags"].append(tags)
    return sentences


READERS = {"squad": read_squad, "conll": read_conll}  # layout -> reader returning {column: [values]}
