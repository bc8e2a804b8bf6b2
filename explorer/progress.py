"""Progress reporting and cancellation for long work, without any UI dependency.

Analyses and loaders take an optional :class:`Progress`; they call ``progress.update(done, total,
text)`` between steps and ``progress.check()`` where stopping is safe. The UI reads the fields from
its own thread (see ``explorer.views.jobs.JobRunner``); a terminal shows them with a bar.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


class Cancelled(Exception):
    """Raised by :meth:`Progress.check` after the user asked to stop."""


@dataclass
class Progress:
    """Thread-safe progress state: a fraction in [0, 1], a line of text and a stop flag."""

    fraction: float = 0.0
    text: str = ""
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    listener: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def update(self, done: float, total: float = 1.0, text: str | None = None) -> None:
        """Record that ``done`` of ``total`` units are finished; raises :class:`Cancelled` if stopped."""
        self.fraction = 0.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
        if text is not None:
            self.text = text
        if self.listener is not None:
            self.listener()
        self.check()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("stopped by the user")
