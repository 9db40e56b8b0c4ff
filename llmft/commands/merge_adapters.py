"""``llmft merge-adapters inputs=[A/model,B/model] [weights=[0.5,0.5]] [method=linear|ties|dare_ties]``:
several LoRA adapters of one base model combined into one adapter (PEFT's ``add_weighted_adapter``).

    inputs checked (torch-free, before anything loads: LoRA adapters, one base model, equal ranks)
        -> output_dir checked -> the head input (``head_from``) loaded on its base with
        ``load_saved`` -> every other input added as a named adapter (its task head dropped)
        -> add_weighted_adapter -> the head input's task head copied into the merged adapter
        -> logits on a few eval inputs (of the head input's run, unless data=... says otherwise)
        -> only the merged adapter saved into a temp folder beside output_dir, at its top level
           like a trained adapter, with the tokenizer and llmft.json (the head input's, plus
           merged_from / weights / method / density) -> reloaded with ``load_saved`` -> its logits
           must match the in-memory merge within 1e-4 -> swapped in; merge.json in the run folder

    linear     sum of w_i * (scaling_i folded in) over the A and B matrices separately; weights
               [1, 0] reproduce the first adapter exactly, other weights are PEFT's approximation
               of the weighted sum of the updates (it has cross terms)
    ties       each A and B trimmed to its ``density`` largest values, signs elected, then summed
    dare_ties  values dropped at random (kept with probability ``density``, rescaled), signs
               elected, then summed (seeded by ``seed``)
PEFT combines LoRA matrices of equal rank only with these three (its svd / cat combinations handle
mixed ranks and are not offered here). DoRA's magnitude vectors and trained biases are not
combined by PEFT, so such adapters are refused, as are IA3 and prompt learning.

The output folder is protected like ``llmft export``'s (its helpers are reused): it may not be
an input, hold one or sit inside one, nor be this run folder (or hold it), the working directory,
home or /; a non-empty folder is replaced only if llmft wrote it (the ``.llmft-export`` marker).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmft.core.errors import UserError, require

TOLERANCE = 1e-4  # max |reloaded - in-memory| logit difference
MERGED = "merged"  # the merged adapter's name in memory (saved as a plain, top-level adapter)
METHODS_NOTE = "PEFT's linear, ties and dare_ties all need equal ranks (its svd/cat combinations are not offered)"


def main(cfg, run_path: str | Path) -> dict:
    import torch

    from llmft.artifacts import META_FILE, load_saved
    from llmft.commands.export import MARKER, publish, staging
    from llmft.data.files import load_splits
    from llmft.runtime.display import console
    from llmft.runtime.run_dir import dumps
    from llmft.tasks import TASKS

    inputs = [Path(p) for p in cfg.inputs]
    metas, _ = check_inputs(cfg)
    head = cfg.head_from
    weights = weights_of(cfg)
    out = merge_output_folder(cfg.output_dir, inputs, run_path)

    head_meta = metas[head]
    task = TASKS.get(head_meta["task"]).from_metadata(cfg.data, head_meta)
    splits = load_splits(cfg.data, task)
    loaded, tokenizer = load_saved(inputs[head], task, head_meta, trust_remote_code=cfg.trust_remote_code)
    model = getattr(loaded, "encoder", loaded)  # a CRF tagger: its encoder holds the adapter
    sample = task.tokenize(splits["eval"].select(range(min(cfg.check_examples, len(splits["eval"])))), tokenizer)
    batch = {k: v for k, v in task.collator(tokenizer)([sample[i] for i in range(len(sample))]).items()
             if k not in ("labels", "word_start")}

    torch.manual_seed(cfg.seed)  # dare_ties drops values at random
    with torch.no_grad():
        names, input_logits = add_inputs(model, inputs, head, batch)
        order = [head] + [i for i in range(len(inputs)) if i != head]  # the merged config is the head's
        try:
            model.add_weighted_adapter([names[i] for i in order], [weights[i] for i in order], MERGED,
                                       combination_type=cfg.method,
                                       density=None if cfg.method == "linear" else cfg.density)
        except ValueError as err:
            raise UserError(f"method={cfg.method}: PEFT could not combine the inputs: {err}") from None
        finish_merged(model, names[head])
        model.set_adapter(MERGED)
        model.eval()
        merged_logits = model(**batch).logits
        for name in names:
            model.delete_adapter(name)
        model.set_adapter(MERGED)

        meta = {**head_meta, "source": str(inputs[head].resolve()),
                "merged_from": [str(p.resolve()) for p in inputs], "weights": weights, "method": cfg.method,
                "density": cfg.density if cfg.method != "linear" else None}
        with staging(out) as tmp:
            save_merged(model, tokenizer, tmp)
            if head_meta.get("crf"):
                from llmft.models.crf import CRF_FILE

                shutil.copy(inputs[head] / CRF_FILE, tmp / CRF_FILE)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            (tmp / MARKER).write_text(json.dumps({"source": meta["merged_from"], "format": "merge-adapters"}) + "\n")
            reloaded, _ = load_saved(tmp, task, meta, trust_remote_code=cfg.trust_remote_code)
            reloaded_logits = getattr(reloaded, "encoder", reloaded)(**batch).logits
            diff = (reloaded_logits - merged_logits).abs().max().item()
            if not diff <= TOLERANCE:
                raise UserError(f"merge check failed: the saved adapter's logits differ from the merged model's by "
                                f"{diff:.3g} (> {TOLERANCE:g}); nothing was saved (output_dir is as it was)")
            publish(tmp, out)

    per_input = [{"input": str(p), "weight": w,
                  "max_abs_diff_vs_merged": None if lg is None else (lg - merged_logits).abs().max().item()}
                 for p, w, lg in zip(inputs, weights, input_logits)]
    check = {"examples": len(merged_logits), "tolerance": TOLERANCE, "max_abs_diff": diff, "passed": True,
             "inputs": per_input}
    result = {"status": "completed", "inputs": [str(p) for p in inputs], "weights": weights, "method": cfg.method,
              "density": meta["density"], "head_from": head, "output_dir": str(out), "check": check}
    from llmft.runtime.ownership import atomic_write

    atomic_write(Path(run_path) / "merge.json", dumps(result, indent=2) + "\n")
    console.print(f"merged {len(inputs)} adapters ({cfg.method}, weights {weights}; reload check max |dlogit| "
                  f"{diff:.1e}): {out}", soft_wrap=True, highlight=False)
    return result


# ------------------------------------------------------------------ the merge
def add_inputs(model, inputs: list[Path], head: int, batch) -> tuple[list[str], list]:
    """Every input but the head (already loaded as "default") added as adapter ``input<i>`` with
    its LoRA weights; its task head serves only to measure its own logits (when its shape is the
    head input's), then leaves, since PEFT merges no two adapters that each save the head."""
    from peft import PeftConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    names, logits = [], []
    model.set_adapter("default")
    head_logits = model(**batch).logits
    for i, path in enumerate(inputs):
        if i == head:
            names.append("default")
            logits.append(head_logits)
            continue
        name = f"input{i}"
        names.append(name)
        model.add_adapter(name, PeftConfig.from_pretrained(str(path)))
        wrappers = heads(model)
        state = load_file(str(path / "adapter_model.safetensors"))
        head_keys = {f"{prefix}.{k}": v.shape for prefix, w in wrappers.items() if name in w.modules_to_save
                     for k, v in w.modules_to_save[name].state_dict().items()}
        same_head = all(k in state and state[k].shape == shape for k, shape in head_keys.items())
        if not same_head:  # another task's head: only the LoRA weights are used
            drop_head(wrappers, name)
            state = {k: v for k, v in state.items() if k not in head_keys and not _under(k, wrappers)}
        loaded = set_peft_model_state_dict(model, state, adapter_name=name)
        missing = [k for k in loaded.missing_keys if f".{name}." in k]
        if missing:
            raise UserError(f"inputs[{i}]={path}: its adapter_model.safetensors lacks {missing[0]}")
        model.eval()  # the new adapter's dropout
        if same_head:
            model.set_adapter(name)
            logits.append(model(**batch).logits)
            model.set_adapter("default")
            drop_head(wrappers, name)
        else:
            logits.append(None)
    return names, logits


def heads(model) -> dict:
    """The task-head wrappers (PEFT's modules_to_save) by module name."""
    from peft.utils.other import ModulesToSaveWrapper

    return {n: m for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)}


def drop_head(wrappers: dict, name: str) -> None:
    for wrapper in wrappers.values():
        wrapper.delete_adapter(name, ["default"])


def _under(key: str, wrappers: dict) -> bool:
    return any(key.startswith(prefix + ".") for prefix in wrappers)


def finish_merged(model, head_name: str) -> None:
    """The merged adapter as a plain LoRA adapter: the scaling PEFT folded into its matrices stays
    folded (alpha = r, no rsLoRA), the head input's task head copied in, the config tidied."""
    from peft.tuners.lora import LoraLayer

    config = model.peft_config[MERGED]
    config.use_rslora = False  # PEFT copies the first input's flag, which would rescale by sqrt(r)
    config.lora_alpha = config.r
    for module in model.modules():
        if isinstance(module, LoraLayer) and MERGED in module.scaling:
            module.scaling[MERGED] = 1.0
    for wrapper in heads(model).values():
        if MERGED in wrapper.modules_to_save and head_name in wrapper.modules_to_save:
            wrapper.modules_to_save[MERGED].load_state_dict(wrapper.modules_to_save[head_name].state_dict())
    if config.modules_to_save:
        config.modules_to_save = list(dict.fromkeys(config.modules_to_save))


def save_merged(model, tokenizer, tmp: Path) -> None:
    """Only the merged adapter, its files at the folder's top level (PEFT writes an adapter not
    named "default" into a subfolder of that name), and the tokenizer."""
    model.save_pretrained(str(tmp), selected_adapters=[MERGED])
    sub = tmp / MERGED
    for item in sub.iterdir():
        item.rename(tmp / item.name)
    sub.rmdir()
    tokenizer.save_pretrained(str(tmp))


# ------------------------------------------------------------------ where it goes
def merge_output_folder(output_dir: str | None, inputs: list[Path], run_path) -> Path:
    """The result's folder, resolved and checked before anything loads (it is replaced whole)."""
    from llmft.commands.export import check_replaceable

    run = Path(run_path).resolve()
    given = output_dir or str(run / "merged_adapter")
    out = check_not_inputs(given, inputs)
    key = f"output_dir={given}"
    if out == run or out in run.parents:
        raise UserError(f"{key}: is or holds this command's run folder {run}; name a new folder")
    check_replaceable(out, key)
    return out


def check_not_inputs(given: str, inputs: list[Path]) -> Path:
    key = f"output_dir={given}"
    out = Path(given).expanduser().resolve()
    special = {Path(out.anchor): "/", Path.home().resolve(): "your home folder",
               Path.cwd().resolve(): "the current directory"}
    if out in special:
        raise UserError(f"{key}: is {special[out]}; the result replaces its folder: name a new folder")
    for i, path in enumerate(inputs):
        source = path.resolve()
        if out == source or source in out.parents or out in source.parents:
            raise UserError(f"{key}: is, holds or sits inside inputs[{i}]={path}; the result replaces its folder: "
                            f"name a new folder")
    return out


# ------------------------------------------------------------------ checks
def weights_of(cfg) -> list[float]:
    n = len(cfg.inputs)
    return [float(w) for w in cfg.weights] if cfg.weights is not None else [1.0 / n] * n


def check_inputs(cfg) -> tuple[list[dict], list[dict]]:
    """Each input's llmft.json and adapter_config.json, checked: LoRA adapters (no DoRA, no trained
    biases) of one base model, with equal ranks. Torch-free; raises UserError naming the input."""
    from llmft.strategies import strategies_that, strategy_class, strategy_names

    metas, configs = [], []
    for i, raw in enumerate(cfg.inputs):
        path, key = Path(raw), f"inputs[{i}]={raw}"
        require(path.is_dir(), key, "no such folder; give a run's model/ folder")
        require((path / "llmft.json").is_file(), key, "no llmft.json; give a run's model/ folder")
        same = [j for j in range(i) if Path(cfg.inputs[j]).resolve() == path.resolve()]
        require(not same, key, f"the same folder as inputs[{same[0] if same else 0}]; give each adapter once "
                               f"(weights=[...] sets how much each one counts)")
        meta = _read_json(path / "llmft.json", key)
        strategy = meta.get("strategy", "full")
        lora = [s for s in strategies_that("mergeable") if s not in ("ia3", "dora")]
        require((path / "adapter_config.json").is_file(), key,
                f"a '{strategy}' model, not an adapter; merge-adapters combines LoRA adapters "
                f"(+strategy={'|'.join(lora)})")
        config = _read_json(path / "adapter_config.json", key)
        peft_type = config.get("peft_type")
        mergeable = strategy in strategy_names() and strategy_class(strategy).mergeable
        require(mergeable and peft_type == "LORA", key,
                f"a '{strategy}' adapter (PEFT type {peft_type}); merge-adapters combines LoRA adapters "
                f"(+strategy={'|'.join(lora)}), not IA3, prompt learning or quantized bases")
        require(not config.get("use_dora"), key, "a DoRA adapter; PEFT's weighted merge does not combine DoRA's "
                                                 "magnitude vectors, so the result would not be the weighted adapter")
        require(config.get("bias", "none") == "none", key,
                f"trained biases (strategy.bias={config.get('bias')}); PEFT's weighted merge combines only the "
                f"LoRA matrices: use adapters trained with strategy.bias=none")
        require((path / "adapter_model.safetensors").is_file(), key, "no adapter_model.safetensors in it")
        metas.append(meta)
        configs.append(config)
    first = metas[0]
    for i, meta in enumerate(metas[1:], 1):
        if (meta.get("base_model"), meta.get("revision")) != (first.get("base_model"), first.get("revision")):
            raise UserError(f"inputs[{i}]={cfg.inputs[i]}: trained on base model {_base(meta)}, inputs[0] on "
                            f"{_base(first)}; adapters combine only on the same base model")
    ranks = [_rank(c) for c in configs]
    if len(set(ranks)) > 1:
        listed = ", ".join(f"inputs[{i}] r={r}" for i, r in enumerate(ranks))
        raise UserError(f"method={cfg.method}: the inputs' LoRA ranks differ ({listed}); {METHODS_NOTE}: "
                        f"train the adapters with the same strategy.r")
    return metas, configs


def _read_json(file: Path, key: str) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{key}: {file} does not read as JSON ({err}); copy the folder again, or retrain") from None
    require(isinstance(data, dict), key, f"{file} is not a JSON object; copy the folder again, or retrain")
    return data


def _rank(config: dict) -> int:
    pattern = config.get("rank_pattern") or {}
    return max([config.get("r", 8), *pattern.values()])


def _base(meta: dict) -> str:
    revision = meta.get("revision")
    return f"{meta.get('base_model')}" + (f" (revision {revision})" if revision else "")


def validate(cfg) -> None:
    """llmft merge-adapters' own knobs and its inputs (torch-free)."""
    n = len(cfg.inputs)
    require(n >= 2, "inputs", f"needs at least 2 adapter folders, e.g. inputs=[RUN_A/model,RUN_B/model] (got {n})")
    require(cfg.weights is None or len(cfg.weights) == n, "weights",
            f"needs one weight per input: {n} inputs, {0 if cfg.weights is None else len(cfg.weights)} weights")
    require(cfg.weights is None or any(w != 0 for w in cfg.weights), "weights",
            f"are all 0 (got {cfg.weights}): the merged adapter would change nothing")
    require(0 < cfg.density <= 1, "density", f"must be in (0, 1] (got {cfg.density})")
    require(0 <= cfg.head_from < n, "head_from", f"must name an input: 0 to {n - 1} (got {cfg.head_from})")
    require(cfg.check_examples >= 1, "check_examples", "must be >= 1 (the result is checked on them)")
    if cfg.output_dir:
        require(not Path(cfg.output_dir).is_file(), "output_dir", f"{cfg.output_dir} is a file, not a folder")
        from llmft.commands.export import check_replaceable

        check_replaceable(check_not_inputs(cfg.output_dir, [Path(p) for p in cfg.inputs]), f"output_dir={cfg.output_dir}")
    check_inputs(cfg)
