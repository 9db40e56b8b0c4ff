"""Text generation and its metrics, shared by the generating tasks (sft, seq2seq)."""
from __future__ import annotations


def generate(model, tokenizer, prompts: list[str], cfg, add_special_tokens: bool = False) -> list[str]:
    """Batched generation with the KV cache (decoder-only models: left padding); the new tokens
    only, decoded. Stops at the tokenizer's EOS (for chat models, the end-of-turn token)."""
    import torch
    from tqdm.auto import tqdm

    decoder_only = not model.config.is_encoder_decoder
    side = tokenizer.padding_side
    if decoder_only:
        tokenizer.padding_side = "left"  # new tokens follow every prompt directly
    kwargs = dict(max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams, do_sample=cfg.do_sample,
                  repetition_penalty=cfg.repetition_penalty, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id, use_cache=True)
    if cfg.do_sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    device = next(model.parameters()).device
    outputs = []
    model.eval()
    try:
        for start in tqdm(range(0, len(prompts), cfg.batch_size), desc="generate"):
            batch = tokenizer(prompts[start:start + cfg.batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=add_special_tokens).to(device)
            with torch.no_grad():
                out = model.generate(**batch, **kwargs)
            new = out[:, batch["input_ids"].shape[1]:] if decoder_only else out
            outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return outputs


def generation_metrics(generations: list[str], references: list[str], bleu: bool = False) -> dict:
    """ROUGE-1/2/L F1 (rouge_score), exact match, and with ``bleu`` corpus BLEU (sacrebleu)."""
    from rouge_score import rouge_scorer

    kinds = ["rouge1", "rouge2", "rougeL"]
    scorer = rouge_scorer.RougeScorer(kinds, use_stemmer=True)
    n = max(len(references), 1)
    scores = [scorer.score(r, g) for r, g in zip(references, generations)]
    out = {k: round(sum(s[k].fmeasure for s in scores) / n, 4) for k in kinds}
    out["exact_match"] = round(sum(g.strip() == r.strip() for r, g in zip(references, generations)) / n, 4)
    if bleu:
        import sacrebleu

        out["bleu"] = round(sacrebleu.corpus_bleu(generations, [references]).score, 4)
    out["generated"] = len(generations)
    return out


def validate_generate(g) -> None:
    """The generate section (torch-free)."""
    from llmft.core.errors import require

    for key in ("max_new_tokens", "num_beams", "batch_size"):
        require(g[key] >= 1, f"generate.{key}", f"must be >= 1 (got {g[key]})")
    require(g.max_examples is None or g.max_examples >= 1, "generate.max_examples", "must be >= 1 or null (all)")
    require(g.temperature > 0, "generate.temperature", f"must be > 0 (got {g.temperature})")
    require(0 < g.top_p <= 1, "generate.top_p", f"must be in (0, 1] (got {g.top_p})")
    require(g.top_k >= 0, "generate.top_k", f"must be >= 0 (got {g.top_k})")
    require(g.repetition_penalty > 0, "generate.repetition_penalty", f"must be > 0 (got {g.repetition_penalty})")
