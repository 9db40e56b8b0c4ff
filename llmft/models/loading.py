"""Load a backbone + tokenizer from a model reference (a folder, a hub id, ``pkg:`` or ``gguf:``).

Code shipped with a model (``auto_map`` in its config) runs only when the command line asks:
``trust_remote_code`` is passed down from the command's own config. Saving a trained model and
loading it back (model/) is llmft/artifacts.py.
"""
from __future__ import annotations

import logging
from pathlib import Path

from llmft.core.errors import UserError, require
from llmft.core.paths import PKG_PREFIX, resolve_path

log = logging.getLogger(__name__)



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


def resolve_model_path(spec: str, key: str = "model.name_or_path") -> str:
    """A model reference for ``from_pretrained``: a local folder, or a hub id left as it is."""
    if spec.startswith("gguf:"):
        from llmft.models.gguf import converted_folder

        return converted_folder(spec, key)
    if spec.startswith(PKG_PREFIX):
        path = resolve_path(spec, key)
        if not path.is_dir():
            raise UserError(f"{key}={spec}: no folder at {path}")
        return str(path)
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        if not path.is_dir():
            raise UserError(f"{key}={spec}: no model folder there")
        return str(path)
    return spec  # a hub id such as "bert-base-uncased": works wherever a hub is reachable


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


# model.dropout sets every dropout probability the model's config names, whatever the architecture
# calls it: the backbone's (hidden / embeddings / FFN, and attention: one of these must exist) and
# the task head's, so model.dropout=0 turns every dropout of the model off.
DROPOUT_KEYS = {
    "hidden": ("hidden_dropout_prob", "hidden_dropout", "dropout", "dropout_rate", "resid_pdrop", "embd_pdrop",
               "resid_dropout", "embed_dropout", "embedding_dropout", "mlp_dropout", "activation_dropout"),
    "attention": ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop"),
    "head": ("classifier_dropout", "classifier_dropout_prob", "seq_classif_dropout", "qa_dropout", "cls_dropout",
             "pooler_dropout", "summary_first_dropout", "summary_last_dropout"),
}


def dropout_keys(config) -> list[str]:
    """The dropout probabilities ``config`` (a PretrainedConfig) has, by DROPOUT_KEYS' names: the
    backbone's hold a number; a head's may be None (BERT's: "use hidden_dropout_prob")."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    backbone = [k for group in ("hidden", "attention") for k in DROPOUT_KEYS[group]
                if number(getattr(config, k, None))]
    head = [k for k in DROPOUT_KEYS["head"] if hasattr(config, k) and (getattr(config, k) is None or
                                                                        number(getattr(config, k)))]
    return backbone + head if backbone else []


def dropout_kwargs(path: str, dropout: float, trust_remote_code: bool, revision: str | None) -> dict:
    """from_pretrained's config overrides that set model.dropout (AutoConfig takes every kwarg the
    config has as an attribute); one line when the architecture names none of DROPOUT_KEYS."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **revision_kwargs(revision))
    keys = dropout_keys(config)
    if not keys:
        known = ", ".join(DROPOUT_KEYS["hidden"] + DROPOUT_KEYS["attention"])
        raise UserError(f"model.dropout: the config of {path} (model_type={getattr(config, 'model_type', '?')}) "
                        f"names no dropout llmft knows ({known}); drop model.dropout")
    return {k: float(dropout) for k in keys}


def load_model(path: str, task, tokenizer, trust_remote_code: bool = False, auto_class: str | None = None,
               dropout: float | None = None, **load_kwargs):
    """``auto_class`` (e.g. AutoModelForCausalLM for prompting) replaces the task's head;
    ``dropout``: every dropout probability of the model (DROPOUT_KEYS), None: its config's own."""
    import transformers

    auto = getattr(transformers, auto_class or task.auto_model)
    head_kwargs = task.model_kwargs() if auto_class is None else {}
    if Path(path).is_dir():
        check_weights(Path(path), f"model.name_or_path={path}")
    try:
        if dropout is not None:  # in the config the model is built from: each layer reads its p at init
            load_kwargs = {**load_kwargs, **dropout_kwargs(path, dropout, trust_remote_code,
                                                            load_kwargs.get("revision"))}
        model = auto.from_pretrained(path, trust_remote_code=trust_remote_code, **head_kwargs, **load_kwargs)
    except OSError as err:
        raise UserError(f"model.name_or_path={path}: cannot load a model ({_first_line(err)})") from None
    except RuntimeError as err:  # a weight whose shape is not the one config.json gives
        if "mismatched_sizes" not in str(err) and "size mismatch" not in str(err):
            raise
        raise UserError(f"model.name_or_path={path}: its weights do not match the shapes in its config.json (a "
                        f"config from another model?); use the config.json saved with these weights") from None
    except ValueError as err:
        custom = custom_code_error(err, path)
        if custom is not None:
            raise custom from None
        if "does not recognize this architecture" in str(err) or "Unrecognized model" in str(err):
            import re

            import transformers as tf

            found = re.search(r"model type `([^`]*)`", str(err))
            raise UserError(f"model.name_or_path={path}: its config.json says model_type="
                            f"{found.group(1) if found else '?'}, which transformers {tf.__version__} does not know; "
                            f"upgrade transformers, or fix model_type in config.json") from None
        if "Unrecognized configuration class" not in str(err):
            raise
        kind = (auto_class or task.auto_model).removeprefix("AutoModelFor")
        raise UserError(f"model.name_or_path={path}: this architecture has no {kind} head, which data.task="
                        f"{task.name} needs; pick a model that has one") from None
    try:
        rows = getattr(model.get_input_embeddings(), "num_embeddings", None)
    except (NotImplementedError, AttributeError):  # a model class without the accessor
        rows = None
    if isinstance(rows, int) and len(tokenizer) > rows:  # ids past the table: an index error, or garbage on a GPU
        raise UserError(f"model.name_or_path={path}: the tokenizer has {len(tokenizer)} tokens but the model's "
                        f"embedding table has {rows} rows; use the tokenizer saved with this model")
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # e.g. Llama heads find the last token by it
    return model


def load_backbone_tokenizer(model_cfg, path: str | None = None):
    """The tokenizer of a model config (loaded before the model, so data checks that need it
    fail before the weights load); ``path``: another folder to load it from (a student)."""
    path = path or resolve_model_path(model_cfg.name_or_path)
    return load_tokenizer(path, model_cfg.trust_remote_code, model_cfg.pad_token_fallback, model_cfg.revision)


def load_backbone(model_cfg, task, strategy, tokenizer, path: str | None = None):
    """The model of a model config (the start of a training run), loaded the way the strategy
    needs (its Auto class, quantization); ``path``: another folder to load it from (a student)."""
    path = path or resolve_model_path(model_cfg.name_or_path)
    return load_model(path, task, tokenizer, model_cfg.trust_remote_code, strategy.model_class(path),
                      dropout=getattr(model_cfg, "dropout", None), **revision_kwargs(model_cfg.revision),
                      **strategy.model_load_kwargs())


def count_parameters(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "trainable_pct": round(100 * trainable / total, 4)}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def check_weights(folder: Path, key: str) -> None:
    """Every safetensors file in ``folder`` is whole (torch-free): its JSON header reads and the
    file is as long as the header's last data offset says. A copy or download cut short is named
    here, in one line, instead of as a traceback from the loader (or, for a checkpoint, after
    training has resumed)."""
    import json

    from llmft.core.paths import safetensors_problem

    for file in sorted(Path(folder).glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem:
            raise UserError(f"{key}: {file} is cut short or corrupt ({problem}); copy or download it again")
    index = Path(folder) / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{key}: {index} is not a readable weights index; copy or download it again") from None
        absent = sorted(s for s in shards if not (Path(folder) / s).is_file())
        require(not absent, key, f"{index} lists {absent[0]}, which is not in {folder}; copy or download it again")


def read_meta(model_dir: Path, key: str) -> dict | None:
    """A saved model's llmft.json (torch-free), None when there is none; one line when it does not
    read as a JSON object (a cut-off copy, an edit gone wrong)."""
    import json

    meta_path = Path(model_dir) / "llmft.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{key}: {meta_path} does not read as JSON ({_first_line(err)}); copy the model folder "
                        f"again, or retrain") from None
    require(isinstance(meta, dict), key, f"{meta_path} is not a JSON object; copy the model folder again, or retrain")
    return meta


def check_saved_model(model_dir, key: str) -> None:
    """A saved model folder (model_dir=, inputs=, students=, a teacher) before anything loads: it
    exists (a typo fails here, not after Hydra made the run folder), its llmft.json reads and its
    weights are whole."""
    path = Path(model_dir)
    require(path.is_dir(), key, "no such folder; give a run's model/ folder")
    read_meta(path, key)
    check_weights(path, key)


def validate_model(cfg) -> None:
    """A local model folder (read without torch): it is a model, and data.max_length fits its positions."""
    import json

    spec = cfg.model.name_or_path
    if spec.startswith("gguf:"):
        return
    path = resolve_path(spec, key="model.name_or_path") if spec.startswith(PKG_PREFIX) else Path(spec).expanduser()
    if not path.is_dir():
        return  # a hub id, or a missing folder (resolve_model_path says so)
    config_file = path / "config.json"
    require(config_file.is_file(), "model.name_or_path",
            f"{path} is a folder but not a model (no config.json); point it at a Hugging Face model folder")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"model.name_or_path: {config_file} is not valid JSON ({err})") from None
    require(isinstance(config, dict), "model.name_or_path", f"{config_file} is not a model config (not a JSON object)")
    check_weights(path, "model.name_or_path")
    if any(k in config for k in ("rope_theta", "rope_parameters", "rope_scaling")):
        return  # rotary positions: no table to run past
    limit = config.get("max_position_embeddings") or config.get("n_positions")
    if isinstance(limit, int) and config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2  # their position ids start after the padding index
    if isinstance(limit, int) and "data" in cfg:
        require(cfg.data.max_length <= limit, "data.max_length",
                f"{cfg.data.max_length} is past the model's {limit} positions (max_position_embeddings in "
                f"{config_file}); use data.max_length<={limit}")
