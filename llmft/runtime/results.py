"""results.json: one record per run folder, written last (its presence means the run completed).
Every writer builds it here (``completed``, ``failure``), and ``llmft report`` reads it here (``load``).

Schema version 1 (``schema_version``: 1; a record without the key, as llmft wrote before it was
added, has the same layout). Every completed record holds:

    schema_version        1
    status                "completed"
    run_dir               the run folder
    task                  the task's name (classification, ner, sft, ...)
    data                  the data config's name
    strategy              the strategy (for PET's final classifier: "pet")
    primary_metric        the metric a sweep selects on and the report shows
    num_eval_examples     rows of the held-out split
    eval                  the held-out split's metrics: the numbers to report
    baseline              the trivial predictor's metrics (majority_<metric>; {} without a train split)
    warnings              what says the run learned nothing useful (the report marks the run)

and, per kind:

    train (llmft train, distill)
        fingerprint, experiment, model, seed, num_train_examples, aux, data_report,
        num_validation_examples, validation (early stopping and sweeps select on it, never on eval),
        train (steps, loss, speed; null when the strategy trains nothing), hardware, memory,
        params ({trainable, total, trainable_pct}), strategy_report, retention,
        reevaluated (true: model/ was complete, the run only evaluated it), wall_time_s;
        a staged run adds its stages: self_training (the rounds), pet (PET's patterns, ensemble
        and final classifier); techniques: what the techniques that ran report, by name (e.g.
        augment: rows per class before and after)
    eval (llmft eval)
        model_dir, memory, wall_time_s; perturbed (eval.perturb): the method, rate, seed and the
        metrics on the perturbed copy of the split
    pet_ensemble (PET's ensemble when it is the result: no model/ of its own)
        fingerprint, experiment, model, seed, num_train_examples, num_validation_examples,
        validation, train (null), params (the last generation's members together), pet

A run that stopped on an error it diagnosed (it diverged) writes a failed record instead, never
read as complete: schema_version, status "failed", reason, fingerprint, and where it stopped
(step, last_checkpoint).

Other commands (predict, export, bench-infer, merge-adapters) write a summary of their own in
their run folders; the report skips those runs.
"""
from __future__ import annotations

import json
from pathlib import Path

SCHEMA_VERSION = 1
COMMON = ("schema_version", "status", "run_dir", "task", "data", "strategy", "primary_metric", "num_eval_examples",
          "eval", "baseline", "warnings")
# per kind: the keys its record holds besides COMMON, and the ones it may add
KEYS = {
    "train": ("fingerprint", "experiment", "model", "seed", "num_train_examples", "aux", "data_report",
              "num_validation_examples", "validation", "train", "hardware", "memory", "params", "strategy_report",
              "retention", "reevaluated", "wall_time_s"),
    "eval": ("model_dir", "memory", "wall_time_s"),
    "pet_ensemble": ("fingerprint", "experiment", "model", "seed", "num_train_examples", "num_validation_examples",
                     "validation", "train", "params", "pet"),
}
OPTIONAL = {"train": ("self_training", "pet", "techniques"), "eval": ("perturbed",), "pet_ensemble": ()}
FAILED = ("schema_version", "status", "reason", "fingerprint")
FAILED_DETAILS = ("step", "last_checkpoint")


def completed(kind: str, **values) -> dict:
    """A completed run's record of ``kind`` ("train", "eval", "pet_ensemble"): exactly the schema's
    keys, in its order. A missing or unknown key is a bug in the writer: KeyError."""
    allowed = (*COMMON, *KEYS[kind], *OPTIONAL[kind])
    values = {"schema_version": SCHEMA_VERSION, "status": "completed", **values}
    _check(kind, values, required=(*COMMON, *KEYS[kind]), allowed=allowed)
    return {key: values[key] for key in allowed if key in values}


def run_identity(cfg, task, run_dir, fingerprint: str) -> dict:
    """What names a training run (train and pet_ensemble records): its folder, fingerprint and the
    config's choices."""
    return {"run_dir": str(run_dir), "fingerprint": fingerprint, "experiment": cfg.experiment, "task": task.name,
            "model": cfg.model.name, "data": cfg.data.name, "strategy": cfg.strategy.name, "seed": cfg.seed,
            "primary_metric": task.primary_metric}


def failure(reason: str, fingerprint: str | None, **details) -> dict:
    """The record of a run that stopped on an error it diagnosed (status "failed")."""
    values = {"schema_version": SCHEMA_VERSION, "status": "failed", "reason": reason, "fingerprint": fingerprint,
              **details}
    _check("failed", values, required=FAILED, allowed=(*FAILED, *FAILED_DETAILS))
    return values


def _check(kind: str, values: dict, required: tuple, allowed: tuple) -> None:
    missing = [k for k in required if k not in values]
    unknown = [k for k in values if k not in allowed]
    if missing or unknown:
        raise KeyError(f"results.json ({kind}): missing {missing}, not in the schema {unknown}")


def kind_of(results: dict) -> str:
    """"failed", "train", "eval", "pet_ensemble", or "other" (another command's summary)."""
    if results.get("status") != "completed":
        return "failed"
    if "params" in results:
        return "pet_ensemble" if "pet" in results and results.get("train") is None and "retention" not in results \
            else "train"
    return "eval" if "eval" in results and "model_dir" in results else "other"


def problems(results: dict) -> list[str]:
    """What in a record does not match the schema of its kind (empty: it matches)."""
    kind = kind_of(results)
    if kind == "other":
        return []
    if kind == "failed":
        required, allowed = FAILED, (*FAILED, *FAILED_DETAILS)
    else:
        required, allowed = (*COMMON, *KEYS[kind]), (*COMMON, *KEYS[kind], *OPTIONAL[kind])
    if "schema_version" not in results:  # written before the key was added: the same layout
        required = tuple(k for k in required if k != "schema_version")
    return ([f"missing {k}" for k in required if k not in results]
            + [f"unknown key {k}" for k in results if k not in allowed])


def load(path: str | Path) -> tuple[dict | None, str | None]:
    """(record, None), or (None, why it cannot be read): cut off, not a JSON object, or written by
    a newer llmft. A record without schema_version (an earlier llmft) reads as version 1."""
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, "results.json does not read (cut off?); rerun the same command to redo it"
    if not isinstance(results, dict):
        return None, "results.json is not a JSON object; rerun the same command to redo it"
    version = results.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        return None, (f"results.json has schema_version {version}, newer than this llmft reads "
                      f"({SCHEMA_VERSION}); upgrade llmft to report it")
    return results, None
