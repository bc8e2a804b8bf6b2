"""The job runner's ``wait()`` (scripts and tests): it returns only after a job's ``on_done`` /
``on_error`` has run, so that what a callback shows can be checked right after it."""

from __future__ import annotations

import threading

import pytest

from explorer.errors import InputError
from explorer.views.jobs import JobRunner


@pytest.mark.parametrize("fails", [False, True])
def test_wait_returns_after_the_callbacks_ran(fails):
    jobs = JobRunner()
    entered, release, shown = threading.Event(), threading.Event(), []

    def callback(value):
        entered.set()
        release.wait(10)   # the job has left its slot; its callback still runs
        shown.append(value)

    def job(_progress):
        if fails:
            raise InputError("bad input")
        return "done"

    jobs.submit(job, "a job", on_done=callback, on_error=callback)
    assert entered.wait(10)
    threading.Timer(0.2, release.set).start()
    jobs.wait(timeout=10)
    assert len(shown) == 1
