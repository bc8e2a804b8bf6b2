"""Blockwise causal attention with row entropies: against a direct float64 computation, transformers'
eager attention (the peer), hand cases, masks, grouped heads, softcap and any block size."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.kernels.attention_rows import attention_with_entropy, block_rows


def qkv(seed: int, batch=1, heads=4, kv_heads=2, n_q=7, n_k=7, dim=8, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, n_q, dim, generator=g, dtype=dtype) * scale,
            torch.randn(batch, kv_heads, n_k, dim, generator=g, dtype=dtype) * scale,
            torch.randn(batch, kv_heads, n_k, dim, generator=g, dtype=dtype))


def direct(query, key, value, allowed=None, scaling=None, softcap=None):
    """Row by row in float64 with Python sums: output and entropy of each causal attention row."""
    batch, heads, n_q, dim = query.shape
    n_k, groups = key.shape[2], heads // key.shape[1]
    scaling = dim ** -0.5 if scaling is None else scaling
    output = torch.zeros(batch, heads, n_q, dim, dtype=torch.float64)
    entropy = torch.zeros(batch, heads, n_q, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(n_q):
                keys = [j for j in range(n_k) if j <= i + n_k - n_q and (allowed is None or allowed[b, 0, i, j])]
                scores = []
                for j in keys:
                    s = float(query[b, h, i].double() @ key[b, h // groups, j].double()) * scaling
                    scores.append(softcap * math.tanh(s / softcap) if softcap else s)
                if not keys:
                    continue
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                probs = [w / total for w in weights]
                entropy[b, h, i] = -sum(p * math.log(p) for p in probs if p > 0)
                for p, j in zip(probs, keys):
                    output[b, h, i] += p * value[b, h // groups, j].double()
    return output, entropy


def test_hand_case_uniform_attention():
    # zero queries: every visible key scores the same, so row i is uniform over i + 1 keys
    query = torch.zeros(1, 1, 4, 2)
    key = torch.randn(1, 1, 4, 2)
    value = torch.arange(8.0).reshape(1, 1, 4, 2)
    output, entropy = attention_with_entropy(query, key, value)
    torch.testing.assert_close(entropy[0, 0], torch.log(torch.arange(1.0, 5.0)))
    torch.testing.assert_close(output[0, 0], torch.cumsum(value[0, 0], 0) / torch.arange(1.0, 5.0)[:, None])
    _, normalised = attention_with_entropy(query, key, value, normalise=True)
    torch.testing.assert_close(normalised[0, 0], torch.tensor([0.0, 1.0, 1.0, 1.0]))


def test_matches_direct_float64_with_grouped_heads_and_a_kv_offset():
    query, key, value = qkv(1, batch=2, heads=4, kv_heads=2, n_q=5, n_k=9, scale=2.0)
    output, entropy = attention_with_entropy(query, key, value, block_bytes=1)  # one row per block
    expected_output, expected_entropy = direct(query, key, value)
    torch.testing.assert_close(output, expected_output)
    torch.testing.assert_close(entropy.double(), expected_entropy, atol=1e-6, rtol=1e-6)


def test_boolean_and_additive_masks_and_softcap():
    query, key, value = qkv(2, batch=2, n_q=6, n_k=6, scale=3.0)
    allowed = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    allowed[0, :, :, :2] = False           # left padding of two tokens in the first row
    allowed[0, :, :2, 0] = True            # ... whose own queries still see one key (no empty row)
    allowed[1, :, 4:, :2] = False          # a sliding window
    out_bool, ent_bool = attention_with_entropy(query, key, value, allowed, softcap=5.0)
    expected = direct(query, key, value, allowed, softcap=5.0)
    torch.testing.assert_close(out_bool, expected[0])
    torch.testing.assert_close(ent_bool.double(), expected[1], atol=1e-6, rtol=1e-6)
    additive = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)
    out_add, ent_add = attention_with_entropy(query, key, value, additive, softcap=5.0)
    torch.testing.assert_close(out_add, out_bool)
    torch.testing.assert_close(ent_add, ent_bool)


def test_a_row_that_sees_no_key_attends_to_nothing():
    query, key, value = qkv(3, n_q=4, n_k=4)
    allowed = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    allowed[..., 0, :] = False
    output, entropy = attention_with_entropy(query, key, value, allowed)
    assert bool(torch.isfinite(output).all()) and float(output[0, :, 0].abs().max()) == 0
    assert float(entropy[0, :, 0].abs().max()) == 0


def test_matches_transformers_eager_attention():
    from transformers.models.llama.modeling_llama import eager_attention_forward

    class Module(torch.nn.Module):
        num_key_value_groups = 3

    query, key, value = qkv(4, heads=6, kv_heads=2, n_q=11, n_k=11, dtype=torch.float32, scale=2.0)
    causal = torch.full((11, 11), torch.finfo(torch.float32).min).triu(1)[None, None]
    expected_output, weights = eager_attention_forward(Module().eval(), query, key, value, causal, scaling=0.3)
    output, entropy = attention_with_entropy(query, key, value, scaling=0.3, block_bytes=4 * 6 * 11 * 4 * 3)
    torch.testing.assert_close(output.transpose(1, 2), expected_output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, -torch.xlogy(weights, weights).sum(-1), atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n_q=st.integers(1, 9), extra=st.integers(0, 4), groups=st.integers(1, 3),
       rows=st.integers(1, 10), scale=st.floats(0.0, 8.0), normalise=st.booleans())
def test_any_block_size_gives_the_same_result(seed, n_q, extra, groups, rows, scale, normalise):
    query, key, value = qkv(seed, heads=2 * groups, kv_heads=2, n_q=n_q, n_k=n_q + extra, dtype=torch.float32,
                            scale=scale)
    whole = attention_with_entropy(query, key, value, normalise=normalise, block_bytes=1 << 30)
    blocks = attention_with_entropy(query, key, value, normalise=normalise,
                                    block_bytes=rows * 3 * 4 * 2 * groups * (n_q + extra))
    assert block_rows(1, 2 * groups, n_q + extra, rows * 3 * 4 * 2 * groups * (n_q + extra)) == rows
    torch.testing.assert_close(blocks[0], whole[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(blocks[1], whole[1], atol=1e-5, rtol=1e-5)
    upper = torch.log(torch.arange(1.0, n_q + 1) + extra)
    if normalise:
        assert bool(((whole[1] >= 0) & (whole[1] <= 1 + 1e-5)).all())
    else:
        assert bool(((whole[1] >= 0) & (whole[1] <= upper + 1e-5)).all())


def test_bad_shapes_raise():
    query, key, value = qkv(5, heads=3, kv_heads=2)
    with pytest.raises(ValueError, match="heads"):
        attention_with_entropy(query, key, value)
    with pytest.raises(ValueError, match="expected"):
        attention_with_entropy(query[0], key, value)
