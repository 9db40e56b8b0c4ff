"""``llmft check [train overrides] [-m]``: a dry run of ``llmft train``. (Being written.)"""
from __future__ import annotations


def main(args: list[str]) -> int:
    raise SystemExit("llmft check: not yet available")
