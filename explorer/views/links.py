"""Links that reproduce a view: every page's user-facing settings live in the URL query, both ways;
a "Share" button for what a URL cannot hold; a "Download report" button.

    class DiversityExplorer(pn.viewable.Viewer):
        def __init__(self, **params):
            params.setdefault("analysis", DiversityAnalysis())
            super().__init__(**params)
            self.links = PageLinks(self, "diversity")   # before the page watches its own settings

**What a link holds.** ``?page=<page>`` and each setting of :data:`PAGE_FIELDS` whose value differs
from its default, as plain text (``alpha=0.05``, ``center=true``, ``q=inf``). Values come from the
parameters themselves (one generic reader and writer over ``param``, per-page lists of names). Moving a
widget rewrites the URL (coalesced: one history entry per burst of moves); opening a copied URL in a
fresh browser applies them before the page computes, so it shows the same view, computed again.

**Bad input.** Every value is parsed against its parameter: the type, hard bounds (soft bounds where a
parameter has only those), the choices of a selector, finite numbers, at most :data:`MAX_LINK_CHARS`
characters, names (models, runs) without paths. An unknown, malformed, out-of-range, NaN or oversized
value leaves that setting at its default, and the page shows one message naming the settings (never
their values), so a link cannot inject HTML or break the page; the URL is rewritten without them.

**Shares.** A text longer than :data:`MAX_LINK_CHARS` or an uploaded file cannot go in a URL: "Share"
stores the page's link settings (all of them, full length) and its uploaded files on the server
(:class:`explorer.data.shares.ShareStore`: content-addressed JSON plus the files' bytes, no pickles)
and shows a short link ``?page=<page>&share=<id>``. Opening it applies the shared settings, restores
the uploads into the page's drop zones, and then any setting in the query on top. A share that does
not exist (deleted, mistyped) says so and the page opens with its defaults.

Outside a served session (a notebook, a script) :class:`PageLinks` does nothing.
"""

from __future__ import annotations

import asyncio
import html
import io
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import panel as pn
import param

from explorer.data.shares import MAX_FIELD_CHARS, ShareStore
from explorer.data.uploads import Upload
from explorer.errors import InputError
from explorer.views.shared import NOTE_CSS, uploaded

MAX_LINK_CHARS = 2000          # one value in a URL; longer texts need a share
MAX_NAMED = 8                  # unknown settings named in the message
WRITE_DELAY_MS = 300           # URL updates are coalesced over this long
NAME = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?)?")   # or empty: the default
RUN_ID = re.compile(r"[A-Za-z0-9_-]{0,64}")
INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?|[+-]?(inf|nan)", re.IGNORECASE)
KEPT = ("page", "theme")       # query keys of the app, not of a page's settings
UPLOAD = "upload"
HEADER_BUTTON_CSS = ".bk-btn {background-color: white; color: #111827; border: 1px solid #d1d5db}"


@dataclass(frozen=True)
class Field:
    """One setting in a link: its query ``key`` and its parameter ``path`` from the view
    ("analysis.alpha" or "source"). ``pattern``: what a string may be (names, never paths).
    ``replay``: the page acts on this setting only when it changes (e.g. loading a comparison), so
    it is triggered once the page has opened. ``uploads``: the value "upload" needs shared files."""

    key: str
    path: str
    pattern: re.Pattern | None = None
    replay: bool = False
    uploads: bool = False


def _fields(*specs) -> tuple[Field, ...]:
    return tuple(spec if isinstance(spec, Field) else Field(spec.rsplit(".", 1)[-1], spec) for spec in specs)


#: Every page's settings in a link, in the order they are written.
PAGE_FIELDS: dict[str, tuple[Field, ...]] = {
    "lens": _fields(
        Field("model", "analysis.model_name", NAME), "analysis.mode", "analysis.prompt", "analysis.text",
        "analysis.chat", "analysis.decoding", "analysis.generation_temperature", "analysis.top_k",
        "analysis.top_p", "analysis.min_p", "analysis.typical_p", "analysis.epsilon", "analysis.alpha",
        "analysis.top_n", "analysis.tau", "analysis.eta", "analysis.max_new_tokens", "analysis.seed",
        "analysis.temperature", "analysis.colour_by", "analysis.window", "analysis.layer", "analysis.head",
        # the lens, deeper (a tab computes its result when shown; the steps are left out: the page fills
        # them from the chain's split, so every link would carry them)
        "analysis.lens_measure", "analysis.lens_position", "analysis.quadrant_entropy_bits",
        "analysis.quadrant_varentropy_bits2", "analysis.branch_position", "analysis.branches_k", "analysis.branch_tokens",
        Field("second_model", "analysis.second_model", NAME), "analysis.ead_threshold_bits", "analysis.question",
        "analysis.chain", "analysis.answer", "analysis.split_by"),
    "temperature": _fields(Field("run", "run_id", RUN_ID, replay=True), "measure",
                           Field("question", "question_index")),
    "diversity": _fields(Field("source", "source", uploads=True), Field("compare", "compare_with", replay=True,
                                                                        uploads=True),
                         "analysis.kernel", "analysis.sigma", "analysis.degree", "analysis.center", "analysis.q",
                         "analysis.t", "analysis.dse_sigma"),
    "conformal": _fields(Field("source", "source", uploads=True), Field("kind", "upload_kind"), "analysis.method",
                         "analysis.randomised", "analysis.alpha", Field("calibration", "analysis.calibration_fraction"),
                         "analysis.seed", "analysis.class_conditional", "analysis.raps_tuning", "analysis.raps_lambda",
                         "analysis.raps_k_reg", Field("splits", "analysis.n_splits"), "example_filter"),
    # The layer is not in a link: its choices are the loaded runs' layers, filled when they load, so
    # parse_value would refuse every layer before (a link is read before the page loads its data).
    # The epoch is a plain number: the page applies a link's epoch to the first runs it loads.
    "training": _fields(Field("source", "source", uploads=True), Field("log", "log_source", uploads=True),
                        "measure", "analysis.sigma", "analysis.t", "analysis.q", "analysis.clusters", "analysis.seed",
                        "analysis.epoch", "analysis.bootstrap", "analysis.level", "analysis.fraction"),
}


# ------------------------------------------------------------------------------------------- values
def encode_value(value) -> str:
    """A setting as a link writes it: ``true``/``false``, the shortest exact float, ``inf``, text as is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if value == math.inf else "-inf" if value == -math.inf else repr(value)
    return str(value)


def _number(raw: str, integer: bool):
    text = raw.strip()
    if integer:
        if not INTEGER.fullmatch(text):
            raise ValueError("not a whole number")
        return int(text)
    if not DECIMAL.fullmatch(text):
        raise ValueError("not a number")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _check_bounds(parameter: param.Parameter, value) -> None:
    bounds = parameter.bounds or getattr(parameter, "softbounds", None)
    if not bounds:
        return
    low, high = bounds
    inclusive = getattr(parameter, "inclusive_bounds", (True, True))
    below = low is not None and (value < low or (value == low and not inclusive[0]))
    above = high is not None and (value > high or (value == high and not inclusive[1]))
    if below or above:
        raise ValueError(f"out of range ({encode_value(low) if low is not None else '−∞'} to "
                         f"{encode_value(high) if high is not None else '∞'})")


def parse_value(parameter: param.Parameter, raw: str, pattern: re.Pattern | None = None,
                limit: int = MAX_LINK_CHARS):
    """The value a link's text ``raw`` gives ``parameter``, or ``ValueError(reason)`` (the reason never
    repeats the text). ``limit``: the most characters (a share holds longer texts than a URL)."""
    if not isinstance(raw, str):
        raise ValueError("not text")
    if len(raw) > limit:
        raise ValueError(f"too long ({len(raw):,} characters; a link holds up to {MAX_LINK_CHARS:,}: use Share)")
    if isinstance(parameter, param.Selector):
        for choice in parameter.objects:
            if raw == encode_value(choice) or (isinstance(choice, (int, float)) and not isinstance(choice, bool)
                                               and _float_or_none(raw) == choice):
                return choice
        raise ValueError("not one of the choices")
    if isinstance(parameter, param.Boolean):
        lowered = raw.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError("not true or false")
    if isinstance(parameter, param.Number):   # Integer is a Number
        value = _number(raw, isinstance(parameter, param.Integer))
        _check_bounds(parameter, value)
        return value
    if isinstance(parameter, param.String):
        if pattern is not None and not pattern.fullmatch(raw):
            raise ValueError("not a valid name")
        return raw
    raise TypeError(f"links cannot hold a {type(parameter).__name__} parameter")


def _float_or_none(raw: str):
    return float(raw) if DECIMAL.fullmatch(raw.strip()) else None


def _resolve(view, path: str) -> tuple[param.Parameterized, str]:
    """The object owning the parameter at ``path`` ("analysis.alpha") and the parameter's name."""
    target = view
    parts = path.split(".")
    for part in parts[:-1]:
        target = getattr(target, part)
    return target, parts[-1]


def read_link(view, fields: tuple[Field, ...], raw: Mapping[str, str],
              shared_slots: frozenset[str] = frozenset(), limit: int = MAX_LINK_CHARS
              ) -> tuple[dict[Field, Any], dict[str, str]]:
    """Parse a link's settings (``raw``: query key to text) for ``view``: the values to apply by
    field, and the rejected settings by key with the reason. ``shared_slots``: fields whose
    "upload" comes with shared files (left to the page's drop zones); ``limit``: the most characters
    of one value (:data:`MAX_LINK_CHARS` in a URL, more in a share)."""
    by_key = {field.key: field for field in fields}
    values, rejected = {}, {}
    for key, text in raw.items():
        field = by_key.get(key)
        if field is None:
            rejected[key] = "not a setting of this page"
            continue
        owner, name = _resolve(view, field.path)
        try:
            value = parse_value(owner.param[name], text, field.pattern, limit)
        except ValueError as err:
            rejected[key] = str(err)
            continue
        if field.uploads and value == UPLOAD:
            if field.key not in shared_slots:
                rejected[key] = "an uploaded file cannot travel in a link: ask for a Share link"
            continue
        values[field] = value
    return values, rejected


def apply_values(view, values: Mapping[Field, Any]) -> dict[str, str]:
    """Set the parsed values on their owners (together per owner); returns the keys a parameter
    refused (e.g. a dynamic bound) with the reason."""
    refused = {}
    owners: dict[int, tuple[param.Parameterized, dict]] = {}
    for field, value in values.items():
        owner, name = _resolve(view, field.path)
        owners.setdefault(id(owner), (owner, {}))[1][name] = (field.key, value)
    for owner, named in owners.values():
        try:
            owner.param.update(**{name: value for name, (_key, value) in named.items()})
        except Exception:   # noqa: BLE001 - one refused value must not cost the others: apply one by one
            for name, (key, value) in named.items():
                try:
                    setattr(owner, name, value)
                except Exception as err:  # noqa: BLE001
                    refused[key] = f"refused ({type(err).__name__})"
    return refused


def link_query(view, fields: tuple[Field, ...], full: bool = False) -> dict[str, str]:
    """The page's settings as link text: those that differ from their defaults (every one with
    ``full``, as a share stores them), without "upload" and, unless ``full``, without texts too long
    for a URL."""
    query = {}
    for field in fields:
        owner, name = _resolve(view, field.path)
        value = getattr(owner, name)
        if value is None or (field.uploads and value == UPLOAD):
            continue
        default = owner.param[name].default
        text = encode_value(value)
        if not full and (value == default or len(text) > MAX_LINK_CHARS):
            continue
        query[field.key] = text
    return query


def rejected_message(rejected: Mapping[str, str]) -> str:
    """The page's message for settings a link could not use: their names (cut to 40 characters) and
    why, never their values."""
    named = [f"{key[:40]} ({reason})" for key, reason in list(rejected.items())[:MAX_NAMED]]
    more = len(rejected) - len(named)
    return ("Some settings in this link could not be used; the page shows their defaults instead: "
            + "; ".join(named) + (f"; and {more} more" if more > 0 else "") + ".")


# ------------------------------------------------------------------------------------------- uploads
@dataclass(frozen=True)
class UploadSlot:
    """An uploaded file a page uses: ``files(view)`` (empty when unused), ``restore(view, files)``."""

    files: Callable[[Any], list[Upload]]
    restore: Callable[[Any, list[Upload]], None]


def _dropped(widget_name: str, when: Callable[[Any], bool]) -> Callable[[Any], list[Upload]]:
    def files(view) -> list[Upload]:
        found = uploaded(getattr(view, widget_name)) if when(view) else None
        return [] if found is None else found if isinstance(found, list) else [found]
    return files


def _drop(widget_name: str, then: Callable[[Any], None] | None = None):
    def restore(view, files: list[Upload]) -> None:
        getattr(view, widget_name).value = {upload.name: upload.data for upload in files}
        if then is not None:
            then(view)
    return restore


#: The uploaded files of each page that a share stores, by the link key whose value they stand for.
UPLOAD_SLOTS: dict[str, dict[str, UploadSlot]] = {
    "diversity": {"source": UploadSlot(_dropped("_upload", lambda v: v.source == UPLOAD), _drop("_upload")),
                  "compare": UploadSlot(_dropped("_upload_b", lambda v: v.compare_with == UPLOAD), _drop("_upload_b"))},
    "conformal": {"source": UploadSlot(_dropped("_upload", lambda v: v.source == UPLOAD),
                                       _drop("_upload", lambda v: v._load_current(UPLOAD)))},
    "temperature": {"questions": UploadSlot(
        lambda v: [v.analysis.questions_upload] if v.analysis.questions_upload is not None else [], _drop("_upload"))},
    # an uploaded log is read again with its usual column names (a mapping chosen by hand is not stored)
    "training": {"source": UploadSlot(_dropped("_upload", lambda v: v.source == UPLOAD), _drop("_upload")),
                 "log": UploadSlot(_dropped("_log_upload", lambda v: v.log_source == UPLOAD), _drop("_log_upload"))},
}


# ------------------------------------------------------------------------------------------- reports
def _report_subject(view, page: str) -> tuple[Any, dict]:
    """The analysis a page's report shows and the options of its ``report_sections``."""
    if page == "temperature":
        if view.results is None:
            raise InputError("Open a run first: the report shows the open run.")
        return view.results, {"measure": view.measure}
    if page == "diversity":
        other = view.other if view.other is not None and view.other.is_computed() else None
        return view.analysis, {"other": other}
    if page == "training":
        return view.analysis, {"measure": view.measure}
    return view.analysis, {}


def page_report(view, page: str) -> str:
    """The page's report as HTML, from cached results (for a job or a thread, never the event loop)."""
    from explorer.analyses.report import Note, render, report_html

    try:
        subject, options = _report_subject(view, page)
    except InputError as err:
        return render(f"Entropy Explorer · {page}", [Note(str(err), warning=True)])
    return report_html(subject, compute=False, **options)


# ------------------------------------------------------------------------------------------- the page's links
def _served() -> bool:
    doc = pn.state.curdoc
    return doc is not None and doc.session_context is not None


def _session_query() -> dict[str, str]:
    """The request's query, one text per key (the last one wins), decoded leniently."""
    args = pn.state.session_args or {}
    return {key: values[-1].decode("utf-8", "replace") for key, values in args.items() if values}


class PageLinks(pn.viewable.Viewer):
    """A page's URL sync, share link and report button (see the module docstring).

    ``applied``: the settings a link set (key to value); ``rejected``: those it could not (key to
    reason); renders as the page's message line (bad settings, share links)."""

    message = param.String(default="", doc="The message shown above the page (plain text).")
    share_url = param.String(default="", doc="The last share link made on this page.")

    def __init__(self, view, page: str, **params):
        super().__init__(**params)
        self.view, self.page = view, page
        self.fields = PAGE_FIELDS[page]
        self.slots = UPLOAD_SLOTS.get(page, {})
        self.applied: dict[str, Any] = {}
        self.rejected: dict[str, str] = {}
        self.share_id: str | None = None
        self._query: dict[str, str] = {}
        self._pending = False
        self._pane = pn.pane.HTML("", visible=False, sizing_mode="stretch_width", css_classes=["link-message"])
        self.param.watch(self._show, ["message", "share_url"])
        self.active = _served()
        if not self.active:
            return
        self._doc, self._location = pn.state.curdoc, pn.state.location
        self._query = _session_query()
        shared = self._open_share(self._query.get("share"))
        query = {k: v for k, v in self._query.items() if k not in (*KEPT, "share") and not k.startswith("bokeh-")}
        slots = frozenset(shared.uploads) if shared else frozenset()
        # a share's own fields may be as long as the share store holds; the query's on top, URL-sized
        values, self.rejected = read_link(view, self.fields, shared.fields if shared else {}, slots, MAX_FIELD_CHARS)
        from_query, rejected = read_link(view, self.fields, query, slots)
        values = {**{f: v for f, v in values.items() if f.key not in query}, **from_query}
        self.rejected = {**{k: r for k, r in self.rejected.items() if k not in query}, **rejected}
        self.rejected.update(apply_values(view, values))
        self.applied = {field.key: value for field, value in values.items() if field.key not in self.rejected}
        if self.rejected:
            self.message = " ".join(filter(None, [self.message, rejected_message(self.rejected)]))
        owners: dict[int, tuple[param.Parameterized, list[str]]] = {}
        for field in self.fields:
            owner, name = _resolve(view, field.path)
            owners.setdefault(id(owner), (owner, []))[1].append(name)
        for owner, names in owners.values():
            owner.param.watch(self._changed, names)
        replay = [f for f in values if f.replay and f.key in self.applied]
        pn.state.onload(lambda: self._opened(shared, replay))

    # ------------------------------------------------------------------ reading a link
    def _open_share(self, share_id: str | None):
        if share_id is None:
            return None
        try:
            shared = ShareStore().load(share_id)
        except InputError as err:
            self.message = f"{err} The page opens with its defaults."
            return None
        if shared.page != self.page:
            self.message = f"Share {share_id} is a link to the {shared.page} page, not this one."
            return None
        self.share_id = share_id
        return shared

    def _opened(self, shared, replay: list[Field]) -> None:
        """Once the page is shown: restore shared files, let the page act on replayed settings, and
        rewrite the URL to what the page shows."""
        if shared is not None:
            for key, files in shared.uploads.items():
                if key in self.slots and files:
                    self.slots[key].restore(self.view, files)
        for field in replay:
            owner, name = _resolve(self.view, field.path)
            owner.param.trigger(name)
        self._write()

    # ------------------------------------------------------------------ writing the URL
    def _changed(self, *_events) -> None:
        if self._pending or not self.active:
            return
        self._pending = True
        try:
            self._doc.add_timeout_callback(self._write, WRITE_DELAY_MS)
        except Exception:  # noqa: BLE001 - the session is gone
            self._pending = False

    def query(self) -> dict[str, str]:
        """The URL query that reproduces the page now (its app keys, the share, the settings)."""
        kept = {k: v for k, v in self._query.items() if k in KEPT}
        share = {"share": self.share_id} if self.share_id else {}
        return {**kept, **share, **link_query(self.view, self.fields)}

    def _write(self) -> None:
        self._pending = False
        location = self._location
        if location is None:
            return
        search = "?" + urllib.parse.urlencode(self.query())
        if location.search != search:
            location.search = search

    # ------------------------------------------------------------------ sharing
    def share(self) -> str:
        """Store the page's settings and uploads (:class:`ShareStore`); returns the share id.
        Reads the page's state only: call from a job or a thread (hashing large uploads takes time)."""
        uploads = {key: slot.files(self.view) for key, slot in self.slots.items()}
        return ShareStore().save(self.page, link_query(self.view, self.fields, full=True), uploads)

    def _base_url(self) -> str:
        href = self._location.href if self._location is not None else ""
        return href.split("?", 1)[0].split("#", 1)[0]

    def _on_share(self, _event=None) -> None:
        base = self._base_url()

        def shared(share_id: str) -> None:
            self.share_url = f"{base}?{urllib.parse.urlencode({'page': self.page, 'share': share_id})}"
        jobs = getattr(self.view, "jobs", None)
        if jobs is not None:
            jobs.submit(lambda progress: self.share(), "Saving the shared view", slot="share", on_done=shared)
        else:
            shared(self.share())

    # ------------------------------------------------------------------ display
    def _show(self, *_events) -> None:
        parts = []
        if self.message:
            parts.append(f"<div class='link-warning' style='{NOTE_CSS}'>⚠ {html.escape(self.message)}</div>")
        if self.share_url:
            url = html.escape(self.share_url, quote=True)
            parts.append(f"<div class='link-share' style='{NOTE_CSS};background:#ccfbf1'>Share link (inputs stored on "
                         f"this server; uploads are visible only to users of this server who have the link): "
                         f"<input class='link-share-url' readonly value=\"{url}\" style='width:60%' "
                         f"onfocus='this.select()'> <a href=\"{url}\" target='_blank'>open</a></div>")
        self._pane.object = "".join(parts)
        self._pane.visible = bool(parts)

    def controls(self) -> pn.Row:
        """The page's "Share" and "Download report" buttons."""
        share = pn.widgets.Button(label="Share", color="light", width=90, css_classes=["link-share-button"])
        share.on_click(self._on_share)
        view, page = self.view, self.page

        async def report():
            text = await asyncio.to_thread(page_report, view, page)
            return io.BytesIO(text.encode("utf-8"))
        download = pn.widgets.FileDownload(callback=report, filename=f"entropy-explorer-{page}-report.html",
                                           label="Download report", width=150, color="light",
                                           css_classes=["link-report-button"], stylesheets=[HEADER_BUTTON_CSS])
        return pn.Row(share, download, margin=0)

    def __panel__(self):
        return self._pane
