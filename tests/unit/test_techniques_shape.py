"""Techniques have one shape: a module in llmft/techniques/ holding ``technique`` (a Technique
whose hooks are named after points of the recipe and receive the run context), and the recipe
calls whatever is registered there. A technique added outside the package acts at its hooks
with no edit to commands/train.py; no technique tests a strategy's name (the strategy says what
it does: PET's ensemble of patterns)."""
from __future__ import annotations

import ast
import json
import types
from pathlib import Path

from conftest import REPO

import llmft.techniques as techniques
from llmft.techniques import HOOKS, Technique

TECHNIQUES_DIR = Path(techniques.__file__).parent


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmft.cli.app import config_dir
    from llmft.cli.validate import register_configs

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def test_every_technique_module_holds_one_technique_whose_methods_are_recipe_hooks():
    base = {name for name in vars(Technique) if not name.startswith("_")} - {"keys"}
    assert set(HOOKS) | {"validate", "stages"} == base
    assert len(techniques.modules()) >= 10
    owners: dict[str, str] = {}
    from omegaconf import OmegaConf

    cfg = compose()
    for module in techniques.modules():
        technique = getattr(module, "technique", None)
        assert isinstance(technique, Technique), f"{module.__name__}: no `technique = <Technique subclass>()`"
        methods = {n for n, v in vars(type(technique)).items() if callable(v) and not n.startswith("_")}
        assert methods <= base, f"{module.__name__}: {sorted(methods - base)} are no recipe hooks"
        for key in technique.keys:  # its keys are in the train schema, each owned once
            section, _, leaf = key.rpartition(".")
            assert leaf in OmegaConf.select(cfg, section), f"{module.__name__}: {key} is not a config key"
            assert key not in owners, f"{key}: owned by {owners[key]} and {module.__name__}"
            owners[key] = module.__name__


def test_no_technique_tests_a_strategy_name():
    """``strategy.name == "pet"`` inside a technique: the strategy declares the capability instead."""
    found = []
    for path in sorted(TECHNIQUES_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            names = any(isinstance(o, ast.Attribute) and o.attr == "name" for o in operands)
            literal = any(isinstance(o, ast.Constant) and isinstance(o.value, str) for o in operands)
            if names and literal:
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)


def test_the_pet_strategy_declares_its_ensemble_and_techniques_ask_it():
    from llmft.strategies import strategy_class
    from llmft.strategies.base import Strategy
    from llmft.techniques import pet_ensemble, unlabeled

    pet = strategy_class("pet")
    patterns = ("data.prompt.patterns=[{template: 'a {text} b'},{template: 'c {text} d'}]",
                "data.prompt.verbalizer={negative: bad, neutral: ok, positive: good}")
    on = compose("strategy=pet", "strategy.ensemble=true", *patterns)
    assert pet.pattern_ensemble(on) and not strategy_class("full").pattern_ensemble(compose())
    assert pet_ensemble.technique.stages(on) is pet_ensemble.run
    assert pet_ensemble.technique.stages(compose("strategy=pet")) is None
    stages = pet.ensemble_stages(on, 0)
    assert [name for name, _ in stages] == ["pattern-0", "pattern-1"]
    assert stages[1][1] == {"data.prompt.template": "c {text} d", "strategy.ensemble": False,
                            "data.prompt.verbalizer": {"negative": "bad", "neutral": "ok", "positive": "good"}}
    ipet = compose("strategy=pet", "strategy.ensemble=true", "strategy.generations=2", *patterns)
    assert [name for name, _ in pet.ensemble_stages(ipet, 1)] == ["gen1-pattern-0", "gen1-pattern-1"]
    kind, section, changes = pet.final_classifier(compose("strategy=pet", "strategy.final_model=other"))
    assert (kind, section.name, section.lr) == ("full", "full", 5e-5)
    assert changes == {"train.lr": 5e-5, "model.name_or_path": "other", "model.name": "other", "model.revision": None}

    class Ensembles(Strategy, abstract=True):  # any strategy that declares an ensemble reads unlabelled data
        @classmethod
        def pattern_ensemble(cls, run_cfg) -> bool:
            return True

    assert unlabeled.consumers(compose(), Ensembles) == ["strategy.ensemble"]
    assert unlabeled.consumers(compose(), strategy_class("full")) == []


class Probe(Technique):
    """A technique that exists only here: it records every hook the recipe calls, adds a Trainer
    callback and a train figure."""

    keys = ()

    def __init__(self):
        self.calls: list[str] = []
        self.steps = 0

    def validate(self, cfg, task, strategy) -> None:
        self.calls.append("validate")

    def stages(self, cfg):
        self.calls.append("stages")

    def source(self, run) -> None:
        assert run.source is None and run.splits  # first: nothing else named the model
        self.calls.append("source")

    def splits(self, run) -> None:
        assert "train" in run.splits and run.tokenizer is None
        self.calls.append("splits")

    def train_set(self, run) -> None:
        assert run.train_set is not None and run.model is not None
        self.calls.append("train_set")

    def objective(self, run) -> None:
        self.calls.append("objective")

    def trainer(self, run) -> None:
        from transformers import TrainerCallback

        probe = self

        class Count(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                probe.steps += 1

        run.callbacks.append(Count())
        self.calls.append("trainer")

    def trained(self, run) -> None:
        assert run.trainer is not None and run.record["train"] is run.figures
        run.figures["probe"] = self.steps
        self.calls.append("trained")


def test_a_technique_added_outside_the_package_acts_at_its_hooks(monkeypatch, tmp_path, tiny_bert, tiny_data):
    """The recipe (commands/train.py) calls a technique it has never named: in-process, a 2-step run."""
    from llmft.cli.validate import validate
    from llmft.commands import train

    probe = Probe()
    module = types.ModuleType("probe_technique")
    module.technique = probe
    registered = techniques.modules()
    monkeypatch.setattr(techniques, "modules", lambda: (*registered, module))
    cfg = compose("model=hf", f"model.name_or_path={tiny_bert}", "data=csv", f"data.train_file={tiny_data['train']}",
                  f"data.eval_file={tiny_data['eval']}", "train.max_steps=2", "train.batch_size=8",
                  "train.retention.report=false", "print_config=false")
    validate(cfg)
    results = train.main(cfg, tmp_path / "run")
    assert probe.calls == ["validate", "stages", "splits", "source", "train_set", "objective", "trainer", "trained"]
    assert probe.steps == 2 and results["train"]["probe"] == 2
    assert json.loads((tmp_path / "run" / "results.json").read_text())["train"]["probe"] == 2
    assert REPO.joinpath("llmft/commands/train.py").read_text().count("probe") == 0
