"""Entropy of attention rows, per layer, head and query position.

Formula (formulas.md section 1; Entropy-Guided Attention for Private LLMs):
    H_i = -sum_{j <= i} a_ij log a_ij      (nats; 0 log 0 = 0, so causal zeros are ignored)
    normalised: H_i / log(i + 1)           (1 = uniform over the i + 1 visible keys; position 0 -> 0)
"""

from __future__ import annotations

import torch


def attention_entropy(attentions: torch.Tensor, normalise: bool = False) -> torch.Tensor:
    """Entropy of each attention row: ``[..., heads, q, k] -> [..., heads, q]`` on the input's device.

    ``attentions`` are probabilities over keys (rows sum to one; masked keys are exactly zero).
    With ``normalise`` the entropy of query ``i`` is divided by ``log(i + 1)``, the entropy of a uniform
    row over the ``i + 1`` keys a causal query sees (query 0 sees one key: its value is 0).
    """
    if attentions.dim() < 2:
        raise ValueError(f"attentions must have at least 2 dims [..., q, k], got shape {tuple(attentions.shape)}")
    a = attentions if attentions.is_floating_point() else attentions.float()
    entropy = (-torch.xlogy(a, a).sum(-1)).clamp_min(0)
    if not normalise:
        return entropy
    q = a.shape[-2]
    offset = a.shape[-1] - q  # queries are the last q of the k positions (k > q with a KV cache)
    visible = torch.arange(1, q + 1, device=a.device, dtype=a.dtype) + offset
    scale = torch.log(visible)
    return torch.where(scale > 0, entropy / scale.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(entropy))
