#!/usr/bin/env python
"""Label-scoring throughput of llmft's prompt classifier against a plain forward pass.

    python scripts/benchmark_prompting.py [--examples 128] [--batch-size 16] [override ...]

Both sides run the same model over the same rendered prompts (the tweets with the data
config's template) in the same batches. The plain side is what a hand-written loop does:
``model(**batch).logits`` over the whole vocabulary at every position, then reads the label
words at the last real token. llmft's side scores every label from one forward pass with
``logits_to_keep=1`` on left-padded batches (see llmft/models/prompting.py). Warm-up batches are
excluded from both. Prints examples/s of each and the ratio; both must agree on the labels.
"""
from __future__ import annotations

import argparse
import time

import torch


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmft.cli.app import config_dir
    from llmft.cli import normalize_overrides
    from llmft.cli.validate import register_configs

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3", job_name="benchmark"):
        return hydra_compose("train", overrides=normalize_overrides(overrides))


def timed(fn, batches, warmup: int = 1) -> tuple[float, list]:
    for batch in batches[:warmup]:
        fn(batch)
    out, start = [], time.perf_counter()
    for batch in batches[warmup:]:
        out += fn(batch)
    n = sum(len(b["input_ids"]) for b in batches[warmup:])
    return n / (time.perf_counter() - start), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    args, overrides = parser.parse_known_args()
    cfg = compose(["model=smollm2", "+strategy=zero_shot", f"data.max_eval_samples={args.examples}", *overrides])

    from transformers import AutoModelForCausalLM

    from llmft.data.files import load_splits
    from llmft.models.loading import load_tokenizer
    from llmft.models.loading import resolve_model_path
    from llmft.models.prompting import label_token_ids, prompt_classifier, render
    from llmft.tasks import build_task

    task = build_task(cfg.data)
    texts = load_splits(cfg.data, task)["eval"][cfg.data.text_column]
    path = resolve_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(path)
    tokenizer.padding_side = "left"
    prompts = [render(cfg.data.prompt.template, t, tokenizer) for t in texts]
    batches = [tokenizer(prompts[i:i + args.batch_size], return_tensors="pt", padding=True)
               for i in range(0, len(prompts), args.batch_size)]
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = label_token_ids(cfg.data.prompt.verbalizer, task.labels, tokenizer)
    first = torch.tensor([i[0] for i in ids])

    def plain(batch):
        with torch.no_grad():
            logits = lm(**batch).logits[:, -1, :]  # full-vocabulary logits at every position
        return logits[:, first].argmax(-1).tolist()

    classifier = prompt_classifier(lm, ids, "causal", None)

    def llmft_scoring(batch):
        with torch.no_grad():
            return classifier(**batch).logits.argmax(-1).tolist()

    plain_rate, plain_labels = timed(plain, batches)
    llmft_rate, llmft_labels = timed(llmft_scoring, batches)
    agree = sum(a == b for a, b in zip(plain_labels, llmft_labels)) / len(plain_labels)
    print(f"\n{'side':<34}{'examples/s':>12}")
    print(f"{'plain forward (all logits)':<34}{plain_rate:>12.1f}")
    print(f"{'llmft label scoring':<34}{llmft_rate:>12.1f}")
    print(f"ratio llmft / plain: {llmft_rate / plain_rate:.2f}  (same labels on {agree:.0%} of "
          f"{len(plain_labels)} prompts, batch {args.batch_size}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
