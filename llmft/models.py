"""Load a backbone + tokenizer for a task, save the trained result, and load it back.

``model/`` is always a standard folder: a full HF model (config + safetensors + tokenizer) or a
PEFT adapter (adapter_config.json + adapter_model.safetensors + tokenizer), plus ``llmft.json``
(task, labels, strategy, base model and its revision) so ``llmft eval`` can rebuild the task
without the run. No pickle is left in it (the Trainer's ``training_args.bin`` is removed).

Code shipped with a model (``auto_map`` in its config) runs only when the command line asks:
``trust_remote_code`` is passed down from the command's own config, never read from llmft.json
(a folder whose llmft.json says it was trained with it is refused without it).
"""
from __future__ import annotations

import contextvars
import json
import logging
from pathlib import Path

from llmft.errors import UserError
from llmft.paths import resolve_model_path

log = logging.getLogger(__name__)

META_FILE = "llmft.json"
# pickles the HF Trainer writes beside the model (its TrainingArguments); unpickling runs code
TRAINER_PICKLES = ("training_args.bin",)
# where load_model places weights while load_saved runs (device_map for eval/predict); every
# strategy's load_trained reaches load_model, so this is set once there instead of in each
_PLACEMENT: contextvars.ContextVar[dict] = contextvars.ContextVar("placement", default={})


def revision_kwargs(revision: str | None) -> dict:
    """``revision=`` for from_pretrained, only when one is set (a hub branch, tag or commit)."""
    return {"revision": revision} if revision else {}


def custom_code_error(err: ValueError, path: str) -> UserError | None:
    """transformers' refusal to run a folder's own code (auto_map, no trust) as one line; None for
    any other ValueError."""
    if "trust_remote_code" not in str(err):
        return None
    return UserError(f"model.name_or_path={path}: this model ships its own code (auto_map in its config) that "
                     f"runs only if you ask: add model.trust_remote_code=true (read the code in {path} first)")


def require_trust(meta: dict, trusted: bool, key: str, folder, flag: str = "trust_remote_code") -> None:
    """A model trained with trust_remote_code runs its code again only if this command line asks."""
    if meta.get("trust_remote_code") and not trusted:
        raise UserError(f"{key}: this model was trained with trust_remote_code=true and its code runs only if "
                        f"you ask: add {flag}=true (read the code in {folder} first)")


def load_tokenizer(path: str, trust_remote_code: bool = False, pad_token_fallback: str = "eos",
                   revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                  **revision_kwargs(revision))
    except OSError as err:
        raise UserError(f"model.name_or_path={path}: cannot load a tokenizer ({_first_line(err)})") from None
    except ValueError as err:
        custom = custom_code_error(err, path)
        if custom is None:
            raise
        raise custom from None
    if tokenizer.pad_token is None and pad_token_fallback == "eos" and tokenizer.eos_token:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-only models ship without a pad token
    return tokenizer


def load_model(path: str, task, tokenizer, trust_remote_code: bool = False, auto_class: str | None = None,
               **load_kwargs):
    """``auto_class`` (e.g. AutoModelForCausalLM for prompting) replaces the task's head."""
    import transformers

    auto = getattr(transformers, auto_class or task.auto_model)
    head_kwargs = task.model_kwargs() if auto_class is None else {}
    load_kwargs = {**_PLACEMENT.get(), **load_kwargs}
    try:
        model = auto.from_pretrained(path, trust_remote_code=trust_remote_code, **head_kwargs, **load_kwargs)
    except OSError as err:
        raise UserError(f"model.name_or_path={path}: cannot load a model ({_first_line(err)})") from None
    except ValueError as err:
        custom = custom_code_error(err, path)
        if custom is not None:
            raise custom from None
        if "Unrecognized configuration class" not in str(err):
            raise
        kind = (auto_class or task.auto_model).removeprefix("AutoModelFor")
        raise UserError(f"model.name_or_path={path}: this architecture has no {kind} head, which data.task="
                        f"{task.name} needs; pick a model that has one") from None
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # e.g. Llama heads find the last token by it
    return model


def load_backbone_tokenizer(model_cfg):
    """The tokenizer of a model config (loaded before the model, so data checks that need it
    fail before the weights load)."""
    path = resolve_model_path(model_cfg.name_or_path)
    return load_tokenizer(path, model_cfg.trust_remote_code, model_cfg.pad_token_fallback, model_cfg.revision)


def load_backbone(model_cfg, task, strategy, tokenizer):
    """The model of a model config (the start of a training run), loaded the way the strategy
    needs (its Auto class, quantization)."""
    path = resolve_model_path(model_cfg.name_or_path)
    return load_model(path, task, tokenizer, model_cfg.trust_remote_code, strategy.model_class(path),
                      **revision_kwargs(model_cfg.revision), **strategy.model_load_kwargs())


def count_parameters(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "trainable_pct": round(100 * trainable / total, 4)}


def save_model(trainer, strategy, tokenizer, model_dir: Path, meta: dict) -> None:
    """Save as the strategy says (by default through the Trainer, which handles PEFT and
    distributed saving), then the tokenizer and the metadata. A wrapper (CRF tagger, multi-task
    heads) saves its encoder that way and its own parts beside it.

    Everything goes to a temp folder first, renamed to ``model_dir`` once whole (llmft.json
    last): a model/ that exists is complete, and no file of an earlier model survives in it."""
    import shutil

    tmp = model_dir.with_name(f".{model_dir.name}.tmp")
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)  # a save killed half-way
    _wait_for_all(trainer)
    wrapper = trainer.model if hasattr(trainer.model, "save_extra") else None  # CRF tagger, multi-task
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
        old = model_dir.with_name(f".{model_dir.name}.old")
        if model_dir.exists():  # the same config's model (another config's was moved aside at start)
            shutil.rmtree(old, ignore_errors=True)
            model_dir.rename(old)
        tmp.rename(model_dir)
        shutil.rmtree(old, ignore_errors=True)
    _wait_for_all(trainer)


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
    return json.loads(meta_path.read_text())


def load_saved(model_dir: Path, task, meta: dict, device_map: str | None = None, trust_remote_code: bool = False):
    """A saved run's model and tokenizer, ready to predict; the strategy knows its format.
    ``device_map="auto"`` spreads the layers of a model too large for one device over all of them.
    ``trust_remote_code`` comes from the command line, never from the folder's llmft.json."""
    from llmft.strategies import strategy_class

    require_trust(meta, trust_remote_code, f"model_dir={model_dir}", model_dir)
    tokenizer = load_tokenizer(str(model_dir), trust_remote_code)
    token = _PLACEMENT.set({"device_map": device_map} if device_map else {})
    try:
        if meta.get("format") == "int8":  # llmft export format=int8
            from llmft.precision import load_int8

            model = load_int8(model_dir)
        else:
            model = strategy_class(meta.get("strategy", "full")).load_trained(model_dir, task, meta, tokenizer,
                                                                              trust_remote_code)
    finally:
        _PLACEMENT.reset(token)
    if meta.get("crf"):
        from llmft.crf import CrfTagger

        model = CrfTagger(model, task.labels).load_crf(model_dir)
    return model.eval(), tokenizer


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
