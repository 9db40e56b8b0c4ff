"""What this CPU offers inference: its name and the instruction-set flags that decide which int8 /
bf16 paths are fast (read from /proc/cpuinfo, with torch's view of the vector width).

    vnni  int8 dot products without the 16-bit intermediate (AVX512-VNNI, AVX-VNNI, AMX-INT8):
          ONNX Runtime's U8S8 int8 GEMMs need no 7-bit weights on it
    bf16  native bf16 matmul (AVX512-BF16, AMX-BF16): torch's bf16 runs through oneDNN's kernels
    amx   Intel AMX tiles (bf16 and int8)

Why /proc/cpuinfo: torch answers for AMX and AVX512-BF16 only (runtime/hf_private.cpu_has_bf16),
not for VNNI, and ONNX Runtime exposes none of its own dispatch.
"""
from __future__ import annotations

import platform
from pathlib import Path

# the flags that choose a path, as /proc/cpuinfo spells them
RELEVANT = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16 = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The first processor's flags in /proc/cpuinfo (``cpuinfo``: its text); empty where unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def describe(flags: set[str] | None = None, name: str | None = None) -> dict:
    """{"name", "machine", "torch_capability", "flags" (the relevant ones present), "vnni", "bf16",
    "amx"} of this CPU (``flags`` / ``name``: given instead of read)."""
    from llmft.runtime.manifest import cpu_model

    flags = cpu_flags() if flags is None else flags
    return {"name": name or cpu_model(), "machine": platform.machine(), "torch_capability": _torch_capability(),
            "flags": [f for f in RELEVANT if f in flags], "vnni": any(f in flags for f in VNNI),
            "bf16": any(f in flags for f in BF16), "amx": "amx_tile" in flags}


def _torch_capability() -> str | None:
    import sys

    if "torch" not in sys.modules:  # not worth importing torch for
        return None
    import torch

    return torch.backends.cpu.get_cpu_capability()


def x86(machine: str | None = None) -> bool:
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "i386", "i686")
