"""What a shared server needs besides the pages: clean logs, warm caches, typed paths kept inside the
data directory.

``explorer serve`` runs :func:`start` once per server process (``panel serve --setup``):

* :func:`quiet_closed_connections`: a tab closed while the server was writing to it is not an error
  (no "Task exception was never retrieved ... WebSocketClosedError" tracebacks, no warning per lost
  message);
* :func:`warm_in_background`: a daemon thread computes what every first page open would otherwise
  compute (the bundled data sets and the digits network, the default texts' embeddings and spectra,
  the conformal sets of the digits network, the default lens trace, the bundled training runs'
  spectra and entropy-law fits) while the server already answers. Pages take over these results
  with :func:`adopt_warm_results` when their settings match (results are shared read-only between
  sessions, never copied);
* :func:`release_freed_memory_periodically`: a daemon thread gives the memory of closed sessions
  back to the operating system (glibc keeps it otherwise).

Pages served by any server call :func:`checked_path` on a path a user typed: in a notebook or a
script it is used as typed; when served it must lie in :func:`explorer.data.paths.data_dir`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import faulthandler
import logging
import signal
import threading
import time
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

import panel as pn
from bokeh.document import Document
from panel.io.state import set_curdoc

from explorer.analyses.base import Analysis
from explorer.data.hub_datasets import is_dataset_source
from explorer.data.paths import data_dir, inside
from explorer.data.questions import DEFAULT_QUESTIONS
from explorer.data.store import default_db_path

log = logging.getLogger(__name__)

_WARM: dict[type, Analysis] = {}
_WARM_LOCK = threading.Lock()
_STARTED = threading.Event()
WARM_STEPS = ("conformal", "diversity", "lens", "training")
WARM_TIMEOUT_S = 900
RELEASE_EVERY_S = 15.0


# ----------------------------------------------------------------------------------------- paths
def is_served() -> bool:
    """True inside a browser session of a server (not in a notebook, a script or the CLI)."""
    doc = pn.state.curdoc
    return doc is not None and doc.session_context is not None and not pn.state._is_pyodide


def checked_path(typed: str, what: str = "file", read_only: bool = False) -> str:
    """A path a page's user typed: as typed outside a server; when served, resolved in the data
    directory and refused outside it (:func:`explorer.data.paths.inside`). ``read_only`` paths may
    also name the bundled question set or a Hugging Face dataset (``hf:owner/name``)."""
    if not is_served():
        return typed
    if read_only and (is_dataset_source(typed) or _is_bundled(typed)):
        return typed
    return str(inside(typed, data_dir(), what))


def _is_bundled(typed: str) -> bool:
    try:
        return Path(typed).expanduser().resolve() == DEFAULT_QUESTIONS.resolve()
    except (OSError, ValueError):
        return False


def default_store_path() -> str:
    """The results database a page starts with: ``runs.duckdb`` in the data directory when served,
    the user's default store otherwise."""
    return str(data_dir() / "runs.duckdb") if is_served() else str(default_db_path())


def current_user() -> str:
    """The logged-in user when the server has authentication on, else ""."""
    return (pn.state.user or "") if is_served() else ""


# ----------------------------------------------------------------------------------------- logs
class _ClosedConnection(logging.Filter):
    """Drops log records about writing to a tab that was already closed (asyncio's "Task exception
    was never retrieved" carries the error as ``exc_info``)."""

    ERRORS = ("WebSocketClosedError", "StreamClosedError")

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and type(error).__name__ in self.ERRORS:
            return False
        return "connection was closed" not in record.getMessage()


_FILTER = _ClosedConnection()
QUIETED_LOGGERS = ("asyncio", "tornado.application", "tornado.general", "bokeh.server.views.ws", "panel.io.document")


def quiet_closed_connections() -> None:
    """Install the closed-connection filter on the loggers that report them (idempotent)."""
    for name in QUIETED_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


# ----------------------------------------------------------------------------------------- warm caches
def adopt_warm_results(analysis: Analysis) -> None:
    """Let ``analysis`` take over the results the server computed at start for the same settings."""
    with _WARM_LOCK:
        warm = _WARM.get(type(analysis))
    if warm is not None and warm is not analysis:
        analysis.adopt_results(warm)


def warm_analysis(kind: type) -> Analysis | None:
    with _WARM_LOCK:
        return _WARM.get(kind)


def _warm_page(module: str, component: str) -> Analysis:
    """Open a page as a script would (its default data, computed in its job runner, every result it
    shows read once) and return its analysis. The page gets a document of its own: without one, a
    session the server is creating meanwhile would be taken for this page's (Bokeh's current
    document is process-wide while an app runs)."""
    with set_curdoc(Document()):
        page = getattr(import_module(module), component)()
        deadline = time.monotonic() + WARM_TIMEOUT_S
        while True:   # a page's jobs may chain (load, then compute); one with nothing loaded yet is "computed"
            page.jobs.wait(WARM_TIMEOUT_S)
            if not page.jobs.busy() and page.analysis.is_computed():
                break
            if page.jobs.message and not page.jobs.busy() or time.monotonic() > deadline:
                raise RuntimeError(page.jobs.message or f"{component} did not compute its default view")
            time.sleep(0.1)
    return page.analysis


WARMERS: dict[str, Callable[[], Analysis]] = {
    "conformal": lambda: _warm_page("explorer.views.conformal", "ConformalExplorer"),
    "diversity": lambda: _warm_page("explorer.views.diversity", "DiversityExplorer"),
    "lens": lambda: _warm_page("explorer.views.token_lens", "TokenEntropyLens"),
    "training": lambda: _warm_page("explorer.views.training", "TrainingDynamics"),
}


def warm(steps: tuple[str, ...] = WARM_STEPS) -> dict[str, float]:
    """Compute the default pages' results once for this process; returns seconds per step. A step
    that fails is logged and skipped (the page then computes its own, as without warming)."""
    seconds = {}
    for step in steps:
        started = time.perf_counter()
        try:
            analysis = WARMERS[step]()
        except Exception:  # noqa: BLE001 - a cache that cannot be warmed is a slower first open, not an outage
            log.exception("warming %s failed", step)
            continue
        with _WARM_LOCK:
            _WARM[type(analysis)] = analysis
        seconds[step] = time.perf_counter() - started
        log.info("warmed %s in %.1f s", step, seconds[step])
    return seconds


def warm_in_background(steps: tuple[str, ...] = WARM_STEPS) -> threading.Thread:
    """:func:`warm` in a daemon thread: the server answers while it runs."""
    thread = threading.Thread(target=warm, args=(steps,), name="explorer-warm", daemon=True)
    thread.start()
    return thread


# ----------------------------------------------------------------------------------------- memory
def _malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none (macOS, Windows, musl)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def release_freed_memory() -> bool:
    """Give the heap memory that Python and numpy have freed back to the operating system. glibc keeps
    freed blocks below its (self-raising, up to 32 MB) mmap threshold for reuse: a closed training page
    left 45 MB of resident memory each, never given back (8 pages opened and closed: +358 MB; +6 MB
    after this call). The C call releases the GIL. Returns False where there is no ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim()
    return True


def release_freed_memory_periodically(every_s: float = RELEASE_EVERY_S) -> threading.Thread | None:
    """:func:`release_freed_memory` every ``every_s`` seconds in a daemon thread (None without glibc).
    Sessions are freed 15-32 s after their tab closes (Bokeh's unused-session lifetime and check
    interval), so a closed tab's memory goes back within about a minute."""
    if _malloc_trim() is None:
        return None

    def loop():
        while True:
            time.sleep(every_s)
            release_freed_memory()
    thread = threading.Thread(target=loop, name="explorer-release-memory", daemon=True)
    thread.start()
    return thread


# Modules that the warming thread and the first sessions would otherwise import at the same time.
# Python's per-module import locks detect a cycle between two threads as a deadlock and raise
# (seen: the warming thread building a Tabulator imports narwhals.stable.v1 while a session imports
# narwhals.stable.v2: "_DeadlockError", and the conformal page was not warmed).
PRELOADED = ("narwhals.stable.v1", "narwhals.stable.v2", "explorer.views.app", "explorer.views.conformal",
             "explorer.views.diversity", "explorer.views.token_lens", "explorer.views.temperature",
             "explorer.views.training")


def preload_modules() -> None:
    """Import :data:`PRELOADED` in this (the server's main) thread, before any other thread runs."""
    for module in PRELOADED:
        try:
            import_module(module)
        except ImportError:   # an optional dependency missing: the page says so when opened
            log.warning("could not import %s at start", module, exc_info=True)


def start(warm_steps: tuple[str, ...] = WARM_STEPS) -> None:
    """Once per server process: quiet logs, closed sessions' memory given back, then warm the caches
    in the background."""
    if _STARTED.is_set():
        return
    _STARTED.set()
    if not log.handlers:   # panel serve shows Bokeh's log only: say what warming did
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    quiet_closed_connections()
    if hasattr(signal, "SIGUSR1"):   # `kill -USR1 <pid>` prints every thread's stack (a hung server)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    release_freed_memory_periodically()
    preload_modules()
    if warm_steps:
        warm_in_background(warm_steps)
