"""A fair, re-entrant, cancellable lock: the queue in front of one shared model.

Jobs get the model in the order they asked for it (FIFO). A waiting job reports its place through
its :class:`~explorer.progress.Progress` ("waiting for the model, position N", 1 = next) and leaves
the queue as soon as that progress is cancelled (:class:`~explorer.progress.Cancelled`, within
:data:`CANCEL_POLL_S`). A long job calls :meth:`FairLock.yield_turn` between steps: when others are
waiting it goes to the back of the queue, so a short job never waits for a whole generation.

    with lm.lock:                       # plain context-manager use, no progress
        ...
    with lm.lock.hold(progress):        # reports the queue position, cancellable while waiting
        ...
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager

from explorer.progress import Cancelled, Progress

CANCEL_POLL_S = 0.02  # how often a waiter with a Progress looks at its stop flag


class FairLock:
    """FIFO lock; the owning thread may acquire it again (each acquire needs its release)."""

    def __init__(self, what: str = "the model"):
        self.what = what
        self._condition = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._queue: deque[object] = deque()

    # ----------------------------------------------------------------- queue state
    @property
    def waiting(self) -> int:
        """How many jobs are queued behind the owner."""
        with self._condition:
            return len(self._queue)

    def held_by_me(self) -> bool:
        return self._owner == threading.get_ident()

    # ----------------------------------------------------------------- acquire / release
    def acquire(self, progress: Progress | None = None, blocking: bool = True, timeout: float | None = None) -> bool:
        """Wait for the model in FIFO order; ``True`` once held.

        ``progress``: its text shows the queue position while waiting; cancelling it makes this raise
        :class:`Cancelled` (the job leaves the queue and never runs). ``blocking=False`` or a
        ``timeout`` (seconds) return ``False`` when the model is not free in time.
        """
        me = threading.get_ident()
        with self._condition:
            if self._owner == me:
                self._depth += 1
                return True
            if progress is not None:
                progress.check()
            if self._owner is None and not self._queue:
                self._owner, self._depth = me, 1
                return True
            if not blocking:
                return False
            return self._wait_in_queue(me, progress, timeout)

    def _wait_in_queue(self, me: int, progress: Progress | None, timeout: float | None) -> bool:
        ticket = object()
        self._queue.append(ticket)
        deadline = None if timeout is None else time.monotonic() + timeout
        reported, own_text = None, progress.text if progress is not None else ""
        try:
            while True:
                if progress is not None:  # cancelled jobs never run, even when their turn has just come
                    position = self._queue.index(ticket) + 1
                    if position != reported:
                        reported = position
                        progress.update(progress.fraction, 1.0, f"waiting for {self.what}, position {position}")
                    progress.check()
                if self._owner is None and self._queue[0] is ticket:
                    break
                wait = CANCEL_POLL_S if progress is not None else None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    wait = left if wait is None else min(wait, left)
                self._condition.wait(wait)
        except (Cancelled, TimeoutError) as stop:
            self._queue.remove(ticket)
            self._condition.notify_all()  # the ones behind move up
            if isinstance(stop, TimeoutError):
                return False
            raise
        self._queue.popleft()
        self._owner, self._depth = me, 1
        if reported is not None:
            progress.text = own_text  # the job's own message again, now that it runs
        self._condition.notify_all()  # the others' positions changed
        return True

    def release(self) -> None:
        with self._condition:
            if self._owner != threading.get_ident():
                raise RuntimeError(f"release of {self.what}'s lock by a thread that does not hold it")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._condition.notify_all()

    def yield_turn(self, progress: Progress | None = None) -> None:
        """Let queued jobs go first, then continue (called by a long job between steps).

        Does nothing when nobody waits, or when the caller holds the lock more than once (an outer
        ``with lm.lock`` asked for the steps to run without interruption). If ``progress`` is cancelled
        while queued again this raises :class:`Cancelled` without the lock (use it inside
        :meth:`hold`, which then releases nothing).
        """
        with self._condition:
            if self._owner != threading.get_ident():
                raise RuntimeError(f"yield_turn on {self.what}'s lock by a thread that does not hold it")
            if self._depth > 1 or not self._queue:
                return
        self.release()
        self.acquire(progress)

    @contextmanager
    def hold(self, progress: Progress | None = None):
        """``with lock.hold(progress):`` acquire (reporting the queue position), release on exit.

        A :meth:`yield_turn` inside that was cancelled while queued has already given the lock up.
        """
        self.acquire(progress)
        try:
            yield self
        finally:
            if self.held_by_me():
                self.release()

    def __enter__(self) -> "FairLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FairLock({self.what!r}, held={self._owner is not None}, waiting={len(self._queue)})"
