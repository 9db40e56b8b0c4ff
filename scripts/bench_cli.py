"""What the benchmark scripts share: one `llmft` run into a folder of their own."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path


def llmft(*args: str, folder: Path) -> dict | str:
    """`llmft ARGS` into ``folder`` (skipped when its results.json exists: a rerun resumes the
    benchmark): its results, or the error line it ended with."""
    results = folder / "results.json"
    if not results.is_file():
        proc = subprocess.run(["llmft", *args, "print_config=false", f"hydra.run.dir={folder}"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(results.read_text())
