"""Fixtures: tiny models built from a config in memory, tiny labelled data, and the real CLI.

The tiny models are real architectures (BERT-like and Llama-like) with random weights and
real tokenizers trained on the fixture text, saved as ordinary HF folders, so every test goes
through the same loading, training and saving code as a user's run.
"""
from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LABELS = ["negative", "neutral", "positive"]
_WORDS = {
    "negative": ["awful", "bad", "hate", "terrible", "worst", "angry"],
    "neutral": ["table", "monday", "report", "train", "paper", "window"],
    "positive": ["great", "love", "happy", "wonderful", "best", "nice"],
}
_FILLER = ["the", "a", "today", "my", "was", "this", "it", "so", "and", "we"]


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        words = rng.sample(_FILLER, 4) + rng.sample(_WORDS[label], 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("data")
    train = write_csv(root / "train.csv", make_rows(96, seed=1))
    eval_ = write_csv(root / "eval.csv", make_rows(30, seed=2))
    jsonl = root / "train.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in make_rows(96, seed=1)))
    return {"root": root, "train": train, "eval": eval_, "jsonl": jsonl}


def _corpus() -> list[str]:
    return [r["text"] for r in make_rows(300, seed=0)]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for text in _corpus() for w in text.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(path)  # no pad token, like most decoder-only models
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=128,
                         max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    LlamaModel(config).save_pretrained(path)
    return path


def cli_env() -> dict:
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", WANDB_SILENT="true")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed `llmft` console script (the real CLI) and capture its output."""
    script = Path(sys.executable).with_name("llmft")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "llmft.cli"]
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout)


def tiny_train_args(model: Path, data: dict, run_dir: Path, *extra: str) -> list[str]:
    """Overrides for a few-second run on a tiny model and the fixture CSVs."""
    return [
        "model=hf", f"model.name_or_path={model}",
        "data=csv", f"data.train_file={data['train']}", f"data.eval_file={data['eval']}",
        "train.epochs=2", "train.batch_size=8", "train.lr=5e-3", "train.logging_steps=2",
        "print_config=false", f"hydra.run.dir={run_dir}", *extra,
    ]


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
