"""Run every owner's checks on a composed config, before any model or data loads.

Each knob is checked beside the code that owns it: choices on the schema fields (core/config.py),
the hardware (runtime/distributed.py), the train section (runtime/trainer.py), data files
(data/files.py), the model folder (models/loading.py), generation (models/generation.py), the
task's and the strategy's own sections (their validate_config), every technique
(techniques/*.py), each command's knobs (commands/*.py). Nothing here imports torch.
"""
from __future__ import annotations

from omegaconf import OmegaConf

from llmft.core.config import (BenchInferRunConfig, DataConfig, EvalRunConfig, ExportRunConfig, HardwareConfig,
                               MergeAdaptersRunConfig, ModelConfig, PredictRunConfig, PruneRunConfig,
                               TrainRunConfig, check_choices, check_values)
from llmft.core.errors import UserError, require
from llmft.data.files import validate_data
from llmft.models.generation import validate_generate
from llmft.models.loading import check_saved_model, validate_model
from llmft.runtime.distributed import validate_hardware
from llmft.runtime.trainer import validate_logger, validate_optimizer, validate_train
from llmft.strategies import strategy_class, strategy_configs
from llmft.tasks import TASKS
from llmft.techniques import validate_all as validate_techniques



def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainRunConfig)
    cs.store(name="eval_schema", node=EvalRunConfig)
    cs.store(name="export_schema", node=ExportRunConfig)
    cs.store(name="predict_schema", node=PredictRunConfig)
    cs.store(name="bench-infer_schema", node=BenchInferRunConfig)
    cs.store(name="merge-adapters_schema", node=MergeAdaptersRunConfig)
    cs.store(name="prune_schema", node=PruneRunConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="hardware", name="hardware_schema", node=HardwareConfig)
    for name, schema in strategy_configs().items():
        cs.store(group="strategy", name=f"{name}_schema", node=schema)


def validate(cfg, command: str = "train") -> None:
    """Raise UserError naming the first wrong key and the fix."""
    check_values(cfg)  # first: reading a value resolves it (an unset ${oc.env:VAR} is named there)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{missing[0]} is required: add {missing[0]}=VALUE to the command line")
    check_choices(cfg)
    if command == "export":  # a choice too, of models/formats.py's entries (core's schema cannot import them)
        from llmft.models.formats import get as export_format

        export_format(cfg.format)
    require(0 <= cfg.seed < 2**32, "seed", f"must be in [0, 2**32) (numpy's seed range; got {cfg.seed})")
    if "train" in cfg:
        validate_train(cfg.train)
    if "logger" in cfg:
        validate_logger(cfg.logger)
    task = TASKS.get(cfg.data.task)
    validate_data(cfg.data)
    if "hardware" in cfg:
        validate_hardware(cfg.hardware)
    strategy = strategy_class(cfg.strategy.name) if "strategy" in cfg else None
    if strategy is not None and "hardware" in cfg:
        strategy.check_hardware(cfg)
    if "train" in cfg:
        validate_optimizer(cfg, strategy)
    if strategy is not None and "train" in cfg:
        validate_techniques(cfg, task, strategy)
    if "model" in cfg:
        validate_model(cfg)
    if "generate" in cfg:
        validate_generate(cfg.generate)
    check_saved_models(cfg)
    check_command(cfg, command)
    task.validate_config(cfg)
    if strategy is not None:
        strategy.validate_config(cfg)


def check_saved_models(cfg) -> None:
    """Every saved model folder the command reads (llmft.json readable, weights whole), before
    anything loads."""
    folders = []
    if "model_dir" in cfg:
        folders.append(("model_dir", cfg.model_dir))
    for section in ("inputs", "students"):
        if section in cfg:
            folders += [(f"{section}[{i}]={p}", p) for i, p in enumerate(cfg[section])]
    if "train" in cfg and cfg.train.distill.teacher:
        from llmft.techniques.distillation import teacher_dir

        folders.append(("train.distill.teacher", str(teacher_dir(cfg.train.distill.teacher))))
    for key, folder in folders:
        check_saved_model(folder, key if "=" in key else f"{key}={folder}")


def check_command(cfg, command: str) -> None:
    """A command's own top-level knobs, checked by its module (imported for that command only)."""
    if command == "eval":
        from llmft.commands.evaluate import validate as check
    elif command == "predict":
        from llmft.commands.predict import validate as check
    elif command == "export":
        from llmft.commands.export import validate as check
    elif command == "bench-infer":
        from llmft.commands.bench_infer import validate as check
    elif command == "merge-adapters":
        from llmft.commands.merge_adapters import validate as check
    elif command == "prune":
        from llmft.commands.prune import validate as check
    else:
        return  # train, distill: their knobs are the sections checked above
    check(cfg)
