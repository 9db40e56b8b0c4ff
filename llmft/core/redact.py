"""Secrets never leave the environment: what llmft writes (config.yaml, the printed config, the
tracker's config, checkpoint markers) is the config with every value read from the environment
shown as its interpolation (``${oc.env:WANDB_API_KEY}``), never as the value.

A value counts as secret when it came from an ``oc.env`` / ``env`` interpolation (directly or
through other keys), or equals a token the libraries read from the environment (W&B, HF).
"""
from __future__ import annotations

import os

TOKEN_VARIABLES = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN")
_ENV_MARKERS = ("${oc.env:", "${env:")
REDACTED = "<redacted>"


def redacted(cfg) -> dict:
    """The resolved config as plain containers, with secrets replaced (see the module doc)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    secrets = {os.environ[v] for v in TOKEN_VARIABLES if len(os.environ.get(v, "")) >= 4}
    _collect(raw, resolved, secrets)
    return _replace(raw, resolved, {s for s in secrets if len(s) >= 4})


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
