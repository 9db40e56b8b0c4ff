"""sdpa per packed sequence (llmft/models/packed_attention.py): each packed sequence gets its own
logits and the padded batch's loss without a [total, total] mask, the probe still refuses an
attention that crosses the boundaries, padded batches and generation are plain sdpa's, and the
saved config keeps sdpa."""
from __future__ import annotations

import json

import pytest
from conftest import seeded

IGNORE = -100


def gqa_llama(attn: str = "sdpa"):
    """A tiny Llama with grouped-query attention (6 heads on 2 key/value heads, like SmolLM2's 9 on 3)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=120, hidden_size=96, num_hidden_layers=2, num_attention_heads=6,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation=attn)
    with seeded():
        return LlamaForCausalLM(config).eval()


def sequences(lengths=(7, 19, 3, 12), seed: int = 1):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 120, (n,), generator=generator) for n in lengths]


def features(seqs, prompt: int = 2):
    """Rows as the SFT task makes them: labels copy the ids, the prompt's first tokens -100."""
    return [{"input_ids": s.tolist(), "labels": [IGNORE] * prompt + s.tolist()[prompt:]} for s in seqs]


def collate(rows, packing: bool):
    from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    from llmft.data.packing import PackingCollator

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, "<unk>")),
                                        pad_token="<pad>", unk_token="<unk>")
    padded = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE)
    return PackingCollator(padded)(rows) if packing else padded(rows)


@pytest.fixture
def sdpa_calls(monkeypatch):
    """The (query length, mask) of every torch sdpa call."""
    import torch

    calls, real = [], torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kwargs):
        calls.append((query.shape[-2], attn_mask))
        return real(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


def test_packed_logits_are_each_sequence_alone_without_a_full_row_mask(sdpa_calls):
    import torch

    from llmft.data.packing import prepare_model
    from llmft.models.packed_attention import NAME

    model = gqa_llama()
    prepare_model(model)
    assert model.config._attn_implementation == NAME
    seqs = sequences()
    batch = collate(features(seqs), packing=True)
    with torch.no_grad():
        alone = [model(input_ids=s[None]).logits[0] for s in seqs]
        sdpa_calls.clear()
        logits = model(**batch).logits[0]
    start = 0
    for s, ref in zip(seqs, alone):
        assert torch.allclose(logits[start:start + len(s)], ref, atol=1e-5, rtol=0), f"sequence at {start}"
        start += len(s)
    # one unmasked sdpa per sequence and layer, none over the whole row (sdpa's path: one masked call of 41)
    assert sorted(q for q, _ in sdpa_calls) == sorted([len(s) for s in seqs] * 2)
    assert all(mask is None for _, mask in sdpa_calls)


def test_sequence_bounds_from_position_ids_and_cu_seq_lens():
    import torch

    from llmft.models.packed_attention import _bounds

    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert _bounds(positions, None, 1, 9) == [[(0, 3), (3, 5), (5, 9)]]
    assert _bounds(None, torch.tensor([0, 3, 5, 9], dtype=torch.int32), 1, 9) == [[(0, 3), (3, 5), (5, 9)]]
    assert _bounds(torch.arange(9)[None], None, 1, 9) is None  # one sequence: plain sdpa
    assert _bounds(torch.tensor([[0, 1, 0, 1], [0, 1, 2, 3]]), None, 2, 4) == [[(0, 2), (2, 4)], [(0, 4)]]


def test_the_probe_passes_it_and_still_refuses_an_attention_that_crosses(monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from llmft.core.errors import UserError
    from llmft.data.packing import check_model, prepare_model
    from llmft.models.packed_attention import NAME

    model = gqa_llama()
    prepare_model(model)  # runs the probe: passes

    def crossing(module, query, key, value, attention_mask, **kwargs):  # causal over the whole row
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, NAME, crossing)
    with pytest.raises(UserError, match="data.packing: this model's attention .* see each other"):
        check_model(model)


def test_packed_loss_and_gradients_equal_the_padded_ones():
    import torch

    from llmft.data.packing import prepare_model

    rows = features(sequences())
    results = []
    for packing in (False, True):
        model = gqa_llama()
        if packing:
            prepare_model(model)
        model.train()  # attention_dropout is 0: training mode, deterministic
        loss = model(**collate(rows, packing)).loss
        loss.backward()
        results.append((loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    (padded, grad_padded), (packed, grad_packed) = results
    assert packed == pytest.approx(padded, abs=1e-5)
    assert torch.allclose(grad_packed, grad_padded, atol=1e-5, rtol=1e-4)


def test_padded_batches_and_generation_are_plain_sdpas():
    import torch

    from llmft.models.packed_attention import use_for_packing

    plain, ours = gqa_llama(), gqa_llama()
    assert use_for_packing(ours)
    seqs = sequences((5, 11, 8))
    for side in ("right", "left"):
        n = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), n, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            span = slice(0, len(s)) if side == "right" else slice(n - len(s), n)
            ids[i, span], mask[i, span] = s, 1
        with torch.no_grad():
            expected = plain(input_ids=ids, attention_mask=mask).logits
            got = ours(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(got[mask.bool()], expected[mask.bool()]), side
    out = [m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
           for m in (plain, ours)]
    assert torch.equal(out[0], out[1])


def test_the_mask_function_builds_none_only_for_a_packed_causal_row():
    import torch
    from transformers.masking_utils import causal_mask_function, or_masks

    from llmft.models.packed_attention import packed_sdpa_mask

    args = dict(batch_size=1, q_length=6, kv_length=6, allow_is_causal_skip=False)
    assert packed_sdpa_mask(mask_function=causal_mask_function, **args) is None
    ahead = or_masks(causal_mask_function, lambda b, h, q, kv: (q // 3) == (kv // 3))  # bidirectional blocks
    mask = packed_sdpa_mask(mask_function=ahead, **args)
    assert mask is not None and bool(mask[0, 0, 0, 2])
    padding = torch.tensor([[0, 1, 1, 1, 1, 1]]).bool()
    padded = packed_sdpa_mask(mask_function=causal_mask_function, attention_mask=padding, **args)
    assert padded is not None and not padded[0, 0, :, 0].any()


def test_only_sdpa_is_switched_and_the_saved_config_keeps_sdpa(tmp_path):
    from transformers import AutoModelForCausalLM

    from llmft.data.packing import prepare_model
    from llmft.models.packed_attention import NAME

    eager = gqa_llama("eager")
    prepare_model(eager)
    assert eager.config._attn_implementation == "eager"  # softcapping, attention outputs: kept
    model = gqa_llama()
    prepare_model(model)
    model.save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    assert NAME not in text and json.loads(text).get("attn_implementation") in (None, "sdpa")
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation == "sdpa"
