"""PET as Schick & Schuetze (2021) meant it (``+strategy=pet strategy.ensemble=true``):

    1. one PET model per pattern of data.prompt.patterns    RUN/stages/pattern-<i>/ (gen<g>-pattern-<i> for iPET)
    2. the ensemble: each input's class scores averaged over the patterns' models (uniform weights)
    3. iPET (strategy.generations=K > 1): in generation g each pattern's model trains again, from the
       pretrained LM, on the labelled rows + unlabelled rows labelled by the ensemble of the *other*
       patterns of generation g-1: the most confident ones per class, in the labelled rows' class
       proportions, labelled x 5^g of them (the paper's growth factor d = 5)
    4. with unlabelled data and strategy.final=classifier: the last generation's ensemble soft-labels
       it (softmax of the averaged scores at strategy.temperature, 2 as in the paper) and a sequence
       classifier (strategy=full on the same model or strategy.final_model, lr strategy.final_lr) trains on those
       distributions plus the labelled rows' one-hots: that run is RUN itself
    Without a final classifier, RUN's results.json and predictions.jsonl are the ensemble's (no
    model/: the members' model/ folders are listed in results.json["pet"]).
Every member's and the ensemble's metrics (held-out and validation) and wall time are in
results.json["pet"]; each stage is a whole run (a rerun after a kill skips the finished ones).
What the ensemble is made of (when there is one, its patterns and stages, the final classifier)
is the strategy's to say (strategies/pet.py); this module runs it.
"""
from __future__ import annotations

import time
from pathlib import Path

from llmft.core.errors import require
from llmft.techniques import Technique

GROWTH = 5  # iPET: labelled x GROWTH^g pseudo-labelled rows per model in generation g


class PatternEnsemble(Technique):
    """Runs the stages of a strategy that trains one model per prompt pattern (its keys are the
    strategy's: strategy.ensemble, generations, final, ...)."""

    def validate(self, cfg, task, strategy) -> None:
        """The PET strategy's ensemble knobs are checked in strategies/pet.py; here: what they need."""
        if not strategy.pattern_ensemble(cfg):
            return
        s = cfg.strategy
        has_pool = bool(cfg.data.unlabeled_file) or cfg.data.unlabeled_from_train > 0
        require(s.generations == 1 or has_pool, "strategy.generations",
                "iPET labels unlabelled data between generations: add data.unlabeled_file=PATH or "
                "data.unlabeled_from_train=N")
        if s.final == "classifier" and has_pool:
            t = cfg.train
            require(t.loss == "ce" and t.class_weights in (None, "none") and cfg.data.sampler == "random",
                    "strategy.final", "the final classifier learns soft labels: drop train.loss / train.class_weights "
                    "/ data.sampler (they need hard labels), or set strategy.final=none")
            require(not t.distill.teacher, "strategy.final", "the ensemble is the final classifier's teacher already: "
                    "drop train.distill.teacher")

    def stages(self, cfg):
        return run if ensemble(cfg) else None


technique = PatternEnsemble()


def ensemble(cfg) -> bool:
    """The config's strategy trains an ensemble of prompt patterns (strategies/pet.py says when)."""
    from llmft.strategies import strategy_class

    return strategy_class(cfg.strategy.name).pattern_ensemble(cfg)


def average(scores: list):
    """The ensemble's class scores: the members' scores averaged with uniform weights."""
    import numpy as np

    return np.mean(np.stack(scores), axis=0)


def run(run_once, cfg, run_path, callbacks) -> dict:
    from llmft.data.files import load_splits
    from llmft.strategies import strategy_class
    from llmft.tasks import build_task
    import numpy as np

    from llmft.techniques.unlabeled import SOFT, label_scores, stage_config, stage_dir, write_rows

    s = cfg.strategy
    strategy = strategy_class(s.name)  # it says what the ensemble is made of
    task = build_task(cfg.data)
    splits = load_splits(cfg.data, task)
    pool = splits.get("unlabeled")
    pats = strategy.ensemble_patterns(cfg)
    added = [None] * len(pats)
    members, report = [], {"patterns": pats, "generations": []}
    for g in range(s.generations):
        members, stages = [], []
        for i, (name, changes) in enumerate(strategy.ensemble_stages(cfg, g)):
            stage = stage_config(cfg, name, added[i], **changes)
            results = run_once(stage, stage_dir(run_path, name), extra_train=added[i])
            members.append(stage_dir(run_path, name) / "model")
            stages.append({"stage": name, "model_dir": str(members[-1]), "trained_on": results["num_train_examples"],
                           "eval": summary(results["eval"]), "validation": summary(results["validation"]),
                           "params": results["params"], "wall_time_s": results["wall_time_s"]})
        report["generations"].append({"generation": g, "members": stages})
        if g + 1 < s.generations:
            scores = [label_scores(m, task, pool, cfg) for m in members]
            added = [next_generation(task, splits, pool, scores, i, g + 1, s.temperature) for i in range(len(pats))]
    started = time.perf_counter()
    ensemble = {name: [label_scores(m, task, splits[name], cfg) for m in members]
                for name in ("eval", "validation") if name in splits}
    metrics = {name: task.metrics(average(scores), splits[name]["labels"]) for name, scores in ensemble.items()}
    report["ensemble"] = {"eval": metrics["eval"], "validation": metrics.get("validation"),
                          "scoring_s": round(time.perf_counter() - started, 1)}
    if s.final == "classifier" and pool is not None:
        started = time.perf_counter()
        soft = soft_labels(task, pool, [label_scores(m, task, pool, cfg) for m in members], s.temperature)
        write_rows(Path(run_path) / "soft_labels.jsonl", soft, task.labels, np.array(soft[SOFT]))
        report["soft_labelling_s"] = round(time.perf_counter() - started, 1)
        kind, section, changes = strategy.final_classifier(cfg)
        final = stage_config(cfg, "final", soft, **changes)
        final.strategy = section
        report["final"] = {"strategy": kind, "model": final.model.name_or_path, "lr": final.strategy.lr}
        # the run is the ensemble's strategy's (results.json names it so); its model/ is the final classifier
        return run_once(final, run_path, callbacks, extra_train=soft, report={"strategy": s.name, "pet": report})
    report["final"] = "none" if s.final == "none" else "none: no unlabelled data to soft-label"
    return write_ensemble(cfg, run_path, task, splits, average(ensemble["eval"]), metrics, report)


def summary(metrics: dict | None) -> dict | None:
    return {k: v for k, v in metrics.items() if k != "per_class"} if metrics else None


def next_generation(task, splits, pool, scores: list, i: int, g: int, temperature: float):
    """iPET: the rows model i trains on next, labelled by the ensemble of the other patterns."""
    import numpy as np

    from llmft.techniques.unlabeled import labelled, softmax

    others = [s for j, s in enumerate(scores) if j != i] or scores
    probs = softmax(average(others), temperature)
    train_labels = np.array(splits["train"]["labels"])
    share = np.bincount(train_labels, minlength=len(task.labels)) / len(train_labels)
    total = min(len(pool), len(train_labels) * GROWTH ** g)
    predicted, top = probs.argmax(-1), probs.max(-1)
    chosen = []
    for label, fraction in enumerate(share):
        rows = [r for r in np.argsort(-top, kind="stable") if predicted[r] == label]
        chosen += rows[: int(round(total * fraction))]
    chosen = sorted(int(r) for r in chosen)
    return labelled(pool.select(chosen), [int(predicted[r]) for r in chosen])


def soft_labels(task, pool, scores: list, temperature: float):
    """The unlabelled rows with the ensemble's distribution (softmax of the averaged scores / T)."""
    from llmft.techniques.unlabeled import labelled, softmax

    return labelled(pool, None, soft=softmax(average(scores), temperature))


def write_ensemble(cfg, run_path, task, splits, scores, metrics: dict, report: dict) -> dict:
    """RUN's results.json and predictions.jsonl when the ensemble is the result."""
    from llmft.runtime.display import print_results
    from llmft.runtime.run_dir import RunDir, fingerprint
    from llmft.runtime.results import completed, run_identity

    run = RunDir(run_path)
    ident = fingerprint(cfg)
    run.set_aside_other_runs(cfg.train.resume, ident)
    run.start(cfg, fingerprint=ident["fingerprint"])
    records = task.prediction_records(splits["eval"], scores)
    baseline = task.baseline(splits["train"], splits["eval"])
    results = completed("pet_ensemble", **run_identity(cfg, task, run.path, ident["fingerprint"]),
                        num_train_examples=len(splits["train"]), num_eval_examples=len(splits["eval"]),
                        eval=metrics["eval"], validation=metrics.get("validation"),
                        num_validation_examples=len(splits["validation"]) if "validation" in splits else 0,
                        baseline=baseline, warnings=task.warnings(metrics["eval"], baseline, records),
                        train=None, params=ensemble_params(report), pet=report)
    run.write_predictions(records)
    run.write_results(results)
    print_results(results)
    return results



def ensemble_params(report: dict) -> dict:
    """Trainable and total parameters of the ensemble: its last generation's members together."""
    members = report["generations"][-1]["members"]
    trainable = sum(m["params"]["trainable"] for m in members)
    total = sum(m["params"]["total"] for m in members)
    return {"trainable": trainable, "total": total, "trainable_pct": round(100 * trainable / total, 4) if total else 0}
