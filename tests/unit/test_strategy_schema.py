"""Each strategy's defaults live in its schema, and its name only in its file names.

A strategy is ``llmft/strategies/NAME.py`` (the schema dataclass and the class) plus
``configs/strategy/NAME.yaml`` (``defaults: [NAME_schema]`` and what the strategy is): the YAML
restates no default, no file writes the name, composing gives the schema's defaults, and a value
outside a closed set is refused in one line naming the key. All in process, no torch.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import functools

import pytest
import yaml
from conftest import REPO

from llmft.core.errors import UserError

CONFIGS = REPO / "configs" / "strategy"
NAMES = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


@pytest.fixture(scope="module")
def compose():
    """Hydra initialised once for the module (composing is the slow part)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmft.cli.app import config_dir
    from llmft.cli.validate import register_configs

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        yield functools.cache(lambda *overrides: hydra_compose("train", overrides=list(overrides)))


def schema_defaults(name: str) -> dict:
    from llmft.strategies import strategy_configs

    return dataclasses.asdict(strategy_configs()[name])


def test_every_yaml_is_a_module_and_every_module_a_yaml():
    from llmft.strategies import strategy_names

    assert NAMES == strategy_names()


@pytest.mark.parametrize("name", NAMES)
def test_the_yaml_holds_only_its_schema_line_and_what_it_changes(name):
    own = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()) or {}
    assert own.pop("defaults", None) == [f"{name}_schema"]
    assert "name" not in own, "the name is the file's name"
    defaults = schema_defaults(name)
    restated = sorted(key for key, value in own.items() if key in defaults and value == defaults[key])
    assert not restated, f"{name}.yaml restates its schema's defaults: {restated}"


def test_no_strategy_module_writes_its_name():
    """Neither a class attribute ``name = ...`` nor a schema field ``name: str = ...``."""
    written = []
    for path in sorted((REPO / "llmft" / "strategies").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    target = getattr(stmt, "target", None) or (getattr(stmt, "targets", None) or [None])[0]
                    if isinstance(target, ast.Name) and target.id == "name" and getattr(stmt, "value", None):
                        written.append(f"{path.name}:{stmt.lineno}")
    assert not written


@pytest.mark.parametrize("name", NAMES)
def test_composing_a_strategy_gives_its_schema_defaults_and_its_file_name(compose, name):
    """What `llmft train +strategy=NAME --cfg job` prints: every knob, at the schema's default,
    cfg.strategy.name is the file's name, and train.lr / warmup_ratio / weight_decay follow the
    strategy's."""
    from omegaconf import OmegaConf

    from llmft.strategies import strategy_class

    cfg = compose(f"strategy={name}")
    defaults = schema_defaults(name)
    assert cfg.strategy.name == defaults["name"] == strategy_class(name).name == name
    assert OmegaConf.to_container(cfg.strategy) == defaults
    assert list(cfg.strategy) == list(defaults)  # in the schema's order
    for key in ("lr", "warmup_ratio", "weight_decay"):
        assert cfg.train[key] == defaults[key]


def closed_sets() -> list[tuple[str, str, tuple]]:
    from llmft.strategies import strategy_class

    return [(name, f.name, f.metadata["choices"]) for name in NAMES
            for f in dataclasses.fields(strategy_class(name).config) if "choices" in f.metadata]


def test_the_closed_sets_are_declared_on_the_schemas():
    found = {(name, key) for name, key, _ in closed_sets()}
    for name in ("lora", "dora", "rslora", "qlora"):
        assert (name, "bias") in found
    assert {("qlora", "quant_type"), ("qlora", "compute_dtype"), ("adapter", "kind"), ("adapter", "activation"),
            ("gradual_unfreeze", "unit"), ("p_tuning", "head"), ("p_tuning", "encoder"), ("prompt_tuning", "head"),
            ("prompt_tuning", "init"), ("pet", "params"), ("pet", "final")} <= found


@pytest.mark.parametrize("name, key, choices", closed_sets(), ids=[f"{n}.{k}" for n, k, _ in closed_sets()])
def test_a_value_outside_a_closed_set_is_refused_in_one_line(compose, name, key, choices):
    from llmft.cli.validate import validate

    cfg = copy.deepcopy(compose(f"strategy={name}"))
    cfg.strategy[key] = "bogus"  # as strategy.KEY=bogus on the command line
    with pytest.raises(UserError) as err:
        validate(cfg)
    message = str(err.value)
    assert message == f"strategy.{key}='bogus' is not one of: {', '.join(str(c) for c in choices)}"
    assert "\n" not in message


def test_a_module_defines_one_strategy():
    """A second concrete strategy class in one module is a mistake, named when it is defined."""
    from llmft.core.registry import Registry

    registry = Registry("llmft.strategies", key="strategy")
    first = type("First", (), {"__module__": "llmft.strategies.demo"})
    second = type("Second", (), {"__module__": "llmft.strategies.demo"})
    assert registry.module_name(first) == "demo"
    assert registry.module_name(type("X", (), {"__module__": "llmft.strategies.base"})) is None
    registry.register(first, "demo")
    registry.register(first, "demo")  # a reload registers the same class again
    with pytest.raises(TypeError, match="abstract=True"):
        registry.register(second, "demo")
