"""Per-layer representations of the lens page's language model: the mean over each text's tokens of
every layer's hidden state (embeddings = layer 0), for the entropy of representations across depth.

All layers come from one forward pass per batch (``LanguageModel.hidden_states``); the bundled text set's
layers are cached per process and model, so every session shares one computation.
"""

from __future__ import annotations

import threading

import pandas as pd
import torch

from explorer.data.embeddings import TEXT_SET, EmbeddingSet, validated
from explorer.errors import InputError
from explorer.progress import Progress

_TEXT_SET_LAYERS: dict[str, list[EmbeddingSet]] = {}
_TEXT_SET_LOCK = threading.Lock()


def mean_pooled_hidden_states(texts: list[str], model_name: str | None = None, batch_size: int = 16,
                              progress: Progress | None = None) -> torch.Tensor:
    """``layers x n x hidden`` float32 tensor on the CPU: masked mean over tokens of each layer
    (:meth:`explorer.models.language_model.LanguageModel.hidden_states`)."""
    from explorer.models.language_model import load_language_model

    texts = [str(t) for t in texts]
    if len(texts) < 2 or not all(t.strip() for t in texts):
        raise InputError("Hidden-state diversity needs at least 2 texts, none of them empty.")
    if progress is not None:
        progress.update(0, 1, "Loading the language model")
    lm = load_language_model(model_name)
    return lm.hidden_states(texts, batch_size=batch_size, max_length=256, pooling="mean", progress=progress)


def hidden_state_sets(texts: list[str], labels=None, model_name: str | None = None,
                      progress: Progress | None = None, name: str = "hidden states") -> list[EmbeddingSet]:
    """One :class:`EmbeddingSet` per layer (layer 0 = token embeddings)."""
    states = mean_pooled_hidden_states(texts, model_name, progress=progress)
    return [validated(f"{name}, layer {i}", layer.numpy(), labels, texts) for i, layer in enumerate(states)]


def text_set_hidden_states(model_name: str | None = None, progress: Progress | None = None) -> list[EmbeddingSet]:
    """Per-layer mean-pooled hidden states of ``data/diversity_texts.csv`` (labelled by its groups),
    computed once per process and model."""
    from explorer.models.language_model import DEFAULT_MODEL

    key = model_name or DEFAULT_MODEL
    with _TEXT_SET_LOCK:
        if key not in _TEXT_SET_LAYERS:
            table = pd.read_csv(TEXT_SET)
            _TEXT_SET_LAYERS[key] = hidden_state_sets(table["text"].tolist(), table["group"].tolist(), model_name,
                                                      progress, name=f"texts, {key} hidden states")
        return _TEXT_SET_LAYERS[key]
