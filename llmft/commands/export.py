"""``llmft export model_dir=RUN/model [format=NAME]``: a model ready to serve. The formats (merged,
the default, bf16, int8, onnx, ...), their tolerances and the tasks each exports: llmft/models/formats.py.

    output_dir checked (before anything loads) -> model_dir/llmft.json -> the saved model -> logits
        on a few eval inputs -> convert -> save into a temp folder beside output_dir -> reload it
        -> its logits must match the source's within the format's tolerance -> swap it in
Merged adapters that silently behave like the base model are a known failure; the merge check
says which of the two the result matches.

An export never destroys files: output_dir (default: RUN/<format>) may not be the source model,
a folder inside or holding it, this command's run folder or one holding it, the working
directory, home or /, nor a non-empty folder llmft's export did not write (each export carries
a ``.llmft-export`` marker, so exporting again to the same place replaces the previous export).
The previous export is moved aside only once the new one passed its check; a failed check
deletes the temp folder alone.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from llmft.core.errors import UserError
from llmft.runtime.layout import EXPORT_MARKER

log = logging.getLogger(__name__)

MARKER = EXPORT_MARKER  # in every folder llmft export wrote: the only kind it replaces


def main(cfg, run_path: str | Path) -> dict:
    from llmft.data.files import load_splits
    from llmft.artifacts import load_saved, read_metadata
    from llmft.strategies import strategy_class
    from llmft.models import formats
    from llmft.tasks import TASKS

    model_dir = Path(cfg.model_dir)
    meta = read_metadata(model_dir)
    fmt = cfg.format
    entry = formats.get(fmt)
    tolerance = formats.tolerance(fmt, cfg.tolerance)
    if entry.merges and not strategy_class(meta.get("strategy", "full")).mergeable:
        raise UserError(f"model_dir={model_dir}: a '{meta.get('strategy')}' model; merging applies to "
                        f"{', '.join(mergeable())} adapters (full models are already plain HF folders; "
                        f"format=bf16|fp16|int8 converts them)")
    if meta.get("lm_kind") or meta.get("format") not in (None, "fp32"):
        raise UserError(f"model_dir={model_dir}: format={fmt} converts fine-tuned models and adapters, "
                        f"not prompting runs or models already exported")
    if (meta.get("pruned") or {}).get("heads"):
        raise UserError(f"model_dir={model_dir}: a head-pruned model (llmft prune), which only llmft's loader rebuilds; "
                        f"llmft eval, predict and bench-infer run it as it is")
    out = output_folder(cfg.output_dir, model_dir, fmt, run_path)

    task = TASKS.get(meta["task"]).from_metadata(cfg.data, meta)
    splits = load_splits(cfg.data, task)
    model, tokenizer = load_saved(model_dir, task, meta, trust_remote_code=cfg.trust_remote_code)
    model = getattr(model, "encoder", model)  # a CRF tagger: merge its encoder, copy the CRF as it is
    sample = task.tokenize(splits["eval"].select(range(min(cfg.check_examples, len(splits["eval"])))), tokenizer)
    batch = {k: v for k, v in task.collator(tokenizer)([sample[i] for i in range(len(sample))]).items()
             if k not in ("labels", "word_start")}

    with staging(out) as tmp:
        if meta.get("crf") and not entry.crf:
            raise UserError(f"model_dir={model_dir}: a NER model with a CRF (model.crf=true); format={fmt} "
                            f"exports token logits without the CRF's decoding: use format=int8 or bf16")
        if entry.merges:
            record, message = merge(entry, model, tokenizer, batch, task, tolerance, cfg.trust_remote_code, tmp)
            record["meta"]["merged_from"] = meta["strategy"]
        else:
            record, message = convert(entry, tolerance, model, tokenizer, batch, task, meta, model_dir, tmp,
                                      cfg.trust_remote_code)
        finish(tmp, model_dir, {**meta, "strategy": "full", **record["meta"]}, fmt)
        publish(tmp, out)
    from llmft.runtime.display import console

    console.print(f"{message}\n{fmt} model: {out}")
    result = {"status": "completed", **record["result"], "output_dir": str(out), "source": str(model_dir),
              "check": record["check"]}
    from llmft.runtime.run_dir import dumps

    from llmft.runtime.ownership import atomic_write

    atomic_write(Path(run_path) / "export.json", dumps(result, indent=2) + "\n")
    return result


# ------------------------------------------------------------------ where it goes
def output_folder(output_dir: str | None, model_dir: Path, fmt: str, run_path, name: str = "export.output_dir") -> Path:
    """The export's folder, resolved and checked before anything loads: an export replaces its
    folder, so it must be one that holds nothing but a previous export (or nothing). ``fmt``: the
    default folder's name beside model_dir; ``name``: the key in messages (llmft prune's too)."""
    given = output_dir or str(model_dir.parent / fmt)
    key = f"{name}={given}"
    out = Path(given).expanduser().resolve()
    source, run = model_dir.resolve(), Path(run_path).resolve()
    hint = f"name a new folder, e.g. {name}={source.parent / fmt}"
    special = {Path(out.anchor): "/", Path.home().resolve(): "your home folder",
               Path.cwd().resolve(): "the current directory"}
    if out in special:
        raise UserError(f"{key}: is {special[out]}; an export replaces its folder: {hint}")
    if out == source or source in out.parents or out in source.parents:
        raise UserError(f"{key}: is, holds or sits inside the source model_dir={model_dir}; an export replaces "
                        f"its folder: {hint}")
    if out == run or out in run.parents:
        raise UserError(f"{key}: is or holds this command's run folder {run}; {hint}")
    check_replaceable(out, key)
    return out


def check_replaceable(out: Path, key: str) -> None:
    """``out`` is absent, empty or a previous llmft export (its marker): else refused, untouched."""
    from llmft.runtime.ownership import model_folder_of

    if out.is_file():
        raise UserError(f"{key}: is a file, not a folder; name a new folder")
    model = model_folder_of(out.parent)
    if model is not None:
        raise UserError(f"{key}: is inside the model folder {model}; name a folder outside it")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not _older_export(out):
        raise UserError(f"{key}: holds files llmft export did not write (no {MARKER} in it) and an export "
                        f"replaces its folder; name a new or empty folder")


@contextmanager
def staging(out: Path):
    """A temp folder beside ``out`` (same file system: the final rename is atomic), deleted on
    the way out unless ``publish`` moved it into place; a failure leaves ``out`` as it was."""
    recover_leftovers(out)
    tmp = out.with_name(f".{out.name}.tmp-{_owner()}")
    tmp.unlink() if tmp.is_symlink() else shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover_leftovers(out: Path) -> None:
    """What an export killed half-way left beside ``out``: its temp folder is deleted; a previous
    export it had moved aside (``.old-...``) comes back if nothing took its place, else it is
    deleted (the newer export is complete). The names carry the host and pid of the export that
    made them: one of this host counts as abandoned once its pid is gone; one of another host
    (a shared file system) only once nothing in it changed for LEFTOVER_AGE_S, so a live export
    elsewhere is never touched."""
    if not out.parent.is_dir():
        return
    for path in out.parent.glob(f".{out.name}.*-*"):
        kind, _, owner = path.name[len(out.name) + 2:].partition("-")
        host, _, pid = owner.rpartition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or not _abandoned(path, host, int(pid)):
            continue
        if path.is_symlink():
            path.unlink()
        elif kind == "old" and not out.exists():
            path.rename(out)
        else:
            shutil.rmtree(path, ignore_errors=True)


LEFTOVER_AGE_S = 24 * 3600  # another host's temp folder untouched this long: its export is gone


def _owner() -> str:
    """'<host>-<pid>': who owns a temp folder (the host name with no path separators in it)."""
    import socket

    return f"{socket.gethostname().replace(os.sep, '_')}-{os.getpid()}"


def _abandoned(path: Path, host: str, pid: int) -> bool:
    """Left by an export that no longer runs: on this host (or an earlier llmft's name without a
    host), its pid is gone; on another host, nothing in it changed for LEFTOVER_AGE_S."""
    import socket
    import time

    if not host or host == socket.gethostname().replace(os.sep, "_"):
        return not _alive(pid)
    newest = 0.0
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, f) for f in files)]:
            try:
                newest = max(newest, os.lstat(name).st_mtime)
            except OSError:
                pass
    if not newest:
        try:
            newest = os.lstat(path).st_mtime
        except OSError:
            return False
    return time.time() - newest > LEFTOVER_AGE_S


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(tmp: Path, out: Path) -> None:
    """Swap the checked export in: the previous export moves aside, the new one takes its name,
    then the old one is deleted (a failed rename puts it back)."""
    check_replaceable(out, f"export.output_dir={out}")  # it may have changed while the export ran
    old = out.with_name(f".{out.name}.old-{_owner()}")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def finish(tmp: Path, model_dir: Path, meta: dict, fmt: str) -> None:
    """What every export holds besides the model: the CRF, llmft.json naming the real source, the marker."""
    from llmft.models.crf import CRF_FILE
    from llmft.artifacts import META_FILE

    if meta.get("crf"):
        shutil.copy(model_dir / CRF_FILE, tmp / CRF_FILE)
    source = str(model_dir.resolve())
    (tmp / META_FILE).write_text(json.dumps({**meta, "source": source}, indent=2) + "\n")
    (tmp / MARKER).write_text(json.dumps({"source": source, "format": fmt}) + "\n")


def _older_export(folder: Path) -> bool:
    """An export written before exports carried the marker: its llmft.json names its source and
    what the export did (merged_from / format), and it holds no other run's files."""
    try:
        meta = json.loads((folder / "llmft.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(meta.get("source")) and bool(meta.get("merged_from") or meta.get("format")) \
        and not (folder / "results.json").exists()


# ------------------------------------------------------------------ the checks (formats: models/formats.py)
def merge(entry, model, tokenizer, batch, task, tolerance, trust_remote_code: bool, tmp: Path) -> tuple[dict, str]:
    """An adapter merged into its base, saved to ``tmp``, reloaded, compared with the adapter."""
    import torch

    with torch.no_grad():
        adapter_logits = model(**batch).logits
        with model.disable_adapter():
            base_logits = model(**batch).logits
        entry.convert(model, batch, tmp)
        tokenizer.save_pretrained(str(tmp))
        reloaded = entry.load(tmp, task, tokenizer, trust_remote_code)
        merged_logits = reloaded(**batch).logits

    scale = max(1.0, adapter_logits.abs().max().item())
    vs_adapter = (merged_logits - adapter_logits).abs().max().item()
    vs_base = (merged_logits - base_logits).abs().max().item()
    adapter_effect = (adapter_logits - base_logits).abs().max().item()
    check = {
        "examples": len(adapter_logits),
        "tolerance": tolerance,
        "max_abs_diff_merged_vs_adapter": vs_adapter,
        "max_abs_diff_merged_vs_base": vs_base,
        "max_abs_diff_adapter_vs_base": adapter_effect,
        "passed": vs_adapter <= tolerance * scale,
    }
    if not check["passed"]:
        raise UserError(f"export check failed: merged logits differ from the adapter's by {vs_adapter:.3g} "
                        f"(> {tolerance} x {scale:.3g}); nothing was saved (output_dir is as it was)")
    message = (f"merge check on {len(adapter_logits)} eval inputs: merged vs adapter max |dlogit| = "
               f"{vs_adapter:.2e} (tolerance {tolerance:g}): [bold green]OK[/]; the adapter moves logits by up to "
               f"{adapter_effect:.3g} from the base, the merged model by {vs_base:.3g}")
    return {"meta": {"merge_check": check}, "result": {}, "check": check}, message


def mergeable() -> list[str]:
    from llmft.strategies import strategies_that

    return strategies_that("mergeable")


def merged_source(model, fmt: str, meta: dict, model_dir: Path):
    """The plain model to convert (adapters merged); a one-line refusal for adapters that do not merge."""
    from llmft.artifacts import plain_model

    source = plain_model(model)
    if hasattr(source, "peft_config"):
        raise UserError(f"model_dir={model_dir}: a '{meta.get('strategy')}' adapter does not merge into its base; "
                        f"format={fmt} converts full models and {', '.join(mergeable())} adapters")
    return source


def compare(fmt: str, tolerance: float, reference, logits, **extra) -> dict:
    """The export check: max |logit difference| against fp32 within ``tolerance`` x the logit scale,
    or a one-line error (the caller has written nothing outside its temp folder)."""
    scale = max(1.0, reference.abs().max().item())
    diff = (logits - reference).abs().max().item()
    agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    check = {"examples": len(reference), "tolerance": tolerance, "max_abs_diff_vs_fp32": diff,
             "argmax_agreement": agree, "passed": diff <= tolerance * scale, **extra}
    if not check["passed"]:
        raise UserError(f"export check failed: {fmt} logits differ from fp32 by {diff:.3g} "
                        f"(> {tolerance} x {scale:.3g}); nothing was saved (output_dir is as it was)")
    return check


def convert(entry, tolerance, model, tokenizer, batch, task, meta, model_dir: Path, tmp: Path,
            trust_remote_code: bool = False) -> tuple[dict, str]:
    """A conversion of the fp32 model (adapters merged): written to ``tmp`` by the format, loaded
    back from there, its logits compared with the fp32 model's."""
    import torch

    from llmft.models.precision import size_on_disk

    fmt = entry.name
    source = merged_source(model, fmt, meta, model_dir)
    with torch.no_grad():
        reference = source(**batch).logits.float()
    entry.convert(source, batch, tmp)
    tokenizer.save_pretrained(str(tmp))
    with torch.no_grad():
        reloaded = entry.load(tmp, task, tokenizer, trust_remote_code)
        device = getattr(reloaded, "device", None)  # (ONNX Runtime takes CPU tensors)
        logits = reloaded(**{k: v.to(device) if device is not None else v for k, v in batch.items()}).logits.float()
    runtime = {} if entry.backend == "torch" else {"runtime": entry.backend}
    check = compare(fmt, tolerance, reference, logits, **runtime,
                    dtype=entry.dtype or str(next(reloaded.parameters()).dtype))
    diff, agree = check["max_abs_diff_vs_fp32"], check["argmax_agreement"]
    size = size_on_disk(tmp)
    where = "" if entry.backend == "torch" else f" ({RUNTIMES.get(entry.backend, entry.backend)})"
    served = " of weights" if entry.backend == "torch" else f"; predict with predict.backend={entry.backend}"
    message = (f"{fmt} export{where}: max |dlogit| vs fp32 = {diff:.2e} (tolerance {tolerance:g}), argmax "
               f"agreement {agree:.3f}: [bold green]OK[/]; {size / 2**20:.1f} MiB{served}")
    return {"meta": {"format": fmt, "export_check": check}, "result": {"format": fmt, "size_bytes": size},
            "check": check}, message


RUNTIMES = {"onnxruntime": "ONNX Runtime"}  # predict.backend -> its name in messages


def validate(cfg) -> None:
    """llmft export's own knobs (torch-free)."""
    from llmft.core.errors import require
    from llmft.models import formats

    entry = formats.get(cfg.format)
    if entry.tasks is not None:
        require(cfg.data.task in entry.tasks, "format", f"{cfg.format} exports {' and '.join(entry.tasks)} models "
                f"(this one is data.task={cfg.data.task}); format={'|'.join(formats.any_task())} converts the others")
    if entry.requires is not None:
        entry.requires(f"format={cfg.format}")
    require(cfg.check_examples >= 1, "check_examples", "must be >= 1 (the export is checked on them)")
    require(cfg.tolerance is None or cfg.tolerance > 0, "tolerance", "must be > 0 or null (the format's own)")
    if cfg.output_dir:
        require(not Path(cfg.output_dir).is_file(), "output_dir", f"{cfg.output_dir} is a file, not a folder")
