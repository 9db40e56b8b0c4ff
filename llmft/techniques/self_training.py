"""Self-training (train.self_training): a model trained on the labelled rows labels the unlabelled
ones; the rows it is confident about (probability >= threshold, at most max_per_round, the most
confident first) join the train split with that label; a new model trains from the pretrained
weights on the larger set; ``rounds`` times. Round 0 is plain supervised training.

    round-0 .. round-(R-1): RUN/stages/round-k/ (each a whole run: model/, results.json)
    round R (the final model): RUN itself; results.json["self_training"] lists every round

Each round starts from the pretrained weights (not the previous round's), so a wrong
pseudo-label is learned from once, not reinforced round after round; rows once added stay. The
per-round "validation" figures are the ones to compare rounds on; "eval" is the held-out split.
"""
from __future__ import annotations

import logging

from llmft.core.errors import require
from llmft.techniques import Technique

log = logging.getLogger(__name__)


class SelfTraining(Technique):
    keys = ("train.self_training",)

    def validate(self, cfg, task, strategy) -> None:
        st = cfg.train.self_training
        require(st.rounds >= 0, "train.self_training.rounds", f"must be >= 0 (got {st.rounds})")
        if st.rounds == 0:
            return
        require(0 < st.threshold <= 1, "train.self_training.threshold", f"must be in (0, 1] (got {st.threshold})")
        require(st.max_per_round is None or st.max_per_round >= 1, "train.self_training.max_per_round",
                "must be >= 1 or null (no cap)")
        require(strategy.trains, "train.self_training", f"strategy={strategy.name} trains nothing to pseudo-label with")
        require(bool(cfg.data.unlabeled_file) or cfg.data.unlabeled_from_train > 0, "train.self_training.rounds",
                "needs unlabelled inputs: data.unlabeled_file=PATH or data.unlabeled_from_train=N")
        require(not strategy.pattern_ensemble(cfg), "train.self_training",
                "PET's ensemble already labels the unlabelled data (strategy.generations=K for iPET); use one")

    def stages(self, cfg):
        return run if cfg.train.self_training.rounds > 0 else None


technique = SelfTraining()


def confident(probs, threshold: float, limit: int | None) -> list[int]:
    """Rows whose top probability is >= threshold, the most confident first, at most ``limit``."""
    top = probs.max(-1)
    chosen = [int(i) for i in sorted(range(len(top)), key=lambda i: (-top[i], i)) if top[i] >= threshold]
    return sorted(chosen[:limit] if limit else chosen)


def run(run_once, cfg, run_path, callbacks) -> dict:
    from datasets import concatenate_datasets

    from llmft.data.files import load_splits
    from llmft.tasks import build_task
    from llmft.techniques.unlabeled import (gold_accuracy, label_scores, labelled, softmax, stage_config, stage_dir,
                                            write_rows)

    st = cfg.train.self_training
    task = build_task(cfg.data)
    splits = load_splits(cfg.data, task)
    pool, added, rounds, warnings = splits["unlabeled"], None, [], []
    for k in range(st.rounds + 1):
        name = f"round-{k}"
        stage = stage_config(cfg, name, added)
        if k == st.rounds:  # the final model: the run folder itself
            report = {"self_training": {"rounds": rounds, "threshold": st.threshold,
                                        "max_per_round": st.max_per_round, "unlabeled": len(splits["unlabeled"]),
                                        "added_total": len(added) if added is not None else 0},
                      "warnings": warnings}
            return run_once(stage, run_path, callbacks, extra_train=added, report=report)
        results = run_once(stage, stage_dir(run_path, name), extra_train=added)
        probs = softmax(label_scores(stage_dir(run_path, name) / "model", task, pool, cfg)) if len(pool) else None
        chosen = confident(probs, st.threshold, st.max_per_round) if probs is not None else []
        if probs is not None and not chosen:  # the round changes nothing: say so, do not pass it silently
            warnings.append(f"self-training round {k}: no unlabelled row reached train.self_training.threshold="
                            f"{st.threshold} (highest confidence {probs.max():.3f}); lower the threshold")
            log.warning(warnings[-1])
        if probs is None:  # an earlier round took every unlabelled row: this one retrains on the same rows
            warnings.append(f"self-training round {k}: no unlabelled row left (earlier rounds added all "
                            f"{len(splits['unlabeled'])}); fewer train.self_training.rounds give the same model")
            log.warning(warnings[-1])
        picked = pool.select(chosen)
        write_rows(stage_dir(run_path, name) / "pseudo_labels.jsonl", picked, task.labels,
                   probs[chosen] if probs is not None else [])
        predicted = [int(probs[i].argmax()) for i in chosen]
        new = labelled(picked, predicted)
        added = new if added is None else concatenate_datasets([added, new])
        pool = pool.select(sorted(set(range(len(pool))) - set(chosen)))
        rounds.append({"round": k, "trained_on": results["num_train_examples"], "validation": results["validation"],
                       "eval": results["eval"], "added": len(chosen),
                       "added_confidence_min": round(float(probs.max(-1)[chosen].min()), 4) if chosen else None,
                       "pseudo_label_accuracy": gold_accuracy(picked, predicted), "pool_left": len(pool),
                       "wall_time_s": results["wall_time_s"]})
    raise AssertionError("unreachable")
