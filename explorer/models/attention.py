"""Attention entropy of every layer and head in the same forward pass, without any attention matrix.

Language models are loaded with the attention implementation registered here, :data:`IMPLEMENTATION`:
transformers' own SDPA function (same kernels, same numbers) for every ordinary call. A forward call
that carries an :class:`EntropySink` (``model(ids, attention_entropy_sink=sink)``) instead computes each
layer's attention a block of query rows at a time (:func:`explorer.kernels.attention_rows.attention_with_entropy`)
and keeps only the per-head row entropies. Nothing on the shared model is switched per call (no
``set_attn_implementation``, no hooks), so other sessions' calls are never affected.
"""

from __future__ import annotations

import torch

from explorer.kernels.attention_rows import BLOCK_BYTES, attention_with_entropy
from explorer.models.libraries import IMPORT_LOCK, transformers_names

IMPLEMENTATION = "explorer_sdpa"
SINK = "attention_entropy_sink"


class EntropySink:
    """Collects ``[batch, heads, queries]`` row entropies per layer during one forward pass."""

    def __init__(self, normalise: bool = False, block_bytes: int = BLOCK_BYTES):
        self.normalise, self.block_bytes = normalise, block_bytes
        self.layers: dict[int, torch.Tensor] = {}

    def stacked(self) -> torch.Tensor:
        """``[layers, batch, heads, queries]`` in layer order."""
        if not self.layers:
            raise RuntimeError("no attention layer reported to the sink: the model does not use "
                               f"the {IMPLEMENTATION!r} attention implementation")
        return torch.stack([self.layers[i] for i in sorted(self.layers)])


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
               is_causal: bool | None = None, **kwargs):
    sink: EntropySink | None = kwargs.pop(SINK, None)
    if sink is None:
        return transformers_names().sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                                           scaling=scaling, is_causal=is_causal, **kwargs)
    if is_causal is False or not getattr(module, "is_causal", True):
        raise ValueError("attention entropy is defined here for causal attention only")
    output, entropy = attention_with_entropy(query, key, value, attention_mask, scaling, kwargs.get("softcap"),
                                             sink.normalise, sink.block_bytes)
    sink.layers[len(sink.layers) if getattr(module, "layer_idx", None) is None else module.layer_idx] = entropy
    return output.transpose(1, 2).contiguous(), None


_registered = False


def register_attention() -> str:
    """Register :data:`IMPLEMENTATION` with transformers (once per process); returns its name."""
    global _registered
    with IMPORT_LOCK:
        if not _registered:
            names = transformers_names()
            names.AttentionInterface.register(IMPLEMENTATION, _attention)
            names.AttentionMaskInterface.register(IMPLEMENTATION, names.sdpa_mask)  # the masks SDPA gets
            _registered = True
    return IMPLEMENTATION
