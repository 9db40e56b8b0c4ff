"""Word- and character-level text noise, seeded: what ``eval.perturb`` scores a model under
(typo / swap / delete) and what EDA augmentation (techniques/augment.py) builds its rows from.

Every function takes a ``random.Random`` so the same seed gives the same text on every run and
every rerun (a resumed run augments and perturbs exactly as the uninterrupted one did). Words are
whitespace-separated tokens; a text is joined back with single spaces. Written here (not a
library): nlpaug is unmaintained and textattack pulls flair, Java and NLTK downloads for a few
lines of list shuffling.
"""
from __future__ import annotations

import random

KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"  # the letters a typo draws from


def typo_word(word: str, rng: random.Random) -> str:
    """One character-level edit of a word: a neighbouring pair swapped, a letter dropped, doubled or
    replaced. Words of one character and non-alphabetic tokens (numbers, @user, urls) stay."""
    if not typoable(word):
        return word
    i = rng.choice([i for i, c in enumerate(word) if c.isalpha()])
    kind = rng.randrange(4)
    if kind == 0 and i + 1 < len(word) and word[i + 1] != word[i]:  # swapping "ll" would change nothing
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind in (0, 1):
        return word[:i] + word[i + 1:]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    replacement = rng.choice(KEYBOARD.replace(word[i].lower(), ""))
    return word[:i] + (replacement.upper() if word[i].isupper() else replacement) + word[i + 1:]


def typoable(word: str) -> bool:
    """A word a typo changes: two characters or more, a letter among them, not @user / url / #tag."""
    return len(word) >= 2 and any(c.isalpha() for c in word) and not word.startswith(("@", "http", "#"))


def typo(words: list[str], rate: float, rng: random.Random) -> list[str]:
    """A typo in round(rate x words) distinct words (at least one when rate > 0), drawn among the
    words a typo changes (so the rate asked is the rate applied while there are enough of them)."""
    out = list(words)
    candidates = [i for i, w in enumerate(out) if typoable(w)]
    for i in rng.sample(candidates, min(len(candidates), count(len(out), rate))):
        out[i] = typo_word(out[i], rng)
    return out


def swap(words: list[str], rate: float, rng: random.Random) -> list[str]:
    """round(rate x words) swaps of two random positions (EDA's random swap)."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(count(len(out), rate)):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def delete(words: list[str], rate: float, rng: random.Random) -> list[str]:
    """Each word dropped with probability ``rate`` (EDA's random deletion); one word always stays."""
    if len(words) < 2:
        return list(words)
    kept = [w for w in words if rng.random() >= rate]
    return kept or [rng.choice(words)]


def insert(words: list[str], rate: float, rng: random.Random, vocabulary: list[str]) -> list[str]:
    """round(rate x words) words of ``vocabulary`` inserted at random positions (EDA's random insertion)."""
    out = list(words)
    for _ in range(count(len(out), rate) if vocabulary else 0):
        out.insert(rng.randrange(len(out) + 1), rng.choice(vocabulary))
    return out


def replace(words: list[str], rate: float, rng: random.Random, vocabulary: list[str]) -> list[str]:
    """round(rate x words) distinct words replaced by words of ``vocabulary`` (EDA's replacement;
    the vocabulary stands in for WordNet synonyms, which need NLTK data no package ships here)."""
    out = list(words)
    for i in rng.sample(range(len(out)), count(len(out), rate) if vocabulary else 0):
        out[i] = rng.choice(vocabulary)
    return out


PERTURB = {"typo": typo, "swap": swap, "delete": delete}  # eval.perturb's methods


def perturb_text(text: str, method: str, rate: float, rng: random.Random) -> str:
    """``text`` with ``method`` (typo, swap, delete) applied at ``rate``."""
    words = text.split()
    return " ".join(PERTURB[method](words, rate, rng)) if words else text


def perturb_dataset(dataset, columns: list[str], method: str, rate: float, seed: int):
    """(a copy of ``dataset`` with each text of ``columns`` perturbed, the share of their words
    changed). Each row touches rate x its words in expectation: the count is rounded up or down at
    random (seeded) instead of count()'s "at least one", which would perturb a 10-word text at 10 %
    whatever the rate below that. Every other column (the labels) is left as it was."""

    def noisy(row, index):
        out = {}
        for column in columns:
            words = (row[column] or "").split()
            rng = seeded(seed, "perturb", method, column, index)
            if method == "delete":  # each word dropped with probability rate: exact in expectation already
                new = delete(words, rate, rng)
            else:
                whole = int(rate * len(words))
                k = whole + (rng.random() < rate * len(words) - whole)
                new = PERTURB[method](words, k / len(words), rng) if k else list(words)
            out[column] = " ".join(new) if words else row[column]
        return out

    out = dataset.map(noisy, with_indices=True, load_from_cache_file=False, desc=f"eval.perturb={method}")
    changed = total = 0
    for column in columns:
        for before, after in zip(dataset[column], out[column]):
            words, new = (before or "").split(), (after or "").split()
            total += len(words)
            changed += len(words) - len(new) if method == "delete" else sum(a != b for a, b in zip(words, new))
    return out, round(changed / max(total, 1), 4)


def count(n_words: int, rate: float) -> int:
    """How many of n words an operation at ``rate`` touches: at least one when rate > 0."""
    return min(n_words, max(1, round(rate * n_words))) if rate > 0 and n_words else 0


def seeded(seed: int, *keys) -> random.Random:
    """A generator for one example: the same (seed, keys) gives the same draws in any order of
    examples and any number of processes."""
    return random.Random(f"{seed}:" + ":".join(map(str, keys)))

