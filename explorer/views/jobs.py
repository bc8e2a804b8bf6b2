"""The one way a page runs long work: off the event loop, newest request per slot wins, with a
progress bar, a Stop button and errors shown as messages.

    jobs = JobRunner()
    jobs.submit(analysis.compute, label="Computing spectra", on_done=self._show)   # from a callback

``job(progress)`` runs in a daemon worker thread (a server never waits for one at shutdown); ``on_done(result)`` runs back on
the session's event loop (served: the document's next tick; in a notebook: the running asyncio
loop; in a plain script or a test: at once in the worker, so ``jobs.wait()`` sees everything done).
A new job in a slot cancels the one running there (its ``Progress`` is stopped and its result
dropped). Jobs are cancelled when their browser session ends. ``InputError`` becomes a warning in
the page; any other exception is logged with its traceback and shown with its type.
"""

from __future__ import annotations

import asyncio
import html
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import panel as pn
import param

from explorer.errors import InputError
from explorer.progress import Cancelled, Progress

log = logging.getLogger(__name__)

REFRESH_S = 0.15             # progress bar refresh interval

def error_message(err: BaseException) -> str:
    """The text a user sees for an exception: ours verbatim, anything else with its type."""
    if isinstance(err, InputError):
        return str(err)
    return f"Unexpected error ({type(err).__name__}): {err}"


def loop_caller() -> Callable[[Callable[[], None]], None]:
    """How to run a callback on the caller's event loop later, from any thread (see the module docstring)."""
    doc = pn.state.curdoc
    if doc is not None and doc.session_context is not None:
        def on_next_tick(callback):
            try:
                doc.add_next_tick_callback(pn.state._handle_exception_wrapper(callback, doc))
            except Exception:  # noqa: BLE001 - the session is gone: nothing left to update
                log.debug("session closed; dropped a callback")
        return on_next_tick
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return lambda callback: callback()
    return lambda callback: loop.call_soon_threadsafe(callback) if not loop.is_closed() else None


@dataclass
class Job:
    """One submitted job: its slot, label, progress (cancel it to stop the job) and whether it ended."""

    slot: str
    label: str
    progress: Progress = field(default_factory=Progress)
    ended: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.perf_counter)

    @property
    def superseded(self) -> bool:
        return self.progress.cancelled


class JobRunner(pn.viewable.Viewer):
    """Runs a page's long work off the event loop (see the module docstring); renders as a progress
    bar with Stop, a status line and a message box."""

    running = param.Boolean(default=False, doc="True while at least one job runs.")
    message = param.String(default="", doc="The last status or error text shown to the user.")

    def __init__(self, **params):
        super().__init__(**params)
        self._jobs: dict[str, Job] = {}
        self._live: dict[int, Job] = {}   # not ended yet (a job leaves its slot before its on_done has run)
        self._lock = threading.Lock()
        self._call = loop_caller()
        self._closed = False
        self._last_refresh = 0.0
        self._bar = pn.indicators.Progress(value=0, max=1000, visible=False, sizing_mode="stretch_width", height=18)
        self._status = pn.pane.Markdown("", visible=False, margin=(0, 10), css_classes=["task-status"])
        self._stop = pn.widgets.Button(label="Stop", color="warning", visible=False, width=80)
        self._stop.on_click(lambda _event: self.cancel())
        self._alert = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width",
                                    css_classes=["task-alert"])
        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:
            doc.on_session_destroyed(lambda _context: self.close())

    def __panel__(self):
        return pn.Column(pn.Row(self._bar, self._stop, sizing_mode="stretch_width"), self._status,
                         self._alert, sizing_mode="stretch_width", margin=0)

    # ------------------------------------------------------------------ submitting
    def submit(self, job: Callable[[Progress], Any], label: str = "Working", slot: str = "main",
               on_done: Callable[[Any], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None) -> Job | None:
        """Run ``job(progress)`` in a worker thread; ``on_done(result)`` / ``on_error(err)`` run on the
        event loop. A job already running in ``slot`` is cancelled and its result dropped."""
        if self._closed:
            return None
        handle = Job(slot, label, Progress(text=label))
        with self._lock:
            previous = self._jobs.get(slot)
            self._jobs[slot] = handle
            self._live[id(handle)] = handle
        if previous is not None:
            previous.progress.cancel()
        self.clear_error()
        self._show_running()
        threading.Thread(target=self._run, args=(handle, job, on_done, on_error), daemon=True,
                         name=f"explorer-job-{slot}").start()
        return handle

    def _run(self, handle: Job, job, on_done, on_error) -> None:
        handle.progress.listener = self._maybe_refresh
        try:
            self._attempt(handle, job, on_done, on_error)
        finally:
            handle.ended.set()
            with self._lock:
                self._live.pop(id(handle), None)

    def _attempt(self, handle: Job, job, on_done, on_error) -> None:
        try:
            result = job(handle.progress)
        except Cancelled:
            self._finish(handle, lambda: self.show_message("Stopped."))
        except BaseException as err:  # noqa: BLE001 - the page must keep serving
            if not isinstance(err, InputError):
                log.error("job %r failed:\n%s", handle.label, traceback.format_exc())
            self._finish(handle, lambda error=err: self._fail(error, on_error))
        else:
            self._finish(handle, lambda: on_done(result) if on_done is not None else None)

    def _finish(self, handle: Job, then: Callable[[], None]) -> None:
        """Back on the loop: run ``then`` unless a newer job took the slot, and update the bar."""
        def finish():
            with self._lock:
                current = self._jobs.get(handle.slot) is handle
                if current:
                    del self._jobs[handle.slot]
            if current and not self._closed:
                try:
                    then()
                except Exception as err:  # noqa: BLE001 - a failing update must not kill the session
                    log.error("updating the page after %r failed:\n%s", handle.label, traceback.format_exc())
                    self.show_error(err)
            self._show_running()
        if not self._closed:
            self._call(finish)

    def _fail(self, err: BaseException, on_error) -> None:
        self.show_error(err)
        if on_error is not None:
            on_error(err)

    # ------------------------------------------------------------------ controlling
    def cancel(self, slot: str | None = None) -> None:
        """Stop the job in ``slot`` (every job when None): it ends at its next progress check."""
        with self._lock:
            jobs = [j for s, j in self._jobs.items() if slot is None or s == slot]
        for handle in jobs:
            handle.progress.cancel()

    def close(self) -> None:
        """The session ended: cancel everything and never call back into its document."""
        self._closed = True
        self.cancel()

    def busy(self, slot: str | None = None) -> bool:
        with self._lock:
            return bool(self._jobs) if slot is None else slot in self._jobs

    def wait(self, timeout: float = 600) -> None:
        """Block until every submitted job has finished, its ``on_done``/``on_error`` included where they
        run in the worker (scripts and tests; never on the loop)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                jobs = [j for j in self._live.values() if not j.ended.is_set()]
            if not jobs:
                return
            for handle in jobs:
                if not handle.ended.wait(max(deadline - time.monotonic(), 0.001)):
                    raise TimeoutError(f"job {handle.label!r} still running after {timeout} s")

    # ------------------------------------------------------------------ display
    def _maybe_refresh(self) -> None:
        now = time.perf_counter()
        if now - self._last_refresh >= REFRESH_S:
            self._last_refresh = now
            self._call(self._show_running)

    def _show_running(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        self.running = bool(jobs)
        self._bar.visible = self._stop.visible = self._status.visible = bool(jobs)
        if jobs:
            newest = max(jobs, key=lambda j: j.started)
            self._bar.value = int(1000 * newest.progress.fraction)
            self._status.object = newest.progress.text or newest.label

    def show_error(self, err: BaseException | str) -> None:
        """Show an error (or a plain warning text) in the message box."""
        text = err if isinstance(err, str) else error_message(err)
        self.message = text
        self._alert.object = html.escape(text)   # file names and typed values are shown, never rendered
        self._alert.alert_type = "warning" if isinstance(err, (InputError, str)) else "danger"
        self._alert.visible = True

    def show_message(self, text: str) -> None:
        """A neutral note in the message box (e.g. "Loaded 12 questions")."""
        self.message = text
        self._alert.object = html.escape(text)
        self._alert.alert_type = "info"
        self._alert.visible = True

    def clear_error(self) -> None:
        self._alert.visible = False
        self._alert.object = ""
