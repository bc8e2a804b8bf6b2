"""token_statistics_sweep: entropy, surprisal and varentropy at a grid of temperatures from one pass,
against token_statistics at each temperature, a float64 computation from the definitions, and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.kernels.entropy import entropy_sweep, token_statistics, token_statistics_sweep

INF = math.inf
NAMES = ("entropy", "surprisal", "varentropy")


def llm_like_logits(rows: int, vocab: int, seed: int) -> torch.Tensor:
    """A long lower tail, a few strong candidates, flat rows, removed tokens."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * 2.5 - 5
    logits -= torch.rand(rows, vocab, generator=g) ** 4 * 25
    logits.scatter_(1, torch.randint(0, vocab, (rows, 8), generator=g), torch.rand(rows, 8, generator=g) * 15 + 5)
    logits[::3] *= 0.3
    logits[1, ::7] = -INF
    return logits


def per_temperature(logits, ids, temperatures) -> dict[str, torch.Tensor]:
    stats = [token_statistics(logits, ids, t, with_rank=False) for t in temperatures]
    return {name: torch.stack([s[name] for s in stats]) for name in NAMES}


def definitions_float64(logits, ids, temperatures) -> dict[str, torch.Tensor]:
    out = {name: [] for name in NAMES}
    for t in temperatures:
        log_p = torch.log_softmax(logits.double() / t, -1)
        p = log_p.exp()
        plogp = torch.where(p > 0, p * log_p, 0.0)
        entropy = -plogp.sum(-1)
        out["entropy"].append(entropy)
        out["surprisal"].append(-log_p.gather(-1, ids.unsqueeze(-1)).squeeze(-1))
        centred = torch.where(p > 0, log_p + entropy.unsqueeze(-1), 0.0)
        out["varentropy"].append((p * centred.square()).sum(-1))
    return {name: torch.stack(values) for name, values in out.items()}


TEMPERATURES = [0.05, 0.3, 0.7, 1.0, 1.6, 3.0, 10.0]


def test_equals_token_statistics_at_every_temperature_float64():
    logits = llm_like_logits(9, 2000, seed=1).double()
    ids = torch.randint(0, 2000, (9,), generator=torch.Generator().manual_seed(2))
    ids[1] = 0  # a removed token: surprisal +inf
    sweep = token_statistics_sweep(logits, ids, TEMPERATURES)
    expected = per_temperature(logits, ids, TEMPERATURES)
    for name in NAMES:
        assert sweep[name].shape == (len(TEMPERATURES), 9) and sweep[name].dtype == torch.float64
        torch.testing.assert_close(sweep[name], expected[name], rtol=1e-10, atol=1e-10)
    assert torch.isinf(sweep["surprisal"][:, 1]).all()


def test_float32_at_the_lens_size_is_within_float32_round_off_of_float64():
    logits = llm_like_logits(6, 49_152, seed=3)
    ids = torch.randint(0, 49_152, (6,), generator=torch.Generator().manual_seed(4))
    ids[1] = 3  # a token that survived in the row with removed tokens
    temperatures = torch.linspace(0.1, 3.0, 12)
    sweep = token_statistics_sweep(logits, ids, temperatures)
    truth = definitions_float64(logits, ids, temperatures.tolist())
    plain = per_temperature(logits, ids, temperatures.tolist())
    for name, tolerance in (("entropy", 1e-4), ("surprisal", 1e-4), ("varentropy", 1e-3)):
        error = (sweep[name].double() - truth[name]).abs() / truth[name].abs().clamp_min(1)
        plain_error = (plain[name].double() - truth[name]).abs() / truth[name].abs().clamp_min(1)
        assert error.max() <= tolerance, name
        assert error.max() <= 2 * plain_error.max() + 1e-5, name  # float32 round-off, as token_statistics


def test_leading_shape_and_agreement_with_entropy_sweep():
    logits = torch.randn(2, 3, 50, generator=torch.Generator().manual_seed(5)) * 4
    ids = torch.randint(0, 50, (2, 3), generator=torch.Generator().manual_seed(6))
    sweep = token_statistics_sweep(logits, ids, [0.5, 1.0])
    assert all(value.shape == (2, 2, 3) for value in sweep.values())
    torch.testing.assert_close(sweep["entropy"], entropy_sweep(logits, [0.5, 1.0]))


def test_bad_inputs_raise():
    logits = torch.randn(2, 10)
    with pytest.raises(ValueError, match="temperatures"):
        token_statistics_sweep(logits, torch.tensor([0, 1]), [1.0, 0.0])
    with pytest.raises(ValueError, match="token_ids shape"):
        token_statistics_sweep(logits, torch.tensor([0]), [1.0])
    with pytest.raises(ValueError, match="token ids"):
        token_statistics_sweep(logits, torch.tensor([0, 10]), [1.0])


@settings(max_examples=40, deadline=None)
@given(row=st.lists(st.one_of(st.floats(-60, 60), st.just(-INF)), min_size=2, max_size=40),
       ts=st.lists(st.floats(0.02, 50.0), min_size=1, max_size=5), pick=st.integers(0, 39))
def test_property_equals_the_definitions(row, ts, pick):
    logits = torch.tensor([row], dtype=torch.float64)
    if not torch.isfinite(logits).any():
        logits[0, 0] = 0.0
    ids = torch.tensor([pick % len(row)])
    sweep = token_statistics_sweep(logits, ids, ts)
    truth = definitions_float64(logits, ids, ts)
    for name in NAMES:
        torch.testing.assert_close(sweep[name], truth[name], rtol=1e-8, atol=1e-8)
    assert (sweep["varentropy"] >= 0).all() and (sweep["entropy"] >= 0).all()
