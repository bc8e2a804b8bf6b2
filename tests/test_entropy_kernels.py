"""Token entropy kernels: hand-computed cases, a direct float64 computation, peers (torch.distributions,
scipy), numerical edge cases, the temperature sweep (exact and approximate with its error bound) and
hypothesis properties."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.kernels.entropy import (
    entropy_sweep, log_probs, surprisal, sweep_error_bound, token_entropy, token_rank, token_statistics,
    top_alternatives, varentropy,
)

INF = math.inf


def direct_float64(logits: torch.Tensor, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Entropy and varentropy straight from the definitions, in float64 with explicit sums."""
    z = logits.double() / temperature
    p = torch.exp(z - z.max(-1, keepdim=True).values)
    p = p / p.sum(-1, keepdim=True)
    log_p = torch.where(p > 0, p.log(), torch.zeros_like(p))
    entropy = -(p * log_p).sum(-1)
    return {"entropy": entropy, "varentropy": (p * (log_p + entropy[..., None]) ** 2).sum(-1), "p": p}


def random_logits(seed: int, shape=(4, 7, 100), scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ------------------------------------------------------------------ hand-computed cases
def test_uniform_one_hot_and_two_tokens():
    assert token_entropy(torch.zeros(10)).item() == pytest.approx(math.log(10), abs=1e-6)
    one_hot = torch.tensor([0.0, -INF, -INF, -INF])
    assert token_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-12)
    assert varentropy(one_hot).item() == pytest.approx(0.0, abs=1e-12)
    two = torch.log(torch.tensor([0.25, 0.75]))
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert token_entropy(two).item() == pytest.approx(h, abs=1e-6)
    assert varentropy(two).item() == pytest.approx(0.25 * 0.75 * math.log(3) ** 2, abs=1e-6)
    assert surprisal(two, torch.tensor(0)).item() == pytest.approx(math.log(4), abs=1e-6)
    assert surprisal(two, torch.tensor(1)).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    # temperature 2 on log(1/4, 3/4): p proportional to (1, sqrt 3)
    q = 1 / (1 + math.sqrt(3))
    assert token_entropy(two, 2.0).item() == pytest.approx(-(q * math.log(q) + (1 - q) * math.log(1 - q)), abs=1e-6)


def test_rank_counts_strictly_larger_logits_and_ignores_temperature():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 2.0]])
    ranks = [token_rank(logits, torch.tensor([v])).item() for v in range(5)]
    assert ranks == [4, 1, 1, 5, 3]
    stats = token_statistics(logits, torch.tensor([4]), temperature=0.01)
    assert stats["rank"].item() == 3


def test_log_probs_and_top_alternatives():
    logits = random_logits(0, shape=(3, 50))
    torch.testing.assert_close(log_probs(logits, 0.7), torch.log_softmax(logits / 0.7, -1))
    probs, ids = top_alternatives(logits, k=5, temperature=0.7)
    expected_probs, expected_ids = torch.softmax(logits / 0.7, -1).topk(5, -1)
    torch.testing.assert_close(probs, expected_probs)
    assert torch.equal(ids, expected_ids)
    probs, ids = top_alternatives(logits[:, :3], k=10)
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(-1), torch.ones(3))


# ------------------------------------------------------------------ float64 reference and peers
@pytest.mark.parametrize("temperature", [0.1, 0.7, 1.0, 3.0])
def test_matches_direct_float64_and_peers(temperature):
    logits = random_logits(1)
    reference = direct_float64(logits, temperature)
    torch.testing.assert_close(token_entropy(logits.double(), temperature), reference["entropy"])
    torch.testing.assert_close(varentropy(logits.double(), temperature), reference["varentropy"])
    torch.testing.assert_close(token_entropy(logits, temperature), reference["entropy"].float(),
                               atol=2e-5, rtol=1e-5)
    categorical = torch.distributions.Categorical(logits=logits.double() / temperature).entropy()
    torch.testing.assert_close(token_entropy(logits.double(), temperature), categorical)
    scipy_entropy = torch.from_numpy(scipy.stats.entropy(reference["p"].numpy(), axis=-1))
    torch.testing.assert_close(token_entropy(logits.double(), temperature), scipy_entropy)


def test_token_statistics_equals_the_single_measures():
    logits = random_logits(2)
    ids = torch.randint(0, 100, logits.shape[:-1], generator=torch.Generator().manual_seed(0))
    stats = token_statistics(logits, ids, temperature=0.8)
    assert set(stats) == {"entropy", "surprisal", "varentropy", "rank"}
    torch.testing.assert_close(stats["entropy"], token_entropy(logits, 0.8))
    torch.testing.assert_close(stats["surprisal"], surprisal(logits, ids, 0.8))
    torch.testing.assert_close(stats["varentropy"], varentropy(logits, 0.8))
    assert torch.equal(stats["rank"], token_rank(logits, ids))
    expected = -torch.log_softmax(logits.double() / 0.8, -1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(stats["surprisal"].double(), expected, atol=1e-5, rtol=1e-5)
    assert stats["rank"].dtype == torch.long and stats["entropy"].shape == (4, 7)


# ------------------------------------------------------------------ numerics, dtypes, errors
def test_huge_logits_and_extreme_temperatures_stay_finite():
    logits = torch.tensor([[1e30, -1e30, 0.0, 5e29], [3e38, -3e38, -INF, 1.0]])
    for t in (1e-30, 1e-3, 1.0, 1e6, 1e300):
        for measure in (token_entropy(logits, t), varentropy(logits, t), entropy_sweep(logits, [t])):
            assert torch.isfinite(measure).all(), (t, measure)
    assert token_entropy(logits, 1e-30).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    flat = torch.tensor([1.0, 2.0, 3.0, -INF])
    assert token_entropy(flat, 1e300).item() == pytest.approx(math.log(3), abs=1e-5)
    assert token_entropy(flat.double(), 1e-300).item() == pytest.approx(0.0, abs=1e-12)


def test_dtype_and_device_rules():
    logits = random_logits(3, shape=(2, 20))
    assert token_entropy(logits.double()).dtype == torch.float64
    assert token_entropy(logits.half()).dtype == torch.float32
    assert entropy_sweep(logits.bfloat16(), [1.0]).dtype == torch.float32
    assert entropy_sweep(logits.double(), [1.0, 2.0], mode="approx").dtype == torch.float64
    assert token_entropy(logits).device == logits.device


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_temperatures_raise(bad):
    logits = random_logits(4, shape=(2, 10))
    for call in (lambda: token_entropy(logits, bad), lambda: surprisal(logits, torch.tensor([0, 1]), bad),
                 lambda: entropy_sweep(logits, [1.0, bad]), lambda: top_alternatives(logits, 3, bad)):
        with pytest.raises(ValueError, match="temperature"):
            call()
    with pytest.raises(ValueError, match="temperatures"):
        entropy_sweep(logits, [])


def test_bad_token_ids_and_modes_raise():
    logits = random_logits(5, shape=(2, 10))
    with pytest.raises(ValueError, match="shape"):
        surprisal(logits, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="token ids"):
        token_rank(logits, torch.tensor([1, 10]))
    with pytest.raises(ValueError, match="mode"):
        entropy_sweep(logits, [1.0], mode="fast")
    with pytest.raises(ValueError, match="logits"):
        token_entropy(torch.empty(3, 0))


# ------------------------------------------------------------------ temperature sweep
def test_exact_sweep_equals_per_temperature_entropy():
    logits = random_logits(6)
    logits[0, 0, :50] = -INF
    temperatures = [0.05, 0.3, 1.0, 2.0, 10.0]
    sweep = entropy_sweep(logits, temperatures)
    assert sweep.shape == (5, 4, 7)
    for i, t in enumerate(temperatures):
        torch.testing.assert_close(sweep[i], direct_float64(logits, t)["entropy"].float(), atol=3e-5, rtol=1e-5)


def llm_like_logits(rows: int, vocab: int, seed: int) -> torch.Tensor:
    """Heavy lower tail, a few strong candidates, some peaked and some flat rows, removed tokens."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * 2.5 - 5
    logits -= torch.rand(rows, vocab, generator=g) ** 4 * 25                  # a long lower tail
    candidates = torch.randint(0, vocab, (rows, 8), generator=g)
    logits.scatter_(1, candidates, torch.rand(rows, 8, generator=g) * 15 + 5)
    logits[::3] *= 0.3                                                       # flat rows
    logits[1, ::7] = -INF
    return logits


@pytest.mark.parametrize("temperatures", [[0.05, 0.2, 0.5, 1.0, 1.5, 3.0], [0.7], [10.0, 100.0]])
def test_approx_sweep_error_is_within_its_bound(temperatures):
    logits = llm_like_logits(12, 3000, seed=7)
    exact = torch.stack([direct_float64(logits, t)["entropy"] for t in temperatures])
    approx = entropy_sweep(logits, temperatures, mode="approx", bins=256, top_m=16)
    bound = sweep_error_bound(logits, temperatures, bins=256, top_m=16)
    error = (approx.double() - exact).abs()
    assert (error <= bound.double() + 2e-5).all(), (error - bound).max()
    assert bound.max() > 0 and error.max() > 1e-6   # the approximation really approximates here


def test_approx_bound_shrinks_with_more_bins():
    logits = llm_like_logits(6, 3000, seed=8)
    coarse = sweep_error_bound(logits, [0.3, 1.0], bins=64, top_m=8)
    fine = sweep_error_bound(logits, [0.3, 1.0], bins=1024, top_m=8)
    assert (fine <= coarse).all() and fine.max() < coarse.max() / 20


def test_approx_at_realistic_size_meets_the_target_error():
    logits = llm_like_logits(4, 49_152, seed=9)
    temperatures = torch.linspace(0.2, 3.0, 16)
    exact = torch.stack([direct_float64(logits, t)["entropy"] for t in temperatures.tolist()])
    approx = entropy_sweep(logits, temperatures, mode="approx")
    bound = sweep_error_bound(logits, temperatures)
    assert (approx.double() - exact).abs().max() <= 1e-3
    assert bound.max() <= 1e-3
    assert (entropy_sweep(logits, temperatures).double() - exact).abs().max() <= 1e-4


def test_small_vocabulary_approx_falls_back_to_exact():
    logits = random_logits(10, shape=(3, 100))
    torch.testing.assert_close(entropy_sweep(logits, [0.5, 2.0], mode="approx"), entropy_sweep(logits, [0.5, 2.0]))
    assert sweep_error_bound(logits, [0.5]).abs().max() == 0


# ------------------------------------------------------------------ properties
rows = st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=1, max_size=60)
temperatures = st.floats(0.01, 50.0)


@settings(max_examples=80, deadline=None)
@given(row=rows, t=temperatures)
def test_entropy_lies_between_zero_and_log_vocabulary(row, t):
    logits = torch.tensor(row)
    h = token_entropy(logits, t).item()
    assert -1e-7 <= h <= math.log(len(row)) + 1e-5
    assert varentropy(logits, t).item() >= 0


@settings(max_examples=60, deadline=None)
@given(row=rows, ts=st.lists(temperatures, min_size=2, max_size=6, unique=True))
def test_entropy_is_non_decreasing_in_temperature(row, ts):
    ts = sorted(ts)
    sweep = entropy_sweep(torch.tensor(row, dtype=torch.float64), ts)
    assert (sweep.diff() >= -1e-9).all()
    torch.testing.assert_close(sweep, torch.stack([token_entropy(torch.tensor(row).double(), t) for t in ts]))


@settings(max_examples=60, deadline=None)
@given(row=rows, t=temperatures, seed=st.integers(0, 1000))
def test_permutation_invariance(row, t, seed):
    logits = torch.tensor(row)
    order = torch.randperm(len(row), generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(token_entropy(logits[order], t), token_entropy(logits, t), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(varentropy(logits[order], t), varentropy(logits, t), atol=1e-4, rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(row=rows, removed=st.lists(st.booleans(), min_size=60, max_size=60), t=temperatures)
def test_minus_infinity_equals_removing_the_token(row, removed, t):
    logits = torch.tensor(row, dtype=torch.float64)
    mask = torch.tensor(removed[:len(row)])
    if mask.all():
        mask[0] = False
    masked = logits.masked_fill(mask, -INF)
    survivors = logits[~mask]
    assert token_entropy(masked, t).item() == pytest.approx(token_entropy(survivors, t).item(), abs=1e-9)
    assert entropy_sweep(masked, [t]).item() == pytest.approx(token_entropy(survivors, t).item(), abs=1e-9)
    assert varentropy(masked, t).item() == pytest.approx(varentropy(survivors, t).item(), abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=3), vocab=st.integers(1, 30))
def test_any_leading_batch_shape(shape, vocab):
    logits = torch.randn(*shape, vocab)
    ids = torch.zeros(shape, dtype=torch.long)
    stats = token_statistics(logits, ids)
    assert all(value.shape == tuple(shape) for value in stats.values())
    assert entropy_sweep(logits, [0.5, 1.0]).shape == (2, *shape)
    flat = token_entropy(logits.reshape(-1, vocab)).reshape(shape)
    torch.testing.assert_close(stats["entropy"], flat)
