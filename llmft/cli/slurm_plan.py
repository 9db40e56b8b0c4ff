"""What a SLURM launcher would submit, for ``llmft check``: the jobs, the sbatch script of each and
the GPU-hours requested, without submitting anything. (Being written.)"""
from __future__ import annotations


def plan(jobs: list, sweep_dir: str) -> dict:
    """``jobs``: one (overrides, composed config with its ``hydra`` node) per job, in launch order."""
    return {}


def render(facts: dict) -> list[str]:
    return []
