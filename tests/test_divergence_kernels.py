"""Divergence and lens kernels: hand-computed cases, a direct float64 computation, peers (scipy, torch's
kl_div, pandas' rolling mean), -inf and tie edge cases, and hypothesis properties."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import scipy.special
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.kernels.divergence import (
    ENTROPIX_STATES, ENTROPIX_THRESHOLDS, QUADRANTS, _row_dot, adaptive_handover, cross_entropy,
    divergence_statistics, entropix_states, entropy_quadrants, kl_divergence, lens_statistics, rolling_mean,
    to_bits,
)

INF = math.inf


def random_logits(seed: int, shape, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def direct_float64(logits_p: torch.Tensor, logits_q: torch.Tensor, temperature: float = 1.0):
    """H(p), H(p, q) and KL(p || q) from the definitions with explicit float64 sums."""
    log_p = torch.log_softmax(logits_p.double() / temperature, -1)
    log_q = torch.log_softmax(logits_q.double() / temperature, -1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1)
    return entropy, -(p * log_q).sum(-1), (p * (log_p - log_q)).sum(-1)


# ------------------------------------------------------------------ KL and cross-entropy
def test_two_token_kl_and_cross_entropy_by_hand():
    p, q = torch.log(torch.tensor([0.25, 0.75])), torch.log(torch.tensor([0.5, 0.5]))
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kl_divergence(p, q).item() == pytest.approx(kl, abs=1e-7)
    assert cross_entropy(p, q).item() == pytest.approx(math.log(2), abs=1e-7)
    stats = divergence_statistics(p, q)
    assert stats["entropy_q"].item() == pytest.approx(math.log(2), abs=1e-7)
    assert stats["cross_entropy"].item() == pytest.approx(stats["entropy_p"].item() + kl, abs=1e-6)


def test_kl_is_exactly_zero_for_identical_logits_and_matches_float64():
    z = random_logits(0, (6, 500))
    assert torch.equal(kl_divergence(z, z), torch.zeros(6))
    w = random_logits(1, (6, 500))
    for t in (1.0, 0.5, 3.0):
        stats = divergence_statistics(z, w, t)
        entropy, ce, kl = direct_float64(z, w, t)
        torch.testing.assert_close(stats["entropy_p"].double(), entropy, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stats["cross_entropy"].double(), ce, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stats["kl"].double(), kl, atol=1e-5, rtol=1e-5)


def test_kl_agrees_with_scipy_and_torch_kl_div():
    z, w = random_logits(2, (4, 300)), random_logits(3, (4, 300))
    p, q = torch.softmax(z.double(), -1), torch.softmax(w.double(), -1)
    expected = torch.tensor(scipy.stats.entropy(p.numpy(), q.numpy(), axis=-1))
    torch.testing.assert_close(kl_divergence(z, w).double(), expected, atol=1e-5, rtol=1e-5)
    peer = torch.nn.functional.kl_div(torch.log_softmax(w, -1), torch.log_softmax(z, -1), log_target=True,
                                      reduction="none").sum(-1)
    torch.testing.assert_close(kl_divergence(z, w), peer, atol=1e-5, rtol=1e-5)
    expected_ce = torch.tensor(-(p.numpy() * scipy.special.log_softmax(w.double().numpy(), -1)).sum(-1))
    torch.testing.assert_close(cross_entropy(z, w).double(), expected_ce, atol=1e-5, rtol=1e-5)


def test_removed_tokens_give_zero_terms_or_infinite_kl():
    p = torch.tensor([0.0, 0.0, -INF])        # p keeps tokens 0 and 1
    q_keeps_p = torch.tensor([1.0, -INF, -INF])
    assert kl_divergence(p, q_keeps_p).item() == INF and cross_entropy(p, q_keeps_p).item() == INF
    # q keeps a token p removed: finite, and the p_v = 0 term is 0 (not NaN)
    q = torch.tensor([0.0, 0.0, 0.0])
    assert kl_divergence(p, q).item() == pytest.approx(math.log(1.5), abs=1e-6)
    assert kl_divergence(p, p).item() == 0.0
    assert not torch.isnan(divergence_statistics(p, q)["cross_entropy"]).any()


def test_huge_logits_and_tiny_temperature_stay_finite():
    z = torch.tensor([[1e30, 0.0, -1e30]])
    w = torch.tensor([[0.0, 1e30, 0.0]])
    stats = divergence_statistics(z, w, temperature=1e-30)   # p, q one-hot on tokens 0 and 1
    assert stats["entropy_p"].item() == 0.0 and stats["entropy_q"].item() == 0.0
    assert stats["kl"].item() == INF and stats["cross_entropy"].item() == INF
    assert kl_divergence(z, z + 1e29, temperature=1e-30).item() == 0.0


def test_shapes_must_match():
    with pytest.raises(ValueError):
        kl_divergence(torch.zeros(3, 5), torch.zeros(3, 6))


# ------------------------------------------------------------------ lens statistics
def direct_lens(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0):
    log_p = torch.log_softmax(logits.double() / temperature, -1)
    p = log_p.exp()
    ids = token_ids.expand(logits.shape[:-1]).unsqueeze(-1)
    return {"entropy": -(p * log_p).sum(-1), "kl_to_reference": (p * (log_p - log_p[-1])).sum(-1),
            "top_probs": p.max(-1).values, "surprisal": -log_p.gather(-1, ids).squeeze(-1)}


@pytest.mark.parametrize("vocab", [1000, 49152, 300])
@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.5])
def test_lens_statistics_match_float64(vocab, temperature):
    logits = random_logits(vocab, (5, 7, vocab), scale=4.0)
    ids = torch.randint(0, vocab, (7,), generator=torch.Generator().manual_seed(1))
    stats = lens_statistics(logits, token_ids=ids, temperature=temperature)
    expected = direct_lens(logits, ids, temperature)
    for key, value in expected.items():
        torch.testing.assert_close(stats[key].double(), value, atol=5e-5, rtol=1e-5, msg=key)
    assert torch.equal(stats["top_ids"], logits.argmax(-1))
    assert torch.equal(stats["kl_to_reference"][-1], torch.zeros(7))


def test_lens_statistics_reference_row_and_overwrite():
    logits = random_logits(5, (4, 3, 600))
    copy = logits.clone()
    first = lens_statistics(logits, reference=0, token_ids=torch.tensor([1, 2, 3]))
    assert torch.equal(logits, copy)                       # not overwritten by default
    assert torch.equal(first["kl_to_reference"][0], torch.zeros(3))
    log_p = torch.log_softmax(logits.double(), -1)
    expected = (log_p.exp() * (log_p - log_p[0])).sum(-1)
    torch.testing.assert_close(first["kl_to_reference"].double(), expected, atol=5e-5, rtol=1e-5)
    again = lens_statistics(copy, reference=0, token_ids=torch.tensor([1, 2, 3]), overwrite=True)
    for key in first:
        assert torch.equal(first[key], again[key])


def test_lens_statistics_hand_case_and_ties():
    # two layers over three tokens: uniform, and (2, 1, 1)/4 in log space
    logits = torch.stack([torch.zeros(1, 3), torch.log(torch.tensor([[2.0, 1.0, 1.0]]))])
    stats = lens_statistics(logits, token_ids=torch.tensor([1]))
    assert stats["entropy"][0, 0].item() == pytest.approx(math.log(3), abs=1e-6)
    h1 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert stats["entropy"][1, 0].item() == pytest.approx(h1, abs=1e-6)
    kl = sum(1 / 3 * math.log((1 / 3) / q) for q in (0.5, 0.25, 0.25))
    assert stats["kl_to_reference"][0, 0].item() == pytest.approx(kl, abs=1e-6)
    assert stats["top_ids"][0, 0].item() == 0                # a tie: the first token
    assert stats["top_probs"][0, 0].item() == pytest.approx(1 / 3, abs=1e-7)
    assert stats["surprisal"][:, 0].tolist() == pytest.approx([math.log(3), math.log(4)], abs=1e-6)


def test_row_dot_is_accurate_with_and_without_a_remainder():
    for v in (49152, 1000, 100):
        a = torch.rand(3, 4, v, generator=torch.Generator().manual_seed(v))
        b = random_logits(v, (3, 4, v)) - 20
        expected = (a.double() * b.double()).sum(-1)
        torch.testing.assert_close(_row_dot(a, b).double(), expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ quadrants and entropix states
def test_quadrants_by_hand_with_values_on_the_thresholds():
    entropy = torch.tensor([0.5, 4.0, 0.5, 4.0, 3.0, 3.0])
    varentropy = torch.tensor([1.0, 1.0, 9.0, 9.0, 5.0, 5.1])
    codes = entropy_quadrants(entropy, varentropy, 3.0, 5.0)
    assert codes.tolist() == [0, 1, 2, 3, 0, 2]            # equal to a threshold counts as low
    assert QUADRANTS[3] == "high entropy, high varentropy"
    with pytest.raises(ValueError):
        entropy_quadrants(entropy, varentropy[:2], 3.0, 5.0)


def test_entropix_states_follow_its_branch_order():
    h = torch.tensor([0.05, 6.0, 4.0, 6.0, 2.0, 0.05, 3.0])
    v = torch.tensor([0.05, 0.05, 6.0, 6.0, 2.0, 0.5, 5.0])
    states = entropix_states(h, v, **ENTROPIX_THRESHOLDS)
    # 4.0/6.0 meets both "exploring forks" (H < 5) and "mist" (H > 3): the earlier branch wins
    assert states.tolist() == [0, 1, 2, 3, 4, 4, 4]
    assert len(ENTROPIX_STATES) == 5


def test_to_bits():
    assert to_bits(torch.tensor(math.log(8))).item() == pytest.approx(3.0)


# ------------------------------------------------------------------ rolling mean and adaptive hand-over
def test_rolling_mean_by_hand_and_against_pandas():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert rolling_mean(values, 3).tolist() == pytest.approx([1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert torch.equal(rolling_mean(values, 1), values)
    assert rolling_mean(values, 20).tolist() == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0])
    noisy = random_logits(9, (2, 50))
    for row in range(2):
        expected = pd.Series(noisy[row].double().numpy()).rolling(5, min_periods=1).mean().to_numpy()
        torch.testing.assert_close(rolling_mean(noisy, 5)[row].double(), torch.tensor(expected), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        rolling_mean(values, 0)


def test_adaptive_handover_in_bits():
    entropy_nats = torch.tensor([1.0, 1.0, 1.0, 5.0, 5.0, 5.0]) * math.log(2)   # bits 1,1,1,5,5,5
    rolling, handed = adaptive_handover(entropy_nats, threshold_bits=2.0, window=2)
    assert rolling.tolist() == pytest.approx([1.0, 1.0, 1.0, 3.0, 5.0, 5.0])
    assert handed.tolist() == [False, False, False, True, True, True]
    _, at_threshold = adaptive_handover(entropy_nats, threshold_bits=3.0, window=2)
    assert at_threshold.tolist() == [False, False, False, False, True, True]   # strictly above


# ------------------------------------------------------------------ properties
finite_rows = st.lists(st.floats(-30, 30, allow_nan=False), min_size=2, max_size=40)


@settings(max_examples=60, deadline=None)
@given(finite_rows, st.integers(0, 10_000), st.sampled_from([0.3, 1.0, 4.0]))
def test_kl_properties(row, seed, temperature):
    z = torch.tensor(row)
    w = z + torch.randn(len(row), generator=torch.Generator().manual_seed(seed)) * 3
    stats = divergence_statistics(z, w, temperature)
    assert stats["kl"].item() >= 0 and kl_divergence(z, z, temperature).item() == 0.0
    assert stats["cross_entropy"].item() == pytest.approx(stats["entropy_p"].item() + stats["kl"].item(), abs=1e-4)
    # shifting every logit by a constant changes nothing
    shifted = divergence_statistics(z + 7.0, w - 3.0, temperature)
    assert shifted["kl"].item() == pytest.approx(stats["kl"].item(), abs=1e-4)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 6), st.integers(2, 300))
def test_lens_properties(seed, layers, vocab):
    logits = random_logits(seed, (layers, 3, vocab), scale=5.0)
    stats = lens_statistics(logits)
    assert bool((stats["entropy"] >= 0).all() and (stats["entropy"] <= math.log(vocab) + 1e-5).all())
    assert bool((stats["kl_to_reference"] >= 0).all())
    assert bool((stats["top_probs"] >= 1 / vocab - 1e-7).all() and (stats["top_probs"] <= 1).all())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 20, allow_nan=False), min_size=1, max_size=30), st.integers(1, 8))
def test_rolling_mean_properties(values, window):
    x = torch.tensor(values, dtype=torch.float64)
    out = rolling_mean(x, window)
    assert out[0].item() == pytest.approx(values[0])
    assert bool((out >= x.min() - 1e-9).all() and (out <= x.max() + 1e-9).all())
    assert rolling_mean(torch.full((len(values),), 2.5), window).tolist() == pytest.approx([2.5] * len(values))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 12))
def test_kl_is_infinite_exactly_where_q_removes_mass_of_p(seed, vocab):
    generator = torch.Generator().manual_seed(seed)
    z, w = torch.randn(vocab, generator=generator), torch.randn(vocab, generator=generator)
    keep_p, keep_q = torch.rand(vocab, generator=generator) > 0.4, torch.rand(vocab, generator=generator) > 0.4
    keep_p[0] = keep_q[1] = True
    z, w = z.masked_fill(~keep_p, -INF), w.masked_fill(~keep_q, -INF)
    stats = divergence_statistics(z, w)
    assert not any(torch.isnan(value).any() for value in stats.values())
    assert (stats["kl"].item() == INF) == bool((keep_p & ~keep_q).any())


def test_lens_statistics_on_bfloat16_input_leave_it_unchanged():
    logits = random_logits(11, (3, 2, 700)).bfloat16()
    copy = logits.clone()
    stats = lens_statistics(logits, overwrite=True)
    assert torch.equal(logits, copy)                      # the float32 copy was overwritten, not the input
    expected = direct_lens(logits.float(), torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(stats["entropy"].double(), expected["entropy"], atol=5e-5, rtol=1e-5)
