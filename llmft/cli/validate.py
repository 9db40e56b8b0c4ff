"""Checks that types cannot express, run before any model or data loads."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from llmft.core.config import (BenchInferRunConfig, DataConfig, EvalRunConfig, ExportRunConfig, HardwareConfig,
                               LoggerConfig, ModelConfig, PredictRunConfig, TrainRunConfig)
from llmft.core.errors import UserError, require_one_of


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from llmft.strategies import strategy_configs

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainRunConfig)
    cs.store(name="eval_schema", node=EvalRunConfig)
    cs.store(name="export_schema", node=ExportRunConfig)
    cs.store(name="predict_schema", node=PredictRunConfig)
    cs.store(name="bench-infer_schema", node=BenchInferRunConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="hardware", name="hardware_schema", node=HardwareConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    for name, schema in strategy_configs().items():
        cs.store(group="strategy", name=f"{name}_schema", node=schema)


# ----------------------------------------------------------------------------- validation

_CHOICES = {
    "data.source": ("files", "hub"),
    "data.format": (None, "csv", "json", "conll"),
    "hardware.accelerator": ("auto", "cpu", "cuda"),
    "hardware.precision": ("fp32", "bf16", "fp16"),
    "logger.name": ("none", "wandb"),
    "logger.mode": ("offline", "online", "disabled"),
    "model.pad_token_fallback": ("eos", "none"),
    "format": ("merged", "bf16", "fp16", "int8"),
    "predict.precision": ("fp32", "bf16", "int8"),
    "data.sampler": ("random", "balanced"),
    "train.optim": ("adamw", "sgd", "adafactor"),
    "train.loss": ("ce", "focal"),
    "train.cyclic.mode": ("triangular", "triangular2", "exp_range"),
    "train.early_stopping.mode": ("auto", "max", "min"),
}


def _get(cfg, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"{key}: {message}")


def validate(cfg) -> None:
    """Checks that types cannot express; raises UserError naming the key and the fix."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        raise UserError(f"{key} is required: add {key}=VALUE to the command line")

    for key, allowed in _CHOICES.items():
        if key.split(".")[0] in cfg:
            require_one_of(key, _get(cfg, key), allowed)

    if "train" in cfg:
        _validate_train(cfg.train)
    for key in ("batch_size", "predict.batch_size"):
        value = _get(cfg, key)
        _require(value is None or value >= 1, key, f"must be >= 1 (got {value})")
    _validate_data(cfg.data)
    if "hardware" in cfg:
        _validate_hardware(cfg)
    if "train" in cfg and "strategy" in cfg:
        _validate_techniques(cfg)
        if cfg.data.aux:
            _validate_aux(cfg)
    if "model" in cfg:
        _validate_model(cfg)
    if "generate" in cfg:
        _validate_generate(cfg.generate)
    _validate_commands(cfg)
    if "model" in cfg and cfg.model.crf:
        _require(cfg.data.task == "ner", "model.crf", f"is for data.task=ner (got {cfg.data.task}); drop model.crf=true")
        _require(cfg.model.crf_lr_scale > 0, "model.crf_lr_scale", "must be > 0")
    if "strategy" in cfg:
        from llmft.strategies import strategy_class

        strategy_class(cfg.strategy.name).validate_config(cfg)


def _validate_techniques(cfg) -> None:
    """Training techniques against the task, the strategy and the hardware they combine with."""
    from llmft.strategies import strategy_class

    t, task, strategy = cfg.train, cfg.data.task, strategy_class(cfg.strategy.name)
    r, d, es = t.retention, t.distill, t.early_stopping
    _require(r.l2sp >= 0, "train.retention.l2sp", f"must be >= 0 (got {r.l2sp})")
    if r.l2sp > 0:
        _require(strategy.trains and not strategy.saves_adapter, "train.retention.l2sp",
                 f"anchors pretrained weights; strategy={cfg.strategy.name} trains only new parameters "
                 f"(use train.weight_decay)")
        _require(cfg.hardware.zero_stage < 3, "train.retention.l2sp",
                 "needs whole parameters; under ZeRO-3 they are sharded: use hardware.zero_stage<=2")
    if r.eval_file:
        _require(Path(r.eval_file).is_file(), "train.retention.eval_file", f"file not found: {r.eval_file}")
        _require(task == "sft", "train.retention.eval_file",
                 f"perplexity needs the model's own LM head, which data.task=sft trains; a {task} model "
                 f"replaces it with a task head (drop the key)")
    if any(hasattr(a, "get") and a.get("kind", "lm") == "classification" for a in cfg.data.aux):
        for key, on in (("train.class_weights", t.class_weights not in (None, "none")), ("train.loss", t.loss != "ce"),
                        ("train.distill.teacher", bool(d.teacher)), ("data.sampler", cfg.data.sampler != "random")):
            _require(not on, key, "does not combine with data.aux of kind classification (the aux rows have "
                                   "their own labels and head; it would score them as main-task labels)")
    if cfg.model.crf:
        _require(not d.teacher, "train.distill.teacher",
                 "does not combine with model.crf=true (distillation replaces the CRF's loss, so the transitions "
                 "would not train)")
    imbalance = t.loss != "ce" or t.class_weights not in (None, "none")
    if imbalance:
        _require(task in ("classification", "ner"), "train.loss" if t.loss != "ce" else "train.class_weights",
                 f"applies to classification and ner (got data.task={task})")
        _require(not cfg.model.crf, "model.crf", "the CRF has its own loss: drop train.loss / train.class_weights")
    cw = t.class_weights
    if cw not in (None, "none", "balanced"):
        _require(isinstance(cw, (list, tuple)) or OmegaConf.is_list(cw), "train.class_weights",
                 f"must be none, balanced or a list of weights, one per label (got {cw})")
        _require(all(isinstance(w, (int, float)) and w >= 0 for w in cw), "train.class_weights",
                 "weights must be numbers >= 0")
    _require(t.focal_gamma >= 0, "train.focal_gamma", "must be >= 0")
    if cfg.data.sampler == "balanced":
        _require(task == "classification", "data.sampler", f"balanced applies to classification (got {task})")
    if d.teacher:
        _require(task in ("classification", "ner", "sft"), "train.distill.teacher",
                 f"distillation covers classification, ner and sft (got data.task={task})")
        _require(Path(d.teacher).exists(), "train.distill.teacher", f"not found: {d.teacher}")
        _require(d.temperature > 0, "train.distill.temperature", "must be > 0")
        _require(0 <= d.alpha <= 1, "train.distill.alpha", f"must be in [0, 1] (got {d.alpha})")
        _require(d.student_layers >= 0, "train.distill.student_layers", "must be >= 0")
        _require(not d.cache or task in ("classification", "ner"), "train.distill.cache",
                 "caches per-example logits for classification and ner; a causal LM's are vocabulary-sized")
    if es.patience > 0:
        from llmft.tasks import TASKS

        _require(t.eval_steps > 0, "train.early_stopping", "needs train.eval_steps > 0 (how often to evaluate)")
        allowed = ("loss", *TASKS.get(task).loop_metric_names)
        if es.metric is not None:
            require_one_of("train.early_stopping.metric", es.metric, allowed)
        _require(t.save_steps == 0 or t.save_steps % t.eval_steps == 0, "train.save_steps",
                 "must be a multiple of train.eval_steps with early stopping (the best checkpoint is kept)")
    _require(t.eval_steps >= 0, "train.eval_steps", "must be >= 0")
    if t.lr_scheduler == "cyclic":
        c = t.cyclic
        _require(c.step_size >= 1, "train.cyclic.step_size", "must be >= 1")
        top, bottom = c.max_lr or t.lr, c.base_lr if c.base_lr is not None else (c.max_lr or t.lr) / 10
        _require(0 <= bottom < top, "train.cyclic.base_lr", f"must be below max_lr ({bottom} vs {top})")
    _require(0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)")


def _validate_aux(cfg) -> None:
    """Validation: each entry a mapping with a known kind, an existing file, a weight in (0, 1)."""
    from llmft.core.paths import resolve_path

    kinds = ("lm", "classification")  # llmft/multitask.py
    total = 0.0
    for i, aux in enumerate(cfg.data.aux):
        key = f"data.aux[{i}]"
        if not hasattr(aux, "get"):
            raise UserError(f"{key}: expected {{kind: lm|classification, train_file: PATH, weight: 0.2}}")
        kind = aux.get("kind", "lm")
        if kind not in kinds:
            raise UserError(f"{key}.kind: must be one of {', '.join(kinds)} (got {kind})")
        needs = {"lm": "sft", "classification": "classification"}[kind]
        if cfg.data.task != needs:
            raise UserError(f"{key}.kind={kind} goes with data.task={needs} (got {cfg.data.task})")
        if not aux.get("train_file"):
            raise UserError(f"{key}.train_file is required")
        path = resolve_path(aux["train_file"], key=f"{key}.train_file")
        if not path.is_file():
            raise UserError(f"{key}.train_file: file not found: {path}")
        weight = float(aux.get("weight", 0.2))
        if not 0 < weight < 1:
            raise UserError(f"{key}.weight: must be in (0, 1) (the share of training examples; got {weight})")
        total += weight
    if total >= 1:
        raise UserError(f"data.aux: the weights add up to {total:g}; the main task needs a share too (< 1 in all)")


def _validate_model(cfg) -> None:
    """A local model folder (read without torch): it is a model, and data.max_length fits its positions."""
    import json

    spec = cfg.model.name_or_path
    if spec.startswith("gguf:"):
        return
    from llmft.core.paths import PKG_PREFIX, resolve_path

    path = resolve_path(spec, key="model.name_or_path") if spec.startswith(PKG_PREFIX) else Path(spec).expanduser()
    if not path.is_dir():
        return  # a hub id, or a missing folder (models.resolve_model_path says so)
    config_file = path / "config.json"
    _require(config_file.is_file(), "model.name_or_path",
             f"{path} is a folder but not a model (no config.json); point it at a Hugging Face model folder")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"model.name_or_path: {config_file} is not valid JSON ({err})") from None
    if any(k in config for k in ("rope_theta", "rope_parameters", "rope_scaling")):
        return  # rotary positions: no table to run past
    limit = config.get("max_position_embeddings") or config.get("n_positions")
    if isinstance(limit, int) and config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2  # their position ids start after the padding index
    if isinstance(limit, int) and "data" in cfg:
        _require(cfg.data.max_length <= limit, "data.max_length",
                 f"{cfg.data.max_length} is past the model's {limit} positions (max_position_embeddings in "
                 f"{config_file}); use data.max_length<={limit}")


def _validate_generate(g) -> None:
    for key in ("max_new_tokens", "num_beams", "batch_size"):
        _require(g[key] >= 1, f"generate.{key}", f"must be >= 1 (got {g[key]})")
    _require(g.max_examples is None or g.max_examples >= 1, "generate.max_examples", "must be >= 1 or null (all)")
    _require(g.temperature > 0, "generate.temperature", f"must be > 0 (got {g.temperature})")
    _require(0 < g.top_p <= 1, "generate.top_p", f"must be in (0, 1] (got {g.top_p})")
    _require(g.top_k >= 0, "generate.top_k", f"must be >= 0 (got {g.top_k})")
    _require(g.repetition_penalty > 0, "generate.repetition_penalty", f"must be > 0 (got {g.repetition_penalty})")


def _validate_commands(cfg) -> None:
    """The knobs of export, predict and bench-infer."""
    if "check_examples" in cfg:  # export
        _require(cfg.check_examples >= 1, "check_examples", "must be >= 1 (the export is checked on them)")
        _require(cfg.tolerance is None or cfg.tolerance > 0, "tolerance", "must be > 0 or null (the format's own)")
        if cfg.output_dir:
            _require(not Path(cfg.output_dir).is_file(), "output_dir", f"{cfg.output_dir} is a file, not a folder")
    if "predict" in cfg and "input_file" in cfg.predict:
        from llmft.core.paths import resolve_path

        _require(resolve_path(cfg.predict.input_file, "predict.input_file").is_file(), "predict.input_file",
                 f"file not found: {cfg.predict.input_file}")
        out = cfg.predict.output_file
        _require(not out or not Path(out).is_dir(), "predict.output_file", f"{out} is a folder; name a file in it")
    if "variants" in cfg:  # bench-infer
        for variant in cfg.variants:
            require_one_of("variants", variant, ("fp32", "bf16", "fp16", "int8"))
        for key in ("latency_examples", "throughput_examples"):
            _require(cfg[key] >= 1, key, f"must be >= 1 (got {cfg[key]})")


def _validate_hardware(cfg) -> None:
    hw = cfg.hardware
    _require(hw.zero_stage in (0, 1, 2, 3), "hardware.zero_stage", f"must be 0 (no DeepSpeed), 1, 2 or 3 (got {hw.zero_stage})")
    _require(hw.nproc_per_node >= 1, "hardware.nproc_per_node", "must be >= 1")
    _require(hw.nnodes >= 1, "hardware.nnodes", "must be >= 1")
    _require(hw.collective_timeout_s > 0, "hardware.collective_timeout_s",
             f"must be > 0 seconds (got {hw.collective_timeout_s})")
    for kind, stage in (("optimizer", 2), ("param", 3)):
        device = hw[f"offload_{kind}"]
        require_one_of(f"hardware.offload_{kind}", device, ("none", "cpu", "nvme"))
        if device != "none":
            _require(hw.zero_stage >= stage, f"hardware.offload_{kind}",
                     f"needs hardware.zero_stage>={stage} (got {hw.zero_stage})")
            _require(hw.accelerator != "cpu", f"hardware.offload_{kind}",
                     "offloads from a GPU; with hardware.accelerator=cpu everything is in CPU memory already")
            _require(device != "nvme" or bool(hw.nvme_path), "hardware.nvme_path", "is required for nvme offload")
    _require(not (hw.precision == "fp16" and hw.accelerator == "cpu"), "hardware.precision",
             "fp16 needs a GPU; on the CPU use bf16 or fp32")
    if hw.device_map is not None:
        _require(hw.device_map == "auto", "hardware.device_map", f"must be auto or null (got {hw.device_map})")
    if "strategy" in cfg and hw.zero_stage > 0:
        from llmft.strategies import strategy_class

        strategy = strategy_class(cfg.strategy.name)
        _require(strategy.zero_stages >= hw.zero_stage, "hardware.zero_stage",
                 f"strategy={cfg.strategy.name} supports ZeRO up to stage {strategy.zero_stages} "
                 f"({strategy.zero_note}); use hardware=cpu or a lower zero_stage")
        if "model" in cfg and cfg.model.crf:
            _require(hw.zero_stage < 3, "model.crf", "does not run under ZeRO-3 yet; use zero_stage<=2")


def _validate_train(t) -> None:
    _require(t.lr > 0, "train.lr", f"must be > 0 (got {t.lr})")
    _require(t.batch_size >= 1, "train.batch_size", f"must be >= 1 (got {t.batch_size})")
    _require(t.eval_batch_size is None or t.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1")
    _require(t.grad_accum >= 1, "train.grad_accum", f"must be >= 1 (got {t.grad_accum})")
    _require(t.epochs > 0 or t.max_steps > 0, "train.epochs", "must be > 0 unless train.max_steps > 0")
    _require(0 <= t.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1) (got {t.warmup_ratio})")
    _require(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0 (got {t.weight_decay})")
    _require(t.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0 (0 turns clipping off)")
    _require(t.logging_steps >= 1, "train.logging_steps", "must be >= 1")
    _require(t.save_steps >= 0, "train.save_steps", "must be >= 0 (0: no intermediate checkpoints)")
    _require(t.save_total_limit >= 1, "train.save_total_limit", "must be >= 1")
    _check_scheduler(t.lr_scheduler)


def _validate_data(d) -> None:
    from llmft.tasks import task_names

    require_one_of("data.task", d.task, task_names())
    _require(d.max_length >= 8, "data.max_length", f"must be >= 8 (got {d.max_length})")
    for key in ("max_train_samples", "max_eval_samples"):
        value = d[key]
        _require(value is None or value >= 1, f"data.{key}", f"must be >= 1 or null (got {value})")
    for key in ("validation_fraction", "eval_fraction"):
        _require(0 <= d[key] < 1, f"data.{key}", f"must be in [0, 1) (got {d[key]})")
    _require(d.validation_fraction + d.eval_fraction < 1, "data.validation_fraction",
             f"+ data.eval_fraction must leave rows to train on (got {d.validation_fraction} + {d.eval_fraction})")
    if d.labels is not None:
        labels = [str(x) for x in d.labels]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        _require(not repeated, "data.labels", f"lists {repeated} more than once")
        _require(len(labels) >= 2 or d.task != "classification", "data.labels",
                 f"a classifier needs at least 2 labels (got {labels})")
    if d.task == "qa":
        _require(0 < d.doc_stride < d.max_length, "data.doc_stride",
                 f"must be > 0 and below data.max_length={d.max_length} (got {d.doc_stride}): windows overlap by it")
        _require(d.max_answer_length >= 1, "data.max_answer_length", "must be >= 1")
    if d.source == "hub":
        _require(bool(d.hub_name), "data.hub_name", "is required when data.source=hub")
    else:
        _require(bool(d.train_file) or bool(d.eval_file), "data.train_file",
                 "is required: add data.train_file=PATH (csv or jsonl)")
        from llmft.core.paths import resolve_path

        for key in ("train_file", "validation_file", "eval_file"):
            if d[key]:
                path = resolve_path(d[key], key=f"data.{key}")
                _require(path.is_file(), f"data.{key}", f"file not found: {path}")


# transformers' SchedulerType values, listed here because importing transformers.trainer_utils
# costs ~3 s (it pulls torch and peft); tests/test_config.py checks the list against it.
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
    "warmup_stable_decay", "greedy", "one_cycle", "cyclic",
)


def _check_scheduler(name: str) -> None:
    require_one_of("train.lr_scheduler", name, LR_SCHEDULERS)
