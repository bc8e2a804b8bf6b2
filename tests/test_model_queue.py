"""The fair model queue: FIFO order, reported positions, cancellation while waiting, re-entrance,
yielding between steps; and with the real model, a short scoring job is not starved by a long generation."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from explorer.kernels.decoding import LogitsRule
from explorer.models.fair_lock import FairLock
from explorer.progress import Cancelled, Progress


class RecordingProgress(Progress):
    """A Progress that keeps every text it was given."""

    def __init__(self):
        super().__init__()
        self.texts: list[str] = []

    def update(self, done, total=1.0, text=None):
        if text is not None:
            self.texts.append(text)
        super().update(done, total, text)


def wait_until(condition, timeout: float = 30.0) -> None:
    """Poll ``condition`` (a correctness wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.002)


def start_waiter(lock: FairLock, name: str, order: list[str], progress: Progress | None = None):
    errors: list[BaseException] = []

    def job():
        try:
            with lock.hold(progress):
                order.append(name)
        except BaseException as err:  # noqa: BLE001 - recorded for the test
            errors.append(err)

    thread = threading.Thread(target=job)
    thread.start()
    return thread, errors


def test_waiters_run_in_arrival_order_and_see_their_positions():
    lock, order = FairLock(), []
    progresses = [RecordingProgress() for _ in range(4)]
    lock.acquire()
    threads = []
    for k, progress in enumerate(progresses):
        threads.append(start_waiter(lock, f"job{k}", order, progress)[0])
        wait_until(lambda: lock.waiting == k + 1)  # each job is queued before the next arrives
    lock.release()
    for thread in threads:
        thread.join()
    assert order == ["job0", "job1", "job2", "job3"]
    for k, progress in enumerate(progresses):
        positions = [int(t.rsplit(" ", 1)[1]) for t in progress.texts]
        # arrival position first, then moving up (a step can be skipped when the jobs ahead finish first)
        assert positions[0] == k + 1 and positions == sorted(set(positions), reverse=True), progress.texts
        assert all(t.startswith("waiting for the model, position ") for t in progress.texts)


def test_a_cancelled_waiter_leaves_the_queue_at_once_without_running():
    lock, order = FairLock(), []
    first, cancelled, last = RecordingProgress(), RecordingProgress(), RecordingProgress()
    lock.acquire()
    t1, _ = start_waiter(lock, "first", order, first)
    wait_until(lambda: lock.waiting == 1)
    t2, errors = start_waiter(lock, "cancelled", order, cancelled)
    wait_until(lambda: lock.waiting == 2)
    t3, _ = start_waiter(lock, "last", order, last)
    wait_until(lambda: lock.waiting == 3)
    cancelled.cancel()
    t2.join(timeout=30)
    assert not t2.is_alive(), "the cancelled waiter is still queued while the lock is held"
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
    assert lock.waiting == 2
    wait_until(lambda: last.texts[-1].endswith("position 2"))  # moved up behind "first"
    lock.release()
    t1.join(), t3.join()
    assert order == ["first", "last"]


def test_a_cancelled_job_does_not_queue_at_all():
    lock, progress = FairLock(), Progress()
    progress.cancel()
    with pytest.raises(Cancelled):
        lock.acquire(progress)
    assert lock.acquire(blocking=False)
    lock.release()


def test_reentrant_and_release_by_another_thread_fails():
    lock = FairLock()
    with lock:
        with lock.hold():
            assert lock.held_by_me()
        assert lock.held_by_me()
        errors = []
        thread = threading.Thread(target=lambda: errors.append(lock.acquire(blocking=False)))
        thread.start(), thread.join()
        assert errors == [False]
        thread = threading.Thread(target=lambda: errors.append(lock.acquire(timeout=0.05)))
        thread.start(), thread.join()
        assert errors == [False, False] and lock.waiting == 0
    assert not lock.held_by_me()
    with pytest.raises(RuntimeError):
        lock.release()


def test_yield_turn_lets_queued_jobs_go_first_then_continues():
    lock, order = FairLock(), []
    with lock.hold():
        lock.yield_turn()  # nobody waits: keeps the lock
        order.append("step 1")
        thread, _ = start_waiter(lock, "short job", order)
        wait_until(lambda: lock.waiting == 1)
        lock.yield_turn()
        order.append("step 2")
        assert lock.held_by_me()
    thread.join()
    assert order == ["step 1", "short job", "step 2"]


def test_yield_turn_inside_an_outer_hold_does_not_interrupt():
    lock, order = FairLock(), []
    with lock:
        with lock.hold():
            thread, _ = start_waiter(lock, "short job", order)
            wait_until(lambda: lock.waiting == 1)
            lock.yield_turn()  # the outer `with lock` asked for one uninterrupted turn
            order.append("step")
    thread.join()
    assert order == ["step", "short job"]


def test_cancelled_while_queued_again_leaves_without_the_lock():
    lock, progress, order = FairLock(), Progress(), []
    with lock.hold(progress):
        thread, _ = start_waiter(lock, "other", order)
        wait_until(lambda: lock.waiting == 1)
        holder = threading.Event()

        def take_and_hold():
            with lock:
                holder.set()
                wait_until(progress_cancelled)

        progress_cancelled = lambda: progress.cancelled  # noqa: E731
        second = threading.Thread(target=take_and_hold)
        second.start()
        wait_until(lambda: lock.waiting == 2)
        threading.Timer(0.05, progress.cancel).start()
        with pytest.raises(Cancelled):
            lock.yield_turn(progress)
        assert not lock.held_by_me()
    thread.join(), second.join()
    assert order == ["other"] and lock.acquire(blocking=False)
    lock.release()


# ----------------------------------------------------------------- with the real model
class NoStop(LogitsRule):
    """Never emits a stop token, so the generation runs to max_new_tokens."""

    name = "no_stop"

    def __init__(self, stop_ids):
        self.stop_ids = sorted(stop_ids)

    def __call__(self, logits):
        logits[..., self.stop_ids] = float("-inf")
        return logits


@pytest.mark.model
def test_scoring_during_a_long_generation_is_not_starved():
    from explorer.models.language_model import load_language_model

    lm = load_language_model()
    steps = []
    generation_progress = RecordingProgress()
    original = generation_progress.update

    def count_steps(done, total=1.0, text=None):
        if text and text.startswith("token "):
            steps.append(done)
        original(done, total, text)

    generation_progress.update = count_steps
    result = {}

    def generate():
        result["trace"] = lm.generate("Tell a long story.", max_new_tokens=200, decoding=NoStop(lm._stop_ids()),
                                      seed=0, progress=generation_progress)
        result["generation_done_at_step"] = len(steps)

    thread = threading.Thread(target=generate)
    thread.start()
    wait_until(lambda: len(steps) >= 5, timeout=300)
    scoring_progress = RecordingProgress()
    trace = lm.score("A short text to score while the model is busy.", progress=scoring_progress)
    steps_when_scored = len(steps)
    thread.join()
    assert len(result["trace"]) == 200 and not result["trace"].stopped
    assert steps_when_scored < 50, f"scoring waited for {steps_when_scored} of 200 generation steps"
    assert scoring_progress.texts == ["waiting for the model, position 1"]
    assert any(t.startswith("waiting for the model") for t in generation_progress.texts)
    alone = lm.score("A short text to score while the model is busy.")
    torch.testing.assert_close(trace.logits, alone.logits)
