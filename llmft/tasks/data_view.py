"""What the loss will see, for ``llmft check``: token lengths and padding, labels per split, and
(SFT) rendered rows with the tokens that carry loss marked. Torch-free apart from what the task's
tokenizer needs and the grouped order (data/grouping.py).

- Lengths before truncation: the task's own ``tokenize`` on a seeded sample of SAMPLE train rows
  with ``data.max_length`` lifted (so "truncated" means longer than max_length, not "exactly it").
- Padding: the lengths of every tokenized train row, batched as the run batches them: the task's
  collator pads each per-device batch of ``train.batch_size`` to its longest row; the order is a
  seeded shuffle (the Trainer's own shuffle differs, its padding is the same in expectation) or,
  with data.group_by_length, the run's own epoch-1 order; data.packing pads nothing. Input tokens
  only (seq2seq's padded labels are not counted).
- Loss tokens (SFT): read off the tokenized rows' labels (-100: no loss), never re-derived from
  the chat, so any chat format or ``data.train_on`` shows as trained. In the rendered rows the
  tokens that carry loss are in [[...]].
"""
from __future__ import annotations

import copy
import random

IGNORE = -100
SAMPLE = 400  # train rows tokenized without truncation: quantiles to a few % of rank, in well under a second
BUCKETS = 8
BAR = 30  # characters of the longest histogram bar
RARE = 0.05  # a class under this share of train gets the imbalance hint
UNBOUNDED = 1_000_000  # data.max_length for the lengths before truncation
SHOWN = 2  # rendered SFT rows
SPAN = 240  # characters of a rendered span beyond which its middle is elided


def inspect(cfg, task, splits: dict, tokenized_train, tokenizer) -> dict:
    """JSON-able facts about the data as training would see it. ``splits``: the raw rows per split
    (after the strategy's prepare_data); ``tokenized_train``: ``task.tokenize(splits["train"], tokenizer)``."""
    train = splits["train"]
    rng = random.Random(cfg.seed)
    picked = sorted(rng.sample(range(len(train)), min(SAMPLE, len(train))))
    sample = untruncated(task, train.select(picked), tokenizer)
    facts = {"task": task.name, "max_length": cfg.data.max_length,
             "sample": {"rows": len(picked), "of": len(train), "seed": cfg.seed},
             "lengths": length_facts(sequence_lengths(sample["input_ids"]), cfg.data.max_length)}
    facts["padding"] = padding_facts(cfg, row_lengths(tokenized_train))
    labels = label_facts(cfg, task, splits)
    if labels:
        facts["labels"] = labels
    if task.logits == "causal":
        facts["loss"] = loss_facts(cfg, train, sample, tokenized_train, tokenizer)
    elif task.name == "seq2seq" and "labels" in sample.column_names:
        facts["targets"] = length_facts([len(ids) for ids in sample["labels"]], cfg.data.max_length)
    elif task.name == "qa":  # a long context is split into windows, not truncated
        facts["windows"] = {"examples": len(train), "windows": len(tokenized_train)}
    elif task.name == "preference":  # a pair is two sequences (prompt + chosen, prompt + rejected)
        facts["pairs"] = {"rows": len(train), "paired": "chosen" in train.column_names}
    return facts


def sequence_lengths(column) -> list[int]:
    """Each row's token count; a preference pair's two sequences count as two rows."""
    return [len(x) for ids in column for x in (ids if ids and isinstance(ids[0], list) else [ids])]


def untruncated(task, rows, tokenizer):
    """``rows`` tokenized by the task with data.max_length lifted, in memory (writes no cache file)."""
    from datasets import Dataset
    from omegaconf import OmegaConf

    lifted = copy.copy(task)  # a counter the task keeps (rows dropped) stays the caller's
    lifted.data_cfg = OmegaConf.merge(task.data_cfg, {"max_length": UNBOUNDED})
    return lifted.tokenize(Dataset.from_dict(rows.to_dict(), features=rows.features), tokenizer)


def arrow_column(rows, name: str):
    """One column of a datasets.Dataset as Arrow (its row selection applied): reading it row by row
    through datasets takes seconds on 10k rows."""
    return rows.select_columns([name]).with_format("arrow")[:][name]


def row_lengths(rows) -> list[int]:
    """len(input_ids) of every row, from the Arrow column (no Python lists of token ids)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = arrow_column(rows, "input_ids")
    if pa.types.is_list(column.type.value_type) or pa.types.is_large_list(column.type.value_type):
        column = pc.list_flatten(column)  # preference pairs: each sequence of a pair is a row
    return pc.list_value_length(column).to_pylist()


def quantile(values: list[int], q: float) -> int:
    import numpy as np

    return int(np.quantile(values, q, method="inverted_cdf"))


def length_facts(lengths: list[int], max_length: int) -> dict:
    """Quantiles, a histogram of BUCKETS equal integer ranges (numpy's float edges read badly), and
    the rows longer than max_length."""
    if not lengths:
        return {"rows": 0}
    low, high = min(lengths), max(lengths)
    width = -(-(high - low + 1) // BUCKETS)
    counts = [0] * (-(-(high - low + 1) // width))
    for n in lengths:
        counts[(n - low) // width] += 1
    over = sum(n > max_length for n in lengths)
    return {"rows": len(lengths), "p50": quantile(lengths, 0.5), "p90": quantile(lengths, 0.9),
            "p99": quantile(lengths, 0.99), "max": high, "mean": round(sum(lengths) / len(lengths), 1),
            "histogram": [[low + k * width, low + (k + 1) * width - 1, c] for k, c in enumerate(counts)],
            "truncated": over, "truncated_share": round(over / len(lengths), 4)}


def real_share(lengths: list[int], order: list[int], batch: int) -> float:
    """Real tokens / padded tokens when consecutive ``batch`` rows of ``order`` are each padded to
    their longest row (what DataCollatorWithPadding / ForSeq2Seq / ForTokenClassification do)."""
    padded = sum(max(lengths[i] for i in order[s:s + batch]) * len(order[s:s + batch])
                 for s in range(0, len(order), batch))
    return round(sum(lengths[i] for i in order) / padded, 4) if padded else 1.0


def padding_facts(cfg, lengths: list[int]) -> dict:
    from llmft.data.grouping import grouped, grouped_order
    from llmft.runtime.distributed import world_size

    batch = cfg.train.batch_size
    world = world_size(cfg.hardware) if "hardware" in cfg else 1
    shuffled = list(range(len(lengths)))
    random.Random(cfg.seed).shuffle(shuffled)
    packing = bool(getattr(cfg.data, "packing", False))
    run = "packed" if packing else "grouped" if grouped(cfg) else "random"
    facts = {"rows": len(lengths), "real_tokens": sum(lengths), "batch_size": batch, "world_size": world,
             "at_max_length": round(sum(lengths) / (len(lengths) * cfg.data.max_length), 4) if lengths else 1.0,
             "random": real_share(lengths, shuffled, batch),
             # the sampler groups in global batches (batch x ranks) from seed x 1000 + epoch (epoch 0)
             "grouped": real_share(lengths, grouped_order(lengths, batch * world, cfg.seed * 1000), batch),
             "run": run}
    if packing:
        facts["packed"] = 1.0  # one row per batch: no padding token
    return facts


def label_facts(cfg, task, splits: dict) -> dict:
    """Per split: class counts (classification: rows; ner: word tags) or value statistics (regression)."""
    names = [n for n in ("train", "validation", "eval") if n in splits]
    if task.name == "regression":
        column = "labels"
        if any(column not in splits[n].column_names for n in names):
            return {}
        import numpy as np

        values = {n: arrow_column(splits[n], column).to_numpy().astype(np.float64) for n in names}
        stats = {n: {"rows": len(v), "mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4),
                     "min": float(v.min()), "max": float(v.max())} for n, v in values.items() if len(v)}
        low, high = values["train"].min(), values["train"].max()
        outside = {n: int(((v < low) | (v > high)).sum()) for n, v in values.items() if n != "train"}
        return {"kind": "value", "splits": stats, "outside_train_range": outside}
    if task.logits == "sequence":
        kind, column = "row", "labels"
    elif task.logits == "token":
        kind, column = "tag", "tag_ids"
    else:
        return {}
    if not task.labels or any(column not in splits[n].column_names for n in names):
        return {}
    import numpy as np
    import pyarrow.compute as pc

    counts = {}
    for n in names:
        ids = arrow_column(splits[n], column)
        ids = (pc.list_flatten(ids) if kind == "tag" else ids).to_numpy()
        tally = np.bincount(ids, minlength=len(task.labels)) if len(ids) else [0] * len(task.labels)
        counts[n] = {task.labels[i]: int(c) for i, c in enumerate(tally)}
    train = counts["train"]
    facts = {"kind": kind, "splits": {n: {"counts": c, "shares": shares(c)} for n, c in counts.items()},
             "only_in": {n: [x for x, c in counts[n].items() if c and not train[x]] for n in names if n != "train"},
             "absent_from": {n: [x for x, c in counts[n].items() if not c and train[x]] for n in names if n != "train"}}
    # NER: the entity tags against each other (O outnumbers them all in any tagged text)
    pool = {x: c for x, c in train.items() if not (kind == "tag" and x == "O")}
    facts["rare"] = [{"label": x, "share": s} for x, s in shares(pool).items() if s < RARE]
    facts["rare_among"] = "entity tags (O left out)" if kind == "tag" and "O" in train else f"train {kind}s"
    weights = cfg.train.class_weights if "train" in cfg else "none"
    facts["balancing"] = ("train.class_weights" if weights != "none" else
                          "data.sampler=balanced" if cfg.data.sampler == "balanced" else None)
    facts["hint"] = "train.class_weights=balanced" + (" or data.sampler=balanced" if kind == "row" else "")
    return facts


def shares(counts: dict) -> dict:
    total = sum(counts.values()) or 1
    return {x: round(c / total, 4) for x, c in counts.items()}


def special_ids(tokenizer) -> set[int]:
    found = set(tokenizer.all_special_ids)
    found |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    return found


def end_of_turn(tokenizer) -> int | None:
    """The first special token the chat template puts after an assistant's answer (<|im_end|>,
    <|eot_id|>, </s>); None: it ends the turn with none."""
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}]
    try:
        prompt = tokenizer.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception:  # noqa: BLE001  (a template that wants another chat shape: no probe, no claim)
        return None
    start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    special = special_ids(tokenizer) - {tokenizer.unk_token_id}  # the probe's words may be unknown
    return next((t for t in tokenizer(full, add_special_tokens=False)["input_ids"][start:] if t in special), None)


def loss_facts(cfg, train, sample, tokenized_train, tokenizer) -> dict:
    """SFT: what carries loss in the tokenized rows, whether the model is taught to stop, and what
    truncation took (rows left with no target are dropped by the task: the split minus the rows kept)."""
    max_length = cfg.data.max_length
    eos, eot = tokenizer.eos_token_id, end_of_turn(tokenizer)
    kept = len(tokenized_train)
    rng = random.Random(cfg.seed + 1)
    chosen = rng.sample(range(kept), min(SAMPLE, kept))
    rows = tokenized_train.select(sorted(chosen))
    ids_rows, label_rows = rows["input_ids"], rows["labels"]
    stops = {"eos": 0, "end_of_turn": 0}
    loss_tokens = real = 0
    for ids, labels in zip(ids_rows, label_rows):
        target = {t for t in labels if t != IGNORE}
        stops["eos"] += eos in target
        stops["end_of_turn"] += eot in target
        loss_tokens += len(labels) - labels.count(IGNORE)
        real += len(ids)
    partial = no_target = 0
    for labels in sample["labels"]:  # the sample before truncation: the task cuts rows at max_length
        where = [i for i, t in enumerate(labels) if t != IGNORE]
        if where and where[0] >= max_length:
            no_target += 1
        elif where and where[-1] >= max_length:
            partial += 1
    position = {i: k for k, i in enumerate(sorted(chosen))}
    examples = [example(i, ids_rows[position[i]], label_rows[position[i]], tokenizer, eos, eot, max_length)
                for i in chosen[:SHOWN]]
    dropped = len(train) - kept
    n = len(chosen)
    return {"eos": token(tokenizer, eos), "end_of_turn": token(tokenizer, eot), "rows_read": n,
            "eos_trained": stops["eos"], "eos_trained_share": round(stops["eos"] / n, 4) if n else 0.0,
            "end_of_turn_trained": stops["end_of_turn"],
            "end_of_turn_trained_share": round(stops["end_of_turn"] / n, 4) if n else 0.0,
            "loss_token_share": round(loss_tokens / real, 4) if real else 0.0,
            "no_target": dropped, "no_target_share": round(dropped / len(train), 4) if len(train) else 0.0,
            "no_target_in_sample": no_target, "partial": partial,
            "partial_share": round(partial / len(sample), 4) if len(sample) else 0.0, "examples": examples}


def token(tokenizer, token_id) -> dict | None:
    if token_id is None:
        return None
    return {"id": token_id, "token": tokenizer.convert_ids_to_tokens(token_id)}


def example(index, ids, labels, tokenizer, eos, eot, max_length) -> dict:
    """One tokenized row as text, the runs of tokens that carry loss in [[...]]."""
    parts, start = [], 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or (labels[k] != IGNORE) != (labels[start] != IGNORE):
            text = tokenizer.decode(ids[start:k], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            text = elide(text, k - start)
            parts.append(f"[[{text}]]" if labels[start] != IGNORE else text)
            start = k
    target = [t for t in labels if t != IGNORE]
    return {"row": index, "tokens": len(ids), "loss_tokens": len(target), "eos_trained": eos in target,
            "end_of_turn_trained": eot is not None and eot in target,
            "stops": (eot if eot is not None else eos) in target,  # the token that ends its turn is trained
            "at_max_length": len(ids) >= max_length,
            "text": "".join(parts)}


def elide(text: str, tokens: int) -> str:
    if len(text) <= SPAN:
        return text
    return f"{text[:SPAN // 2]} ...({tokens} tokens)... {text[-SPAN // 2:]}"


# ---------------------------------------------------------------------------------------- lines
def render(facts: dict) -> list[str]:
    """The lines ``llmft check`` prints for ``facts``."""
    if not facts:
        return []
    s, max_length = facts["sample"], facts["max_length"]
    lines = [f"data ({facts['task']}): {s['of']:,} train rows; lengths from {s['rows']:,} of them "
             f"(seed {s['seed']}) tokenized without truncation"]
    cut = "split into windows" if facts["task"] == "qa" else "truncated"
    lines += length_lines("token lengths", facts["lengths"], max_length, cut)
    lines += padding_lines(facts["padding"], max_length)
    if "labels" in facts:
        lines += label_lines(facts["labels"])
    if "loss" in facts:
        lines += loss_lines(facts["loss"], max_length)
    if "targets" in facts:
        lines += length_lines("target lengths", facts["targets"], max_length)
    if "pairs" in facts:
        p = facts["pairs"]
        what = "pairs, each two sequences (prompt + chosen, prompt + rejected)" if p["paired"] else \
            "unpaired rows (prompt + completion, labelled desirable or not)"
        lines.append(f"  preference: {p['rows']:,} {what}; lengths and padding count sequences")
    if "windows" in facts:
        w = facts["windows"]
        lines.append(f"  qa: {w['examples']:,} examples -> {w['windows']:,} windows (a context longer than "
                     f"data.max_length is split with overlap data.doc_stride, not truncated)")
    return lines


def pct(share: float) -> str:
    return f"{100 * share:.1f} %"


def length_lines(title: str, f: dict, max_length: int, cut: str = "truncated") -> list[str]:
    if not f.get("rows"):
        return [f"{title}: no rows"]
    lines = [f"{title}: p50 {f['p50']}  p90 {f['p90']}  p99 {f['p99']}  max {f['max']}  (mean {f['mean']})"]
    top = max(c for _, _, c in f["histogram"]) or 1
    for low, high, c in f["histogram"]:
        mark = "  <- data.max_length" if low <= max_length <= high else ""
        span = f"{low}-{high}" if high > low else f"{low}"
        lines.append(f"  {span:>13} {'#' * round(BAR * c / top):<{BAR}} {c}{mark}")
    lines.append(f"  longer than data.max_length={max_length} ({cut}): {f['truncated']} of {f['rows']} "
                 f"({pct(f['truncated_share'])})")
    return lines


def padding_lines(p: dict, max_length: int) -> list[str]:
    ranks = f" per rank ({p['world_size']} ranks)" if p["world_size"] > 1 else ""
    lines = [f"padding (real tokens / padded tokens, all {p['rows']:,} tokenized train rows):",
             f"  padded to data.max_length={max_length}: {pct(p['at_max_length'])}"]
    for mode, what in (("random", "random order"), ("grouped", "grouped by length"), ("packed", "packed")):
        if mode in p:
            run = "  <- this run" if p["run"] == mode else ""
            lines.append(f"  batches of {p['batch_size']}{ranks}, {what}: {pct(p[mode])}{run}")
    return lines


def label_lines(f: dict) -> list[str]:
    if f["kind"] == "value":
        lines = ["labels (values):"]
        for n, v in f["splits"].items():
            lines.append(f"  {n:<10} {v['rows']:>7,} rows  mean {v['mean']:g}  std {v['std']:g}  "
                         f"min {v['min']:g}  max {v['max']:g}")
        lines += [f"  {n}: {c} row(s) outside the train range (the model never saw such values)"
                  for n, c in f["outside_train_range"].items() if c]
        return lines
    lines = [f"labels (per {'word tag' if f['kind'] == 'tag' else 'row'}):"]
    for n, v in f["splits"].items():
        cells = "  ".join(f"{x} {c:,} ({pct(v['shares'][x])})" for x, c in v["counts"].items())
        lines.append(f"  {n:<10} {cells}")
    for n, names in f["only_in"].items():
        if names:
            lines.append(f"  in {n} but never in train: {', '.join(names)} (the model cannot learn to predict them)")
    for n, names in f["absent_from"].items():
        if names:
            lines.append(f"  in train but not in {n}: {', '.join(names)} (never scored there)")
    for r in f["rare"]:
        advice = f"set by {f['balancing']}" if f["balancing"] else f"consider {f['hint']}"
        lines.append(f"  imbalance: {r['label']} is {pct(r['share'])} of {f['rare_among']} "
                     f"(under {pct(RARE)}): {advice}")
    return lines


def loss_lines(f: dict, max_length: int) -> list[str]:
    lines = ["what the loss sees (sft): the tokens in [[...]] carry loss"]
    for e in f["examples"]:
        cut = f", reaches data.max_length={max_length}" if e["at_max_length"] else ""
        lines.append(f"  train row {e['row']} ({e['tokens']} tokens, {e['loss_tokens']} carry loss{cut}; "
                     f"end of turn trained: {'yes' if e['stops'] else 'NO'}):")
        lines += [f"    | {line}" for line in e["text"].split("\n")]
    n = f["rows_read"]
    eos, eot = f["eos"], f["end_of_turn"]
    if eot is None:
        lines.append("  no end-of-turn token: the chat template renders no special token after an assistant's answer "
                     "(or did not render a user/assistant probe chat)")
    elif eos is None or eot["id"] != eos["id"]:
        lines.append(f"  end of turn {eot['token']} carries loss in {f['end_of_turn_trained']} of {n} rows read "
                     f"({pct(f['end_of_turn_trained_share'])})")
    if eos is not None:
        same = " (the end of turn)" if eot is not None and eot["id"] == eos["id"] else ""
        lines.append(f"  eos {eos['token']}{same} carries loss in {f['eos_trained']} of {n} rows read "
                     f"({pct(f['eos_trained_share'])})")
    stop = f["end_of_turn_trained_share"] if eot is not None else f["eos_trained_share"]
    if stop < 1:
        lines.append(f"  {pct(1 - stop)} of the rows never learn to stop (no end token trained): "
                     f"raise data.max_length, or check the chat template")
    lines.append(f"  loss tokens: {pct(f['loss_token_share'])} of the real tokens")
    lines.append(f"  rows with no target token left at data.max_length={max_length}: {f['no_target']} "
                 f"({pct(f['no_target_share'])} of train; dropped)")
    lines.append(f"  rows whose target is cut by data.max_length (partly trained): {f['partial']} of the "
                 f"sample ({pct(f['partial_share'])})")
    return lines
