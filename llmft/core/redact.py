"""Secrets never leave the environment: what llmft writes (config.yaml, the printed config, the
tracker's config, checkpoint markers) is the config with every value read from the environment
shown as its interpolation (``${oc.env:WANDB_API_KEY}``), never as the value.

A value counts as secret when it came from an ``oc.env`` / ``env`` interpolation (directly or
through other keys), or equals a token the libraries read from the environment (W&B, HF).

A secret typed on the command line would be recorded before llmft runs (Hydra's .hydra/ files,
the tracker's copy of the command line, Hydra's error message): a value that looks like a token
is refused (``typed_secret``), and what Hydra and the tracker record is scrubbed of the secrets
llmft knows of (``scrub_files``, ``scrub_text``).
"""
from __future__ import annotations

import math
import os
import re

TOKEN_VARIABLES = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN")
_ENV_MARKERS = ("${oc.env:", "${env:")
REDACTED = "<redacted>"


# Tokens by their published formats: Hugging Face user access tokens; W&B API keys (40+ word
# characters after an optional on-prem prefix, wandb/sdk/lib/wbauth/validation.py: 40 hex in
# practice); GitHub, OpenAI-style and AWS access keys.
_TOKEN_FORMATS = (
    (re.compile(r"hf_[A-Za-z0-9]{30,}"), "a Hugging Face token", "HF_TOKEN"),
    (re.compile(r"(?:[a-z]+-)?[0-9a-f]{40}"), "a W&B API key", "WANDB_API_KEY"),
    (re.compile(r"(?:ghp|gho|ghs|github_pat)_[A-Za-z0-9_]{30,}|sk-[A-Za-z0-9_-]{30,}|AKIA[0-9A-Z]{16}"),
     "an access token", "MY_TOKEN"),
)
# keys whose values are commit hashes (40 hex, like a W&B key) and never secrets
_HASH_KEYS = ("revision",)


def typed_secret(key: str, value: str) -> tuple[str, str] | None:
    """(what it looks like, the variable to read it from) when ``value`` typed for ``key`` is a
    secret: a token an environment variable of the libraries holds, a token by its format, or a
    long random string (32+ letters and digits of both cases, high entropy); None otherwise.
    A path or hub id (with '/') and a commit hash for a revision key are not secrets."""
    for variable in TOKEN_VARIABLES:
        token = os.environ.get(variable, "")
        if len(token) >= 8 and token in value:
            return f"the token in ${variable}", variable
    hashes = key.rsplit(".", 1)[-1].endswith(_HASH_KEYS)
    for piece in re.split(r"[\s,\[\](){}'\":=]+", value):
        for pattern, kind, variable in _TOKEN_FORMATS:
            if pattern.fullmatch(piece) and not (hashes and variable == "WANDB_API_KEY"):
                return kind, variable
        if not hashes and _random(piece):
            return "a secret (a long random string)", "MY_SECRET"
    return None


def _random(piece: str) -> bool:
    if len(piece) < 32 or not re.fullmatch(r"[A-Za-z0-9_\-+]+", piece):
        return False
    if not (re.search(r"[a-z]", piece) and re.search(r"[A-Z]", piece) and re.search(r"[0-9]", piece)):
        return False
    counts = [piece.count(c) for c in set(piece)]
    entropy = -sum(n / len(piece) * math.log2(n / len(piece)) for n in counts)
    return entropy >= 4.0  # a random base62 string of 32: ~4.6 bits a character; words and names: < 4


def secret_values(cfg) -> set[str]:
    """The secrets of a config: the tokens the libraries read from the environment, and the
    value of every key that reads the environment (directly or through other keys)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    secrets = {os.environ[v] for v in TOKEN_VARIABLES if len(os.environ.get(v, "")) >= 4}
    _collect(raw, resolved, secrets)
    return {s for s in secrets if len(s) >= 4}


def scrub_text(text: str, secrets: set[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):  # a secret inside a longer one: the longer first
        text = text.replace(secret, REDACTED)
    return text


def scrub_files(folder, secrets: set[str]) -> None:
    """Every file directly in ``folder`` with a secret in it rewritten without it (Hydra's
    config.yaml, hydra.yaml, overrides.yaml: small)."""
    from pathlib import Path

    folder = Path(folder)
    if not secrets or not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
            clean = scrub_text(text, secrets)
            if clean != text:
                path.write_text(clean, encoding="utf-8", errors="surrogateescape")


def redacted(cfg) -> dict:
    """The resolved config as plain containers, with secrets replaced (see the module doc)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return _replace(raw, resolved, secret_values(cfg))


def _collect(raw, resolved, secrets: set) -> None:
    """The values of every leaf whose raw text reads the environment."""
    for key, raw_value, value in _pairs(raw, resolved):
        if isinstance(raw_value, (dict, list)):
            _collect(raw_value, value, secrets)
        elif isinstance(raw_value, str) and any(m in raw_value for m in _ENV_MARKERS) and value is not None:
            secrets.add(str(value))


def _replace(raw, resolved, secrets: set):
    if isinstance(resolved, dict):
        return {k: _replace(r, v, secrets) for k, r, v in _pairs(raw, resolved)}
    if isinstance(resolved, list):
        return [_replace(r, v, secrets) for _, r, v in _pairs(raw, resolved)]
    if isinstance(resolved, str) and any(s in resolved for s in secrets):
        # the interpolation itself says where the value comes from; a literal that holds a token does not
        return raw if isinstance(raw, str) and "${" in raw else REDACTED
    return resolved


def _pairs(raw, resolved):
    if isinstance(resolved, dict):
        raw = raw if isinstance(raw, dict) else {}
        return [(k, raw.get(k), v) for k, v in resolved.items()]
    raw = raw if isinstance(raw, list) else [None] * len(resolved)
    return [(i, r, v) for i, (r, v) in enumerate(zip(raw, resolved))]


def to_yaml(cfg) -> str:
    import yaml

    return yaml.safe_dump(redacted(cfg), sort_keys=False, allow_unicode=True)
