"""One long job at a time, off the server's event loop, with progress, Stop and clear errors."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from typing import Any

import panel as pn
import param

from explorer.errors import InputError
from explorer.progress import Cancelled, Progress

log = logging.getLogger(__name__)


def error_message(err: BaseException) -> str:
    """The text a user sees for an exception: ours verbatim, anything else with its type."""
    if isinstance(err, InputError):
        return str(err)
    return f"Unexpected error ({type(err).__name__}): {err}"


class BackgroundTask(pn.viewable.Viewer):
    """A progress bar, a Stop button and a message line for one job at a time.

    ``await task.run(job, on_done)`` runs ``job(progress)`` in a worker thread while the event
    loop keeps serving; every widget update happens on the loop. ``InputError`` becomes a warning
    in the page, any other exception an error with its type, and the page stays usable.
    """

    running = param.Boolean(default=False, doc="True while a job runs.")
    message = param.String(default="", doc="The last status or error text shown to the user.")

    def __init__(self, **params):
        super().__init__(**params)
        self._progress = Progress()
        self._bar = pn.indicators.Progress(value=0, max=1000, visible=False, sizing_mode="stretch_width", height=18)
        self._status = pn.pane.Markdown("", visible=False, margin=(0, 10), css_classes=["task-status"])
        self._stop = pn.widgets.Button(label="Stop", color="warning", visible=False, width=80)
        self._stop.on_click(lambda _event: self._progress.cancel())
        self._alert = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width",
                                    css_classes=["task-alert"])

    def __panel__(self):
        return pn.Column(pn.Row(self._bar, self._stop, sizing_mode="stretch_width"), self._status,
                         self._alert, sizing_mode="stretch_width", margin=0)

    def show_error(self, err: BaseException | str) -> None:
        """Show an error (or a plain message) in the alert box."""
        text = err if isinstance(err, str) else error_message(err)
        self.message = text
        self._alert.object = text
        self._alert.alert_type = "warning" if isinstance(err, (InputError, str)) else "danger"
        self._alert.visible = True

    def clear_error(self) -> None:
        self._alert.visible = False
        self._alert.object = ""

    async def run(self, job: Callable[[Progress], Any], on_done: Callable[[Any], None] | None = None,
                  label: str = "Working") -> None:
        """Run ``job(progress)`` in a thread; call ``on_done(result)`` on the event loop."""
        if self.running:
            self.show_error("Another job is still running: stop it or wait for it to finish.")
            return
        self.clear_error()
        self._progress = Progress(text=label)
        self.running = True
        self._bar.value, self._bar.visible, self._stop.visible = 0, True, True
        self._status.object, self._status.visible = label, True
        future = asyncio.get_running_loop().run_in_executor(None, job, self._progress)
        try:
            while not future.done():
                self._bar.value = int(1000 * self._progress.fraction)
                self._status.object = self._progress.text or label
                await asyncio.sleep(0.1)
            result = future.result()
            if on_done is not None:
                on_done(result)
            self.message = "done"
        except Cancelled:
            self.show_error("Stopped.")
        except Exception as err:  # noqa: BLE001 - the page must keep serving
            if not isinstance(err, InputError):
                log.error("job failed:\n%s", traceback.format_exc())
            self.show_error(err)
        finally:
            self.running = False
            self._bar.visible = self._stop.visible = self._status.visible = False
