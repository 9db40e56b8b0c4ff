"""Start-up: a run imports only what its strategy needs. bitsandbytes (GaLore's projectors and
PEFT's LoRA layers pulled it in) and DeepSpeed (accelerate's unwrap) cost ~3 s of every run's
start; only QLoRA needs the one, ZeRO the other. Checked in a fresh interpreter (a module an
earlier test imported would hide the import), through the recipe itself."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent

# The recipe in process (commands/train.main, as cli/launch.py calls it) for each strategy in
# turn, up to the end of its first step; then which of the watched packages the interpreter holds.
CHILD = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from conftest import compose_config, tiny_train_args
from transformers import TrainerCallback
from llmft.commands.train import main as train

class FirstStep(Exception):
    pass

class StopAtFirstStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        raise FirstStep

model, train_file, eval_file, work = sys.argv[2:6]
loaded = {}
for strategy in sys.argv[6:]:
    run_dir = Path(work) / strategy
    args = tiny_train_args(Path(model), {"train": train_file, "eval": eval_file}, run_dir, f"strategy={strategy}",
                           "train.max_steps=1", "train.epochs=1", "data.max_eval_samples=8")
    cfg = compose_config("train", *(a for a in args if not a.startswith(("hydra.", "print_config"))), validate=True)
    try:
        train(cfg, run_dir, callbacks=[StopAtFirstStep()])
    except FirstStep:
        pass
    else:
        raise SystemExit(f"{strategy}: no training step")
    loaded[strategy] = sorted(m for m in ("bitsandbytes", "galore_torch", "deepspeed", "trl") if m in sys.modules)
print("LOADED " + json.dumps(loaded))
"""


def loaded_after(strategies: list[str], tiny_bert: Path, tiny_data: dict, tmp_path: Path) -> dict:
    from conftest import cli_env

    proc = subprocess.run([sys.executable, "-c", CHILD, str(TESTS), str(tiny_bert), str(tiny_data["train"]),
                           str(tiny_data["eval"]), str(tmp_path), *strategies],
                          env=cli_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("LOADED ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    return json.loads(line[len("LOADED "):])


def test_full_and_lora_train_without_bitsandbytes_and_qlora_still_loads_it(tiny_bert, tiny_data, tmp_path):
    import importlib.util

    qlora = importlib.util.find_spec("bitsandbytes") is not None  # the qlora extra (in the test extra)
    # one interpreter, in this order: what full and LoRA imported is seen before QLoRA runs
    loaded = loaded_after(["full", "lora", *(["qlora"] if qlora else [])], tiny_bert, tiny_data, tmp_path)
    assert loaded["full"] == [], loaded  # nor GaLore, nor DeepSpeed without ZeRO, nor TRL
    assert loaded["lora"] == [], loaded
    if qlora:
        assert "bitsandbytes" in loaded["qlora"], loaded  # its 4-bit base needs it
