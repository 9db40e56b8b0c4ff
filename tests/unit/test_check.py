"""``llmft check``: every point of a sweep composed as train composes it, the steps the Trainer
takes, the parameter counts of the model the run builds, nothing written, the did-you-mean
suggestions and the one-line refusal."""
from __future__ import annotations

import os
import tempfile

import pytest
from conftest import read_results, refused

from llmft.cli import check as check_cmd


def args(bert, data, tmp_path, *extra):
    return ["model=hf", f"model.name_or_path={bert}", "data=csv", f"data.train_file={data['train']}",
            f"data.eval_file={data['eval']}", "print_config=false", *extra, f"hydra.run.dir={tmp_path / 'run'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # the folders last: [:-2] leaves the defaults


def run_check(overrides, sweep=False):
    from llmft.cli import normalize_overrides
    from llmft.cli.validate import register_configs

    register_configs()
    return check_cmd.check(normalize_overrides(list(overrides), "train"), sweep=sweep)


def test_a_sweep_is_every_point_and_hyperparameters_share_the_facts(tiny_bert, tiny_data, tmp_path):
    facts = run_check(args(tiny_bert, tiny_data, tmp_path, "+strategy=full,lora", "train.lr=0.001,0.002,0.003"),
                      sweep=True)
    points = [p["overrides"][-4:-2] for p in facts["points"]]
    assert points == [[f"strategy={s}", f"train.lr={lr}"] for s in ("full", "lora") for lr in ("0.001", "0.002", "0.003")]
    assert [p["same_as"] for p in facts["points"]] == [None, 0, 0, None, 3, 3]
    full, lora = facts["points"][0], facts["points"][3]
    assert full["params"]["trainable"] == full["params"]["total"]
    assert lora["params"]["total"] > full["params"]["total"] > 10 * lora["params"]["trainable"]  # LoRA adds its own
    assert facts["folder"] == str(tmp_path / "sweep")


def test_a_search_is_its_space_not_points(tiny_bert, tiny_data, tmp_path):
    facts = run_check(args(tiny_bert, tiny_data, tmp_path, "hparams_search=optuna", "data.validation_fraction=0.1"))
    assert len(facts["points"]) == 1
    space = facts["search_space"]
    assert set(space["params"]) == {"train.lr", "train.warmup_ratio", "train.weight_decay"}
    assert space["changes_facts"] == []  # learning rate, warmup and decay change no size, memory or step count


def test_steps_equal_what_the_trainer_takes(tiny_bert, tiny_data, tmp_path):
    """96 rows, batch 7: 14 batches, grad_accum 2: 7 steps an epoch, x 1.5 epochs rounded up: 11."""
    from llmft.commands import train

    overrides = args(tiny_bert, tiny_data, tmp_path, "train.lr=1e-3", "train.batch_size=7", "train.grad_accum=2",
                     "train.epochs=1.5")
    facts = run_check(overrides)
    assert facts["points"][0]["steps"]["steps"] == 11
    train.main(compose(*overrides), tmp_path / "run")
    assert read_results(tmp_path / "run")["train"]["steps"] == 11


@pytest.mark.parametrize("extra, per_epoch, expected", [
    # 2 processes: 96 rows / batch 5 = 20 batches, 10 per rank, grad_accum 3: 4 steps (the last
    # accumulates 1 batch), x 2 epochs
    (["train.batch_size=5", "train.grad_accum=3", "train.epochs=2", "hardware.nproc_per_node=2"], 4, 8),
    # 19 batches over 2 ranks: 10 each (accelerate evens the last one out)
    (["train.batch_size=5", "train.epochs=1", "hardware.nproc_per_node=2"], 10, 10),
    (["train.batch_size=8", "train.max_steps=5"], 12, 5),  # max_steps wins over epochs
])
def test_steps_by_hand(tiny_bert, tiny_data, tmp_path, extra, per_epoch, expected):
    cfg = compose(*args(tiny_bert, tiny_data, tmp_path, *extra)[:-2])
    st = check_cmd.steps(cfg, list(range(96 if "train.epochs=1" not in extra else 91)))
    assert (st["per_epoch"], st["steps"]) == (per_epoch, expected)


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_parameter_counts_equal_the_loaded_model(tiny_bert, tiny_data, tmp_path, strategy):
    from llmft.data.files import load_splits
    from llmft.models.loading import count_parameters, load_backbone, load_backbone_tokenizer
    from llmft.strategies import build_strategy
    from llmft.tasks import build_task

    overrides = args(tiny_bert, tiny_data, tmp_path, f"+strategy={strategy}")
    p = run_check(overrides)["points"][0]["params"]
    assert p["built"].startswith("built on the meta device")
    cfg = compose(*overrides)
    task = build_task(cfg.data)
    load_splits(cfg.data, task)  # the label set
    strategy_ = build_strategy(cfg, task)
    tokenizer = load_backbone_tokenizer(cfg.model)
    model = strategy_.apply(load_backbone(cfg.model, task, strategy_, tokenizer))
    model, _ = task.wrap(model, strategy_.param_groups(model), cfg.model)
    real = count_parameters(model)
    assert (p["total"], p["trainable"]) == (real["total"], real["trainable"])


def test_memory_terms_by_hand(tiny_bert, tiny_data, tmp_path):
    """Stage 0: 4 B a weight + 16 B a trained one; ZeRO-2 bf16 on 2 ranks: DeepSpeed's 2 B + 18 B / 2."""
    cfg = compose(*args(tiny_bert, tiny_data, tmp_path)[:-2])
    params = {"total": 1000, "trainable": 100, "largest_layer": 10, "shape": {"hidden": None, "layers": None,
                                                                               "heads": None, "vocab": None}}
    terms = {t["name"]: t for t in check_cmd.memory(cfg, params)["terms"]}
    assert terms["model states"]["bytes"] == 4 * 1000 + 12 * 100
    gpu = compose(*args(tiny_bert, tiny_data, tmp_path)[:-2], "hardware=gpu_zero2", "hardware.precision=bf16",
                  "hardware.nproc_per_node=2")
    terms = {t["name"]: t for t in check_cmd.memory(gpu, params)["terms"]}
    assert terms["model states"]["bytes"] == 2 * 100 + 18 * 100 // 2
    assert "estimate_zero2_model_states_mem_needs" in terms["model states"]["source"]
    assert terms["frozen weights"]["bytes"] == 2 * 900


def test_check_writes_nothing(tiny_bert, tiny_data, tmp_path, monkeypatch):
    """No run folder, no outputs/ or multirun/, no .hydra, no datasets cache, no temporary folder left."""
    import datasets.config

    cwd, cache = tmp_path / "cwd", tmp_path / "datasets-cache"
    cwd.mkdir()
    cache.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    before = set(os.listdir(tempfile.gettempdir()))
    overrides = args(tiny_bert, tiny_data, tmp_path, "+strategy=full,lora")[:-2]  # default run/sweep dirs: cwd
    assert check_cmd.main([*overrides, "-m"]) == 0
    assert check_cmd.main(overrides[:-1]) == 0
    assert list(cwd.rglob("*")) == [] and list(cache.rglob("*")) == []
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
    assert not {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("llmft-check-")}


DID_YOU_MEAN = [
    (["train.lrr=1e-4"], "train.lrr: no such key in train; did you mean train.lr?"),
    (["data.max_lenght=32"], "data.max_lenght: no such key in data; did you mean data.max_length?"),
    (["strategy=lora", "strategy.rr=4"], "strategy.rr: no such key in strategy; did you mean strategy.r?"),
    (["trainn.lr=1e-4"], "trainn: no such key in the config; did you mean train?"),
    (["model=minilmm"], "model=minilmm: no such option; did you mean minilm? available: hf, minilm, smollm2"),
    (["hardware=gpu_zero3_ofload"], "hardware=gpu_zero3_ofload: no such option; did you mean gpu_zero3_offload?"),
    (["train.qqqqqq=1"], "train.qqqqqq: no such key in train (check the spelling"),  # nothing close: no guess
]


@pytest.mark.parametrize("overrides, expected", DID_YOU_MEAN, ids=[" ".join(c[0]) for c in DID_YOU_MEAN])
def test_a_misspelt_key_or_option_gets_a_suggestion(overrides, expected, tmp_path):
    assert expected in refused("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}")


def test_a_bad_config_is_the_same_one_line_and_exit_2(tiny_bert, tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        check_cmd.main(args(tiny_bert, tiny_data, tmp_path, "train.lr=-1"))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["llmft: error: train.lr: must be > 0 (got -1.0)"]


def test_no_sbatch_is_a_warning_in_check_and_an_error_in_train(tiny_bert, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no sinfo
    overrides = args(tiny_bert, tiny_data, tmp_path, "hydra/launcher=slurm")
    facts = run_check(overrides, sweep=True)
    assert any("sbatch is not on PATH" in w for w in facts["warnings"])
    assert "sbatch is not on PATH" in refused("train", *overrides)


def compose(*overrides: str):
    """The run config train gets for ``overrides`` (composed and validated)."""
    from llmft.cli import normalize_overrides
    from llmft.cli.app import composed
    from llmft.cli.validate import register_configs

    register_configs()
    return next(composed("train", normalize_overrides(list(overrides), "train")))[2]
