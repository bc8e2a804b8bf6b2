"""Self-contained HTML reports of an analysis: its cards, tables and plots (interactive Bokeh), its
settings, where its model or data came from, and the package versions; one file that opens offline.

An analysis describes what it shows as data with ``report_sections(**options)``: a list of the parts
below (:class:`Heading`, :class:`Cards`, :class:`Facts`, :class:`Table`, :class:`Plot`,
:class:`TokenText`, :class:`Note`). :func:`report_html` turns them into one HTML page with
``bokeh.embed.file_html`` and INLINE resources (BokehJS is inside the file: no server, no network).
Every text from the data (tokens, labels, file names) is escaped. No Panel here: the page's button,
the Python API (``analysis.report("file.html")``) and ``explorer report`` all call this module.

    analysis.report("diversity.html")           # computes what is missing first
    html = report_html(analysis, compute=False)  # cached results only (a page's button, in a job)
"""

from __future__ import annotations

import datetime as dt
import html
import importlib.metadata
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from bokeh.embed import file_html
from bokeh.models import ColorBar, ColumnDataSource, Div, FactorRange, HoverTool, LinearColorMapper, Span
from bokeh.palettes import Viridis256
from bokeh.plotting import figure
from bokeh.resources import Resources

from explorer.errors import InputError

# The pages' palette (explorer.views.shared): teal, amber, purple, red, grey, ink.
TEAL, AMBER, PURPLE, RED, GREY, INK = "#0f766e", "#b45309", "#6d28d9", "#dc2626", "#9ca3af", "#111827"
SERIES = (TEAL, AMBER, PURPLE, "#be123c", "#1d4ed8", "#4d7c0f", "#a16207", "#0e7490", "#9d174d", "#374151")
PACKAGES = ("entropy-explorer", "torch", "transformers", "numpy", "pandas", "scipy", "scikit-learn", "bokeh",
            "holoviews", "panel", "param", "duckdb")
MAX_TABLE_ROWS = 300


class _BokehOnly(Resources):
    """INLINE resources with BokehJS alone: Bokeh adds the scripts every imported model class asks for
    (Panel's models add URLs that a file opened offline cannot load); the report's plots need none."""

    def _collect_external_resources(self, resource_attr) -> list[str]:
        return []

    def clone(self, *, components=None) -> "_BokehOnly":
        return _BokehOnly(mode="inline", components=list(self.components) if components is None else components)


INLINE = _BokehOnly(mode="inline")


# ---------------------------------------------------------------------------------------- parts
@dataclass
class Heading:
    text: str


@dataclass
class Note:
    """A plain-text remark (a warning when ``warning``)."""

    text: str
    warning: bool = False


@dataclass
class Cards:
    """Score cards: ``(title, value, note)`` each; numbers are shown with 4 significant digits."""

    items: Sequence[tuple[str, Any, str]]


@dataclass
class Facts:
    """A two-column table of named facts (provenance: model, data set, run)."""

    title: str
    items: dict[str, Any]


@dataclass
class Table:
    title: str
    frame: pd.DataFrame
    note: str = ""


@dataclass
class Line:
    x: Sequence
    y: Sequence
    label: str = ""
    colour: str = TEAL
    width: float = 2.0
    dash: str = "solid"
    alpha: float = 1.0


@dataclass
class Points:
    x: Sequence
    y: Sequence
    label: str = ""
    colour: str | Sequence[str] = TEAL
    size: float = 6.0
    alpha: float = 0.8
    hover: dict[str, Sequence] = field(default_factory=dict)


@dataclass
class Bars:
    """Bars at categories (strings) or at numbers (unit width unless ``width``)."""

    x: Sequence
    top: Sequence
    label: str = ""
    colour: str = TEAL
    width: float = 0.8


@dataclass
class Band:
    x: Sequence
    low: Sequence
    high: Sequence
    colour: str = TEAL
    alpha: float = 0.18
    label: str = ""


@dataclass
class Rule:
    """A vertical (``"height"``) or horizontal (``"width"``) line at ``location``."""

    location: float
    dimension: str = "height"
    colour: str = RED
    dash: str = "dashed"


@dataclass
class Heatmap:
    x: Sequence
    y: Sequence
    value: Sequence
    label: str = "value"


@dataclass
class Plot:
    title: str
    x_label: str
    y_label: str
    marks: list
    x_log: bool = False
    y_log: bool = False
    width: int = 700
    height: int = 300


@dataclass
class TokenText:
    """A text token by token, each shaded white-to-teal by ``values`` in [0, ``top``] (hover: the value)."""

    tokens: Sequence[str]
    values: Sequence[float]
    top: float
    label: str


Part = Heading | Note | Cards | Facts | Table | Plot | TokenText


# ---------------------------------------------------------------------------------------- rendering
def _text(value) -> str:
    """A value as a report shows it: 4 significant digits, ∞, n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "n/a"
        return ("∞" if value > 0 else "−∞") if math.isinf(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _cards_html(part: Cards) -> str:
    cards = "".join(f"<div class='card'><div class='card-title'>{html.escape(title)}</div>"
                    f"<div class='card-value'>{html.escape(_text(value))}</div>"
                    f"<div class='card-note'>{html.escape(note)}</div></div>" for title, value, note in part.items)
    return f"<div class='cards'>{cards}</div>"


def _facts_html(part: Facts) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_text(v))}</td></tr>"
                   for k, v in part.items.items())
    return f"<h3>{html.escape(part.title)}</h3><table class='facts'>{rows}</table>"


def _table_html(part: Table) -> str:
    frame = part.frame
    shown = frame.head(MAX_TABLE_ROWS)
    index = not isinstance(frame.index, pd.RangeIndex)
    columns = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_text(v))}</td>"
                                    for v in ([label] if index else []) + list(row)) + "</tr>"
                   for label, row in zip(shown.index, shown.itertuples(index=False)))
    more = f"<p class='note'>First {MAX_TABLE_ROWS} of {len(frame):,} rows.</p>" if len(frame) > MAX_TABLE_ROWS else ""
    note = f"<p class='note'>{html.escape(part.note)}</p>" if part.note else ""
    return (f"<h3>{html.escape(part.title)}</h3>{note}<div class='table'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>{more}")


def _shade(share: float) -> str:
    share = min(max(share, 0.0), 1.0) if math.isfinite(share) else 0.0
    r, g, b = (round(255 - share * (255 - c)) for c in (45, 160, 150))
    return f"rgb({r},{g},{b})"


def _tokens_html(part: TokenText) -> str:
    spans = "".join(f"<span class='tok' style='background:{_shade(v / max(part.top, 1e-9))}' "
                    f"title='{html.escape(part.label)} {_text(v)}'>{html.escape(t.replace(chr(10), '⏎' + chr(10)))}</span>"
                    for t, v in zip(part.tokens, part.values))
    legend = (f"<div class='note'><span class='tok' style='background:{_shade(0)}'>low</span> "
              f"<span class='tok' style='background:{_shade(1)}'>high {html.escape(part.label)}</span></div>")
    return f"{legend}<div class='tokens'>{spans}</div>"


def _finite(values) -> np.ndarray:
    return np.asarray(values, dtype=float)


def _figure(part: Plot):
    categorical = [m for m in part.marks if isinstance(m, Bars) and len(m.x) and isinstance(next(iter(m.x)), str)]
    heat = [m for m in part.marks if isinstance(m, Heatmap)]
    kwargs = {}
    if categorical:
        kwargs["x_range"] = FactorRange(factors=[str(x) for x in categorical[0].x])
    if heat:
        kwargs["x_range"] = FactorRange(factors=[str(v) for v in dict.fromkeys(heat[0].x)])
        kwargs["y_range"] = FactorRange(factors=[str(v) for v in dict.fromkeys(heat[0].y)])
    fig = figure(title=part.title, width=part.width, height=part.height, x_axis_label=part.x_label,
                 y_axis_label=part.y_label, x_axis_type="log" if part.x_log else "linear",
                 y_axis_type="log" if part.y_log else "linear", tools="pan,wheel_zoom,box_zoom,reset,save",
                 toolbar_location="right", **kwargs)
    fig.toolbar.logo = None
    hovered = []
    for mark in part.marks:
        legend = {"legend_label": mark.label} if getattr(mark, "label", "") and not isinstance(mark, Heatmap) else {}
        if isinstance(mark, Line):
            source = ColumnDataSource({"x": _finite(mark.x), "y": _finite(mark.y)})
            hovered.append(fig.line("x", "y", source=source, color=mark.colour, line_width=mark.width,
                                    line_dash=mark.dash, alpha=mark.alpha, **legend))
        elif isinstance(mark, Points):
            data = {"x": _finite(mark.x), "y": _finite(mark.y), **{k: list(v) for k, v in mark.hover.items()}}
            colour = mark.colour
            if not isinstance(colour, str):
                data["colour"], colour = list(colour), "colour"
            renderer = fig.scatter("x", "y", source=ColumnDataSource(data), color=colour, size=mark.size,
                                   alpha=mark.alpha, **legend)
            fig.add_tools(HoverTool(renderers=[renderer], tooltips=[("x", "@x{0.000}"), ("y", "@y{0.000}")]
                                    + [(k, f"@{{{k}}}") for k in mark.hover]))
        elif isinstance(mark, Bars):
            x = [str(v) for v in mark.x] if categorical else _finite(mark.x)
            source = ColumnDataSource({"x": x, "top": _finite(mark.top)})
            renderer = fig.vbar("x", top="top", width=mark.width, source=source, color=mark.colour, alpha=0.85,
                                **legend)
            fig.add_tools(HoverTool(renderers=[renderer], tooltips=[("", "@x"), (part.y_label, "@top{0.000}")]))
        elif isinstance(mark, Band):
            fig.varea(_finite(mark.x), _finite(mark.low), _finite(mark.high), color=mark.colour, alpha=mark.alpha,
                      **legend)
        elif isinstance(mark, Rule):
            fig.add_layout(Span(location=float(mark.location), dimension=mark.dimension, line_color=mark.colour,
                                line_dash=mark.dash, line_width=2))
        elif isinstance(mark, Heatmap):
            values = _finite(mark.value)
            finite = values[np.isfinite(values)]
            mapper = LinearColorMapper(palette=Viridis256, low=float(finite.min()) if len(finite) else 0.0,
                                       high=float(finite.max()) if len(finite) else 1.0)
            source = ColumnDataSource({"x": [str(v) for v in mark.x], "y": [str(v) for v in mark.y], "value": values})
            renderer = fig.rect("x", "y", 1, 1, source=source, fill_color={"field": "value", "transform": mapper},
                                line_color=None)
            fig.add_layout(ColorBar(color_mapper=mapper, title=mark.label), "right")
            fig.add_tools(HoverTool(renderers=[renderer], tooltips=[(part.x_label, "@x"), (part.y_label, "@y"),
                                                                    (mark.label, "@value{0.000}")]))
        else:
            raise TypeError(f"unknown plot mark {type(mark).__name__}")
    if hovered:
        fig.add_tools(HoverTool(renderers=hovered, tooltips=[(part.x_label, "@x{0.000}"), (part.y_label, "@y{0.000}")]))
    if fig.legend:
        fig.legend.click_policy = "hide"
        fig.legend.location = "top_left"
    return fig


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#111827;margin:24px auto;max-width:1000px;
  padding:0 16px;line-height:1.45}
h1{color:#0f766e;margin-bottom:4px}h2{border-bottom:2px solid #0f766e;padding-bottom:2px;margin-top:28px}
.meta,.note{color:#6b7280;font-size:13px}.warning{background:#fef3c7;border-radius:6px;padding:6px 10px}
.cards{display:flex;flex-wrap:wrap}.card{padding:6px 12px;border:1px solid #e5e7eb;border-radius:8px;
  margin:0 8px 8px 0;min-width:120px}.card-title,.card-note{font-size:12px;color:#6b7280}
.card-value{font-size:20px;font-weight:600}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #e5e7eb;padding:3px 8px;text-align:left;
  vertical-align:top}thead th{background:#f3f4f6;position:sticky;top:0}.table{max-height:420px;overflow:auto}
table.facts th{background:#f9fafb;width:220px}
.tokens{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;line-height:1.9;font-size:14px}
.tok{border-radius:3px;padding:1px 0}.plot{margin:10px 0}
"""
TEMPLATE = """{% extends "file.html.jinja" %}
{% block postamble %}<style>{{ style }}</style>{% endblock %}
{% block contents %}
{% for part in parts %}{% if part.root is not none %}<div class="plot">{{ embed(docs[0].roots[part.root]) }}</div>
{% else %}{{ part.html }}
{% endif %}{% endfor %}
{% endblock %}
"""


@dataclass
class _Rendered:
    html: str = ""
    root: int | None = None


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages a result depends on."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def render(title: str, parts: list, settings: dict[str, Any] | None = None, subtitle: str = "") -> str:
    """One HTML page from report parts, the settings table and the versions (see the module docstring)."""
    rendered, figures = [], []
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rendered.append(_Rendered(f"<h1>{html.escape(title)}</h1><p class='meta'>{html.escape(subtitle)}"
                              f"{' · ' if subtitle else ''}Entropy Explorer report, {stamp}. Plots are interactive "
                              "(pan, zoom, hover); this file needs no server and no network.</p>"))
    for part in parts:
        if isinstance(part, Plot):
            figures.append(_figure(part))
            rendered.append(_Rendered(root=len(figures) - 1))
        elif isinstance(part, Heading):
            rendered.append(_Rendered(f"<h2>{html.escape(part.text)}</h2>"))
        elif isinstance(part, Note):
            rendered.append(_Rendered(f"<p class='{'warning' if part.warning else 'note'}'>{html.escape(part.text)}</p>"))
        elif isinstance(part, Cards):
            rendered.append(_Rendered(_cards_html(part)))
        elif isinstance(part, Facts):
            rendered.append(_Rendered(_facts_html(part)))
        elif isinstance(part, Table):
            rendered.append(_Rendered(_table_html(part)))
        elif isinstance(part, TokenText):
            rendered.append(_Rendered(_tokens_html(part)))
        else:
            raise TypeError(f"unknown report part {type(part).__name__}")
    tail = [Heading("Settings"), Facts("Settings of this view", settings or {}),
            Heading("Versions"), Facts("Software that computed this report", versions())]
    rendered += [_Rendered(_facts_html(p) if isinstance(p, Facts) else f"<h2>{html.escape(p.text)}</h2>") for p in tail]
    if not figures:    # file_html needs a model to embed
        figures.append(Div(text=""))
        rendered.append(_Rendered(root=0))
    from bokeh.core.templates import get_env

    template = get_env().from_string(TEMPLATE)
    return file_html(figures, INLINE, title, template=template,
                     template_variables={"parts": rendered, "style": STYLE}, _always_new=True)


def report_html(analysis, title: str | None = None, compute: bool = True, **options) -> str:
    """The report of ``analysis`` as one HTML page. ``compute``: run the long part first (Python and
    the CLI); otherwise read cached results only (a page, in its job runner) and say what is missing.
    ``options`` go to ``analysis.report_sections`` (e.g. the measure of a run, a diversity comparison)."""
    title = title or getattr(analysis, "report_title", type(analysis).__name__)
    if compute:
        analysis.compute()
        parts = analysis.report_sections(**options)
    else:
        try:
            with analysis.reading():
                parts = analysis.report_sections(**options)
        except InputError as err:   # NotComputed, or nothing loaded yet
            parts = [Note(f"Nothing to report yet: {err}", warning=True)]
    return render(title, parts, analysis.settings())


def write_report(analysis, path: str | Path, title: str | None = None, compute: bool = True, **options) -> Path:
    """Write :func:`report_html` to ``path`` (UTF-8); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(analysis, title, compute, **options), encoding="utf-8")
    return path
