"""The heavy model libraries (transformers, sentence-transformers), imported once under one lock.

transformers resolves its names lazily on first access; two threads doing that at the same time (a
page's background thread loading the embedder while the main thread loads the language model) can
raise ``ImportError: cannot import name 'AutoModelForCausalLM' from 'transformers'``. Every import of
these libraries in ``explorer`` goes through :func:`transformers_names` or :func:`sentence_transformer`,
which hold :data:`IMPORT_LOCK`, so the first one finishes before any other thread touches them.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

IMPORT_LOCK = threading.RLock()
_TRANSFORMERS: SimpleNamespace | None = None


def transformers_names() -> SimpleNamespace:
    """The transformers classes and functions ``explorer.models`` uses (imported on the first call)."""
    global _TRANSFORMERS
    with IMPORT_LOCK:
        if _TRANSFORMERS is None:
            from transformers import (
                AttentionInterface,
                AutoModelForCausalLM,
                AutoModelForSequenceClassification,
                AutoTokenizer,
                DynamicCache,
            )
            from transformers.integrations.sdpa_attention import sdpa_attention_forward
            from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

            _TRANSFORMERS = SimpleNamespace(
                AttentionInterface=AttentionInterface, AttentionMaskInterface=AttentionMaskInterface,
                AutoModelForCausalLM=AutoModelForCausalLM, AutoTokenizer=AutoTokenizer, DynamicCache=DynamicCache,
                AutoModelForSequenceClassification=AutoModelForSequenceClassification,
                sdpa_attention_forward=sdpa_attention_forward, sdpa_mask=sdpa_mask)
        return _TRANSFORMERS


def sentence_transformer():
    """``sentence_transformers.SentenceTransformer`` (it imports transformers too: same lock)."""
    with IMPORT_LOCK:
        transformers_names()
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer


def import_model_libraries() -> None:
    """Import every heavy library now, e.g. at server start before any session thread runs."""
    sentence_transformer()
