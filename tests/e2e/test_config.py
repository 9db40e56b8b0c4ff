"""The CLI end to end: --help, a sweep over strategies, an installed wheel, torch-free validation.
Composition and validation of every config option run in process: tests/unit/test_config.py."""
from __future__ import annotations

import os
import time
from pathlib import Path

import yaml
from conftest import REPO, read_results, run_cli, tiny_train_args

CONFIGS = REPO / "configs"


def test_help_is_fast_and_lists_commands():
    started = time.perf_counter()
    proc = run_cli("--help")
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0 and "train" in proc.stdout and "eval" in proc.stdout
    assert elapsed < 5  # generous for a loaded CI machine; measured ~0.1 s here


def test_hydra_help_lists_the_groups():
    proc = run_cli("train", "--help")
    assert proc.returncode == 0
    for group in ("model", "data", "strategy", "hardware", "logger", "experiment"):
        assert group in proc.stdout


def test_sweep_over_strategies_runs_each(tmp_path, tiny_data, tiny_bert):
    """`-m +strategy=full,lora` on a tiny model: two runs, each with its strategy, both complete."""
    args = [a for a in tiny_train_args(tiny_bert, tiny_data, tmp_path / "unused") if not a.startswith("hydra.run.dir")]
    proc = run_cli("train", "-m", "+strategy=full,lora", *args, "train.max_steps=2",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [read_results(r)["strategy"] for r in runs] == ["full", "lora"]


def test_non_editable_install_finds_its_configs(tmp_path):
    """The wheel carries configs/ as llmft/configs; composing from it works outside the checkout."""
    import subprocess
    import sys
    import zipfile

    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheel_dir, REPO],
                   check=True, capture_output=True, timeout=300)
    wheel = next(Path(wheel_dir).glob("llmft-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for path in CONFIGS.rglob("*.yaml"):
        assert f"llmft/configs/{path.relative_to(CONFIGS)}" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import sys, llmft.cli, llmft.cli.app\n"
            f"assert llmft.cli.app.config_dir().startswith({str(target)!r}), llmft.cli.app.config_dir()\n"
            "sys.exit(llmft.cli.main(['train', '+strategy=lora', '--cfg', 'job']))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert yaml.safe_load(proc.stdout)["strategy"]["name"] == "lora"


VALIDATE_WITHOUT_TORCH = """
import sys
from hydra import compose, initialize_config_dir
from llmft.cli.app import config_dir
from llmft.cli.validate import register_configs, validate
from llmft.core.errors import UserError

register_configs()
with initialize_config_dir(config_dir(), version_base="1.3"):
    for overrides in ([], ["strategy=lora"], ["hardware=cpu_zero2"], ["strategy=pet", "model=smollm2"],
                      ["train.early_stopping.patience=2", "train.eval_steps=5", "train.distill.alpha=0.3"]):
        validate(compose("train", overrides=overrides))
    try:
        validate(compose("train", overrides=["train.cyclic.mode=bogus"]))
    except UserError as err:
        print("refused:", err)
heavy = sorted(m for m in ("torch", "transformers", "peft", "datasets", "deepspeed") if m in sys.modules)
print("heavy:", heavy)
"""


def test_validation_imports_no_torch():
    """Composing and validating a config (every owner's checks, every technique's) stays torch-free:
    what keeps `--help`, `--cfg job` and the pre-flight of a sweep instant."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", VALIDATE_WITHOUT_TORCH], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refused: train.cyclic.mode='bogus' is not one of: triangular, triangular2, exp_range" in proc.stdout
    assert "heavy: []" in proc.stdout, proc.stdout
