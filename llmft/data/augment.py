"""Augmented copies of train rows (data.augment; the technique is techniques/augment.py).

    copies(labels, factor, minority_only, seed)  ->  [(row, copy), ...]: which rows get how many copies
    eda(text, alpha, rng, vocabulary)            ->  (text, op): one EDA operation (Wei & Zou 2019)
    Paraphraser(settings).rewrite(items)         ->  a causal LM's rewrite of each (text, copy), cached

EDA's four operations are perturb.py's swap / delete / insert / replace at rate ``alpha``, one per
copy. Insertion and replacement draw from the words of the train split: EDA's WordNet synonyms
need NLTK data that no installed package ships (textattack 0.3.11 downloads it, with flair and
Java, at run time). Every copy is seeded by (seed, row, copy, column): a rerun or a resumed run
makes the same rows.

Paraphrases come from llmft's own loading and generation code (models/loading.py, generation.py)
and are cached one file per (model digest, prompt, text, copy, seed, generation settings) under
$LLMFT_CACHE/paraphrase/ (default ~/.cache/llmft): a rerun generates nothing. Only the rows the
cache lacks are generated, in batches taken in order, each batch seeded by its rows' keys, so a
run killed while paraphrasing resumes to the rows the uninterrupted one would have made.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from llmft.data.perturb import delete, insert, replace, seeded, swap

log = logging.getLogger(__name__)

OPS = ("swap", "delete", "insert", "replace")  # EDA's random swap, deletion, insertion, replacement
DEFAULT_PROMPT = ("Rewrite the following text in other words, keeping its meaning and tone. "
                  "Reply with the rewritten text only.\n\n{text}")


def copies(labels: list[int], factor: int, minority_only: bool, seed: int) -> list[tuple[int, int]]:
    """(row, copy number) of every augmented copy, in row order. ``factor`` copies of every row; or,
    with ``minority_only``, every class brought up to the largest class's count exactly: a class
    of n rows that needs m more gives each row m // n copies and m % n rows (a seeded draw) one more."""
    if not minority_only:
        return [(i, k) for i in range(len(labels)) for k in range(factor)]
    by_class = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    top = max((len(rows) for rows in by_class.values()), default=0)
    out = []
    for label, rows in by_class.items():
        each, extra = divmod(top - len(rows), len(rows))
        lucky = set(seeded(seed, "augment-extra", label).sample(range(len(rows)), extra))
        out += [(i, k) for j, i in enumerate(rows) for k in range(each + (j in lucky))]
    return sorted(out)


def vocabulary(texts) -> list[str]:
    """The words EDA inserts and replaces with: every word of ``texts``, sorted (a fixed order: the
    same draws on every run)."""
    return sorted({w for text in texts for w in text.split()})


def eda(text: str, alpha: float, rng, vocab: list[str], op: str | None = None) -> tuple[str, str]:
    """``text`` after one EDA operation (``op``, else drawn from OPS) at rate ``alpha``; and the op."""
    op = op or rng.choice(OPS)
    words = text.split()
    if not words:
        return text, op
    if op == "swap":
        out = swap(words, alpha, rng)
    elif op == "delete":
        out = delete(words, alpha, rng)
    elif op == "insert":
        out = insert(words, alpha, rng, vocab)
    else:
        out = replace(words, alpha, rng, vocab)
    return " ".join(out), op


# ------------------------------------------------------------------ paraphrase
@dataclass
class Settings:
    """What a paraphrase depends on besides its text and copy number (all in the cache key)."""
    model: str  # a model reference (a folder, pkg:, gguf:, a hub id)
    prompt: str  # with a {text} slot
    seed: int
    temperature: float  # 0: greedy
    top_p: float
    max_new_tokens: int
    batch_size: int


class Paraphraser:
    """A causal LM that rewrites texts, loaded on the first row the cache lacks."""

    def __init__(self, settings: Settings, cache_dir: Path | None = None):
        from llmft.core.paths import cache_root

        self.settings = settings
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "paraphrase"
        self.model = self.tokenizer = None
        self.generated = self.cached = 0
        self.digest = model_digest(settings.model)

    def key(self, text: str, copy: int) -> str:
        s = self.settings
        ident = {"model": s.model, "model_sha256": self.digest, "prompt": s.prompt, "text": text, "copy": copy,
                 "seed": s.seed, "temperature": s.temperature, "top_p": s.top_p,
                 "max_new_tokens": s.max_new_tokens, "batch_size": s.batch_size}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def rewrite(self, items: list[tuple[str, int]]) -> list[str]:
        """The raw rewrite of each (text, copy): from the cache, else generated and cached."""
        keys = [self.key(text, copy) for text, copy in items]
        out = [self.lookup(k) for k in keys]
        missing = [i for i, o in enumerate(out) if o is None]
        self.cached += len(items) - len(missing)
        step = self.settings.batch_size
        for start in range(0, len(missing), step):
            batch = missing[start:start + step]
            texts = self.generate([items[i][0] for i in batch], seed_of(self.settings.seed, [keys[i] for i in batch]))
            for i, text in zip(batch, texts):
                out[i] = text
                self.store(keys[i], text)
            self.generated += len(batch)
            log.info("data.augment: paraphrased %d of %d rows", start + len(batch), len(missing))
        return out

    def generate(self, texts: list[str], seed: int) -> list[str]:
        """One batch, sampled under ``seed`` without touching the run's own random state (the
        model's head is drawn from it later: a cached rerun must draw the same)."""
        import torch

        from llmft.models import generation

        self.load()
        s = self.settings
        cfg = _GenerateSettings(max_new_tokens=s.max_new_tokens, do_sample=s.temperature > 0,
                                temperature=s.temperature or 1.0, top_p=s.top_p, batch_size=len(texts))
        prompts = [self.render(t) for t in texts]
        devices = [self.model.device] if self.model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return generation.generate(self.model, self.tokenizer, prompts, cfg,
                                       add_special_tokens=not self.tokenizer.chat_template)

    def render(self, text: str) -> str:
        """The prompt as the model reads it: in its chat template when it has one (an instruct model)."""
        prompt = self.settings.prompt.replace("{text}", text)
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt + "\n"

    def load(self) -> None:
        if self.model is not None:
            return
        import torch

        from llmft.models.loading import load_model, load_tokenizer, resolve_model_path

        path = resolve_model_path(self.settings.model, key="data.augment.model")
        self.tokenizer = load_tokenizer(path)
        with torch.random.fork_rng(devices=[]):  # loading must not move the run's random state either
            self.model = load_model(path, None, self.tokenizer, auto_class="AutoModelForCausalLM")
        if torch.cuda.is_available():
            self.model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")

    def lookup(self, key: str) -> str | None:
        try:
            return json.loads(self.path(key).read_text(encoding="utf-8"))["text"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none yet, or unreadable: generate it again

    def store(self, key: str, text: str) -> None:
        """One cache file, written whole (temp file + rename); a cache that cannot be written only
        means generating again next time."""
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"text": text}), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as err:
            log.debug("paraphrase cache not written (%s): %s", path, err)

    def path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"


@dataclass
class _GenerateSettings:
    """What models/generation.generate reads (the shape of the generate config section)."""
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    batch_size: int
    num_beams: int = 1
    top_k: int = 0  # 0: no top-k cut (top_p decides)
    repetition_penalty: float = 1.0


def seed_of(seed: int, keys: list[str]) -> int:
    """A torch seed for one batch, from the run's seed and its rows' keys."""
    return seeded(seed, "paraphrase", *keys).getrandbits(63)


def model_digest(spec: str) -> str | None:
    """The digest of the model's files (a folder, a gguf file); None for a hub id."""
    from llmft.core.digest import model_path, path_digest

    path = model_path(spec)
    return path_digest(path)[:16] if path is not None and path.exists() else None


def cleaned(output: str, source: str, prompt: str) -> str | None:
    """A generated rewrite as a row's text: its first non-empty line, without wrapping quotes; None
    when it is degenerate (empty, the input unchanged, or the instruction echoed back)."""
    line = next((ln.strip() for ln in output.splitlines() if ln.strip()), "")
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'":
        line = line[1:-1].strip()
    instruction = (prompt.replace("{text}", "").strip().splitlines() or [""])[0].strip().rstrip(" :.").lower()
    if not line or " ".join(line.lower().split()) == " ".join(source.lower().split()):
        return None
    return None if instruction and instruction in line.lower() else line
