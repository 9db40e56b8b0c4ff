"""``llmft check [train overrides] [-m]``: a dry run of ``llmft train``. Composes and validates
every point as train does (cli/app.py's ``composed``: the same loop), then, per distinct point and
without training or writing anything: the parameter count and what trains (the model built on the
meta device), a memory estimate per rank, the optimizer steps the Trainer will take, what the loss
sees (tasks/data_view.py) and, for a SLURM launcher, the jobs and their scripts (cli/slurm_plan.py).
``--json``: the same facts as one JSON document."""
from __future__ import annotations

import contextlib
import json
import math
import sys

from llmft.core.errors import UserError

# hyperparameters that change none of the facts check prints: points that differ only in these share them
NOT_FACTS = ("seed", "print_config", "logger", "experiment", "train.lr", "train.warmup_ratio", "train.weight_decay",
             "train.lr_scheduler", "train.num_cycles", "train.power", "train.cyclic", "train.momentum",
             "train.max_grad_norm", "train.logging_steps", "train.save_steps", "train.save_total_limit",
             "train.resume", "strategy.lr", "strategy.warmup_ratio", "strategy.weight_decay")
GIB = 2**30


def main(args: list[str]) -> int:
    from llmft.cli import normalize_overrides
    from llmft.cli.app import config_dir_of, fail, overrides_of
    from llmft.cli.validate import register_configs

    if any(a in ("-h", "--help") for a in args):
        print("usage: llmft check [TRAIN OVERRIDE ...] [-m] [--json]\n\nA dry run of `llmft train` with the same "
              "arguments: composes and validates every point, then prints the parameter count and what trains, "
              "memory per rank, optimizer steps, the data as the loss sees it and (hydra/launcher=slurm) the "
              "jobs; trains and writes nothing. `llmft train --help` lists the overrides.")
        return 0
    as_json = "--json" in args
    args = normalize_overrides([a for a in args if a != "--json"], "train")
    register_configs()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the libraries' notes: stdout holds the facts alone
            facts = check(overrides_of(args), sweep="-m" in args or "--multirun" in args,
                          config_dir_arg=config_dir_of(args))
    except UserError as err:
        fail(err)
    print(json.dumps(facts, indent=2, default=str) if as_json else "\n".join(render(facts)))
    return 0


def check(overrides: list[str], sweep: bool = False, config_dir_arg: str | None = None) -> dict:
    """Every point's facts (JSON-able); the points that differ only in NOT_FACTS share them."""
    from llmft.cli.app import check_typed_secrets, composed

    check_typed_secrets(overrides)
    warnings: list[str] = []
    points = list(composed("train", overrides, sweep, config_dir_arg, every_point=True, warnings=warnings))
    first = points[0][1]
    multirun = sweep or str(first.hydra.mode) == "RunMode.MULTIRUN"
    optuna = "optuna" in str(first.hydra.sweeper.get("_target_", "")).lower()
    out = {"points": [], "warnings": warnings,
           "folder": str(first.hydra.sweep.dir if multirun else first.hydra.run.dir)}
    if optuna:  # an optimizing sweeper draws its points as it goes: the space, and the composed point
        from omegaconf import OmegaConf

        space = dict(OmegaConf.to_container(first.hydra.sweeper.params or {}, resolve=False))
        space.update({o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides
                      if "interval(" in o or "choice(" in o or "range(" in o})
        out["search_space"] = {"sweeper": "optuna", "trials": first.hydra.sweeper.n_trials, "params": space,
                               "changes_facts": sorted(k for k in space if not _ignored(k))}
        points = points[:1]
    cache: dict = {}
    _SPLITS.clear()  # read afresh by each check: a file may have changed since the last one
    with no_writes():
        for combo, _, cfg in points:
            key = fact_key(cfg)
            if key not in cache:
                cache[key] = (len(out["points"]), point_facts(cfg))
            index, facts = cache[key]
            out["points"].append({"overrides": combo, "same_as": index if index != len(out["points"]) else None,
                                  **facts})
    if "Slurm" in str(first.hydra.launcher.get("_target_", "")):
        from llmft.cli import slurm_plan

        out["slurm"] = slurm_plan.plan([(combo, with_hydra) for combo, with_hydra, _ in points], out["folder"])
    return out


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NOT_FACTS)


def fact_key(cfg) -> str:
    """The resolved config minus NOT_FACTS: what the facts depend on."""
    from omegaconf import OmegaConf

    def walk(node, path=""):
        if isinstance(node, dict):
            return {k: walk(v, f"{path}.{k}" if path else k) for k, v in node.items()
                    if not _ignored(f"{path}.{k}" if path else k)}
        return node

    return json.dumps(walk(OmegaConf.to_container(cfg, resolve=True)), sort_keys=True, default=str)


@contextlib.contextmanager
def no_writes():
    """datasets' caches (the Arrow files of a read data file, tokenized copies) in a temporary folder
    that is removed after: check leaves no file behind. A hub data set is read from its cache."""
    import tempfile

    import datasets
    import datasets.config

    saved, caching = datasets.config.HF_DATASETS_CACHE, datasets.is_caching_enabled()
    with tempfile.TemporaryDirectory(prefix="llmft-check-") as tmp:
        datasets.config.HF_DATASETS_CACHE = tmp
        datasets.disable_caching()
        try:
            yield
        finally:
            datasets.config.HF_DATASETS_CACHE = saved
            if caching:
                datasets.enable_caching()


_SPLITS: dict = {}  # data section -> (task, splits): the points of one check that share the data read it once


def point_facts(cfg) -> dict:
    """What one point trains: sizes, memory per rank, steps, the data as the loss sees it."""
    from llmft.data.files import load_splits
    from llmft.models.loading import load_backbone_tokenizer, resolve_model_path
    from llmft.strategies import build_strategy
    from llmft.tasks import build_task
    from llmft.tasks import data_view
    from omegaconf import open_dict

    from llmft import techniques

    from omegaconf import OmegaConf

    data_key = json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True, default=str)
    if data_key not in _SPLITS:
        task = build_task(cfg.data)
        _SPLITS[data_key] = task, load_splits(cfg.data, task)
    task, splits = _SPLITS[data_key]
    strategy = build_strategy(cfg, task)
    cfg_nowrite = cfg.copy()
    with open_dict(cfg_nowrite):  # the augment hook writes augmented.jsonl into the run folder when asked
        if "augment" in cfg_nowrite.data:
            cfg_nowrite.data.augment.write = False
    run = _Run(cfg_nowrite, splits)
    techniques.at("splits", run)  # augmentation adds rows; a stage's rows join (none here)
    splits = run.splits
    source = resolve_model_path(cfg.model.name_or_path)  # gguf: converted once into the llmft cache, as train does
    tokenizer = load_backbone_tokenizer(cfg.model, source)
    splits = strategy.prepare_data(splits, tokenizer)
    tokenized_train = task.tokenize(splits["train"], tokenizer) if strategy.trains else None
    facts = {"model": cfg.model.name_or_path, "strategy": cfg.strategy.name}
    if cfg.hardware.zero_stage > 0:
        import deepspeed  # noqa: F401  (every rank imports it: part of the resident memory measured next)
    resident = resident_bytes()
    facts["params"] = parameters(cfg, task, strategy, tokenizer, source)
    facts["memory"] = memory(cfg, facts["params"], resident)
    facts["steps"] = steps(cfg, tokenized_train)
    facts["data"] = data_view.inspect(cfg, task, splits, tokenized_train, tokenizer) if tokenized_train is not None \
        else data_view.inspect(cfg, task, splits, task.tokenize(splits["train"], tokenizer), tokenizer)
    return facts


class _Run:
    """The part of commands/train.Run the "splits" hooks read and set."""

    def __init__(self, cfg, splits):
        self.cfg, self.splits, self.extra_train, self.baseline_train, self.record = cfg, splits, None, None, {}

    @property
    def path(self):
        raise UserError("llmft check: a technique asked for the run folder, which check does not make")


# ------------------------------------------------------------------------------------------ sizes
def parameters(cfg, task, strategy, tokenizer, source: str) -> dict:
    """count_parameters of the model the run trains (strategy applied, task's parts wrapped), built
    on the meta device: no weights load. Where that fails (a quantized base, a strategy that reads
    weights while it applies), the model loads for real, as the run loads it; ``built`` says which."""
    from llmft.models.loading import count_parameters, load_backbone

    import warnings

    model, built = None, "built on the meta device, no weights loaded"
    if not strategy.quantized_base:
        try:
            with warnings.catch_warnings():  # deprecation notes from code paths the run takes too
                warnings.simplefilter("ignore", FutureWarning)
                model = _on_meta(cfg, task, strategy, source)
        except Exception as err:  # any architecture or strategy that cannot build without weights
            built = f"not on meta ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}): " \
                    f"loaded for real"
    else:
        built = "not on meta (a 4-bit base): loaded for real"
    if model is None:
        model = strategy.apply(load_backbone(cfg.model, task, strategy, tokenizer, source))
        model, _ = task.wrap(model, strategy.param_groups(model), cfg.model)
    counts = count_parameters(model)
    # bytes as the weights are stored (the config's dtype; a 4-bit base packed), not 4 B each
    counts["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    counts["trainable_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    config = getattr(model, "config", None)
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    return {**counts, "built": built, "class": type(model).__name__, "largest_layer": largest,
            "shape": _shape(config)}


def _on_meta(cfg, task, strategy, source: str):
    import transformers
    from accelerate import init_empty_weights

    from llmft.models.loading import revision_kwargs

    auto_class = strategy.model_class(source)
    auto = getattr(transformers, auto_class or task.auto_model)
    head_kwargs = task.model_kwargs() if auto_class is None else {}
    config = transformers.AutoConfig.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code,
                                                     **revision_kwargs(cfg.model.revision), **head_kwargs)
    with init_empty_weights():
        model = auto.from_config(config, trust_remote_code=cfg.model.trust_remote_code)
        model = strategy.apply(model)
        model, _ = task.wrap(model, strategy.param_groups(model), cfg.model)
    return model


def _shape(config) -> dict:
    """What the activations term reads from a transformers config (None where it names none)."""
    config = getattr(config, "text_config", None) or config
    get = lambda *names: next((getattr(config, n) for n in names if isinstance(getattr(config, n, None), int)), None)
    return {"hidden": get("hidden_size", "d_model", "n_embd"), "layers": get("num_hidden_layers", "num_layers", "n_layer"),
            "heads": get("num_attention_heads", "num_heads", "n_head"), "vocab": get("vocab_size")}


# ----------------------------------------------------------------------------------------- memory
def memory(cfg, params: dict, resident: int = 0) -> dict:
    """Bytes per rank: model states (DeepSpeed's estimators for ZeRO 1-3 with 16-bit weights; llmft's
    count otherwise), an activations term, and the runtime on a CPU; each labelled with its source."""
    from llmft.runtime.distributed import world_size

    hw = cfg.hardware
    world, stage = world_size(hw), hw.zero_stage
    total, trainable = params["total"], params["trainable"]
    frozen = total - trainable
    terms = []
    from llmft.runtime.precision import precision

    used = precision(hw)  # auto: what this machine picks
    sixteen = used in ("bf16", "fp16")
    if stage == 0:
        # the weights as loaded (bf16/fp16 training is autocast: they stay in the config's dtype), a
        # gradient and Adam's m and v (torch keeps them in the weight's dtype) per trained one
        weights = params.get("weight_bytes", 4 * total)
        trained = params.get("trainable_bytes", 4 * trainable)
        terms.append({"name": "model states", "bytes": weights + 3 * trained,
                      "source": "llmft's count: the weights as stored (fp32: 4 B; autocast keeps them) + grad + "
                                "Adam m, v in the dtype of each trainable weight"})
    elif sixteen:
        opt, par = hw.offload_optimizer != "none", hw.offload_param != "none"
        if stage in (1, 2):
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

            host, device = estimate_zero2_model_states_mem_needs(trainable, hw.nproc_per_node, hw.nnodes, opt)
            name = "deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs" + \
                   (" (stage 1 keeps whole gradients: a lower bound)" if stage == 1 else "")
        else:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

            host, device, _ = estimate_zero3_model_states_mem_needs(trainable, params["largest_layer"],
                                                                     hw.nproc_per_node, hw.nnodes, opt, par,
                                                                     zero_init=False)
            name = "deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs (zero_init=0)"
        terms.append({"name": "model states", "bytes": int(device), "host_bytes_per_node": int(host),
                      "source": f"{name}, offload_optimizer={hw.offload_optimizer}, offload_param={hw.offload_param}, "
                                f"for the {trainable:,} trainable weights"})
        if frozen:
            terms.append({"name": "frozen weights", "bytes": 2 * frozen // (world if stage == 3 else 1),
                          "source": "llmft's count: 2 B per frozen weight" + (", sharded" if stage == 3 else "")})
    else:
        # DeepSpeed's estimators assume 16-bit weights; fp32 ZeRO keeps the weights (sharded under stage 3),
        # an fp32 copy of this rank's partition, its gradient partition (whole under stage 1) and Adam's m, v
        weights = 4 * total / (world if stage == 3 else 1)
        grads = 4 * trainable / (world if stage >= 2 else 1)
        states = (4 + 8) * trainable / world
        terms.append({"name": "model states", "bytes": int(weights + grads + states),
                      "source": "llmft's count for fp32 ZeRO (DeepSpeed's estimators assume 16-bit weights): "
                                f"4 B per weight{' / world' if stage == 3 else ''} + 4 B grad"
                                f"{' / world' if stage >= 2 else ''} + 12 B (fp32 partition, Adam m, v) / world "
                                "per trainable weight"})
    act = activations(cfg, params["shape"])
    if act is not None:
        terms.append(act)
    cpu = hw.accelerator == "cpu" or (hw.accelerator == "auto" and not _cuda())
    if cpu:
        terms.append({"name": "runtime and data", "bytes": resident,
                      "source": "this process's resident memory with the data read and tokenized and the "
                                "libraries a rank imports loaded (measured); on a CPU every rank holds as much"})
        if stage == 3:  # each rank loads the whole model before DeepSpeed shards it (no zero.Init)
            whole = 4 * total - (0 if sixteen else 4 * total // world)
            terms.append({"name": "model as loaded", "bytes": whole,
                          "source": "llmft's count: the whole fp32 model each rank loads before ZeRO-3 shards it"
                                    + ("" if sixteen else ", less this rank's shard counted above")})
    return {"world_size": world, "zero_stage": stage, "precision": used, "offload_optimizer":
            hw.offload_optimizer, "offload_param": hw.offload_param, "device": "cpu" if cpu else "gpu",
            "terms": terms, "per_rank_bytes": int(sum(t["bytes"] for t in terms))}


def activations(cfg, shape: dict) -> dict | None:
    """Korthikanti et al. 2022 (arXiv:2205.05198, eq. 1): a transformer layer stores
    s*b*h*(34 + 5*a*s/h) bytes of activations at 16 bits, without recomputation; twice that at
    fp32; only the layer inputs under gradient checkpointing (2*s*b*h each). Plus the logits (and
    their gradient) of a causal LM's vocabulary at fp32. At data.max_length: an upper bound."""
    h, layers, a, vocab = shape["hidden"], shape["layers"], shape["heads"], shape["vocab"]
    if not (h and layers and a):
        return None
    s, b = cfg.data.max_length, cfg.train.batch_size
    from llmft.runtime.precision import precision

    scale = 1 if precision(cfg.hardware) in ("bf16", "fp16") else 2
    per_layer = 2 * s * b * h if cfg.hardware.gradient_checkpointing else s * b * h * (34 + 5 * a * s / h)
    total = scale * layers * per_layer
    if cfg.data.task in ("sft", "seq2seq") and vocab:
        total += 2 * 4 * s * b * vocab
    return {"name": "activations", "bytes": int(total),
            "source": f"Korthikanti et al. 2022 per layer at batch {b} x {s} tokens"
                      f"{' (gradient checkpointing: layer inputs only)' if cfg.hardware.gradient_checkpointing else ''}"
                      f"{' + fp32 logits' if cfg.data.task in ('sft', 'seq2seq') and vocab else ''}; an upper bound"}


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; elsewhere its peak so far)."""
    import os
    import resource

    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------------ steps
def steps(cfg, tokenized_train) -> dict:
    """The optimizer steps transformers' Trainer takes (Trainer.set_initial_training_values): per
    epoch ceil(batches per rank / grad_accum), batches per rank ceil(ceil(rows / batch) / world)
    (accelerate's BatchSamplerShard, even_batches), times the epochs rounded up, or max_steps."""
    from llmft.runtime.distributed import world_size

    t = cfg.train
    if tokenized_train is None:
        return {"steps": 0, "rows": 0, "note": f"strategy={cfg.strategy.name} trains nothing"}
    rows = len(tokenized_train)
    aux = 0
    if cfg.data.get("aux"):  # techniques/multitask.mix: each aux set adds weight / main share x the train rows
        share = 1 - sum(float(a.weight) for a in cfg.data.aux)
        aux = sum(max(1, round(float(a.weight) / share * rows)) for a in cfg.data.aux)
    world = world_size(cfg.hardware)
    batches = math.ceil((rows + aux) / t.batch_size)
    per_rank = math.ceil(batches / world)
    per_epoch = max(per_rank // t.grad_accum + int(per_rank % t.grad_accum > 0), 1)
    total = t.max_steps if t.max_steps > 0 else math.ceil(t.epochs * per_epoch)
    notes = []
    if cfg.train.early_stopping.get("patience", 0):
        notes.append("early stopping may end sooner")
    from llmft import techniques

    if techniques.staged(cfg) is not None:
        notes.append("a staged run: each stage trains this many steps on its own rows (more rows: more steps)")
    return {"steps": total, "rows": rows, "aux_rows": aux, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
            "world_size": world, "per_epoch": per_epoch, "epochs": t.epochs, "max_steps": t.max_steps,
            **({"note": "; ".join(notes)} if notes else {})}


# ----------------------------------------------------------------------------------------- render
def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def render(facts: dict) -> list[str]:
    lines = [f"llmft check: {len(facts['points'])} point(s); the run folder: {facts['folder']}"]
    lines += [f"warning: {w}" for w in facts["warnings"]]
    if "search_space" in facts:
        s = facts["search_space"]
        lines.append(f"search space ({s['sweeper']}, {s['trials']} trials): " +
                     ", ".join(f"{k}={v}" for k, v in s["params"].items()))
        lines.append("  facts below are the composed point's" + (
            f"; the search changes them through {', '.join(s['changes_facts'])}" if s["changes_facts"] else
            "; the searched keys change none of them"))
    for i, point in enumerate(facts["points"]):
        lines.append(f"point {i + 1}: {' '.join(point['overrides']) or '(no overrides)'}")
        if point["same_as"] is not None:
            lines.append(f"  same sizes, memory, steps and data as point {point['same_as'] + 1}")
            continue
        p, m, st = point["params"], point["memory"], point["steps"]
        lines.append(f"  model {point['model']} ({p['class']}; {p['built']})")
        lines.append(f"  parameters: {p['total']:,} total, {p['trainable']:,} trainable ({p['trainable_pct']} %) "
                     f"under strategy={point['strategy']}")
        lines.append(f"  memory per rank: {_gib(m['per_rank_bytes'])} ({m['device']}; world size {m['world_size']}, "
                     f"ZeRO {m['zero_stage']}, {m['precision']}, offload optimizer={m['offload_optimizer']} "
                     f"param={m['offload_param']})")
        for term in m["terms"]:
            host = f"; host per node {_gib(term['host_bytes_per_node'])}" if "host_bytes_per_node" in term else ""
            lines.append(f"    {term['name']}: {_gib(term['bytes'])}{host} [{term['source']}]")
        if st["steps"] == 0:
            lines.append(f"  steps: 0 ({st['note']})")
        else:
            how = (f"train.max_steps={st['max_steps']}" if st["max_steps"] > 0 else
                   f"{st['per_epoch']} per epoch x {st['epochs']} epoch(s)")
            aux = f" + {st['aux_rows']:,} data.aux rows" if st["aux_rows"] else ""
            lines.append(f"  steps: {st['steps']:,} optimizer steps ({how}; {st['rows']:,} train rows{aux}, batch "
                         f"{st['batch_size']} x {st['world_size']} process(es) x grad_accum {st['grad_accum']})"
                         + (f"; {st['note']}" if "note" in st else ""))
        from llmft.tasks import data_view

        lines += ["  " + line for line in data_view.render(point["data"])]
    if "slurm" in facts:
        from llmft.cli import slurm_plan

        lines += slurm_plan.render(facts["slurm"])
    return lines
