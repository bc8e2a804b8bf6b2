"""Attention entropy: hand-computed rows, a direct float64 computation, normalisation and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.kernels.attention import attention_entropy


def causal_attention(seed: int, shape=(2, 3, 6), scale: float = 2.0) -> torch.Tensor:
    """Random causal attention [..., heads, q, q] whose rows sum to one with exact zeros above the diagonal."""
    q = shape[-1]
    scores = torch.randn(*shape, q, generator=torch.Generator().manual_seed(seed)) * scale
    mask = torch.ones(q, q, dtype=torch.bool).triu(1)
    return scores.masked_fill(mask, -math.inf).softmax(-1)


def test_uniform_causal_rows():
    q = 5
    attention = torch.tril(torch.ones(q, q)) / torch.arange(1, q + 1)[:, None]
    entropy = attention_entropy(attention[None])
    torch.testing.assert_close(entropy[0], torch.log(torch.arange(1.0, q + 1)))
    normalised = attention_entropy(attention[None], normalise=True)
    torch.testing.assert_close(normalised[0], torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0]))


def test_one_hot_and_two_key_rows():
    one_hot = torch.eye(4)[None]                        # every query attends to itself only
    assert attention_entropy(one_hot).abs().max() == 0
    two = torch.tensor([[[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.5, 0.5, 0.0]]])
    expected = [0.0, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2)]
    assert attention_entropy(two)[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert attention_entropy(two, normalise=True)[0].tolist() == pytest.approx(
        [0.0, expected[1] / math.log(2), math.log(2) / math.log(3)], abs=1e-6)


def test_matches_direct_float64():
    attention = causal_attention(0, shape=(2, 4, 3, 7)).double()
    direct = torch.zeros(attention.shape[:-1], dtype=torch.float64)
    for index in torch.cartesian_prod(*(torch.arange(n) for n in attention.shape[:-1])):
        row = attention[tuple(index)].tolist()
        direct[tuple(index)] = -sum(a * math.log(a) for a in row if a > 0)
    result = attention_entropy(attention)
    assert result.dtype == torch.float64 and result.shape == (2, 4, 3, 7)
    torch.testing.assert_close(result, direct)


def test_kv_cache_offset_for_normalisation():
    # 2 new queries over 4 keys: they see 3 and 4 keys
    attention = torch.tensor([[[1 / 3, 1 / 3, 1 / 3, 0.0], [0.25, 0.25, 0.25, 0.25]]])
    assert attention_entropy(attention, normalise=True)[0].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


def test_bad_shape_raises():
    with pytest.raises(ValueError, match="attentions"):
        attention_entropy(torch.ones(4))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), q=st.integers(1, 12), heads=st.integers(1, 4), scale=st.floats(0.0, 20.0))
def test_entropy_bounds_and_permutation_invariance(seed, q, heads, scale):
    attention = causal_attention(seed, shape=(heads, q), scale=scale)
    entropy = attention_entropy(attention)
    upper = torch.log(torch.arange(1.0, q + 1))
    assert (entropy >= 0).all() and (entropy <= upper + 1e-5).all()
    normalised = attention_entropy(attention, normalise=True)
    assert (normalised >= 0).all() and (normalised <= 1 + 1e-5).all() and (normalised[:, 0] == 0).all()
    order = torch.randperm(q, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(attention_entropy(attention[..., order]), entropy, atol=1e-5, rtol=1e-5)
