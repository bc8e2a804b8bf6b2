"""The diversity page: Vendi score of any order, its spectrum, DSE and DSMI, on bundled, uploaded or
hidden-state data, alone or beside a second data set.

A thin view over :class:`explorer.analyses.diversity.DiversityAnalysis`: widgets come from its
parameters, loading data and computing spectra run in the page's :class:`JobRunner` off the event loop,
and the page only ever reads cached results (``analysis.reading()``). The curves are Bokeh figures
built once, over ColumnDataSources the page owns: new results refill them, and a q or t move sets
only the data that depends on it (the q marker, the subsample, group and depth curves, the t marker,
the cards) in one held document update; no model is created, so Bokeh never recomputes the model
graph and HoloViews never re-renders. The PCA projection (HoloViews, rasterised with datashader
above ``hover_points``) is rebuilt only when new results arrive.
"""

from __future__ import annotations

import contextlib
import html
import math

import holoviews as hv
import numpy as np
import holoviews.plotting.bokeh  # noqa: F401 - registers the Bokeh backend (hv.extension would reset session hooks)
import pandas as pd
import panel as pn
import param
from bokeh.models import ColumnDataSource, FactorRange, HoverTool, FixedTicker, LogTicker, Range1d, Span
from bokeh.plotting import figure

from explorer.analyses.diversity import CURVE_Q, KERNEL_SETTINGS, DiversityAnalysis, NotComputed
from explorer.data.sources import EMBEDDING_SOURCES
from explorer.errors import InputError
from explorer.views.jobs import JobRunner
from explorer.views.links import PageLinks
from explorer.views.server import adopt_warm_results
from explorer.views.shared import (AMBER, PALETTE, TEAL, QuietChanges, card, download_button, format_value, on_open,
                                   upload_widget, uploaded)

COMPARE_OPTIONS = {"(no comparison)": "", **{s.label: s.key for s in EMBEDDING_SOURCES if s.kind == "bundled"},
                   "Second uploaded file": "upload"}
RESULTS_WIDTH = 740
HOVER_POINTS = 5000  # projections with more points are rasterised (datashader); fewer keep per-point hover
MAX_CATEGORIES = 20  # more groups than this are rasterised as plain counts
LOG_TICKS = [m * 10.0**e for e in range(-16, 8) for m in (1, 2, 5)]
SHARED_SETTINGS = (*KERNEL_SETTINGS, "dse_sigma", "q", "t")   # B is studied with A's settings
# On a q or t move: the marker, the subsample, group and depth curves, the t marker and the cards, read
# from the tables of every slider position (see DiversityExplorer._fill_tables). Ranges padded by 5 %.
MOVE_JS = """
const o = orders.data, m = times.data;
if (!o.x || o.x.length === 0 || !template.data.html.length) { return; }
const qi = qslider.value, ti = Math.min(Math.max(Math.round((tslider.value - 0.25) / 0.25), 0), m.t.length - 1);
const fit = (range, values, padLow) => {
  const vs = Array.from(values).filter(Number.isFinite);
  if (!vs.length) { return; }
  const lo = Math.min(...vs), hi = Math.max(...vs), pad = hi > lo ? 0.05 * (hi - lo) : 0.5;
  range.start = padLow ? lo - pad : lo; range.end = hi + pad;
};
const hasB = Number.isFinite(o.vendi_b[qi]);
marker.data = {q: hasB ? [o.x[qi], o.x[qi]] : [o.x[qi]], vendi: hasB ? [o.vendi_a[qi], o.vendi_b[qi]] : [o.vendi_a[qi]]};
sub.data = {size: sub.data.size, mean: o.sub_mean[qi], sd: sub.data.sd, low: o.sub_low[qi], high: o.sub_high[qi]};
fit(sub_range, [...o.sub_low[qi], ...o.sub_high[qi]], true);
if (o.group_vendi[qi].length) {
  groups.data = {group: groups.data.group, vendi: o.group_vendi[qi], n: groups.data.n};
  group_range.start = 0; fit(group_range, [0, ...o.group_vendi[qi]], false);
}
if (o.depth_vendi[qi].length) {
  depth.data = {layer: depth.data.layer, vendi: o.depth_vendi[qi], renyi_bits: o.depth_renyi[qi], dse_bits: m.depth_dse[ti]};
  fit(depth_range, [...o.depth_renyi[qi], ...m.depth_dse[ti]], true);
}
tspan.location = tslider.value;
let html = template.data.html[0];
const escape = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
for (const [table, i] of [[o, qi], [m, ti]]) {
  for (const key of Object.keys(table)) {
    if (key.startsWith("@@")) { html = html.split(key).join(escape(table[key][i])); }
  }
}
cards.text = escape(html);   // Panel's HTML model holds escaped markup (its view decodes it)
"""


def _card(key: str, title: str, value, note: str = "") -> str:
    return card(title, value, note, key=key, prefix="dv")


def _tokens(prefix: str) -> dict[str, str]:
    """The placeholders of the values that move with q or t in one row of cards (A: "a-", B: "b-")."""
    side = prefix or "a-"
    return {"q": "@@q@@", "t": "@@t@@", **{k: f"@@{side}{k}@@" for k in ("vendi", "renyi", "error", "upper", "dse",
                                                                          "dsmi")}}


def order_texts(q: float, vendi: float, renyi_bits: float, error: float, upper: float, prefix: str = "") -> dict:
    """The q-dependent texts of one row of cards, keyed by their placeholders."""
    tokens = _tokens(prefix)
    return {tokens["q"]: format_value(q), tokens["vendi"]: format_value(vendi), tokens["renyi"]: format_value(renyi_bits),
            tokens["error"]: f"{error:.1%}", tokens["upper"]: f"{upper:.4g}"}


def time_texts(t: float, dse_bits: float, dsmi_bits: float | None, prefix: str = "") -> dict:
    """The t-dependent texts of one row of cards, keyed by their placeholders."""
    tokens = _tokens(prefix)
    return {tokens["t"]: f"{t:g}", tokens["dse"]: format_value(dse_bits), tokens["dsmi"]: format_value(dsmi_bits)}


def cards_template(s: dict, notes: list[str], prefix: str = "", tag: str = "") -> str:
    """One row of score cards for the scores ``s`` of one analysis, with placeholders where the values
    move with q or t (:func:`order_texts`, :func:`time_texts` fill them, here or in the browser);
    ``prefix`` keeps B's classes apart."""
    k = _tokens(prefix)
    exactness = "exact" if s["exact"] else f"approximate ({s['spectrum']}, est. error {k['error']}, at most {k['upper']})"
    dse_note = f"bits, t = {k['t']}, σ = {s['dse_sigma']:.3g}" + \
        ("" if s["dse_rows"] == s["n"] else f", seeded subsample of {s['dse_rows']}")
    cards = [
        _card(prefix + "vendi", f"Vendi (q = {k['q']})", k["vendi"], exactness),
        _card(prefix + "rke", "RKE (Vendi q = 2)", s["rke"], s["kernel"] + " kernel"),
        _card(prefix + "renyi", f"Rényi entropy (α = {k['q']})", k["renyi"], "bits"),
        _card(prefix + "effective-rank", "Effective rank", s["effective_rank"], "of the kernel features"),
        _card(prefix + "dse", "DSE", k["dse"], dse_note),
        _card(prefix + "dsmi", "DSMI with groups", k["dsmi"], "bits" if s["dsmi_bits"] is not None else "no labels"),
        _card(prefix + "n", "Samples", s["n"], f"{s['dim']} dimensions"),
    ]
    note = "; ".join(notes)
    colour = AMBER if prefix else TEAL
    header = (f"<div class='dv-summary{' dv-summary-b' if prefix else ''}'>"
              f"{f'<span style=color:{colour};font-weight:700>{tag}</span> ' if tag else ''}"
              f"<b>{html.escape(s['dataset'])}</b>{' — ' + html.escape(note) if note else ''}</div>")
    return f"<div class='dv-cardrow{' dv-cards-b' if prefix else ''}'>" + header + "".join(cards) + "</div>"


def fill(template: str, texts: dict[str, str]) -> str:
    """``template`` with every placeholder replaced by its text (as the page's script does)."""
    for token, text in texts.items():
        template = template.replace(token, html.escape(text))
    return template


def cards_html(s: dict, notes: list[str], prefix: str = "", tag: str = "") -> str:
    """One row of score cards for the scores ``s`` of one analysis."""
    texts = {**order_texts(s["q"], s["vendi"], s["renyi_bits"], s["estimated_error"], s["vendi_upper_bound"], prefix),
             **time_texts(s["t"], s["dse_bits"], s["dsmi_bits"], prefix)}
    return fill(cards_template(s, notes, prefix, tag), texts)


def _fit(axis_range: Range1d, low: float, high: float, pad_low: bool = True) -> None:
    """Set a range to [low, high] plus 5 % padding (server-side, so the browser draws once)."""
    pad = 0.05 * (high - low) if high > low else 0.5
    axis_range.start, axis_range.end = float(low - pad if pad_low else low), float(high + pad)


def _figure(title: str, x_label: str, y_label: str, width: int = 360, height: int = 290, **kwargs):
    fig = figure(title=title, width=width, height=height, x_axis_label=x_label, y_axis_label=y_label,
                 tools="pan,wheel_zoom,box_zoom,reset,save", toolbar_location="right", **kwargs)
    fig.title.text_font_size = "12px"
    fig.toolbar.logo = None
    for axis, kind in ((fig.xaxis, kwargs.get("x_axis_type")), (fig.yaxis, kwargs.get("y_axis_type"))):
        if kind == "log":  # 1-2-5 ticks: Bokeh's own crowd their labels on short log ranges
            axis.ticker = FixedTicker(ticks=LOG_TICKS, minor_ticks=[])
    return fig


class DiversityExplorer(QuietChanges, pn.viewable.Viewer):
    """Diversity of a set of embeddings. ``DiversityExplorer()`` renders the page with the bundled
    text set; pass ``analysis=DiversityAnalysis(dataset=...)`` to study your own data from code."""

    analysis = param.ClassSelector(class_=DiversityAnalysis)
    source = param.Selector(objects=EMBEDDING_SOURCES.options(), default="texts", label="Data")
    compare_with = param.Selector(objects=COMPARE_OPTIONS, default="", label="Compare with (B)")
    hover_points = param.Integer(default=HOVER_POINTS, bounds=(0, None),
                                 doc="Projections of more points are rasterised; fewer show each sample on hover.")
    results = param.Integer(default=0, doc="Bumped when a job ends: the plots are refilled from the caches.")

    def __init__(self, **params):
        given = "analysis" in params
        params.setdefault("analysis", DiversityAnalysis())
        super().__init__(**params)
        self.links = PageLinks(self, "diversity")
        self.jobs = JobRunner()
        self.other: DiversityAnalysis | None = None
        a = self.analysis
        self._upload = upload_widget("Embeddings file", ".npy,.npz,.csv,.parquet", "dv-upload")
        self._upload_b = upload_widget("Second file (B)", ".npy,.npz,.csv,.parquet", "dv-upload-b")
        self._upload.param.watch(self._on_upload, "value")
        self._upload_b.param.watch(self._on_upload_b, "value")
        self._download = download_button(self._scores_csv, "diversity_scores.csv", "Export scores (CSV)", width=260)
        self._layer = pn.widgets.IntSlider.from_param(a.param.layer, start=0, end=max(len(a.layers) - 1, 1),
                                                      visible=bool(a.layers), css_classes=["dv-layer"])
        self._cards = pn.pane.HTML("<i>Loading data…</i>", width=RESULTS_WIDTH, css_classes=["dv-cards"])
        self._plots = pn.Column(width=RESULTS_WIDTH + 20, margin=0, css_classes=["dv-plots"])
        self._shown = False
        self._build_figures()
        self._q_slider = pn.widgets.DiscreteSlider.from_param(a.param.q, css_classes=["dv-q"])
        self._t_slider = pn.widgets.FloatSlider.from_param(a.param.t, css_classes=["dv-t"])
        self._link_sliders()
        self.param.watch(self._on_source, "source")
        self.param.watch(self._on_compare, "compare_with")
        self.param.watch(lambda _e: self._rebuild(), ["results", "hover_points"])
        a.param.watch(self._on_settings, list(KERNEL_SETTINGS) + ["dse_sigma", "layer"])
        a.param.watch(self._on_order, ["q", "t"])
        self._rebuild()
        if given and a.dataset is not None:
            on_open(self._compute)
        elif not self._open_loaded():
            on_open(lambda: self._on_source(None))

    def _open_loaded(self) -> bool:
        """The chosen source is loaded in this process already (the server loads and computes the bundled
        ones at start): set it now; the first document sent shows its results when they are warm."""
        data = None if self.links.share_id else EMBEDDING_SOURCES.loaded(self.source)
        if data is None:
            return False
        with self._quiet():
            self._set_data(data)
        adopt_warm_results(self.analysis)
        if self.analysis.is_computed():
            self._rebuild()
        else:
            self._compute()
        return True

    # ----------------------------------------------------------------------------- jobs
    def _compute(self) -> None:
        """Compute A's (and B's) spectra for the current settings in the job runner, then refill the plots."""
        self._sync_other()
        adopt_warm_results(self.analysis)
        self.jobs.submit(self._compute_all, "Computing spectra", slot="compute", on_done=self._job_ended,
                         on_error=self._job_ended)

    def _job_ended(self, _result=None) -> None:
        self.results += 1

    def _load(self, key: str, uploads: tuple, apply, slot: str, label: str) -> None:
        """Load a source in the job runner; ``apply(data)`` runs on the loop, then spectra are computed."""
        def loaded(data):
            with self._quiet():
                apply(data)
            self._compute()
        self.jobs.submit(lambda progress: EMBEDDING_SOURCES.load(key, progress, uploads), label, slot=slot,
                         on_done=loaded, on_error=self._job_ended)

    def _compute_all(self, progress):
        self.analysis.compute(progress)
        if self.other is not None:
            self.other.compute(progress)

    def _sync_other(self) -> DiversityAnalysis | None:
        """B is studied with A's settings (called on the loop)."""
        if self.other is not None:
            self.other.param.update(**{name: getattr(self.analysis, name) for name in SHARED_SETTINGS})
        return self.other

    def _set_data(self, data) -> None:
        """Apply a loaded source: a list is per-layer hidden states (the last layer is studied first)."""
        a = self.analysis
        if isinstance(data, list):
            self._layer.end = len(data) - 1
            a.param.update(layers=data, layer=len(data) - 1)
        else:
            a.param.update(layers=[], layer=0, dataset=data)
        self._layer.visible = bool(a.layers)

    def _on_source(self, _event):
        if self._quiet_depth:
            return
        if self.source != "upload":
            label = EMBEDDING_SOURCES[self.source].label
            self._load(self.source, (), self._set_data, "load-a", f"Loading {label}")
        elif self._upload.value is None:
            self.jobs.show_error("Choose an embeddings file (.npy, .npz, .csv or .parquet) to upload.")

    def _on_upload(self, _event):
        upload = uploaded(self._upload)
        if upload is None:
            return
        with self._quiet():
            self.source = "upload"
        self._load("upload", (upload,), self._set_data, "load-a", f"Loading {upload.name}")

    def _set_other(self, data) -> None:
        self.other = DiversityAnalysis(dataset=data)

    def _on_compare(self, _event):
        if self._quiet_depth:
            return
        if not self.compare_with:
            self.jobs.cancel("load-b")
            self.other = None
            self.results += 1
        elif self.compare_with == "upload":
            if self._upload_b.value is None:
                self.jobs.show_error("Choose a second embeddings file (B) to compare with.")
            else:
                self._on_upload_b(None)
        else:
            label = EMBEDDING_SOURCES[self.compare_with].label
            self._load(self.compare_with, (), self._set_other, "load-b", f"Loading {label} for comparison")

    def _on_upload_b(self, _event):
        upload = uploaded(self._upload_b)
        if upload is None:
            return
        with self._quiet():
            self.compare_with = "upload"
        self._load("upload", (upload,), self._set_other, "load-b", f"Loading {upload.name} for comparison")

    def _on_settings(self, *_events):
        if not self._quiet_depth and self.analysis.dataset is not None:
            self._compute()

    def _scores_csv(self) -> str:
        try:
            with self._reading():
                frames = [self.analysis.scores_frame()] + ([self.other.scores_frame()] if self._other() else [])
        except InputError:   # NotComputed too
            self.jobs.show_error("The scores are not computed yet: wait for the current job to finish.")
            return ""
        return pd.concat(frames).to_csv(index=False)

    # ----------------------------------------------------------------------------- reading results
    @contextlib.contextmanager
    def _reading(self):
        """Cached reads only, for A and B (a miss raises NotComputed instead of computing here)."""
        self._sync_other()
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.analysis.reading())
            if self.other is not None:
                stack.enter_context(self.other.reading())
            yield

    def _other(self) -> DiversityAnalysis | None:
        """B when it is loaded and computed for the current settings."""
        return self.other if self.other is not None and self.other.is_computed() else None

    def _update_cards(self) -> None:
        a = self.analysis
        if a.dataset is None:
            self._cards.object = "<i>Loading data…</i>"
            return
        try:
            with self._reading():
                rows = cards_html(a.scores(), a.dataset.notes, tag="A" if self.other is not None else "")
                if self.other is not None:
                    rows += cards_html(self.other.scores(), self.other.dataset.notes, prefix="b-", tag="B")
        except NotComputed:
            rows = f"<div class='dv-summary'><b>{html.escape(a.dataset.name)}</b> — <i>computing…</i></div>"
        except InputError as err:
            rows = f"<div class='dv-error'>{html.escape(str(err))}</div>"
        self._cards.object = rows

    # ----------------------------------------------------------------------------- plots (cached reads)
    def _build_figures(self) -> None:
        """The q/t-dependent plots as Bokeh figures over sources this page owns: new results and q/t
        moves set their data (no new models, no model-graph recomputation, no HoloViews re-render)."""
        self._src = {name: ColumnDataSource(data, name=f"dv-{name}") for name, data in {
            "vendi_a": {"q": [], "vendi": []}, "vendi_b": {"q": [], "vendi": []}, "marker": {"q": [], "vendi": []},
            "spectrum_a": {"index": [], "eigenvalue": []}, "spectrum_b": {"index": [], "eigenvalue": []},
            "dse_a": {"t": [], "dse_bits": []}, "dse_b": {"t": [], "dse_bits": []},
            "subsample": {"size": [], "mean": [], "sd": [], "low": [], "high": []},
            "groups": {"group": [], "vendi": [], "n": []},
            "depth": {"layer": [], "vendi": [], "renyi_bits": [], "dse_bits": []},
            "orders": {"x": [], "vendi_a": [], "vendi_b": []}, "times": {"t": []}, "template": {"html": []}}.items()}
        src = self._src
        vendi = _figure("Vendi vs order q (dots: current q)", "q", "Vendi", y_axis_type="log")
        lines = [vendi.line("q", "vendi", source=src["vendi_a"], color=TEAL, line_width=2, legend_label="A"),
                 vendi.line("q", "vendi", source=src["vendi_b"], color=AMBER, line_width=2, legend_label="B")]
        vendi.scatter("q", "vendi", source=src["marker"], color="black", size=9)
        vendi.add_tools(HoverTool(renderers=lines, tooltips=[("q", "@q{0.00}"), ("Vendi", "@vendi{0.000}")]))
        spectrum = _figure("Eigenvalues of K / n (log-log)", "rank", "λ", x_axis_type="log", y_axis_type="log")
        spectrum.yaxis.ticker = LogTicker()  # many decades: powers of ten read best
        lines = [spectrum.line("index", "eigenvalue", source=src["spectrum_a"], color=TEAL, line_width=2,
                               legend_label="A"),
                 spectrum.line("index", "eigenvalue", source=src["spectrum_b"], color=AMBER, line_width=2,
                               legend_label="B")]
        spectrum.add_tools(HoverTool(renderers=lines, tooltips=[("rank", "@index"), ("λ", "@eigenvalue{0.000e}")]))
        dse = _figure("DSE (bits) vs diffusion time t (dashed: current t)", "t", "DSE (bits)")
        lines = [dse.line("t", "dse_bits", source=src["dse_a"], color=TEAL, line_width=2, legend_label="A"),
                 dse.line("t", "dse_bits", source=src["dse_b"], color=AMBER, line_width=2, legend_label="B")]
        self._t_span = Span(location=self.analysis.t, dimension="height", line_color="black", line_dash="dashed",
                            name="dv-t-span")
        dse.add_layout(self._t_span)
        dse.add_tools(HoverTool(renderers=lines, tooltips=[("t", "@t{0.00}"), ("DSE", "@dse_bits{0.000} bits")]))
        sub = _figure("Vendi_q of subsamples of A (± sd; biased low)", "sample size", "Vendi", x_axis_type="log",
                      y_range=Range1d(0, 1))
        sub.varea("size", "low", "high", source=src["subsample"], color=TEAL, alpha=0.2)
        sub.line("size", "mean", source=src["subsample"], color=TEAL, line_width=2)
        dots = sub.scatter("size", "mean", source=src["subsample"], color=TEAL, size=6)
        sub.add_tools(HoverTool(renderers=[dots], tooltips=[("size", "@size"), ("Vendi", "@mean{0.000} ± @sd{0.000}")]))
        groups = _figure("Vendi_q within each group of A", "group", "Vendi", width=RESULTS_WIDTH - 20,
                         x_range=FactorRange(factors=[]), y_range=Range1d(0, 1))
        bars = groups.vbar("group", top="vendi", width=0.8, source=src["groups"], color=TEAL)
        groups.xaxis.major_label_orientation = 0.35
        groups.add_tools(HoverTool(renderers=[bars], tooltips=[("group", "@group"), ("Vendi", "@vendi{0.000}"),
                                                               ("n", "@n")]))
        depth = _figure("Entropy of the representations across depth (dotted: studied layer)",
                        "layer (0 = token embeddings)", "bits", width=RESULTS_WIDTH - 20, y_range=Range1d(0, 1))
        lines = [depth.line("layer", "renyi_bits", source=src["depth"], color=TEAL, line_width=2,
                            legend_label="log2 Vendi_q (Rényi entropy)"),
                 depth.line("layer", "dse_bits", source=src["depth"], color=AMBER, line_width=2, legend_label="DSE_t")]
        depth.scatter("layer", "renyi_bits", source=src["depth"], color=TEAL, size=5)
        depth.scatter("layer", "dse_bits", source=src["depth"], color=AMBER, size=5)
        self._layer_span = Span(location=self.analysis.layer, dimension="height", line_color="black",
                                line_dash="dotted")
        depth.add_layout(self._layer_span)
        depth.add_layout(depth.legend[0], "right")
        depth.add_tools(HoverTool(renderers=lines, tooltips=[("layer", "@layer"), ("log2 Vendi", "@renyi_bits{0.000}"),
                                                             ("Vendi", "@vendi{0.00}"), ("DSE", "@dse_bits{0.000}")]))
        for name, fig in (("vendi", vendi), ("spectrum", spectrum), ("dse", dse), ("subsample", sub),
                          ("groups", groups), ("depth", depth)):
            fig.name = f"dv-{name}-figure"
        self._figures = {"vendi": vendi, "spectrum": spectrum, "dse": dse, "subsample": sub, "groups": groups,
                         "depth": depth}
        # visibility is toggled on a box around each figure (toggling a Bokeh pane's own fails in Panel 1.9)
        self._panes = {name: pn.Column(pn.pane.Bokeh(fig, margin=(5, 5)), margin=0, css_classes=[f"dv-{name}-plot"])
                       for name, fig in self._figures.items()}
        self._projection = pn.pane.HoloViews(None, margin=(5, 5))
        self._projection_box = pn.Column(self._projection, margin=0, css_classes=["dv-projection"])
        self._waiting = pn.pane.HTML("<i>Plots appear when the spectra are computed.</i>", css_classes=["dv-waiting"])
        self._plots[:] = [self._waiting,
                          pn.Row(self._panes["vendi"], self._panes["spectrum"], margin=0),
                          pn.Row(self._panes["dse"], self._panes["subsample"], margin=0),
                          self._panes["depth"], self._panes["groups"], self._projection_box]

    def _link_sliders(self) -> None:
        """A q or t move redraws in the browser at once, from the tables of every slider position
        (``order_table``, ``time_table``) sent with the last results; the server patches the same data
        a moment later (and alone, without a browser: in a notebook's Python or a test)."""
        src, figs = self._src, self._figures
        args = dict(orders=src["orders"], times=src["times"], template=src["template"], marker=src["marker"],
                    sub=src["subsample"], groups=src["groups"], depth=src["depth"], cards=self._cards,
                    tspan=self._t_span, sub_range=figs["subsample"].y_range, group_range=figs["groups"].y_range,
                    depth_range=figs["depth"].y_range, qslider=self._q_slider._slider, tslider=self._t_slider)
        self._q_slider._slider.jscallback(value=MOVE_JS, args=args)
        self._t_slider.jscallback(value=MOVE_JS, args=args)

    def _fill_tables(self) -> None:
        """The tables the browser reads on a q or t move, and the cards' template (cached reads)."""
        a, b, src = self.analysis, self.other, self._src
        orders, times = a.order_table(), a.time_table()
        other_orders = b.order_table() if b is not None else None
        other_times = b.time_table() if b is not None else None
        texts = [order_texts(r.q, r.vendi, r.renyi_bits, r.estimated_error, r.vendi_upper_bound)
                 for r in orders.itertuples()]
        if other_orders is not None:
            texts = [{**t, **order_texts(r.q, r.vendi, r.renyi_bits, r.estimated_error, r.vendi_upper_bound, "b-")}
                     for t, r in zip(texts, other_orders.itertuples())]
        sub_low = [m - sd for m, sd in zip(orders["sub_mean"], orders["sub_sd"])]
        sub_high = [m + sd for m, sd in zip(orders["sub_mean"], orders["sub_sd"])]
        src["orders"].data = {
            "x": [float(CURVE_Q.max()) if math.isinf(q) else q for q in orders["q"]],
            "vendi_a": orders["vendi"].to_numpy(),
            "vendi_b": other_orders["vendi"].to_numpy() if other_orders is not None else [math.nan] * len(orders),
            "sub_mean": list(orders["sub_mean"]), "sub_low": sub_low, "sub_high": sub_high,
            "group_vendi": list(orders["group_vendi"]), "depth_vendi": list(orders["depth_vendi"]),
            "depth_renyi": [np.log2(v) for v in orders["depth_vendi"]],
            **{token: [t[token] for t in texts] for token in texts[0]}}
        ttexts = [time_texts(r.t, r.dse_bits, r.dsmi_bits) for r in times.itertuples()]
        if other_times is not None:
            ttexts = [{**t, **time_texts(r.t, r.dse_bits, r.dsmi_bits, "b-")} for t, r in zip(ttexts, other_times.itertuples())]
        src["times"].data = {"t": times["t"].to_numpy(), "depth_dse": list(times["depth_dse"]),
                             **{token: [t[token] for t in ttexts] for token in ttexts[0]}}
        template = cards_template(a.scores(), a.dataset.notes, tag="A" if b is not None else "")
        if b is not None:
            template += cards_template(b.scores(), b.dataset.notes, prefix="b-", tag="B")
        src["template"].data = {"html": [template]}

    @staticmethod
    def _set(source: ColumnDataSource, frame: pd.DataFrame | None) -> None:
        source.data = {c: [] for c in source.data} if frame is None else {c: frame[c].to_numpy() for c in source.data}

    def _show_order(self, changed: tuple[str, ...] = ("q", "t")) -> None:
        """What depends on q (marker, subsample and group Vendi) and on t (its marker), and the depth
        profile (both); ranges are set here, so the browser draws each plot once."""
        a, b, src, figs = self.analysis, self.other, self._src, self._figures
        if "t" in changed:
            self._t_span.location = a.t
        if "q" in changed:
            x = float(CURVE_Q.max()) if math.isinf(a.q) else a.q
            self._set(src["marker"], pd.DataFrame({"q": [x] * (1 + (b is not None)),
                                                   "vendi": [s.spectrum().vendi(a.q) for s in (a, b) if s is not None]}))
            sub = a.subsample_curve().pipe(lambda f: f.assign(low=f["mean"] - f["sd"], high=f["mean"] + f["sd"]))
            self._set(src["subsample"], sub)
            _fit(figs["subsample"].y_range, sub["low"].min(), sub["high"].max())
            if a.dataset.labels is not None:
                groups = a.group_scores().assign(group=lambda f: f["group"].astype(str))
                self._set(src["groups"], groups)
                _fit(figs["groups"].y_range, 0, groups["vendi"].max(), pad_low=False)
        if a.layers:
            depth = a.depth_profile()
            self._set(src["depth"], depth)
            _fit(figs["depth"].y_range, min(depth["renyi_bits"].min(), depth["dse_bits"].min()),
                 max(depth["renyi_bits"].max(), depth["dse_bits"].max()))

    def _on_order(self, *events) -> None:
        """A q or t move (or both at once, from a link): patch the dependent data in place (one held
        document update)."""
        with pn.io.hold(pn.state.curdoc):
            self._update_cards()
            if self._shown:
                try:
                    with self._reading():
                        self._show_order(tuple(event.name for event in events))
                except NotComputed:
                    pass  # a job is computing the new results; the page refreshes when it ends

    def _rebuild(self) -> None:
        """New results (a job ended): refill every source; only the projection gets a new plot."""
        self._update_cards()
        a, b, src = self.analysis, self.other, self._src
        computed = a.dataset is not None and not self.jobs.busy("compute") and a.is_computed() and \
            (b is None or b.is_computed())
        self._shown = computed
        for name in ("vendi", "spectrum", "dse", "subsample", "groups"):
            self._panes[name].visible = computed
        self._panes["depth"].visible = computed and bool(a.layers)
        self._waiting.visible = not computed
        if not computed:
            self._projection.object = None
            self._projection_box.visible = False
            return
        with pn.io.hold(pn.state.curdoc), self._reading():
            for sets, tag in ((a, "a"), (b, "b")):
                self._set(src[f"vendi_{tag}"], sets.vendi_curve() if sets is not None else None)
                self._set(src[f"spectrum_{tag}"], sets.spectrum_frame() if sets is not None else None)
                self._set(src[f"dse_{tag}"], sets.dse_curve() if sets is not None else None)
            for name in ("vendi", "spectrum", "dse"):
                self._figures[name].legend.visible = b is not None
            labelled = a.dataset.labels is not None
            self._panes["groups"].visible = labelled
            self._figures["groups"].x_range.factors = [str(g) for g in a.group_scores()["group"]] if labelled else []
            self._layer_span.location = a.layer
            self._fill_tables()
            self._show_order()
            self._projection.object = self._projection_plot()
            self._projection_box.visible = True

    def _projection_plot(self):
        a = self.analysis
        frame = a.projection()
        size = dict(height=420, width=RESULTS_WIDTH - 20, show_grid=True, toolbar="right")
        groups = sorted(frame["group"].astype(str).unique())
        if len(frame) <= self.hover_points:
            frame = frame.assign(text=frame["text"].str.slice(0, 120), group=frame["group"].astype(str))
            return hv.Points(frame, ["pc1", "pc2"], ["group", "text"]).opts(
                color="group", cmap=PALETTE[:max(len(groups), 1)] if len(groups) <= len(PALETTE) else "glasbey",
                size=6, alpha=0.8, legend_position="right", tools=["hover"],
                title="PCA of A, coloured by group (hover: sample)", **size)
        import datashader as ds
        from holoviews.operation.datashader import rasterize

        title = f"PCA of all {len(frame):,} points of A (rasterised; hover: counts)"
        if len(groups) <= MAX_CATEGORIES:
            frame = frame.assign(group=pd.Categorical(frame["group"].astype(str), categories=groups))
            colours = (PALETTE * 2)[:len(groups)]
            return rasterize(hv.Points(frame, ["pc1", "pc2"], ["group"]), aggregator=ds.count_cat("group")).opts(
                cmap=dict(zip(groups, colours)), tools=["hover"], title=title, **size)
        return rasterize(hv.Points(frame, ["pc1", "pc2"])).opts(cmap="Blues", cnorm="eq_hist", tools=["hover"],
                                                               colorbar=True, title=title, **size)

    # ----------------------------------------------------------------------------- layout
    def _controls(self):
        a = self.analysis
        return pn.Column(
            "### Data",
            pn.widgets.Select.from_param(self.param.source, css_classes=["dv-source"]),
            self._upload,
            self._layer,
            pn.widgets.Select.from_param(self.param.compare_with, css_classes=["dv-compare"]),
            self._upload_b,
            "### Kernel and orders",
            pn.widgets.Select.from_param(a.param.kernel, css_classes=["dv-kernel"]),
            pn.widgets.FloatInput.from_param(a.param.sigma),
            pn.widgets.IntSlider.from_param(a.param.degree),
            pn.widgets.Checkbox.from_param(a.param.center, css_classes=["dv-center"]),
            self._q_slider,
            self._t_slider,
            pn.widgets.FloatInput.from_param(a.param.dse_sigma),
            "### Large n",
            pn.widgets.Select.from_param(a.param.method),
            pn.widgets.IntInput.from_param(a.param.approx_above),
            pn.widgets.IntInput.from_param(a.param.landmarks),
            self._download,
            pn.pane.HTML("<small>PNG: the save button in each plot's toolbar.</small>"),
            width=300,
        )

    def __panel__(self):
        main = pn.Column(self.jobs, self._cards, self._plots, width=RESULTS_WIDTH + 20)
        return pn.Row(self._controls(), main)
