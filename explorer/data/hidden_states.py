"""Per-layer representations of the lens page's language model: the mean over each text's tokens of
every layer's hidden state (embeddings = layer 0), for the entropy of representations across depth."""

from __future__ import annotations

import torch

from explorer.data.embeddings import EmbeddingSet, validated
from explorer.errors import InputError
from explorer.progress import Progress


def mean_pooled_hidden_states(texts: list[str], model_name: str | None = None, batch_size: int = 16,
                              progress: Progress | None = None) -> torch.Tensor:
    """``layers x n x hidden`` float32 tensor on the CPU: masked mean over tokens of each layer."""
    from explorer.models.language_model import load_language_model

    texts = [str(t) for t in texts]
    if len(texts) < 2 or not all(t.strip() for t in texts):
        raise InputError("Hidden-state diversity needs at least 2 texts, none of them empty.")
    lm = load_language_model(model_name)
    tokenizer = lm.tokenizer
    tokenizer.padding_side = "right"
    pooled = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=256).to(lm.device)
        with lm.lock, torch.inference_mode():
            states = lm.model(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled.append(torch.stack([(h.float() * mask).sum(1) / mask.sum(1) for h in states]).cpu())
        if progress is not None:
            progress.update(start + batch_size, len(texts), f"Hidden states of {min(start + batch_size, len(texts))}"
                                                           f"/{len(texts)} texts")
    return torch.cat(pooled, dim=1)


def hidden_state_sets(texts: list[str], labels=None, model_name: str | None = None,
                      progress: Progress | None = None) -> list[EmbeddingSet]:
    """One :class:`EmbeddingSet` per layer (layer 0 = token embeddings)."""
    states = mean_pooled_hidden_states(texts, model_name, progress=progress)
    return [validated(f"layer {i}", layer.numpy(), labels, texts) for i, layer in enumerate(states)]
