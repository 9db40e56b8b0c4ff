"""Config values that pass a type check but mean nothing: each is refused by the CLI's own
pre-flight (compose + every owner's validate, no torch), run here in process, in one line that
names the key and the fix; their valid neighbours pass."""
from __future__ import annotations

import pytest
from conftest import preflight, refused


# (overrides, what the one line says): every float knob that a range check lets nan/inf through,
# values that are in range but do nothing, and config mechanics
CONFIG_CASES = [
    (["train.lr=inf"], "train.lr: must be a finite number (got inf)"),
    (["train.weight_decay=inf"], "train.weight_decay: must be a finite number"),
    (["train.max_grad_norm=inf"], "train.max_grad_norm: must be a finite number"),
    (["train.epochs=inf"], "train.epochs: must be a finite number"),
    (["train.focal_gamma=inf"], "train.focal_gamma: must be a finite number"),
    (["train.early_stopping.threshold=nan"], "train.early_stopping.threshold: must be a finite number (got nan)"),
    (["train.cyclic.gamma=nan"], "train.cyclic.gamma: must be a finite number"),
    (["train.class_weights=[1,inf,1]"], "train.class_weights[1]: must be a finite number"),
    (["strategy=lora", "strategy.alpha=0"], "strategy.alpha must be > 0"),
    (["train.lr_scheduler=cosine_with_restarts", "train.num_cycles=0.5"], "train.num_cycles: cosine_with_restarts"),
    (["train.lr_scheduler=cosine_with_restarts", "train.num_cycles=2.5"], "whole number of cycles"),
    (["train.lr_scheduler=polynomial", "train.power=-1"], "train.power: polynomial decay needs a power > 0"),
    (["train.lr_scheduler=polynomial", "train.power=0"], "train.power: polynomial decay needs a power > 0"),
    (["train.lr_scheduler=polynomial", "train.lr=1e-8"], "train.lr: polynomial decay ends at 1e-7"),
    (["train.lr_scheduler=cyclic", "train.cyclic.mode=exp_range", "train.cyclic.gamma=0"],
     "train.cyclic.gamma: exp_range scales the cycle by gamma ** step"),
    (["train.class_weights=[0,0,0]"], "train.class_weights: all weights are 0"),
    (["strategy=pet", "model=smollm2", "strategy.ensemble=true", "strategy.final_lr=0"],
     "strategy.final_lr: the final classifier's learning rate must be > 0"),
    (["seed=-1"], "seed: must be in [0, 2**32)"),
    (["data.split_seed=-1"], "data.split_seed: must be in [0, 2**32)"),
    (["hardware.dataloader_workers=-1"], "hardware.dataloader_workers: must be >= 0"),
    (["train.distill.student_layers=2"], "train.distill.student_layers: builds a student from a teacher's blocks"),
    (["train.lr=${oc.env:LLMFT_TEST_UNSET_VARIABLE}"],
     "train.lr: the environment variable LLMFT_TEST_UNSET_VARIABLE is not set"),
    (["logger=wandb", "logger.wandb.entity=${oc.env:LLMFT_TEST_UNSET_VARIABLE}"],
     "logger.wandb.entity: the environment variable"),
    (["train.lr=1e-4,3e-4"], "train.lr=1e-4,3e-4: several values make a sweep: add -m"),
    (["++train.lrr=1e-4"], "train.lrr: no such key in train"),  # ++ adds past the schema: a typo did nothing
    (["strategy=lora", "++strategy.alphaa=32"], "strategy.alphaa: no such key in strategy"),
]


@pytest.mark.parametrize("overrides, expected", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_config_values_that_mean_nothing_are_refused(overrides, expected, tmp_path):
    assert expected in refused("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}")


def test_meaningful_neighbours_still_pass(tmp_path, monkeypatch):
    """The checks above do not refuse their valid neighbours."""
    monkeypatch.setenv("LLMFT_TEST_SET_VARIABLE", "0.0003")
    for overrides in (["train.lr_scheduler=cosine_with_restarts", "train.num_cycles=2"],
                      ["train.lr_scheduler=polynomial", "train.power=2"], ["train.class_weights=[0,1,1]"],
                      ["seed=0"], ["strategy=lora", "strategy.alpha=4"], ["train.lr=${oc.env:LLMFT_TEST_SET_VARIABLE}"]):
        preflight("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
