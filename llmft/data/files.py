"""Load a data config into train / validation / eval splits with ``datasets``.

Files (csv or json lines, local or ``pkg:``) or a hub dataset; each split is checked (exists,
not empty, has the columns) and encoded by the task before any model loads. Splits missing from
the source are cut from train with a seeded, stratified split that does not depend on ``seed``,
so runs with different seeds are evaluated on the same held-out examples.
"""
from __future__ import annotations

import logging
from pathlib import Path

from llmft.core.errors import UserError, require
from llmft.core.paths import resolve_path

log = logging.getLogger(__name__)

FILE_KEYS = {"train": "train_file", "validation": "validation_file", "eval": "eval_file"}
_HUB_SPLITS = {"train": "train", "validation": "validation", "eval": "test"}
_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".conll": "conll", ".bio": "conll"}


def load_splits(cfg, task) -> dict:
    """Return {"train", "eval" and maybe "validation": Dataset}, encoded by ``task``."""
    import datasets

    datasets.disable_progress_bars()
    raw = _read_hub(cfg) if cfg.source == "hub" else _read_files(cfg, task.file_layouts)
    if not raw:
        raise UserError("data: no split to train or evaluate on")

    splits = {}
    for name in ("train", "validation", "eval"):  # train first: it may define the label set
        if name in raw:
            dataset, source = raw[name]
            check_columns(dataset, source, task.required_columns(), cfg)
            splits[name] = task.encode(dataset, source, is_train=name == "train")

    for name, fraction in (("eval", cfg.eval_fraction), ("validation", cfg.validation_fraction)):
        if name in splits or fraction == 0 or "train" not in splits:
            continue
        splits["train"], splits[name] = _split(splits["train"], fraction, cfg.split_seed, task)
    if "eval" not in splits:
        raise UserError("data.eval_file: no eval split; give data.eval_file=PATH or data.eval_fraction > 0")

    unlabeled = _unlabeled(cfg, splits, task)
    caps = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples, "eval": cfg.max_eval_samples}
    for name, cap in caps.items():
        if name in splits and cap is not None and len(splits[name]) > cap:
            splits[name] = splits[name].shuffle(seed=cfg.split_seed).select(range(cap))
    if unlabeled is not None:
        cap = cfg.max_unlabeled_samples
        if cap is not None and len(unlabeled) > cap:
            unlabeled = unlabeled.shuffle(seed=cfg.split_seed).select(range(cap))
        splits["unlabeled"] = unlabeled
    if "train" in splits:
        task.fit(splits["train"])  # e.g. regression's target scale: from the rows trained on only
    log.info("data: %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return splits


UNLABELED_GOLD = "_gold"  # unlabeled_from_train keeps the dropped label here, for diagnostics only


def _unlabeled(cfg, splits: dict, task):
    """The unlabelled inputs (self-training, PET): data.unlabeled_file's text column(s), or
    data.unlabeled_from_train rows of the train split, taken out of it (seeded) before the train
    cap; their labels are kept apart in ``_gold`` (never trained on: pseudo-label accuracy only)."""
    columns = [c for c in (cfg.text_column, cfg.text_pair_column) if c]
    if cfg.unlabeled_file:
        path = resolve_path(cfg.unlabeled_file, key="data.unlabeled_file")
        data = read_file(path, cfg, "data.unlabeled_file")
        check_columns(data, str(path), columns, cfg)
        check_texts(data, str(path), columns)
        return data.select_columns(columns)
    n = cfg.unlabeled_from_train
    if not n:
        return None
    train = splits["train"]
    if n >= len(train):
        raise UserError(f"data.unlabeled_from_train={n}: the train split has only {len(train)} rows; "
                        f"leave some labelled")
    parts = train.train_test_split(test_size=n, seed=cfg.split_seed)
    splits["train"] = parts["train"]
    return parts["test"].rename_column("labels", UNLABELED_GOLD).select_columns([*columns, UNLABELED_GOLD])


def _read_files(cfg, layouts: dict) -> dict:
    out = {}
    for split, key in FILE_KEYS.items():
        spec = cfg[key]
        if spec:
            path = resolve_path(spec, key=f"data.{key}")
            out[split] = (read_file(path, cfg, f"data.{key}", layouts), f"{path}")
    return out


def read_file(path: Path, cfg, key: str, layouts: dict | None = None, *, options=None, options_key: str = "data"):
    """One csv/json(l)/CoNLL file as a Dataset; ``key`` (e.g. data.train_file) names it in errors.
    ``layouts``: the task's own file layouts by suffix (QA: a .json file is SQuAD's nested JSON).
    ``options``: the section whose ``format`` and ``encoding`` apply (default: ``cfg``, the data
    section; predict: its own), called ``options_key`` in messages.

    Every value is read as the file writes it: CSV cells stay text ("007" is not 7, "NA" and
    "null" are not missing), a header that names a column twice is refused, and a JSON column
    that mixes value types (which datasets would re-read as JSON: "007" -> 7) is refused by
    check_columns when the task reads it."""
    from datasets import load_dataset

    options = cfg if options is None else options
    if not path.is_file():
        raise UserError(f"{key}: file not found: {path}")
    builder = file_format(path, options.format)
    by_name = _FORMATS.get(path.suffix.lower())
    if {builder, by_name} == {"csv", "json"}:  # e.g. a run's data.format=csv inherited by eval for a .jsonl
        raise UserError(f"{key}: {path.name} is {by_name} by its extension but {options_key}.format={options.format} "
                        f"reads {builder}; set {options_key}.format={by_name} (or null: by extension)")
    if builder is None:
        raise UserError(f"{key}: cannot tell the format of {path.name}; set {options_key}.format=csv or json")
    encoding = options.encoding
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    if not _has_rows(path, header=builder == "csv"):
        raise UserError(f"{path}: the file has no rows ({key})")
    layout = (layouts or {}).get(path.suffix.lower()) if builder == "json" else None
    try:
        if layout is not None or builder == "conll":
            from datasets import Dataset

            from llmft.data.formats import READERS

            if builder == "conll":
                columns = READERS["conll"](path, encoding, getattr(cfg, "tag_scheme", "bio"))
                return Dataset.from_dict({cfg.tokens_column: columns["tokens"], cfg.tags_column: columns["tags"]})
            try:
                return Dataset.from_dict(READERS[layout](path, encoding))
            except UnicodeDecodeError:
                raise
            except (KeyError, TypeError, ValueError) as err:
                raise UserError(f"{key}: {path} is not SQuAD JSON ({type(err).__name__}: {err}); "
                                f"use {{\"data\": [{{\"paragraphs\": [...]}}]}} or JSON lines") from None
        if builder == "csv":
            kwargs.update(_csv_as_text(path, encoding, kwargs.get("delimiter", ","), key))
        return load_dataset(builder, data_files=str(path), split="train", encoding=encoding, **kwargs)
    except UserError:
        raise
    except Exception as err:  # datasets wraps reader errors in DatasetGenerationError
        decode = _find_cause(err, UnicodeDecodeError)
        if decode is not None:
            raise UserError(
                f"{key}: {path} is not valid {encoding} text (byte {decode.start}); "
                f"set {options_key}.encoding to the file's encoding (e.g. {options_key}.encoding=latin-1)"
            ) from None
        # pyarrow's parse error names the column and row (a key given twice, a type change); datasets
        # then retries with pandas, whose error ("Trailing data") says nothing
        import pyarrow as pa

        cause = _find_cause(err, pa.ArrowInvalid) or _find_cause(err, Exception, last=True)
        reason = (str(cause).splitlines() or [type(cause).__name__])[0][:200]
        raise UserError(f"{key}: cannot read {path} as {builder}: {reason}") from None


def file_format(path: Path, given: str | None) -> str | None:
    """The reader of a file: ``given`` (a format key), else its extension's; None: unknown."""
    from llmft.data.chat import CHAT_FORMATS

    if given in CHAT_FORMATS:  # a chat layout (sft) of JSON / JSON lines
        return "json"
    return given or _FORMATS.get(Path(path).suffix.lower())


def _csv_as_text(path: Path, encoding: str, delimiter: str, key: str) -> dict:
    """load_dataset options that read every cell of a CSV as its text, after checking the header.

    pandas (under datasets' csv builder) would convert "007" to 7.0, read "NA", "null" and empty
    cells as missing, merge labels "1" and "1.0", and rename a repeated column "text" to "text.1"."""
    import csv

    import pandas as pd
    from datasets import Features, Value

    with path.open(encoding=encoding, newline="") as f:
        header = next(csv.reader(f, delimiter=delimiter), [])
    header = [name.lstrip("\ufeff") if i == 0 else name for i, name in enumerate(header)]
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise UserError(f"{key}: {path}: the header names column '{repeated[0]}' more than once; "
                        f"give each column its own name")
    # the names pandas gives the columns (an unnamed one: "Unnamed: N"), each read as text
    names = pd.read_csv(path, nrows=0, sep=delimiter, encoding=encoding).columns
    return {"features": Features({name: Value("string") for name in names}), "keep_default_na": False}


def _has_rows(path: Path, header: bool) -> bool:
    """At least one data line (after the header for CSV); reads only the first lines."""
    needed = 2 if header else 1
    with path.open("rb") as f:
        for line in f:
            needed -= bool(line.strip())
            if needed == 0:
                return True
    return False


def _read_hub(cfg) -> dict:
    from datasets import load_dataset

    try:
        loaded = load_dataset(cfg.hub_name, cfg.hub_config)
    except Exception as err:
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise UserError(f"data.hub_name={cfg.hub_name}: cannot load it ({first})") from None
    return {ours: (loaded[theirs], f"{cfg.hub_name}[{theirs}]")
            for ours, theirs in _HUB_SPLITS.items() if theirs in loaded}


def check_columns(dataset, source: str, columns: list[str], cfg) -> None:
    from datasets import Json

    if len(dataset) == 0:
        raise UserError(f"{source}: the file has no rows")
    for column in columns:
        if column not in dataset.column_names:
            key = next((k for k in cfg if k.endswith("_column") and cfg[k] == column), None)
            named = f"data.{key}" if key else f"data.task={cfg.task} reads {', '.join(columns)}"
            raise UserError(
                f"{source}: no column '{column}' ({named}); columns are: "
                f"{', '.join(dataset.column_names)}"
            )
        if isinstance(dataset.features[column], Json):  # datasets' type for a column of mixed types
            raise UserError(f"{source}: column '{column}' mixes value types (e.g. text and numbers), which would "
                            f"be read back as JSON (\"007\" as 7); write each of its values the same way "
                            f"(text in quotes)")


def _split(dataset, fraction: float, seed: int, task):
    """Seeded split; stratified on the task's label column when every class can be split."""
    stratify = task.stratify_column
    try:
        parts = dataset.train_test_split(test_size=fraction, seed=seed, stratify_by_column=stratify)
    except ValueError:  # a class with too few rows to stratify (tiny data): split plainly
        parts = dataset.train_test_split(test_size=fraction, seed=seed)
    if len(parts["train"]) == 0 or len(parts["test"]) == 0:
        raise UserError(f"data: {len(dataset)} rows are too few to hold out a fraction of {fraction}")
    return parts["train"], parts["test"]


def _find_cause(err: BaseException, kind: type, last: bool = False):
    """The first (or last) exception of ``kind`` in err's cause/context chain."""
    found = None
    while err is not None:
        if isinstance(err, kind):
            if not last:
                return err
            found = err
        err = err.__cause__ or err.__context__
    return found


def check_encoding(encoding: str, key: str) -> None:
    import codecs

    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UserError(f"{key}={encoding}: no such text encoding (e.g. utf-8, latin-1, utf-16)") from None


def validate_data(d) -> None:
    """The data section's generic checks (torch-free); the task checks its own keys."""
    require(d.max_length >= 8, "data.max_length", f"must be >= 8 (got {d.max_length})")
    from llmft.data.packing import validate as validate_packing

    validate_packing(d)
    for key in ("max_train_samples", "max_eval_samples"):
        value = d[key]
        require(value is None or value >= 1, f"data.{key}", f"must be >= 1 or null (got {value})")
    require(0 <= d.split_seed < 2**32, "data.split_seed", f"must be in [0, 2**32) (got {d.split_seed})")
    for key in ("validation_fraction", "eval_fraction"):
        require(0 <= d[key] < 1, f"data.{key}", f"must be in [0, 1) (got {d[key]})")
    require(d.validation_fraction + d.eval_fraction < 1, "data.validation_fraction",
            f"+ data.eval_fraction must leave rows to train on (got {d.validation_fraction} + {d.eval_fraction})")
    check_encoding(d.encoding, "data.encoding")
    from llmft.data.chat import CHAT_FORMATS

    require(d.format not in CHAT_FORMATS or d.task == "sft", "data.format",
            f"{d.format} is a chat layout for data.task=sft (got {d.task}); set data.format=null, csv or json")
    train_on = d.get("train_on", "all_assistant")
    require(train_on == "all_assistant" or d.task == "sft", "data.train_on",
            f"picks the trained chat turns of data.task=sft (got {d.task}); drop data.train_on={train_on}")
    require(d.label_scale == "none" or d.task == "regression", "data.label_scale",
            f"rescales regression targets (got data.task={d.task}); drop data.label_scale")
    if d.labels is not None:
        labels = [str(x) for x in d.labels]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        require(not repeated, "data.labels", f"lists {repeated} more than once")
    if d.source == "hub":
        require(bool(d.hub_name), "data.hub_name", "is required when data.source=hub")
        return
    require(bool(d.train_file) or bool(d.eval_file), "data.train_file",
            "is required: add data.train_file=PATH (csv or jsonl)")
    require(d.unlabeled_from_train >= 0, "data.unlabeled_from_train", f"must be >= 0 (got {d.unlabeled_from_train})")
    require(not (d.unlabeled_file and d.unlabeled_from_train), "data.unlabeled_from_train",
            "give data.unlabeled_file or data.unlabeled_from_train, not both")
    require(d.max_unlabeled_samples is None or d.max_unlabeled_samples >= 1, "data.max_unlabeled_samples",
            "must be >= 1 or null")
    for key in ("train_file", "validation_file", "eval_file", "unlabeled_file"):
        if d[key]:
            path = resolve_path(d[key], key=f"data.{key}")
            require(path.is_file(), f"data.{key}", f"file not found: {path}")


def check_texts(dataset, source: str, columns: list[str]) -> None:
    """Every value of ``columns`` is non-empty text: a number or a null would be tokenized as
    something else, or fail inside the tokenizer."""
    for column in columns:
        for row, value in enumerate(dataset[column]):
            if value is None or (isinstance(value, str) and not value.strip()):
                raise UserError(f"{source}: row {row + 1}: column '{column}' is empty")
            if not isinstance(value, str):
                raise UserError(f"{source}: row {row + 1}: column '{column}' holds {type(value).__name__} "
                                f"{value!r}, not text")
