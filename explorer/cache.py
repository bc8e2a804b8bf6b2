"""Where Entropy Explorer keeps what it computes once: ``$ENTROPY_EXPLORER_CACHE`` or the user cache dir."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root (converted models, trained classifiers, model answers), created on first use."""
    from platformdirs import user_cache_dir

    root = Path(os.environ.get("ENTROPY_EXPLORER_CACHE") or user_cache_dir("entropy-explorer"))
    root.mkdir(parents=True, exist_ok=True)
    return root
