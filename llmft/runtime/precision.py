"""The training precision a run uses: ``hardware.precision`` as set, or for ``auto`` bf16 where the
device multiplies bf16 natively (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX) and fp32
elsewhere. auto never picks fp16 (its loss scaling can skip steps: asked for by name only).

A run fixes its choice once, at its start (``resolve``); everything that reads the precision
(TrainingArguments, the DeepSpeed config, QLoRA's compute dtype, the preference reference,
``llmft check``'s memory estimate, the manifest, results.json) asks ``precision(hardware)``. The
config keeps saying auto, so the fingerprint is the same on every machine; a resumed run keeps the
precision its checkpoint was trained in (the marker records it), so it never mixes two.
Importing this module imports no torch (validation reads it)."""
from __future__ import annotations

import sys
from pathlib import Path

from llmft.core.errors import UserError

# this process's run: {"accelerator", "requested", "precision", "why"}, fixed by resolve()
_run: dict | None = None


def device_choice(hardware) -> tuple[str, str]:
    """(bf16 or fp32, why) for ``hardware.precision=auto`` on this machine."""
    import torch

    from llmft.runtime import hf_private

    if hardware.accelerator != "cpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"{name} multiplies bf16 natively"
        return "fp32", f"{name} has no native bf16"
    if hf_private.cpu_has_bf16():
        return "bf16", "this CPU has bf16 instructions (AVX512-BF16 or AMX)"
    return "fp32", "this CPU has no bf16 instructions (AVX512-BF16 or AMX): bf16 would be emulated, slower"


def resolve(hardware, checkpoint: Path | None = None, announce: bool = True) -> dict:
    """Fix this run's precision at its start: {"requested", "precision", "why"}. A run resumed from
    ``checkpoint`` keeps the precision that checkpoint was trained in (refused only where this
    device cannot run it); ``announce``: print the choice once (rank 0)."""
    global _run
    requested = hardware.precision
    if requested != "auto":
        _run = {"accelerator": hardware.accelerator, "requested": requested, "precision": requested,
                "why": "hardware.precision"}
        return record(hardware)
    chosen, why = device_choice(hardware)
    recorded = _recorded(checkpoint)
    if recorded is not None and recorded != chosen:
        if recorded == "bf16" and hardware.accelerator != "cpu" and _cuda_without_bf16():
            raise UserError(f"train.resume: {checkpoint} was trained in bf16 (hardware.precision=auto on its machine) "
                            f"and {why}; resume on a GPU with bf16, or pass train.resume=never to start over")
        why = f"{checkpoint.name}, which this run resumes from, was trained in {recorded} (here alone: {chosen}, {why})"
        chosen = recorded
    _run = {"accelerator": hardware.accelerator, "requested": "auto", "precision": chosen, "why": why}
    if announce:
        print(f"llmft: hardware.precision=auto -> {chosen}: {why}", file=sys.stderr, flush=True)
    return record(hardware)


def precision(hardware) -> str:
    """fp32, bf16 or fp16: what this run trains and evaluates in (auto resolved; see module doc)."""
    if hardware.precision != "auto":
        return hardware.precision
    if _run is not None and _run["requested"] == "auto" and _run["accelerator"] == hardware.accelerator:
        return _run["precision"]
    return device_choice(hardware)[0]  # outside a run (llmft eval, check): this device's choice


def known(hardware) -> str:
    """``precision`` without importing torch: "auto" when nothing resolved it in this process and
    torch is not loaded (the manifest of a validation-only process)."""
    if hardware.precision == "auto" and _run is None and "torch" not in sys.modules:
        return "auto"
    return precision(hardware)


def record(hardware) -> dict:
    """results.json's precision entries: the one used; for auto, also what was asked and why."""
    used = precision(hardware)
    if hardware.precision != "auto":
        return {"precision": used}
    why = _run["why"] if _run is not None and _run["requested"] == "auto" else device_choice(hardware)[1]
    return {"precision": used, "precision_requested": "auto", "precision_why": why}


def _recorded(checkpoint: Path | None) -> str | None:
    if checkpoint is None:
        return None
    from llmft.runtime.run_dir import read_marker

    value = (read_marker(checkpoint) or {}).get("precision")
    return value if value in ("fp32", "bf16", "fp16") else None


def _cuda_without_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False)


def forget() -> None:
    """Drop this process's resolved choice (the next run resolves afresh)."""
    global _run
    _run = None
