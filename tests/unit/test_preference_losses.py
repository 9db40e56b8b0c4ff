"""llmft/models/preference_losses.py: each loss equals TRL 1.16's own code on the same tensors
(its trainers' methods called on a namespace holding the attributes they read) and a hand
computation; completion_logps equals a hand loop; token_kl equals kl_div position by position."""
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

import torch.nn.functional as F  # noqa: E402

from llmft.models.preference_losses import (  # noqa: E402
    DEFAULT_BETA, completion_logps, kl_estimate, kto_loss, pair_loss, token_kl)

from tests.conftest import seeded  # noqa: E402

B, T, V = 3, 7, 50


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


@pytest.fixture(scope="module")
def model():
    """A tiny causal LM with TRL's fused LM head (its trainers call model(..., fused_lm_head=True))."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    config = LlamaConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=32, max_position_embeddings=32)
    with seeded():
        lm = LlamaForCausalLM(config).eval()
    add_fused_lm_head(lm, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return lm


def batch(rows: int, seed: int):
    """Right-padded rows: a prompt of 2-3 tokens, a completion of 1-3 tokens, then padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (rows, T), generator=g)
    attention, completion = torch.zeros(rows, T, dtype=torch.long), torch.zeros(rows, T, dtype=torch.long)
    for i in range(rows):
        prompt, length = 2 + i % 2, 1 + (i + seed) % 3
        attention[i, :prompt + length] = 1
        completion[i, prompt:prompt + length] = 1
    return ids.masked_fill(attention == 0, 0), attention, completion


class Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather


def trainer_state(**attrs):
    """What TRL's _compute_loss reads from self, for one process."""
    return SimpleNamespace(model=SimpleNamespace(training=True), accelerator=Accelerator(), aux_loss_enabled=False,
                           _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
                           precompute_ref_logps=True, **attrs)


def logps_of(model, ids, attention, completion):
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits
    return completion_logps(logits, ids, completion)


# ------------------------------------------------------------------ equal to TRL on the same tensors
@pytest.mark.parametrize("loss, trl_loss, beta", [("dpo", "sigmoid", 0.1), ("ipo", "ipo", 0.3)])
def test_dpo_and_ipo_equal_trl_dpo_trainer(model, loss, trl_loss, beta):
    from trl.trainer.dpo_trainer import DPOTrainer

    ids, attention, completion = batch(2 * B, seed=1)
    ref = torch.tensor([-9.0, -12.5, -4.0, -8.0, -11.0, -3.5])
    state = trainer_state(ld_alpha=None, f_divergence_type="reverse_kl", loss_types=[trl_loss], loss_weights=[1.0],
                          label_smoothing=0.0, beta=beta, use_weighting=False)
    with torch.no_grad():
        expected = DPOTrainer._compute_loss(state, model, {
            "input_ids": ids, "attention_mask": attention, "completion_mask": completion,
            "ref_chosen_logps": ref[:B], "ref_rejected_logps": ref[B:]}, False)
    logps, tokens = logps_of(model, ids, attention, completion)
    losses, chosen_rewards, rejected_rewards = pair_loss(loss, beta, logps[:B], logps[B:], tokens[:B], tokens[B:],
                                                         ref[:B], ref[B:])
    metrics = state._metrics["train"]
    assert losses.mean().item() == pytest.approx(expected.item(), rel=1e-5)
    assert chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"][0], rel=1e-5)
    assert rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"][0], rel=1e-5)
    assert (chosen_rewards > rejected_rewards).float().mean().item() == metrics["rewards/accuracies"][0]


def test_completion_logps_equal_trl_batch_logps(model):
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    ids, attention, completion = batch(4, seed=2)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits
    logps, tokens = completion_logps(logits, ids, completion)
    labels = ids.masked_fill(completion == 0, -100)
    assert torch.allclose(logps, ORPOTrainer.get_batch_logps(logits, labels), atol=1e-5)
    assert torch.allclose(logps / tokens, ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True), atol=1e-6)


def test_orpo_equals_trl_odds_ratio_loss(model):
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    ids, attention, completion = batch(2 * B, seed=3)
    logps, tokens = logps_of(model, ids, attention, completion)
    avg = logps / tokens
    nll = torch.tensor([2.0, 3.0, 2.5])
    state = SimpleNamespace(beta=0.25, accelerator=Accelerator())
    trl_losses, trl_chosen, trl_rejected, _, _ = ORPOTrainer.odds_ratio_loss(state, avg[:B], avg[B:])
    losses, chosen_rewards, rejected_rewards = pair_loss("orpo", 0.25, logps[:B], logps[B:], tokens[:B], tokens[B:],
                                                         chosen_nll=nll)
    assert losses.mean().item() == pytest.approx((nll.mean() - trl_losses.mean()).item(), rel=1e-6)
    assert torch.allclose(chosen_rewards, trl_chosen) and torch.allclose(rejected_rewards, trl_rejected)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_simpo_equals_trl_cpo_loss(model, label_smoothing):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    ids, attention, completion = batch(2 * B, seed=4)
    logps, tokens = logps_of(model, ids, attention, completion)
    avg = logps / tokens
    state = SimpleNamespace(alpha=0.0, loss_type="simpo", beta=2.0, simpo_gamma=0.7, label_smoothing=label_smoothing,
                            accelerator=Accelerator())
    trl_losses, trl_chosen, trl_rejected = CPOTrainer.cpo_loss(state, avg[:B], avg[B:])
    losses, chosen_rewards, rejected_rewards = pair_loss("simpo", 2.0, logps[:B], logps[B:], tokens[:B], tokens[B:],
                                                         label_smoothing=label_smoothing, simpo_gamma=0.7)
    assert torch.allclose(losses, trl_losses, atol=1e-6)
    assert torch.allclose(chosen_rewards, trl_chosen) and torch.allclose(rejected_rewards, trl_rejected)


@pytest.mark.parametrize("kl_shift", [3.0, -3.0])  # the KL estimate positive, and clamped to 0
def test_kto_equals_trl_kto_trainer(model, kl_shift):
    from trl.trainer.kto_trainer import KTOTrainer

    ids, attention, completion = batch(4, seed=5)
    kl_ids, kl_attention, kl_completion = batch(4, seed=6)
    desirable = torch.tensor([True, False, False, True])
    policy, _ = logps_of(model, ids, attention, completion)
    policy_kl, _ = logps_of(model, kl_ids, kl_attention, kl_completion)
    ref = policy + torch.tensor([-1.0, 2.0, 0.5, 1.5])
    ref_kl = policy_kl - kl_shift + torch.tensor([0.5, -0.5, 0.2, -0.2])
    state = trainer_state(calculate_KL=True, loss_type="kto", beta=0.4, desirable_weight=1.5, undesirable_weight=0.7)
    state._compute_kl_logps = lambda m, b: KTOTrainer._compute_kl_logps(state, m, b)
    with torch.no_grad():
        expected = KTOTrainer._compute_loss(state, model, {
            "input_ids": ids, "attention_mask": attention, "completion_mask": completion, "label": desirable,
            "KL_input_ids": kl_ids, "KL_attention_mask": kl_attention, "KL_completion_mask": kl_completion,
            "ref_logps": ref, "ref_KL_logps": ref_kl}, False)
    kl = kl_estimate(policy_kl, ref_kl)
    losses, rewards = kto_loss(0.4, policy, ref, desirable, kl, desirable_weight=1.5, undesirable_weight=0.7)
    assert kl.item() == pytest.approx(state._metrics["train"]["kl"][0], abs=1e-5)
    assert (kl.item() > 1) == (kl_shift > 0)
    assert losses.mean().item() == pytest.approx(expected.item(), rel=1e-5)
    assert rewards[desirable].mean().item() == pytest.approx(state._metrics["train"]["rewards/chosen"][0], rel=1e-5)


# ------------------------------------------------------------------ hand computations
def t(*values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_dpo_by_hand(smoothing):
    # log-ratios +1 (chosen) and -1 (rejected): beta x margin = 0.1 x 2 = 0.2
    losses, chosen, rejected = pair_loss("dpo", 0.1, t(-1.0), t(-3.0), t(1.0), t(1.0), t(-2.0), t(-2.0),
                                         label_smoothing=smoothing)
    assert losses.item() == pytest.approx(-(1 - smoothing) * logsig(0.2) - smoothing * logsig(-0.2), rel=1e-12)
    assert (chosen.item(), rejected.item()) == pytest.approx((0.1, -0.1))


def test_ipo_by_hand():
    # per-token log-ratios: chosen (-2 - -4) / 2 = 1, rejected (-3 - -1.5) / 3 = -0.5; 1/(2 beta) = 1
    losses, chosen, rejected = pair_loss("ipo", 0.5, t(-2.0), t(-3.0), t(2.0), t(3.0), t(-4.0), t(-1.5))
    assert losses.item() == pytest.approx((1.5 - 1.0) ** 2, rel=1e-12)
    assert (chosen.item(), rejected.item()) == pytest.approx((1.0, -0.75))  # beta x summed log-ratio


def test_orpo_by_hand():
    # per-token p: chosen 0.5 (odds 1), rejected 0.25 (odds 1/3): log odds ratio log 3
    half, quarter = math.log(0.5), math.log(0.25)
    losses, chosen, rejected = pair_loss("orpo", 0.1, t(2 * half), t(quarter), t(2.0), t(1.0), chosen_nll=t(2.0))
    assert losses.item() == pytest.approx(2.0 - 0.1 * logsig(math.log(3)), rel=1e-12)
    assert logsig(math.log(3)) == pytest.approx(math.log(0.75))
    assert (chosen.item(), rejected.item()) == pytest.approx((0.1 * half, 0.1 * quarter))


def test_simpo_by_hand():
    # per-token log-probs -1 and -2: beta (1) - gamma = 2 - 0.5 = 1.5
    losses, chosen, rejected = pair_loss("simpo", 2.0, t(-3.0), t(-4.0), t(3.0), t(2.0), simpo_gamma=0.5)
    assert losses.item() == pytest.approx(-logsig(1.5), rel=1e-12)
    assert (chosen.item(), rejected.item()) == pytest.approx((-2.0, -4.0))


def test_kto_by_hand():
    kl = kl_estimate(t(-3.0, -5.0), t(-4.0, -5.0))  # mean log-ratio (1 + 0) / 2
    assert kl.item() == 0.5
    assert kl_estimate(t(-5.0), t(-4.0)).item() == 0.0  # clamped at 0
    losses, rewards = kto_loss(0.1, t(-1.0, -4.0), t(-3.5, -2.5), torch.tensor([True, False]), kl,
                               desirable_weight=2.0, undesirable_weight=0.5)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # desirable: log-ratio 2.5, 2 (1 - sig(0.1 (2.5 - 0.5))); undesirable: -1.5, 0.5 (1 - sig(0.1 (0.5 + 1.5)))
    assert losses.tolist() == pytest.approx([2.0 * (1 - sig(0.2)), 0.5 * (1 - sig(0.2))], rel=1e-12)
    assert rewards.tolist() == pytest.approx([0.25, -0.15])


def test_default_betas_and_refusals():
    assert DEFAULT_BETA == {"dpo": 0.1, "ipo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}
    with pytest.raises(ValueError, match="chosen_nll"):
        pair_loss("orpo", 0.1, t(-1.0), t(-2.0), t(1.0), t(1.0))
    with pytest.raises(ValueError, match="reference"):
        pair_loss("dpo", 0.1, t(-1.0), t(-2.0), t(1.0), t(1.0))
    with pytest.raises(ValueError, match="label smoothing"):
        pair_loss("ipo", 0.1, t(-1.0), t(-2.0), t(1.0), t(1.0), t(-1.0), t(-1.0), label_smoothing=0.1)


# ------------------------------------------------------------------ completion_logps and token_kl
def test_completion_logps_equal_a_hand_loop():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 5, 11, generator=g)
    ids = torch.tensor([[1, 2, 3, 4, 0], [5, 6, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    logps, tokens = completion_logps(logits, ids, mask)
    for row in range(2):
        expected = sum(torch.log_softmax(logits[row, pos - 1], -1)[ids[row, pos]].item()
                       for pos in range(1, 5) if mask[row, pos])
        assert logps[row].item() == pytest.approx(expected, rel=1e-6)
    assert tokens.tolist() == [2.0, 4.0]


def test_token_kl_zero_for_identical_logits_and_kl_div_otherwise():
    g = torch.Generator().manual_seed(8)
    policy, ref = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    ids = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    assert token_kl(policy, policy.clone(), ids, mask).abs().max().item() < 1e-6
    kl = token_kl(policy, ref, ids, mask)
    for row in range(2):
        expected = sum(F.kl_div(torch.log_softmax(ref[row, pos - 1], -1), torch.log_softmax(policy[row, pos - 1], -1),
                                reduction="sum", log_target=True).item() for pos in range(1, 5) if mask[row, pos])
        assert kl[row].item() == pytest.approx(expected, rel=1e-5)
    # KL(p || q) by its definition at one position, against kl_div's argument order
    p, q = torch.softmax(policy[0, 1], -1), torch.softmax(ref[0, 1], -1)
    assert (p * (p / q).log()).sum().item() == pytest.approx(
        token_kl(policy[:1, :3], ref[:1, :3], ids[:1, :3], torch.tensor([[0, 0, 1]])).item(), rel=1e-5)
