"""Where Entropy Explorer keeps what it computes once: on disk, ``$ENTROPY_EXPLORER_CACHE`` or the
user cache dir; in memory, :func:`once_per_process` (shared by every session of a server)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

_ONCE: dict[Hashable, Any] = {}
_ONCE_LOCKS: dict[Hashable, threading.Lock] = {}
_ONCE_GUARD = threading.Lock()


def cache_dir() -> Path:
    """The cache root (converted models, trained classifiers, model answers), created on first use."""
    from platformdirs import user_cache_dir

    root = Path(os.environ.get("ENTROPY_EXPLORER_CACHE") or user_cache_dir("entropy-explorer"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def once_per_process(key: Hashable, make: Callable[[], Any]) -> Any:
    """``make()`` computed once per process for ``key`` and shared: threads asking while it runs wait
    for that one computation; one that fails is not remembered (the next caller tries again). The
    value is shared by every caller: treat it as read-only."""
    with _ONCE_GUARD:
        if key in _ONCE:
            return _ONCE[key]
        lock = _ONCE_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _ONCE:
            value = make()
            with _ONCE_GUARD:
                _ONCE[key] = value
        return _ONCE[key]


def already_computed(key: Hashable) -> Any:
    """The value :func:`once_per_process` holds for ``key``, or None when it has not been computed (never
    computes it)."""
    with _ONCE_GUARD:
        return _ONCE.get(key)
