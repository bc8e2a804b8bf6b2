"""The diversity page: Vendi score of any order, its spectrum, DSE and DSMI, on bundled or uploaded data.

A thin view over :class:`explorer.analyses.diversity.DiversityAnalysis`: widgets come from its
parameters; loading data and computing spectra run in a :class:`BackgroundTask`; moving q or t only
re-reads the cached spectra.
"""

from __future__ import annotations

import functools
import html
import math

import holoviews as hv
import pandas as pd
import panel as pn
import param

from explorer.analyses.diversity import DiversityAnalysis, comparison_frame
from explorer.data.embeddings import BUNDLED, load_embedding_file
from explorer.errors import InputError
from explorer.views.task import BackgroundTask

hv.extension("bokeh", logo=False)

UPLOAD = "Uploaded file"
NO_COMPARISON = "(no comparison)"
KERNEL_SETTINGS = ("kernel", "sigma", "degree", "dse_sigma", "method", "approx_above", "landmarks", "seed")
PLOT = dict(height=290, width=350, show_grid=True, tools=["hover"], toolbar="right", shared_axes=False)
MAX_POINTS = 5000
TEAL, AMBER = "#0f766e", "#b45309"
CARD_CSS = ("display:inline-block;padding:6px 12px;border:1px solid #e5e7eb;border-radius:8px;margin:0 8px 8px 0;"
            "vertical-align:top;min-width:110px")


def _format(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def _card(key: str, title: str, value, note: str = "") -> str:
    return (f"<div class='dv-card dv-card-{key}' style='{CARD_CSS}'><div style='font-size:12px;color:#6b7280'>"
            f"{html.escape(title)}</div><div class='dv-card-value' style='font-size:22px;font-weight:600'>"
            f"{html.escape(_format(value))}</div><div style='font-size:11px;color:#6b7280'>{html.escape(note)}</div></div>")


class DiversityExplorer(pn.viewable.Viewer):
    """Diversity of a set of embeddings. ``DiversityExplorer()`` renders the page with the bundled
    text set; pass ``analysis=DiversityAnalysis(dataset=...)`` to study your own data from code."""

    analysis = param.ClassSelector(class_=DiversityAnalysis)
    source = param.Selector(objects=list(BUNDLED) + [UPLOAD], default=list(BUNDLED)[0], label="Data")
    compare_with = param.Selector(objects=[NO_COMPARISON] + list(BUNDLED), default=NO_COMPARISON,
                                  label="Compare with")
    results = param.Integer(default=0, doc="Bumped when new results are ready: plots re-read the caches.")

    def __init__(self, **params):
        given = "analysis" in params
        params.setdefault("analysis", DiversityAnalysis())
        super().__init__(**params)
        self.task = BackgroundTask()
        self.other = None
        self._upload = pn.widgets.FileInput(accept=".npy,.npz,.csv,.parquet", name="Embeddings file",
                                            css_classes=["dv-upload"])
        self._upload.param.watch(self._on_upload, "value")
        self._download = pn.widgets.FileDownload(callback=self._scores_csv, filename="diversity_scores.csv",
                                                 label="Export scores (CSV)", button_type="primary", width=260)
        self.param.watch(self._on_source, "source")
        self.param.watch(self._on_compare, "compare_with")
        self.analysis.param.watch(self._on_settings, list(KERNEL_SETTINGS))
        self.analysis.param.watch(lambda _e: self._refresh(), ["q", "t"])
        if given and self.analysis.dataset is not None:
            pn.state.onload(functools.partial(self._run, self._compute_all, "Computing spectra"))
        else:
            pn.state.onload(functools.partial(self._run, self._load_source, "Loading data"))

    # ----------------------------------------------------------------------------- jobs
    async def _run(self, job, label):
        await self.task.run(job, lambda _result: self._refresh(), label)
        self._refresh()

    def _launch(self, job, label):
        pn.state.execute(functools.partial(self._run, job, label))

    def _load_source(self, progress):
        self.analysis.dataset = BUNDLED[self.source](progress=progress)
        return self._compute_all(progress)

    def _compute_all(self, progress):
        self.analysis.compute(progress)
        if self.other is not None:
            self._sync_other().compute(progress)

    def _sync_other(self) -> DiversityAnalysis:
        settings = {name: getattr(self.analysis, name) for name in KERNEL_SETTINGS + ("q", "t")}
        self.other.param.update(**settings)
        return self.other

    def _on_source(self, _event):
        if self.source != UPLOAD:
            self._launch(self._load_source, f"Loading {self.source}")
        elif self._upload.value is None:
            self.task.show_error("Choose an embeddings file (.npy, .npz, .csv or .parquet) to upload.")

    def _on_upload(self, _event):
        data, name = self._upload.value, self._upload.filename

        def job(progress):
            self.analysis.dataset = load_embedding_file(data, name, progress=progress)
            return self._compute_all(progress)
        if self.source != UPLOAD:
            self.source = UPLOAD
        self._launch(job, f"Loading {name}")

    def _on_compare(self, _event):
        if self.compare_with == NO_COMPARISON:
            self.other = None
            self._refresh()
            return

        def job(progress):
            self.other = DiversityAnalysis(dataset=BUNDLED[self.compare_with](progress=progress))
            return self._compute_all(progress)
        self._launch(job, f"Loading {self.compare_with} for comparison")

    def _on_settings(self, _event):
        if self.analysis.dataset is not None:
            self._launch(self._compute_all, "Computing spectra")

    def _refresh(self):
        self.results += 1

    def _ready(self) -> bool:
        return self.analysis.dataset is not None and not self.task.running

    def _scores_csv(self):
        import io

        frames = [self.analysis.scores_frame()] + ([self._sync_other().scores_frame()] if self.other else [])
        return io.StringIO(pd.concat(frames).to_csv(index=False))

    # ----------------------------------------------------------------------------- rendering
    @param.depends("results")
    def _cards(self):
        if self.analysis.dataset is None:
            return pn.pane.HTML("<i>Loading data…</i>")
        try:
            s = self.analysis.scores()
        except InputError as err:
            return pn.pane.HTML(f"<div class='dv-error'>{html.escape(str(err))}</div>")
        exactness = "exact" if s["exact"] else f"approximate ({s['spectrum']}, est. error {s['estimated_error']:.1%})"
        dse_note = f"bits, t = {s['t']:g}, σ = {s['dse_sigma']:.3g}" + \
            ("" if s["dse_rows"] == s["n"] else f", seeded subsample of {s['dse_rows']}")
        cards = [
            _card("vendi", f"Vendi (q = {_format(s['q'])})", s["vendi"], exactness),
            _card("rke", "RKE (Vendi q = 2)", s["rke"], s["kernel"] + " kernel"),
            _card("renyi", f"Rényi entropy (α = {_format(s['q'])})", s["renyi_bits"], "bits"),
            _card("effective-rank", "Effective rank", s["effective_rank"], "of the kernel features"),
            _card("dse", "DSE", s["dse_bits"], dse_note),
            _card("dsmi", "DSMI with groups", s["dsmi_bits"], "bits" if s["dsmi_bits"] is not None else "no labels"),
            _card("n", "Samples", s["n"], f"{s['dim']} dimensions"),
        ]
        notes = "; ".join(self.analysis.dataset.notes)
        header = f"<div class='dv-summary'><b>{html.escape(s['dataset'])}</b>{' — ' + html.escape(notes) if notes else ''}</div>"
        return pn.pane.HTML(header + "".join(cards), sizing_mode="stretch_width", css_classes=["dv-cards"])

    @param.depends("results")
    def _comparison(self):
        if self.other is None or not self._ready():
            return pn.pane.HTML("")
        frame = comparison_frame(self.analysis, self._sync_other())
        frame = frame.set_axis(["measure", f"A: {frame.columns[1]}", f"B: {frame.columns[2].strip()}"], axis=1)
        for column in frame.columns[1:]:
            frame[column] = frame[column].map(_format)
        return pn.widgets.Tabulator(frame, show_index=False, disabled=True, width=720, css_classes=["dv-comparison"],
                                    height=270)

    def _empty(self, title):
        return hv.Curve([]).opts(title=title, **PLOT)

    @param.depends("results")
    def _spectrum_plot(self):
        if not self._ready():
            return self._empty("Eigenvalue spectrum")
        frame = self.analysis.spectrum_frame()
        plot = hv.Curve(frame, "index", "eigenvalue", label="A").opts(color=TEAL)
        if self.other is not None:
            plot = plot * hv.Curve(self._sync_other().spectrum_frame(), "index", "eigenvalue",
                                   label="B").opts(color=AMBER)
        return plot.opts(hv.opts.Curve(logy=True, logx=True, title="Eigenvalues of K / n (log-log)",
                                       xlabel="rank", ylabel="λ", **PLOT), hv.opts.Overlay(show_legend=self.other is not None, legend_position="top_right"))

    @param.depends("results")
    def _vendi_curve(self):
        if not self._ready():
            return self._empty("Vendi vs q")
        frame = self.analysis.vendi_curve()
        q = self.analysis.q
        marker_q = frame["q"].max() if math.isinf(q) else q
        plot = hv.Curve(frame, "q", "vendi", label="A").opts(color=TEAL) * \
            hv.Scatter([(marker_q, self.analysis.spectrum().vendi(q))]).opts(color="black", size=9)
        if self.other is not None:
            plot = plot * hv.Curve(self._sync_other().vendi_curve(), "q", "vendi",
                                   label="B").opts(color=AMBER)
        return plot.opts(hv.opts.Curve(title="Vendi vs order q (dot: current q)", logy=True, **PLOT),
                         hv.opts.Overlay(show_legend=self.other is not None))

    @param.depends("results")
    def _dse_curve(self):
        if not self._ready():
            return self._empty("DSE vs t")
        frame = self.analysis.dse_curve()
        plot = hv.Curve(frame, "t", "dse_bits", label="A").opts(color=TEAL) * \
            hv.VLine(self.analysis.t).opts(color="black", line_dash="dashed")
        if self.other is not None:
            plot = plot * hv.Curve(self._sync_other().dse_curve(), "t", "dse_bits",
                                   label="B").opts(color=AMBER)
        return plot.opts(hv.opts.Curve(title="DSE (bits) vs diffusion time t", ylabel="DSE (bits)", **PLOT),
                         hv.opts.Overlay(show_legend=self.other is not None))

    @param.depends("results")
    def _subsample_plot(self):
        if not self._ready():
            return self._empty("Vendi vs sample size")
        frame = self.analysis.subsample_curve().assign(low=lambda f: f["mean"] - f["sd"],
                                                       high=lambda f: f["mean"] + f["sd"])
        return (hv.Area(frame, "size", ["low", "high"]).opts(color=TEAL, alpha=0.2)
                * hv.Curve(frame, "size", "mean").opts(color=TEAL, line_width=2)
                * hv.Scatter(frame, "size", ["mean", "sd"]).opts(color=TEAL, size=6)).opts(
            hv.opts.Curve(logx=True, title="Vendi of subsamples (± sd; biased low)",
                          xlabel="sample size", ylabel="Vendi", **PLOT), hv.opts.Area(logx=True))

    @param.depends("results")
    def _group_plot(self):
        if not self._ready():
            return self._empty("Vendi within each group")
        frame = self.analysis.group_scores()
        if frame.empty:
            return self._empty("Vendi within each group: the data has no labels")
        frame = frame.assign(group=frame["group"].astype(str))
        return hv.Bars(frame, "group", ["vendi", "n"]).opts(
            title=f"Vendi (q = {_format(self.analysis.q)}) within each group", color=TEAL, xrotation=20,
            ylabel="Vendi", **PLOT)

    @param.depends("results")
    def _projection_plot(self):
        if not self._ready():
            return self._empty("PCA projection")
        frame = self.analysis.projection(max_points=MAX_POINTS)
        title = "PCA, coloured by group (hover: sample)"
        if len(frame) < self.analysis.dataset.n:
            title = f"PCA: {len(frame)} of {self.analysis.dataset.n} points"
        frame = frame.assign(text=frame["text"].str.slice(0, 120))
        return hv.Points(frame, ["pc1", "pc2"], ["group", "text"]).opts(
            color="group", cmap="Category10", size=6, alpha=0.8, legend_position="right", title=title,
            **{**PLOT, "height": 420, "width": 720})

    # ----------------------------------------------------------------------------- layout
    def _controls(self):
        a = self.analysis
        return pn.Column(
            "### Data",
            pn.widgets.Select.from_param(self.param.source, css_classes=["dv-source"]),
            self._upload,
            pn.widgets.Select.from_param(self.param.compare_with, css_classes=["dv-compare"]),
            "### Kernel and orders",
            pn.widgets.Select.from_param(a.param.kernel, css_classes=["dv-kernel"]),
            pn.widgets.FloatInput.from_param(a.param.sigma),
            pn.widgets.IntSlider.from_param(a.param.degree),
            pn.widgets.DiscreteSlider.from_param(a.param.q, css_classes=["dv-q"]),
            pn.widgets.FloatSlider.from_param(a.param.t, css_classes=["dv-t"]),
            pn.widgets.FloatInput.from_param(a.param.dse_sigma),
            "### Large n",
            pn.widgets.Select.from_param(a.param.method),
            pn.widgets.IntInput.from_param(a.param.approx_above),
            pn.widgets.IntInput.from_param(a.param.landmarks),
            self._download,
            width=300,
        )

    def __panel__(self):
        pane = lambda plot: pn.pane.HoloViews(plot, margin=(5, 10))  # noqa: E731
        plots = pn.Column(pn.Row(pane(self._vendi_curve), pane(self._spectrum_plot)),
                          pn.Row(pane(self._dse_curve), pane(self._subsample_plot)),
                          pn.Row(pane(self._group_plot)), pane(self._projection_plot))
        main = pn.Column(self.task, self._cards, self._comparison, plots, sizing_mode="stretch_width")
        return pn.Row(self._controls(), main, sizing_mode="stretch_width")
