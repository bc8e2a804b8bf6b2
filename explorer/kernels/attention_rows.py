"""Causal attention a block of query rows at a time, keeping each row's entropy instead of the matrix.

For one layer with queries q [b, h, n_q, d] and keys/values k, v [b, h_kv, n_k, d] (grouped-query
attention: each key/value head serves h / h_kv query heads), as in transformers' eager attention:
    a_i = softmax_j(s_ij),  s_ij = q_i . k_j * scaling (optionally softcap * tanh(s_ij / softcap)),
          restricted to the keys the mask lets query i see (causal: j <= i + n_k - n_q)
    output_i = sum_j a_ij v_j
    H_i = -sum_j a_ij log a_ij            (formulas.md section 1; Entropy-Guided Attention for Private LLMs)
    normalised: H_i / log(i + 1 + n_k - n_q)  (:func:`explorer.kernels.attention.attention_entropy`)
Only one block of rows of the probabilities exists at a time (about ``block_bytes``), so a layer needs
h x block x n_k floats instead of h x n_q x n_k, and no layer's matrix outlives its own computation.
"""

from __future__ import annotations

import torch

from explorer.kernels.attention import attention_entropy

BLOCK_BYTES = 64 * 1024 ** 2
_TEMPORARIES = 3  # scores, probabilities and x log x of one block are alive together


def block_rows(batch: int, heads: int, n_keys: int, block_bytes: int = BLOCK_BYTES) -> int:
    """How many query rows fit in ``block_bytes`` of float32 temporaries (at least one)."""
    return max(1, int(block_bytes) // (_TEMPORARIES * 4 * batch * heads * max(n_keys, 1)))


def attention_with_entropy(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           mask: torch.Tensor | None = None, scaling: float | None = None,
                           softcap: float | None = None, normalise: bool = False,
                           block_bytes: int = BLOCK_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention output ``[b, h, n_q, d]`` and row entropies ``[b, h, n_q]`` (float32, or float64
    for float64 input).

    ``mask`` is ``None`` (causal: the queries are the last ``n_q`` of the ``n_k`` positions), or a
    boolean (True = may attend) or additive float tensor broadcastable to ``[b, h, n_q, n_k]``; it can
    only hide keys (keys after a query's own position are never seen). Scores are formed in the
    query's dtype and the softmax in at least float32, as transformers' eager attention does. A row that sees
    no key at all (a padding query) gets zero output and zero entropy.
    """
    if query.dim() != 4 or key.dim() != 4 or value.shape[:3] != key.shape[:3]:
        raise ValueError(f"query [b, h, q, d] and key/value [b, h_kv, k, d] expected, got {tuple(query.shape)}, "
                         f"{tuple(key.shape)}, {tuple(value.shape)}")
    batch, heads, n_q, dim = query.shape
    n_k = key.shape[2]
    if heads % key.shape[1] or n_q > n_k:
        raise ValueError(f"{heads} query heads cannot share {key.shape[1]} key heads, or more queries ({n_q}) "
                         f"than keys ({n_k})")
    groups = heads // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scaling = dim ** -0.5 if scaling is None else float(scaling)
    offset = n_k - n_q
    rows = block_rows(batch, heads, n_k, block_bytes)
    outputs, entropies = [], []
    for start in range(0, n_q, rows):
        stop = min(start + rows, n_q)
        visible = offset + stop  # keys 0 .. visible - 1 can be seen by some query of the block
        scores = torch.matmul(query[:, :, start:stop], key[:, :, :visible].transpose(2, 3)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = _masked(scores, mask, start, stop, offset)
        probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
        del scores
        if mask is not None:
            probs.nan_to_num_(0.0)  # a row the mask hides entirely (padding) attends to nothing
        entropies.append(attention_entropy(probs, normalise=normalise))
        outputs.append(torch.matmul(probs.to(value.dtype), value[:, :, :visible]))
    return torch.cat(outputs, dim=2), torch.cat(entropies, dim=2)


def _masked(scores: torch.Tensor, mask: torch.Tensor | None, start: int, stop: int, offset: int) -> torch.Tensor:
    """``scores`` of query rows ``start:stop`` with the causal limit and ``mask`` applied."""
    visible = scores.shape[-1]
    positions = torch.arange(start, stop, device=scores.device)[:, None] + offset
    future = torch.arange(visible, device=scores.device)[None, :] > positions
    scores = scores.masked_fill(future, float("-inf"))
    if mask is None:
        return scores
    block = mask[..., start:stop, :visible] if mask.shape[-2] > 1 else mask[..., :visible]
    if block.dtype == torch.bool:
        return scores.masked_fill(~block, float("-inf"))
    return scores + block.to(scores.dtype)
