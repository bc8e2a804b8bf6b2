"""Pieces every page uses: the palette, score cards, download buttons, upload widgets and "on open".

Pages render and patch; they compute nothing. What they show comes from their analysis, long work
goes through :class:`explorer.views.jobs.JobRunner`.
"""

from __future__ import annotations

import contextlib

import html
import io
import math
import re
from collections.abc import Callable

import panel as pn

from explorer.data.uploads import MAX_UPLOAD_BYTES, Upload, human_size

TEAL, AMBER, RED, GREY, PURPLE, ORANGE, INK = "#0f766e", "#b45309", "#dc2626", "#9ca3af", "#6d28d9", "#c2410c", "#111827"
PALETTE = [TEAL, AMBER, PURPLE, "#be123c", "#1d4ed8", "#4d7c0f", "#a16207", "#0e7490", "#9d174d", "#374151"]
MUTED = "#6b7280"
CARD_CSS = ("display:inline-block;padding:6px 12px;border:1px solid #e5e7eb;border-radius:8px;margin:0 8px 8px 0;"
            "vertical-align:top;min-width:110px")
NOTE_CSS = "background:#fef3c7;border-radius:6px;padding:6px 10px;margin:4px 0"


def format_value(value) -> str:
    """A number as a card shows it (4 significant digits, ∞, n/a)."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return "∞" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def css_key(text: str) -> str:
    """A CSS-class-safe key from a label ("mean set size" -> "mean-set-size")."""
    return re.sub("[^a-z0-9]+", "-", text.lower()).strip("-")


def card(title: str, value, note: str = "", key: str | None = None, prefix: str = "page") -> str:
    """One score card: a small title, the value large, a note; CSS classes ``<prefix>-card-<key>``
    on the card and on the value (``<prefix>-card-value``), for tests and styling."""
    key = css_key(key or title)
    shown = value if isinstance(value, str) else format_value(value)
    return (f"<div class='{prefix}-card {prefix}-card-{key}' style='{CARD_CSS}'>"
            f"<div style='font-size:12px;color:{MUTED}'>{html.escape(title)}</div>"
            f"<div class='{prefix}-card-value {prefix}-card-{key}-value' style='font-size:20px;font-weight:600'>"
            f"{html.escape(shown)}</div><div style='font-size:11px;color:{MUTED}'>{html.escape(note)}</div></div>")


def warning_notes(texts: list[str], css_class: str) -> str:
    """Plain-language cautions, one highlighted line each."""
    return "".join(f"<div class='{css_class}' style='{NOTE_CSS}'>⚠ {html.escape(text)}</div>" for text in texts)


def download_button(payload: Callable[[], str | bytes], filename: str, label: str, width: int = 150,
                    primary: bool = False) -> pn.widgets.FileDownload:
    """A download button whose file is made when clicked (``payload()`` returns text or bytes)."""
    def callback():
        data = payload()
        return io.BytesIO(data.encode() if isinstance(data, str) else data)
    return pn.widgets.FileDownload(callback=callback, filename=filename, label=label, width=width,
                                   color="primary" if primary else "light")


def upload_widget(label: str, accept: str, css_class: str, multiple: bool = False) -> pn.widgets.FileDropper:
    """A chunked file drop zone (large files arrive in pieces); its label states the formats and the
    size limit. The browser checks only the size: formats are checked by our loaders, which say what
    is wrong in words (the drop zone's own type check knows no MIME type for .npy or .parquet)."""
    return pn.widgets.FileDropper(multiple=multiple, max_file_size=f"{MAX_UPLOAD_BYTES // 2**20}MB",
                                  chunk_size=4_000_000, label=f"{label} ({accept.replace(',', ' ')}; up to {human_size(MAX_UPLOAD_BYTES)})",
                                  layout="compact", css_classes=[css_class], sizing_mode="stretch_width",
                                  stylesheets=["label {white-space: normal}"])   # a long label wraps in the sidebar


def uploaded(widget: pn.widgets.FileDropper) -> list[Upload] | Upload | None:
    """What a drop zone holds as :class:`Upload` s (a list when it takes several files; the newest
    file otherwise), or None when it is empty."""
    files = [Upload(name, data.encode() if isinstance(data, str) else data) for name, data in widget.value.items()]
    if not files:
        return None
    return files if widget.multiple else files[-1]


def on_open(callback: Callable[[], None]) -> None:
    """Run ``callback`` once the page is shown: after the served page has loaded, or at once in a
    notebook or a script."""
    doc = pn.state.curdoc
    if doc is not None and doc.session_context is not None:
        pn.state.onload(callback)
    else:
        callback()


class QuietChanges:
    """For a page whose watchers start jobs: ``with self._quiet():`` marks the parameter changes the page
    makes itself (after a load, say), which must not start any; watchers check ``self._quiet_depth``."""

    _quiet_depth = 0

    @contextlib.contextmanager
    def _quiet(self):
        self._quiet_depth += 1
        try:
            yield
        finally:
            self._quiet_depth -= 1
