"""``llmft reproduce RUN [overrides]``: rerun a run's recorded config into a new folder. (Being written.)"""
from __future__ import annotations


def main(args: list[str]) -> int:
    raise SystemExit("llmft reproduce: not yet available")
