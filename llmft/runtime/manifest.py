"""RUN/manifest.json: what a rerun on another machine, months later, needs to match (or to know it
does not): llmft's version and git commit (+ the diff of a dirty checkout), Python and the
versions of the packages that decide the numbers, the hardware, every seed, the config
fingerprint and the digest of every input file (the same digests the fingerprint holds:
core/digest.py, hashed once), the command line and the environment variables that change numbers.

Written by rank 0 at the start of every training run, next to config.yaml (a staged run's stage
folders each get their own). Nothing secret lands in it: the command line is scrubbed of the
config's secrets (core/redact.py), and only the variables of ENVIRONMENT are recorded, by name
and value. ``llmft reproduce RUN`` (cli/reproduce.py) reads it back and compares (``differences``).
Torch-free import; torch is asked about GPUs only when the training run has loaded it.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MANIFEST = "manifest.json"
VERSION = 1
# what decides the numbers a run computes (always listed; null when not installed)
PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "deepspeed", "numpy",
            "scikit-learn", "hydra-core", "omegaconf", "safetensors", "huggingface-hub")
OPTIONAL_PACKAGES = ("trl", "bitsandbytes", "onnxruntime", "optimum")  # listed when installed
# variables that change what a run computes or how fast; recorded by name and value, no other one ever
ENVIRONMENT = ("CUBLAS_WORKSPACE_CONFIG", "CUDA_VISIBLE_DEVICES", "CUDA_LAUNCH_BLOCKING", "NVIDIA_TF32_OVERRIDE",
               "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHONHASHSEED",
               "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
               "TRANSFORMERS_OFFLINE", "TORCH_CUDNN_V8_API_DISABLED", "XLA_FLAGS")
DIFF_CAP = 256 * 1024  # bytes of `git diff HEAD` kept; a larger diff is cut there ("diff_truncated")
REPRODUCED_ENV = "LLMFT_REPRODUCED_FROM"  # set by llmft reproduce: {"run": RUN, "overrides": [...]} as JSON


def write_manifest(run_path, cfg, ident: dict) -> dict:
    """Write RUN/manifest.json (whole, atomically) and return it. ``ident``: the run's
    fingerprint (runtime/run_dir.fingerprint), whose input digests are reused."""
    from llmft.runtime.ownership import atomic_write

    manifest = build(cfg, ident)
    atomic_write(Path(run_path) / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n")
    return manifest


def build(cfg, ident: dict) -> dict:
    from llmft import __version__
    from llmft.core.redact import redacted, scrub_text, secret_values

    plain = redacted(cfg)
    secrets = secret_values(cfg)
    manifest = {
        "manifest_version": VERSION,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "llmft": {"version": __version__, "root": str(package_root()), **git_state(package_root(), secrets)},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "packages": packages(),
        "hardware": hardware(cfg),
        "seeds": seeds(plain),
        "config_fingerprint": ident["fingerprint"],
        "inputs": inputs(ident),
        "command": [scrub_text(a, secrets) for a in sys.argv],
        "cwd": os.getcwd(),
        "environment": {name: os.environ[name] for name in ENVIRONMENT if name in os.environ},
    }
    reproduced = os.environ.get(REPRODUCED_ENV)
    if reproduced:
        try:
            record = json.loads(reproduced)
            manifest["reproduced_from"] = {"run": str(record["run"]),
                                           "overrides": [scrub_text(str(o), secrets) for o in record["overrides"]]}
        except (ValueError, KeyError, TypeError):
            pass  # not llmft reproduce's record: nothing claimed
    return manifest


def package_root() -> Path:
    """The folder holding the llmft package (a checkout's root when installed editable)."""
    import llmft

    return Path(llmft.__file__).resolve().parent.parent


def git_state(root: Path, secrets=()) -> dict:
    """{"git": {"commit", "dirty", "status", "diff", ...}} of the checkout llmft runs from, or
    {"git": {"commit": None, "why": ...}} when it is not one (an installed wheel, no git).
    ``secrets``: the config's secret values, cut out of the diff (an edited file may hold one)."""
    from llmft.core.redact import scrub_text

    def git(*args) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    try:
        top = Path(git("rev-parse", "--show-toplevel").strip()).resolve()
        if top != root:  # e.g. a venv's site-packages inside some other repository
            return {"git": {"commit": None, "why": f"llmft is installed in {root}, not a git checkout's root"}}
        commit = git("rev-parse", "HEAD").strip()
        status = [line for line in git("status", "--porcelain").split("\n") if line.strip()]
        state = {"commit": commit, "dirty": bool(status), "status": status}
        if status:
            diff = git("diff", "HEAD", "--no-color")
            raw = diff.encode("utf-8", "surrogateescape")
            state.update(diff=scrub_text(raw[:DIFF_CAP].decode("utf-8", "ignore"), secrets), diff_bytes=len(raw),
                         diff_cap_bytes=DIFF_CAP,
                         diff_truncated=len(raw) > DIFF_CAP,
                         diff_covers="tracked files (git diff HEAD); untracked ones are named in status only")
        return {"git": state}
    except FileNotFoundError:
        return {"git": {"commit": None, "why": "git is not installed"}}
    except subprocess.CalledProcessError as err:
        why = " ".join((err.stderr or "").split())[:200] or f"git exited with {err.returncode}"
        return {"git": {"commit": None, "why": f"not a git checkout ({why})"}}
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"git": {"commit": None, "why": f"git failed: {err}"}}


def packages() -> dict:
    from importlib import metadata

    out = {}
    for name in PACKAGES + OPTIONAL_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name in PACKAGES:
                out[name] = None
    return out


def hardware(cfg) -> dict:
    from omegaconf import OmegaConf

    from llmft.runtime.distributed import world_size

    hw = OmegaConf.select(cfg, "hardware")
    facts = {"machine": platform.machine(), "system": platform.platform(), "cpu": cpu_model(),
             "cores": os.cpu_count(), "memory_bytes": memory_bytes()}
    if hasattr(os, "sched_getaffinity"):
        facts["cores_usable"] = len(os.sched_getaffinity(0))
    if hw is not None:
        from llmft.runtime.precision import known

        facts.update(world_size=world_size(hw), precision=known(hw), accelerator=hw.accelerator,
                     zero_stage=hw.zero_stage)
    if "torch" in sys.modules:  # a training run has it loaded; validation never pays for it
        import torch

        facts["torch_threads"] = torch.get_num_threads()
        facts["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            facts["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            facts["cudnn"] = torch.backends.cudnn.version()
        else:
            facts["gpus"] = []
    return facts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().split("\n"):
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def seeds(plain: dict, prefix: str = "") -> dict:
    """Every key of the resolved config whose name holds "seed" (seed, data.split_seed, a
    technique's own), by dotted key."""
    out = {}
    for key, value in plain.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(seeds(value, name + "."))
        elif "seed" in str(key).lower() and not isinstance(value, (list, dict)):
            out[name] = value
    return out


def inputs(ident: dict) -> dict:
    """The input digests of the fingerprint: {"data.train_file#sha256": ..., "data.hub_name#revision": ...}."""
    return {k: v for k, v in ident["config"].items() if "#" in k}


def read(run_path) -> dict | None:
    """RUN/manifest.json, or None when it is missing or does not read."""
    try:
        manifest = json.loads((Path(run_path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def differences(recorded: dict, here: dict) -> dict[str, list[str]]:
    """{"packages": ["torch 2.5.1 -> 2.6.0", ...], "llmft": [...], "python": [...], "hardware": [...],
    "environment": [...]}: what differs between a recorded manifest and this machine's (only
    the sections that differ). Input digests are compared by the caller (it knows the overrides)."""
    out = {}
    for section, keys in (("llmft", ("version",)), ("python", ("version",)), ("packages", None),
                          ("hardware", ("cpu", "cores", "gpus", "cuda", "cudnn", "torch_threads", "world_size",
                                        "precision")),
                          ("environment", None)):
        old, new = recorded.get(section) or {}, here.get(section) or {}
        names = keys or sorted(set(old) | set(new))
        lines = [f"{name} {_show(old.get(name))} -> {_show(new.get(name))}" for name in names
                 if old.get(name) != new.get(name) and (name in old or keys is None)]
        if lines:
            out[section] = lines
    old_git, new_git = (recorded.get("llmft") or {}).get("git") or {}, (here.get("llmft") or {}).get("git") or {}
    if (old_git.get("commit"), old_git.get("diff")) != (new_git.get("commit"), new_git.get("diff")):
        def said(g):
            return (g.get("commit") or "none")[:12] + (" (dirty)" if g.get("dirty") else "")
        out.setdefault("llmft", []).append(f"git {said(old_git)} -> {said(new_git)}"
                                           + (" (same commit, other uncommitted changes)"
                                              if old_git.get("commit") == new_git.get("commit") else ""))
    return out


def _show(value) -> str:
    return "unset" if value is None else (", ".join(map(str, value)) or "none") if isinstance(value, list) else str(value)
