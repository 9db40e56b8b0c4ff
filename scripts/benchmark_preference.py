#!/usr/bin/env python
"""Preference tuning (DPO, IPO, ORPO, SimPO, KTO) of SmolLM2 + LoRA on pairs built from the labelled tweets.

    python scripts/benchmark_preference.py [--out /tmp/prefbench] [--losses dpo,ipo,orpo,simpo,kto]
        [--steps 10] [--batch-size 4] [--n-measure 100] [--jobs 1] [--base-only] [override ...]

The pairs (build_preference_set, also read by the reward-model benchmark): the default experiment's
tweets (configs/data/tweet_sentiment.yaml, its seeded train / held-out eval splits), the prompt
the tweets' prompting template ("Tweet: ...\\nSentiment (negative, neutral or positive):"), chosen
the gold label word, rejected a wrong label drawn with a fixed seed; train and eval tweets are
disjoint (distinct texts). Written as JSONL (prompt/chosen/rejected) to /tmp/prefdata.

Per loss: `llmft train model=smollm2 data=jsonl_preference +strategy=lora
train.preference.loss=<loss> ...` on the train pairs, evaluated on the first --n-measure held-out pairs (reward
accuracy and margin, KL, the reference's own accuracy from results.json), then the downstream
metric: the generated label accuracy on the held-out tweets (greedy, a few new tokens, the first
label word in the output; none = wrong), for the base model and each trained one. Writes only
under --out and /tmp/prefdata.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

DATA_DIR = Path("/tmp/prefdata")
LOSSES = ("dpo", "ipo", "orpo", "simpo", "kto")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "TOKENIZERS_PARALLELISM": "false"}


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmft.cli import normalize_overrides
    from llmft.cli.app import config_dir
    from llmft.cli.validate import register_configs

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3", job_name="benchmark"):
        return hydra_compose("train", overrides=normalize_overrides(overrides))


def build_preference_set(out_dir: Path | str = DATA_DIR, n_train: int = 800, n_eval: int = 300,
                         seed: int = 0) -> dict:
    """Write {out_dir}/train.jsonl and eval.jsonl (prompt, chosen, rejected; plus the tweet's gold
    label as `label`) from the default experiment's tweets; returns {"train": path, "eval": path}.
    Completions are " <label>" (the word the template's "...:" is followed by, as its verbalizer)."""
    from llmft.data.files import load_splits
    from llmft.tasks import build_task

    cfg = compose(["data=tweet_sentiment"])
    splits = load_splits(cfg.data, build_task(cfg.data))
    labels = list(cfg.data.labels)
    template = cfg.data.prompt.template
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    paths = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        data = splits[split]
        order = list(range(len(data)))
        rng.shuffle(order)
        rows = []
        for i in order:
            text = data[i][cfg.data.text_column].strip()
            gold = data[i]["labels"]
            gold = labels[gold] if isinstance(gold, int) else gold
            if not text or text in seen:  # eval tweets never seen in train, no tweet twice
                continue
            seen.add(text)
            wrong = rng.choice([label for label in labels if label != gold])
            rows.append({"prompt": template.format(text=text), "chosen": " " + gold, "rejected": " " + wrong,
                         "label": gold})
            if len(rows) == n:
                break
        paths[split] = out_dir / f"{split}.jsonl"
        tmp = paths[split].with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(paths[split])  # readers never see a half-written file
    return paths


def first_label(text: str, labels: list[str]) -> str | None:
    """The first label word in a generation (case-insensitive, whole words); None if there is none."""
    found = re.search(r"\b(" + "|".join(map(re.escape, labels)) + r")\b", text.lower())
    return found.group(1) if found else None


def generated_accuracy(lm, tokenizer, eval_path: Path, labels: list[str], max_new_tokens: int = 4,
                       batch_size: int = 16) -> dict:
    """Greedy generation on the held-out prompts; accuracy of the first label word found."""
    import torch

    rows = [json.loads(line) for line in Path(eval_path).read_text().splitlines()]
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    predictions = []
    lm.eval()
    for start in range(0, len(rows), batch_size):
        chunk = [r["prompt"] for r in rows[start:start + batch_size]]
        enc = tokenizer(chunk, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        predictions += [first_label(t, labels) for t in texts]
    gold = [r["label"] for r in rows]
    counts = {label: predictions.count(label) for label in labels}
    counts["none"] = predictions.count(None)
    return {"accuracy": sum(p == g for p, g in zip(predictions, gold)) / len(gold), "predicted": counts,
            "n": len(gold)}


def base_model():
    from transformers import AutoModelForCausalLM

    from llmft.models.loading import load_tokenizer, resolve_model_path

    path = resolve_model_path(compose(["model=smollm2"]).model.name_or_path)
    return AutoModelForCausalLM.from_pretrained(path), load_tokenizer(path)


def trained_model(run_dir: Path):
    """The run's saved policy (base + LoRA adapter) as a causal LM."""
    from llmft.artifacts import load_saved, read_metadata
    from llmft.tasks import build_task

    model_dir = run_dir / "model"
    meta = read_metadata(model_dir)
    cfg = compose(["model=smollm2", "data=jsonl_preference", "data.train_file=unused"])
    model, tokenizer = load_saved(model_dir, build_task(cfg.data), meta)
    return getattr(model, "encoder", model), tokenizer


def train(loss: str, run_dir: Path, steps: int, extra: list[str]) -> float:
    args = ["model=smollm2", "data=jsonl_preference", "+strategy=lora",
            f"data.train_file={DATA_DIR / 'train.jsonl'}", "data.max_length=128",
            f"train.preference.loss={loss}", f"train.max_steps={steps}", "print_config=false",
            "train.retention.report=false",  # its CKA / perplexity passes cost more CPU than the training
            f"hydra.run.dir={run_dir}", *extra]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(["llmft", "train", *args], env={**os.environ, **OFFLINE}, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (run_dir.parent / f"{loss}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"llmft train ({loss}) failed, rc {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds


def measure_base(measure: Path, labels: list[str]) -> dict:
    lm, tokenizer = base_model()
    start = time.perf_counter()
    out = generated_accuracy(lm, tokenizer, measure, labels)
    out["generate_seconds"] = round(time.perf_counter() - start, 1)
    return out


def measure_loss(loss: str, out: Path, measure: Path, labels: list[str], steps: int, batch_size: int,
                 extra: list[str]) -> dict:
    run_dir = out / "runs" / loss
    seconds = train(loss, run_dir, steps, [f"data.eval_file={measure}", f"train.batch_size={batch_size}", *extra])
    metrics = json.loads((run_dir / "results.json").read_text())
    lm, tokenizer = trained_model(run_dir)
    return {"wall_seconds": round(seconds, 1), "train_seconds": metrics["train"]["runtime_s"], "steps": steps,
            "batch_size": batch_size, "overrides": extra,
            "generated": generated_accuracy(lm, tokenizer, measure, labels), "results": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/prefbench"))
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-eval", type=int, default=300)
    parser.add_argument("--n-measure", type=int, default=100,
                        help="held-out pairs the runs are evaluated on (the first of eval.jsonl; CPU time)")
    parser.add_argument("--jobs", type=int, default=1, help="losses measured at the same time")
    parser.add_argument("--base-only", action="store_true")
    args, extra = parser.parse_known_args()
    os.environ.update(OFFLINE)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    paths = build_preference_set(DATA_DIR, args.n_train, args.n_eval)
    measure = args.out / "eval_measured.jsonl"
    measure.write_text("".join(paths["eval"].read_text().splitlines(keepends=True)[:args.n_measure]))
    labels = list(compose(["data=tweet_sentiment"]).data.labels)
    results["cpu"] = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True,
                                    text=True).stdout.strip()
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        jobs = {}
        if results.get("base", {}).get("n") != args.n_measure:
            jobs["base"] = pool.submit(measure_base, measure, labels)
        if not args.base_only:
            for loss in args.losses.split(","):
                jobs[loss] = pool.submit(measure_loss, loss, args.out, measure, labels, args.steps, args.batch_size,
                                         extra)
        for name, job in jobs.items():
            try:
                results[name] = job.result()
            except Exception as err:  # one failed loss leaves the others' numbers
                results[name] = {"error": str(err)[-2000:]}
            results_path.write_text(json.dumps(results, indent=2))
            print(name, json.dumps({k: v for k, v in results[name].items() if k != "results"}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
