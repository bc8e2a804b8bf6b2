"""Server start-up: closed tabs are not logged as errors; bundled data is loaded once per process;
the default pages' results warmed at start are taken over by the pages (nothing recomputed)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from explorer.analyses.conformal import ConformalAnalysis
from explorer.analyses.diversity import DiversityAnalysis
from explorer.cache import once_per_process
from explorer.data.sources import CLASSIFIER_SOURCES, EMBEDDING_SOURCES
from explorer.views import server
from tests.test_conformal_view import synthetic_outputs


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def asyncio_log():
    logger, handler = logging.getLogger("asyncio"), Collect()
    logger.addHandler(handler)
    server.quiet_closed_connections()
    server.quiet_closed_connections()   # idempotent
    yield handler.records
    logger.removeHandler(handler)


def _log_task_error(error: BaseException) -> None:
    try:
        raise error
    except BaseException as err:  # noqa: BLE001 - logged as asyncio logs a lost task's exception
        logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=(type(err), err, None))


def test_closed_tabs_are_not_errors_but_real_errors_are(asyncio_log):
    _log_task_error(WebSocketClosedError())
    _log_task_error(StreamClosedError())
    logging.getLogger("asyncio").warning("Failed sending message as connection was closed")
    assert asyncio_log == []
    _log_task_error(RuntimeError("a real bug"))
    assert len(asyncio_log) == 1 and "a real bug" in str(asyncio_log[0].exc_info[1])
    assert sum(isinstance(f, type(server._FILTER)) for f in logging.getLogger("asyncio").filters) == 1


def test_once_per_process_computes_once_for_threads_asking_together():
    calls = []

    def make():
        calls.append(1)
        time.sleep(0.2)
        return object()

    key = ("test", time.perf_counter())
    results = [None] * 6
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, once_per_process(key, make)))
               for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and all(r is results[0] for r in results)


def test_a_failed_computation_is_not_remembered():
    key, attempts = ("failing", time.perf_counter()), []

    def make():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")
        return "second"

    with pytest.raises(RuntimeError):
        once_per_process(key, make)
    assert once_per_process(key, make) == "second" and once_per_process(key, make) == "second" and len(attempts) == 2


def test_bundled_sources_are_shared_and_uploads_are_not():
    assert CLASSIFIER_SOURCES.load("digits") is CLASSIFIER_SOURCES.load("digits")
    assert EMBEDDING_SOURCES.load("digits") is EMBEDDING_SOURCES.load("digits")


def test_adopted_results_are_those_of_the_current_settings():
    outputs = synthetic_outputs(n=300)
    warm = ConformalAnalysis(outputs=outputs).compute()
    page = ConformalAnalysis(outputs=outputs, alpha=0.2)
    page.adopt_results(warm)
    assert page.is_cached("ranked") and page.is_cached("alpha_curve")       # alpha-independent: adopted
    assert not page.is_cached("summary") and not page.is_cached("split_coverage")   # warm's alpha differs
    page.compute()
    assert page.computations["ranked"] == 0 and page.computations["alpha_curve"] == 0
    assert page.summary()["target"] == pytest.approx(0.8)
    other = ConformalAnalysis(outputs=synthetic_outputs(n=300, seed=1))
    other.adopt_results(warm)
    assert not other.is_cached("ranked")        # another data set: nothing adopted
    with pytest.raises(TypeError):
        other.adopt_results(DiversityAnalysis())


def test_a_page_opened_after_warming_computes_nothing():
    from explorer.views.conformal import ConformalExplorer

    server.warm(("conformal",))
    warm = server.warm_analysis(ConformalAnalysis)
    assert warm is not None and warm.outputs is CLASSIFIER_SOURCES.load("digits") and warm.is_cached("warnings")
    page = ConformalExplorer()          # loads the bundled digits (shared) and takes over the warm results
    page.jobs.wait()
    assert page.analysis.outputs is warm.outputs and page.analysis.is_computed()
    assert sum(page.analysis.computations.values()) == 0
    assert "Digits MLP" in page._summary.object and len(page._src["alpha_curve"].data["alpha"]) > 0
    page.analysis.alpha = 0.2          # its own settings: computed for this page only
    page.jobs.wait()
    assert page.analysis.computations["summary"] == 1 and not warm.is_cached("summary") or \
        warm.summary()["target"] == pytest.approx(0.9)


def test_the_training_page_opened_after_warming_computes_nothing():
    """Warming waits for the training page's chained jobs (load the bundled runs and log, then measure
    and fit); a page opened after it takes over the spectra, fits and forecasts."""
    from explorer.analyses.training import TrainingAnalysis
    from explorer.views.training import TrainingDynamics

    assert "training" in server.warm(("training",))
    warm = server.warm_analysis(TrainingAnalysis)
    assert warm.runs and warm.logs and warm.is_computed()
    page = TrainingDynamics()
    page.jobs.wait()
    assert page.analysis.runs is warm.runs and page.analysis.is_computed()
    assert page.analysis.answers_from_cache(page.analysis.compute_representations)
    assert sum(page.analysis.computations.values()) == 0


def test_a_failing_warm_step_is_skipped(monkeypatch, caplog):
    monkeypatch.setitem(server.WARMERS, "broken", lambda: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="explorer.views.server"):
        assert server.warm(("broken",)) == {}
    assert "warming broken failed" in caplog.text


def test_wait_covers_a_job_submitted_by_another_jobs_on_done():
    """A job that leaves its slot and submits the next one from its on_done is still waited for."""
    from explorer.views.jobs import JobRunner

    jobs, finished = JobRunner(), []

    def then_compute(_result):
        time.sleep(0.3)                 # the first job has left its slot; the second is not submitted yet
        jobs.submit(lambda progress: finished.append("second"), "second", slot="compute")
    for _ in range(3):
        finished.clear()
        jobs.submit(lambda progress: None, "first", slot="load", on_done=then_compute)
        jobs.wait()
        assert finished == ["second"]


HEAP_PATTERN = """
import numpy as np, psutil
from explorer.views import server
rss = lambda: psutil.Process().memory_info().rss / 2**20
x = np.ones(30 * 2**20 // 8)   # freeing a 30 MB mapping raises glibc's mmap threshold to 30 MB,
del x                          # so the 4 MB blocks below come from the heap, as a page's arrays do
blocks, keepers = [], []
for _ in range(40):
    blocks.append(np.ones(4 * 2**20 // 8))
    keepers.append(bytearray(4096))   # a small live block (malloc, not pymalloc) after each large one
allocated = rss()
del blocks
freed = rss()
released = server.release_freed_memory()
print(allocated, freed, rss(), released)
"""


def test_memory_freed_between_live_blocks_goes_back_to_the_system():
    """The heap a closed page leaves: large blocks freed between small ones still in use. glibc keeps
    those pages (the free space is not at the top of the heap) until ``release_freed_memory`` gives
    them back. In a fresh interpreter: what a process did before decides where its blocks come from."""
    import subprocess
    import sys

    if server._malloc_trim() is None:
        pytest.skip("no glibc malloc_trim here")
    done = subprocess.run([sys.executable, "-c", HEAP_PATTERN], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    allocated, freed, after, released = done.stdout.split()[-4:]
    allocated, freed, after = float(allocated), float(freed), float(after)
    if allocated - freed > 80:
        pytest.skip("this C library gave the freed blocks back by itself")
    assert released == "True"
    assert freed - after > 100, f"160 MB freed between live blocks stayed resident: {freed:.0f} -> {after:.0f} MB"


def test_the_release_runs_in_a_daemon_thread():
    if server._malloc_trim() is None:
        assert server.release_freed_memory_periodically(0.01) is None
        return
    thread = server.release_freed_memory_periodically(0.01)
    time.sleep(0.05)
    assert thread.daemon and thread.is_alive() and thread.name == "explorer-release-memory"


def test_server_start_imports_every_page_module_before_the_warming_thread(monkeypatch):
    """A renamed or broken module in ``PRELOADED`` would only be logged at start: fail here instead.
    The warmed pages' modules must be among them (the warming thread imports them otherwise)."""
    import sys

    warmed = {"explorer.views.conformal", "explorer.views.diversity", "explorer.views.token_lens"}
    assert warmed <= set(server.PRELOADED)
    failed = []   # start() may have stopped this logger propagating: record its warnings directly
    monkeypatch.setattr(server.log, "warning", lambda *args, **kwargs: failed.append(args))
    server.preload_modules()
    assert failed == []
    assert all(name in sys.modules for name in server.PRELOADED)
