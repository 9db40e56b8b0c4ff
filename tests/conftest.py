"""Fixtures: tiny models built from a config in memory, tiny labelled data, and the real CLI.

The tiny models are real architectures (BERT-like and Llama-like) with random weights and
real tokenizers trained on the fixture text, saved as ordinary HF folders, so every test goes
through the same loading, training and saving code as a user's run.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# pytest-xdist workers (pyproject's addopts: -n 2) share the cores: each worker's torch, and every
# CLI it starts, gets its share of the threads instead of all of them (oversubscribed cores crawl)
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))
UNIT = Path(__file__).resolve().parent / "unit"


def pytest_addoption(parser):
    parser.addoption("--slurm", action="store_true",
                     help="also run the SLURM tests (scripts/slurm_local.sh apt-installs and starts a cluster; root)")


def pytest_collection_modifyitems(config, items):
    """tests/unit is the fast tier; every other test runs the CLI end to end (marker e2e). SLURM
    tests install system packages, so they run only when asked for."""
    skip_slurm = pytest.mark.skip(reason="installs and starts a local SLURM cluster: run with --slurm to include")
    for item in items:
        if UNIT not in item.path.parents:
            item.add_marker(pytest.mark.e2e)
        if "slurm" in item.keywords and not config.getoption("--slurm"):
            item.add_marker(skip_slurm)


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


@contextlib.contextmanager
def seeded(seed: int = 0):
    """The tiny models' random weights the same in every test order (the session's RNG untouched):
    a threshold that passed here passes in CI."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def compose_config(command: str, *overrides: str, validate: bool = False):
    """The command's config composed in process (no run folder), validated as the CLI does when asked."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmft.cli.app import config_dir
    from llmft.cli.validate import register_configs
    from llmft.cli.validate import validate as check

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = hydra_compose(command, overrides=list(overrides))
    if validate:
        check(cfg)
    return cfg


def _corpus() -> list[str]:
    return [r["text"] for r in make_rows(300, seed=0)]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for text in _corpus() for w in text.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores vocab_file= (every word would be [UNK]); vocab= takes the file
    BertTokenizerFast(vocab=str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128, max_position_embeddings=128)
    with seeded():
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
    with seeded():
        LlamaModel(config).save_pretrained(path)
    return path


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def tiny_chat_llama(tmp_path_factory) -> Path:
    """A tiny Llama-like causal LM with a ChatML chat template (end of turn = eos), like SmolLM2."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-chat-llama")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = _corpus() + ["user assistant system sentiment of : " + " ".join(LABELS)]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=220, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", eos_token="<|im_end|>")
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    with seeded():
        LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sft")
    rows = make_rows(60, seed=4)
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"sentiment of : {r['text']}", "response": r["label"]}) + "\n"
                             for r in rows))
    chats = root / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": "sentiment"},
        {"role": "user", "content": r["text"]},
        {"role": "assistant", "content": r["label"]}]}) + "\n" for r in rows))
    return {"pairs": pairs, "chats": chats}


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    """A tiny T5-like encoder-decoder whose tokenizer ends every text with </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    path = tmp_path_factory.mktemp("tiny-t5")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(_corpus() + ["copy :"], trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"]))
    bpe.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(path)
    config = T5Config(vocab_size=len(tokenizer), d_model=64, d_kv=32, d_ff=128, num_layers=2, num_decoder_layers=2,
                      num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with seeded():
        T5ForConditionalGeneration(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def seq2seq_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seq2seq") / "pairs.jsonl"
    rows = make_rows(60, seed=7)
    path.write_text("".join(json.dumps({"source": f"copy : {r['text']}", "target": r["label"]}) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def qa_data(tmp_path_factory) -> dict:
    """SQuAD JSON: the answer is the positive word of each context."""
    rng = random.Random(8)
    root = tmp_path_factory.mktemp("qa")

    def article(n, offset):
        paragraphs = []
        for i in range(n):
            words = rng.sample(_FILLER, 5) + [rng.choice(_WORDS["positive"])] + rng.sample(_FILLER, 3)
            answer = words[5]
            context = " ".join(words)
            paragraphs.append({"context": context, "qas": [{
                "id": f"q{offset + i}", "question": "which word is nice ?",
                "answers": [{"text": answer, "answer_start": context.index(" " + answer + " ") + 1}]}]})
        return {"data": [{"title": "t", "paragraphs": paragraphs}]}

    train, eval_ = root / "train.json", root / "eval.json"
    train.write_text(json.dumps(article(80, 0)))
    eval_.write_text(json.dumps(article(20, 1000)))
    return {"train": train, "eval": eval_}


def make_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Sentences where "great"/"happy" words are a POS entity and "awful"/"bad" a NEG one."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 6)):
            kind = rng.choice(["O", "O", "POS", "NEG"])
            if kind == "O":
                tokens.append(rng.choice(_FILLER))
                tags.append("O")
            else:
                words = rng.sample(_WORDS["positive" if kind == "POS" else "negative"], rng.randint(1, 2))
                tokens += words
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        out.append((tokens, tags))
    return out


def write_conll(path: Path, sentences) -> Path:
    path.write_text("\n\n".join("\n".join(f"{t} {g}" for t, g in zip(*s)) for s in sentences) + "\n")
    return path


@pytest.fixture(scope="session")
def ner_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ner")
    return {"train": write_conll(root / "train.conll", make_sentences(80, seed=5)),
            "eval": write_conll(root / "eval.conll", make_sentences(20, seed=6))}


def cli_env() -> dict:
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", WANDB_SILENT="true")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """Run the installed `llmft` console script (the real CLI) and capture its output."""
    script = Path(sys.executable).with_name("llmft")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "llmft.cli"]
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd, env=env or cli_env(), capture_output=True,
                          text=True, timeout=timeout)


def tiny_train_args(model: Path, data: dict, run_dir: Path, *extra: str) -> list[str]:
    """Overrides for a few-second run on a tiny model and the fixture CSVs."""
    return [
        "model=hf", f"model.name_or_path={model}",
        "data=csv", f"data.train_file={data['train']}", f"data.eval_file={data['eval']}",
        "train.epochs=2", "train.batch_size=8", "train.lr=5e-3", "train.logging_steps=2",
        "print_config=false", f"hydra.run.dir={run_dir}", *extra,
    ]


def snapshot(folder: Path) -> dict:
    """relative path -> sha256 of every file under ``folder``."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def untrained_classifier(folder: Path, base: Path) -> Path:
    """A classifier folder as training leaves it (weights, tokenizer, llmft.json), untrained."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    BertForSequenceClassification.from_pretrained(str(base), num_labels=len(LABELS)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(folder)
    meta = {"task": "classification", "labels": LABELS, "crf": False, "strategy": "full",
            "base_model": str(base), "trust_remote_code": False, "revision": None}
    (folder / "llmft.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="session")
def trained_bert(tmp_path_factory, tiny_bert, tiny_data) -> Path:
    """One finished training run of tiny BERT (its run folder), trained once per worker and shared
    by the tests that only read a trained model: 3 epochs, so its logits are not all alike. Read
    only: a test that writes into it copies it first (checked when the session ends)."""
    run_dir = tmp_path_factory.mktemp("trained-bert") / "run"
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.epochs=3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = snapshot(run_dir)
    yield run_dir
    after = snapshot(run_dir)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test wrote into the shared trained_bert run folder (copy it first): {changed}"


def assert_user_error(proc, *expected: str) -> None:
    """Exit 2 with exactly one `llmft: error:` line holding ``expected``, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("llmft: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]


def preflight(command: str, *overrides: str) -> None:
    """What the CLI checks before Hydra starts a run, in process: compose every sweep value,
    run every owner's validate (no torch)."""
    from llmft.cli import normalize_overrides
    from llmft.cli.app import preflight as run_preflight
    from llmft.cli.validate import register_configs

    register_configs()
    run_preflight(command, normalize_overrides(list(overrides), command))


def refused(command: str, *overrides: str) -> str:
    """The one-line UserError the pre-flight raises for ``overrides``."""
    from llmft.core.errors import UserError

    with pytest.raises(UserError) as err:
        preflight(command, *overrides)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


# ------------------------------------------------ prompting: a tiny causal LM whose scores we control
WORDS = {"negative": "awful", "neutral": "table", "positive": "great"}


def blockless_llama(tokenizer, tie: bool):
    """A 1-block Llama whose block adds nothing (zero output projections): the next-token scores
    depend only on the last token's embedding."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=tie,
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model


@pytest.fixture(scope="session")
def echo_lm(tmp_path_factory, tiny_llama):
    """Tied embeddings: after a prompt, its last token scores highest."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("echo-lm")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    blockless_llama(tokenizer, tie=True).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def cloze_data(tmp_path_factory):
    import random

    rng = random.Random(3)
    filler = ["the", "a", "today", "my", "was", "this", "it", "so"]
    rows = [{"text": " ".join(rng.sample(filler, 3) + [WORDS[label]]), "label": label}
            for label in WORDS for _ in range(10)]
    root = tmp_path_factory.mktemp("cloze")
    return write_csv(root / "train.csv", rows), write_csv(root / "eval.csv", rows[::2])


def prompt_args(model, data, run_dir, *extra, words=WORDS):
    verbalizer = "{" + ",".join(f"{label}:[{word}]" for label, word in words.items()) + "}"
    return ["model=hf", f"model.name_or_path={model}", "data=csv", f"data.train_file={data[0]}",
            f"data.eval_file={data[1]}", "data.prompt.template='{text}'", f"data.prompt.verbalizer={verbalizer}",
            "print_config=false", f"hydra.run.dir={run_dir}", *extra]


# ------------------------------------------------ a model folder that ships code of its own
CUSTOM_CODE = '''
from pathlib import Path

Path({sentinel!r}).write_text("ran")  # what code shipped with a model could do on import

from transformers import BertConfig, BertForSequenceClassification


class SentinelConfig(BertConfig):
    model_type = {model_type!r}


class SentinelForSequenceClassification(BertForSequenceClassification):
    config_class = SentinelConfig
'''


def custom_code_model(source: Path, folder: Path, sentinel: Path, model_type: str = "llmft-sentinel") -> Path:
    """A copy of ``source`` whose config.json maps the Auto classes to a module of its own, which
    writes ``sentinel`` when it is imported (proof that the folder's code ran)."""
    import shutil

    shutil.copytree(source, folder)
    (folder / "sentinel_model.py").write_text(CUSTOM_CODE.format(sentinel=str(sentinel), model_type=model_type))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type=model_type, auto_map={
        "AutoConfig": "sentinel_model.SentinelConfig",
        "AutoModelForSequenceClassification": "sentinel_model.SentinelForSequenceClassification"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
