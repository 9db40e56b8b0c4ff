"""model/: what a training run leaves, and how every command loads it back.

``model/`` is always a standard folder: a full HF model (config + safetensors + tokenizer) or a
PEFT adapter (adapter_config.json + adapter_model.safetensors + tokenizer), plus ``llmft.json``
(task, labels, strategy, base model and its revision) so ``llmft eval`` can rebuild the task
without the run; a model wrapper (CRF tagger, multi-task heads) saves its encoder that way and its
own parts beside it. No pickle is left in it (the Trainer's ``training_args.bin`` is removed).

``trust_remote_code`` is passed down from the command's own config, never read from llmft.json
(a folder whose llmft.json says it was trained with it is refused without it).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from llmft.core.errors import UserError
from llmft.models.loading import check_weights, load_tokenizer, read_meta
from llmft.models.layers import Wrapper
from llmft.strategies import strategy_class

META_FILE = "llmft.json"
# pickles the HF Trainer writes beside the model (its TrainingArguments); unpickling runs code
TRAINER_PICKLES = ("training_args.bin",)


def require_trust(meta: dict, trusted: bool, key: str, folder, flag: str = "trust_remote_code") -> None:
    """A model trained with trust_remote_code runs its code again only if this command line asks."""
    if meta.get("trust_remote_code") and not trusted:
        raise UserError(f"{key}: this model was trained with trust_remote_code=true and its code runs only if "
                        f"you ask: add {flag}=true (read the code in {folder} first)")


def plain_model(model):
    """The HF model inside llmft's wrappers (CRF tagger, multi-task heads, prompt classifier) and
    PEFT, merged where the adapter merges; the bare base model when it does not (prompt learning)."""
    if isinstance(model, Wrapper):
        model = model.encoder
    elif hasattr(model, "label_ids") and hasattr(model, "lm"):  # models/prompting.py's classifier over an LM
        model = model.lm
    if hasattr(model, "peft_config"):
        if callable(getattr(model.base_model, "merge_and_unload", None)):  # PEFT's LoRA/DoRA/IA3 tuners
            return copy.deepcopy(model).merge_and_unload()
        return model.get_base_model()
    return model


def model_metadata(cfg, task, strategy, base_model: str, fingerprint: str, training: dict) -> dict:
    """model/llmft.json of a training run: what eval/predict/export need to rebuild the task and
    load the model, and the training record a rerun that finds model/ complete reports."""
    from llmft.runtime.run_dir import finite_json

    return {
        **task.metadata(),
        **strategy.metadata(),
        "crf": cfg.model.crf,
        "strategy": cfg.strategy.name,
        "base_model": base_model,
        "trust_remote_code": cfg.model.trust_remote_code,
        "revision": cfg.model.revision,
        "fingerprint": fingerprint,
        "training": finite_json(training),
    }


def save_model(trainer, strategy, tokenizer, model_dir: Path, meta: dict) -> None:
    """Save as the strategy says (by default through the Trainer, which handles PEFT and
    distributed saving), then the tokenizer and the metadata. A wrapper (CRF tagger, multi-task
    heads) saves its encoder that way and its own parts beside it.

    Everything goes to a temp folder first, renamed to ``model_dir`` once whole (llmft.json
    last, every file flushed to disk first): a model/ that exists is complete, and no file of an
    earlier model survives in it. What model/ held before is deleted only when it is this config's
    earlier save; anything else is moved to replaced/<time>/."""
    from llmft.runtime.ownership import fsync_dir, fsync_tree

    tmp = model_dir.with_name(f".{model_dir.name}.tmp")
    if trainer.is_world_process_zero():
        remove_leftover(tmp)  # a save killed half-way
    _wait_for_all(trainer)
    wrapper = trainer.model if isinstance(trainer.model, Wrapper) else None  # CRF tagger, multi-task
    if wrapper is not None:
        trainer.model = wrapper.encoder
    try:
        strategy.save(trainer, tmp)
    finally:
        if wrapper is not None:
            trainer.model = wrapper
    if trainer.is_world_process_zero():
        if wrapper is not None:
            wrapper.save_extra(tmp)
        tokenizer.save_pretrained(str(tmp))
        drop_trainer_pickles(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        fsync_tree(tmp)  # on disk before the rename says model/ is complete
        old = model_dir.with_name(f".{model_dir.name}.old")
        if os.path.lexists(model_dir):
            if _saved_fingerprint(model_dir) == meta.get("fingerprint"):  # this config's earlier save
                remove_leftover(old)
                model_dir.rename(old)
            else:  # anything else (set aside at start, so only if it appeared since) is kept
                set_aside(model_dir)
        tmp.rename(model_dir)
        fsync_dir(model_dir.parent)
        remove_leftover(old)
    _wait_for_all(trainer)


def remove_leftover(path: Path) -> None:
    """Delete a temp folder llmft left (a link planted there is removed, never followed)."""
    import shutil

    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _saved_fingerprint(model_dir: Path) -> str | None:
    if model_dir.is_symlink():
        return None
    try:
        return json.loads((model_dir / META_FILE).read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def set_aside(path: Path) -> Path:
    """Move ``path`` to replaced/<time>/ beside it (never deleted), with a warning."""
    import logging
    import time

    target = path.parent / "replaced" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}"
    target.mkdir(parents=True, exist_ok=True)
    path.rename(target / path.name)
    logging.getLogger(__name__).warning("%s was not written by this config's run: moved to %s", path, target)
    return target


def drop_trainer_pickles(folder: Path) -> None:
    """model/ holds no pickle: the Trainer's TrainingArguments (training_args.bin) would run code
    when loaded, and the run's config.yaml already records every setting."""
    for name in TRAINER_PICKLES:
        (folder / name).unlink(missing_ok=True)


def _wait_for_all(trainer) -> None:
    """A barrier across ranks (a no-op in a single process)."""
    trainer.accelerator.wait_for_everyone()


def read_metadata(model_dir: Path) -> dict:
    meta_path = model_dir / META_FILE
    if not model_dir.is_dir():
        raise UserError(f"model_dir={model_dir}: no such folder")
    if not meta_path.is_file():
        raise UserError(f"model_dir={model_dir}: no {META_FILE}; point model_dir at a run's model/ folder")
    return read_meta(model_dir, f"model_dir={model_dir}")


def load_saved(model_dir: Path, task, meta: dict, device_map: str | None = None, trust_remote_code: bool = False):
    """A saved run's model and tokenizer, ready to predict; the strategy knows its format.
    ``device_map="auto"`` spreads the layers of a model too large for one device over all of them.
    ``trust_remote_code`` comes from the command line, never from the folder's llmft.json."""
    require_trust(meta, trust_remote_code, f"model_dir={model_dir}", model_dir)
    check_weights(Path(model_dir), f"model_dir={model_dir}")  # an adapter's too (its base is checked on load)
    tokenizer = load_tokenizer(str(model_dir), trust_remote_code)
    from llmft.models.formats import of_saved

    exported = of_saved(meta)
    if exported is not None and not exported.hf_folder and exported.backend == "torch":  # e.g. format=int8
        model = exported.load(model_dir, task, tokenizer, trust_remote_code)
    elif (meta.get("pruned") or {}).get("heads"):  # fewer heads than its config.json can say (models/pruning.py)
        from llmft.models.pruning import load_head_pruned

        model = load_head_pruned(Path(model_dir), task, meta["pruned"]["heads"])
    else:
        placement = {"device_map": device_map} if device_map else {}
        model = strategy_class(meta.get("strategy", "full")).load_trained(model_dir, task, meta, tokenizer,
                                                                          trust_remote_code, **placement)
    model = task.wrap_saved(model, model_dir, meta)  # e.g. NER's CRF over the token scores
    return model.eval(), tokenizer
