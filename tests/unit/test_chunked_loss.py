"""Chunked cross-entropy (train.loss_chunk_tokens, models/chunked_loss.py): the same loss and the
same gradient of every trainable parameter as the model's own loss, whatever the chunk size; packed
rows give the padded loss; two accumulated micro-batches give the bigger batch; bad values refused."""
from __future__ import annotations

import pytest

from tests.conftest import refused, seeded

IGNORE = -100


def tiny_lm(tie: bool, bias: bool = False):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)
    with seeded(1):
        model = LlamaForCausalLM(config)
        if bias:  # a head with a bias (GPT-J, some remote models)
            head = torch.nn.Linear(32, 97, bias=True)
            head.weight.data.copy_(model.lm_head.weight.data)
            head.bias.data.normal_(0, 0.5)
            model.lm_head = head
    if tie:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    return model.train()


def batch(rows: int = 3, length: int = 11, seed: int = 0):
    """Right-padded rows with prompt tokens unlabelled, like SFT's collator."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (rows, length), generator=generator)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    for r in range(rows):
        real = length - 2 * r
        mask[r, real:] = 0
        labels[r, real:] = IGNORE
        labels[r, : 2 + r] = IGNORE  # the prompt
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_and_grads(model, inputs, chunk=None, **kwargs):
    from llmft.models.chunked_loss import ChunkedLoss

    model.zero_grad(set_to_none=True)
    if chunk is None:
        loss = model(**inputs, **kwargs).loss
    else:
        with ChunkedLoss(model, chunk).installed():
            out = model(**inputs, **kwargs)
            assert out.logits.shape[-2] == 0  # no logit was computed
            loss = out.loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return loss.detach(), grads


def assert_same(a, b, tol=1e-5):
    import torch

    (la, ga), (lb, gb) = a, b
    assert torch.allclose(la, lb, rtol=tol, atol=tol), (la, lb)
    assert ga.keys() == gb.keys()
    for name in ga:
        assert torch.allclose(ga[name], gb[name], rtol=1e-4, atol=1e-6), (name, (ga[name] - gb[name]).abs().max())


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("chunk", [1, 3, 10_000])
def test_loss_and_every_gradient_equal_the_plain_path(tie, chunk):
    model = tiny_lm(tie)
    inputs = batch()
    plain = loss_and_grads(model, inputs)
    chunked = loss_and_grads(model, inputs, chunk)
    # the tied weight's gradient: from the head and from the embedding, both counted
    assert ("lm_head.weight" in plain[1]) == (not tie) and "model.embed_tokens.weight" in plain[1]
    assert_same(plain, chunked)


def test_head_with_bias_and_the_token_mean_over_num_items():
    import torch

    model = tiny_lm(tie=False, bias=True)
    inputs = batch()
    n = torch.tensor(40)  # num_items_in_batch: the accumulated batch's targets, not this micro-batch's
    plain = loss_and_grads(model, inputs, num_items_in_batch=n)
    chunked = loss_and_grads(model, inputs, 4, num_items_in_batch=n)
    assert "lm_head.bias" in chunked[1]
    assert_same(plain, chunked)


def test_under_bf16_autocast_the_head_runs_in_bf16_like_the_plain_path():
    import torch

    model = tiny_lm(tie=True)
    inputs = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = loss_and_grads(model, inputs)
        chunked = loss_and_grads(model, inputs, 4)
    assert abs(plain[0] - chunked[0]) <= 1e-2 * plain[0]
    for name, grad in plain[1].items():
        assert torch.allclose(grad, chunked[1][name], rtol=0.05, atol=2e-3), name


def test_lora_adapters_get_the_plain_gradients_and_the_frozen_head_none():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_lm(tie=True), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                         init_lora_weights=False))
    inputs = batch()
    plain = loss_and_grads(model, inputs)
    chunked = loss_and_grads(model, inputs, 5)
    assert plain[1] and all("lora_" in n for n in chunked[1])
    assert_same(plain, chunked)


def test_prompt_tuning_virtual_tokens_carry_no_label_and_the_prompt_gets_the_plain_gradient():
    from peft import PromptTuningConfig, get_peft_model

    model = get_peft_model(tiny_lm(tie=True), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    inputs = batch()
    plain = loss_and_grads(model, inputs)
    chunked = loss_and_grads(model, inputs, 4)
    assert list(chunked[1]) == ["prompt_encoder.default.embedding.weight"]
    assert_same(plain, chunked)


def test_packed_chunked_loss_equals_the_padded_loss():
    import torch
    from transformers import DataCollatorWithFlattening

    model = tiny_lm(tie=True)
    inputs = batch()
    rows = [{"input_ids": ids[m.bool()].tolist(), "labels": lab[m.bool()].tolist()}
            for ids, m, lab in zip(inputs["input_ids"], inputs["attention_mask"], inputs["labels"])]
    packed = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)(rows)
    packed = {k: torch.as_tensor(v) for k, v in packed.items()}
    padded = loss_and_grads(model, inputs)
    chunked = loss_and_grads(model, packed, 3, use_cache=False)
    assert_same(padded, chunked, tol=1e-5)


def test_two_accumulated_micro_batches_equal_the_bigger_batch():
    import torch

    model = tiny_lm(tie=True)
    inputs = batch(rows=4, length=11)
    n = (inputs["labels"][:, 1:] != IGNORE).sum()  # the Trainer's num_items_in_batch over both micro-batches
    whole = loss_and_grads(model, inputs)
    halves = [{k: v[i:i + 2] for k, v in inputs.items()} for i in (0, 2)]
    parts = [loss_and_grads(model, h, 3, num_items_in_batch=n) for h in halves]
    summed = (parts[0][0] + parts[1][0], {k: parts[0][1][k] + parts[1][1][k] for k in parts[0][1]})
    assert_same(whole, summed)
    # each micro-batch's own mean would weigh the shorter one's tokens more: not what was summed
    assert not torch.allclose(whole[0], (loss_and_grads(model, halves[0])[0] + loss_and_grads(model, halves[1])[0]) / 2)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_evaluation_gets_the_plain_per_sequence_losses_and_generation_the_full_logits(packed):
    import torch
    from transformers import DataCollatorWithFlattening

    from llmft.models.chunked_loss import ChunkedLoss
    from llmft.runtime.split_loss import row_losses

    model = tiny_lm(tie=True).eval()
    inputs = batch()
    if packed:
        rows = [{"input_ids": ids[m.bool()].tolist(), "labels": lab[m.bool()].tolist()}
                for ids, m, lab in zip(inputs["input_ids"], inputs["attention_mask"], inputs["labels"])]
        inputs = {k: torch.as_tensor(v) for k, v in
                  DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)(rows).items()}
    plain_fn = model.loss_function
    with torch.no_grad():
        out = model(**inputs)
        plain = row_losses("causal", out, inputs, model)
        with ChunkedLoss(model, 4).installed():
            chunked_out = model(**inputs)
            assert chunked_out.logits.shape[-2] == 0
            chunked = row_losses("causal", chunked_out, inputs, model)
            assert model.last_token_losses is None  # read once
            # no labels (generation): the full head
            assert model(input_ids=inputs["input_ids"]).logits.shape[-2] == inputs["input_ids"].shape[1]
        assert torch.allclose(chunked_out.loss, out.loss, rtol=1e-5)
    assert len(plain[0]) == 3 and torch.allclose(plain[1], chunked[1])
    assert torch.allclose(plain[0], chunked[0], rtol=1e-6, atol=1e-6), (plain[0], chunked[0])
    assert model.loss_function is plain_fn  # removed: the model's own again


def test_models_it_would_change_keep_the_plain_loss():
    from peft import LoraConfig, get_peft_model

    from llmft.models.chunked_loss import ChunkedLoss, chunked_loss

    assert ChunkedLoss(tiny_lm(tie=True), 8).unchunkable() is None
    capped = tiny_lm(tie=True)
    capped.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping=30.0" in ChunkedLoss(capped, 8).unchunkable()
    lora_head = get_peft_model(tiny_lm(tie=False), LoraConfig(r=2, target_modules=["lm_head"]))
    assert "not a plain Linear" in ChunkedLoss(lora_head, 8).unchunkable()

    class OwnLoss(type(tiny_lm(tie=True))):  # computes its loss from the logits itself
        def forward(self, input_ids=None, labels=None, **kwargs):
            import torch.nn.functional as F

            out = super().forward(input_ids=input_ids, **kwargs)
            out.loss = F.cross_entropy(out.logits[:, :-1].reshape(-1, 97).float(), labels[:, 1:].reshape(-1))
            return out

    own = OwnLoss(tiny_lm(tie=True).config)
    loss, why = chunked_loss(own, 8)
    assert loss is None and ("chunked loss fails" in why or "differs" in why), why
    assert own.training  # the probe gave the mode back


def test_the_knob_picks_the_chunk_per_task():
    from llmft.techniques.loss_chunks import AUTO_TOKENS, chunk_tokens
    from tests.conftest import compose_config

    class Task:
        loss_kind = "causal"

    cfg = compose_config("train")
    assert chunk_tokens(cfg, Task()) == AUTO_TOKENS
    cfg.train.loss_chunk_tokens = 0
    assert chunk_tokens(cfg, Task()) == 0
    cfg.train.loss_chunk_tokens = None
    Task.loss_kind = "row"
    assert chunk_tokens(cfg, Task()) == 0


SFT = ["model=smollm2", "data=jsonl_sft", "data.train_file={chats}", "+strategy=lora"]
BAD = [
    (["train.loss_chunk_tokens=-1"], "train.loss_chunk_tokens: must be >= 0"),
    (["train.loss_chunk_tokens=abc"], "train.loss_chunk_tokens"),
    (["train.loss_chunk_tokens=512"], "train.loss_chunk_tokens: chunks a causal LM's next-token loss"),
    ([*SFT, "train.loss_chunk_tokens=512", "train.adversarial.method=fgm"], "adversarial training takes a second"),
    ([*SFT, "train.loss_chunk_tokens=512", "hardware.compile=true"], "torch.compile runs the chunked loss eagerly"),
]


@pytest.mark.parametrize("overrides,expected", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_are_refused_in_one_line(overrides, expected, tmp_path):
    chats = tmp_path / "chats.jsonl"
    chats.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n' * 4)
    assert expected in refused("train", *(o.format(chats=chats) for o in overrides))
