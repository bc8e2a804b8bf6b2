"""The conformal sets page: drag alpha and see coverage, set sizes, the sets themselves and C-IP.

A thin view over :class:`explorer.analyses.conformal.ConformalAnalysis`: widgets come from its
parameters; loading data (training the digits network, asking the language model, reading an
upload) and computing the sets run in the page's :class:`JobRunner` off the event loop. A settings
change redraws at once whatever is already cached (the cards, the markers, the set-size bars), and
what needs the long part follows when the job ends; every derived result is computed once per change.

The plots are Bokeh figures built once, over ColumnDataSources the page owns. Each part of the page
remembers the results it last showed and refills its sources only when one of them changed (an
alpha move leaves the alpha curves alone and moves their markers), all in one held document update:
no Bokeh model is created after the page is built and HoloViews never re-renders. The example table
pages on the server (only the rows on screen travel to the browser).
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.core.properties import value as literal
from bokeh.models import BoxAnnotation, CDSView, ColumnDataSource, FactorRange, GroupFilter, HoverTool, Range1d, Span
from bokeh.palettes import Greys256
from bokeh.plotting import figure

from explorer.analyses.base import NotComputed
from explorer.analyses.conformal import ConformalAnalysis
from explorer.data.classifier_outputs import KINDS
from explorer.data.sources import CLASSIFIER_SOURCES
from explorer.errors import InputError
from explorer.views.jobs import JobRunner
from explorer.views.links import PageLinks
from explorer.views.server import adopt_warm_results
from explorer.views.shared import AMBER, GREY, INK, RED, TEAL, card, download_button, on_open, upload_widget, \
    uploaded, warning_notes

SETTINGS = ("outputs", "method", "randomised", "alpha", "calibration_fraction", "seed", "class_conditional",
            "raps_tuning", "raps_lambda", "raps_k_reg", "n_splits")
STATUS_COLOURS = {"covered": TEAL, "missed": RED}
BAR_COLOURS = {"true label, in set": TEAL, "true label, not in set": RED, "in set": "#5eead4", "not in set": GREY}
FILTERS = {"all test rows": "all", "missed (true label not in set)": "missed", "empty sets": "empty",
           "sets of 2 or more": "multi"}
PLOT_HEIGHT = 320
LOADING = "Loading data…"
#: every ColumnDataSource of the page and its columns
SOURCES = {
    "split_hist": ("left", "right", "density"), "split_pdf": ("coverage", "density"),
    "alpha_curve": ("alpha", "target", "coverage", "mean_size", "beta_low", "beta_high", "cip_bits"),
    "current": ("alpha", "target", "coverage", "mean_size", "cip_bits"), "entropy_line": ("alpha", "bits"),
    "sizes": ("size", "rows", "coverage"), "classes": ("class", "coverage", "rows"),
    "scatter": ("entropy_bits", "jittered_size", "size", "status", "row", "true"),
    "example_bars": ("label", "probability", "status", "colour"), "example_image": ("image", "x", "y", "dw", "dh"),
}
#: the page's parts: the figures each one draws and the sources it fills (cleared when it cannot be computed)
PARTS = {
    "split_coverage": (("split_coverage",), ("split_hist", "split_pdf")),
    "alpha_curves": (("coverage_curve", "size_curve", "cip_curve"), ("alpha_curve",)),
    "current": ((), ("current", "entropy_line")),
    "sizes": (("size_histogram", "size_coverage"), ("sizes",)),
    "classes": (("class_coverage",), ("classes",)),
    "scatter": (("entropy_scatter",), ("scatter",)),
}
PLOTS = ("split_coverage", "coverage_curve", "size_curve", "size_histogram", "size_coverage", "class_coverage",
         "entropy_scatter", "cip_curve")


def _has_images(outputs) -> bool:
    return outputs is not None and outputs.images is not None


def _figure(name: str, x_label: str, y_label: str, height: int = PLOT_HEIGHT, **kwargs):
    kwargs = {"tools": "pan,wheel_zoom,box_zoom,reset,save", "toolbar_location": "right",
              "sizing_mode": "stretch_width", "min_width": 280, **kwargs}   # two plots share a row
    fig = figure(title=LOADING, height=height, x_axis_label=x_label, y_axis_label=y_label, name=f"cp-{name}-figure",
                 **kwargs)
    fig.title.text_font_size = "12px"
    fig.toolbar.logo = None
    return fig


def _same(a, b) -> bool:
    """Whether two shown results are the same: cached results by identity, plain values by value."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a is b or (isinstance(a, (bool, int, float, str)) and type(a) is type(b) and a == b)


def _columns(frame: pd.DataFrame, names: tuple[str, ...]) -> dict:
    return {name: frame[name].to_numpy() for name in names}


class ConformalExplorer(pn.viewable.Viewer):
    """Split-conformal prediction sets for a classifier or an LLM answering multiple-choice questions.

    ``ConformalExplorer()`` renders the whole page (``panel serve`` or a notebook) and loads the
    bundled digits network; pass a ``ConformalAnalysis`` with ``outputs`` to drive it from code.
    """

    analysis = param.ClassSelector(class_=ConformalAnalysis)
    source = param.Selector(objects=CLASSIFIER_SOURCES.options(), default="digits",
                            doc="Which classifier outputs to study.")
    upload_kind = param.Selector(objects=list(KINDS), default="auto", label="Uploaded scores are")
    example_filter = param.Selector(objects=FILTERS, default="all", label="Show")
    selected_row = param.Integer(default=-1, doc="Data row shown in the example browser (-1: the first listed).")

    def __init__(self, **params):
        params.setdefault("analysis", ConformalAnalysis())
        super().__init__(**params)
        self.links = PageLinks(self, "conformal")
        self.jobs = JobRunner()
        self._loaded_source = None
        self._upload = upload_widget("Outputs file(s)", ".npz,.npy,.csv,.parquet", "cp-upload", multiple=True)
        self._upload.param.watch(self._on_upload, "value")
        self._table = pn.widgets.Tabulator(pd.DataFrame(), selectable=1, disabled=True, pagination="remote",
                                           layout="fit_data_stretch", widths={"set": 120},
                                           page_size=8, show_index=False, sizing_mode="stretch_width", height=330,
                                           css_classes=["cp-examples"])
        self._table.param.watch(self._on_select, "selection")
        self._summary = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["cp-summary"])
        self._example = pn.pane.HTML("", css_classes=["cp-example"], width=360)
        self._shown: dict[str, tuple] = {}
        self._build_figures()
        self.analysis.param.watch(self._on_settings, list(SETTINGS))
        self.param.watch(self._show_examples, ["example_filter"])
        self.param.watch(self._show_example, ["selected_row"])
        self.param.watch(self._on_source, ["source"])
        self._layout = self._build()
        if self.analysis.outputs is not None:
            on_open(self._on_settings)
        elif not self._open_loaded():
            on_open(self._load_current)

    def _open_loaded(self) -> bool:
        """The chosen source is loaded in this process already (the server loads and computes the bundled
        one at start): set it now, so that the first document sent shows its (warm) results."""
        outputs = None if self.links.share_id else CLASSIFIER_SOURCES.loaded(self.source)
        if outputs is None:
            return False
        self._set_outputs(self.source, outputs)
        return True

    # ------------------------------------------------------------------ actions (no computation here)
    def _upload_files(self) -> list:
        """The files to read: the newest one, or the newest two when they are .npy (scores + labels)."""
        files = uploaded(self._upload) or []
        if files and files[-1].suffix == ".npy":
            return [f for f in files if f.suffix == ".npy"][-2:]
        return files[-1:]

    def _on_upload(self, _event) -> None:
        """A dropped file is read at once (a lone .npy waits for its partner)."""
        files = self._upload_files()
        if files and (files[-1].suffix != ".npy" or len(files) == 2):
            self._load_current("upload")

    def _load_current(self, source: str | None = None) -> None:
        source = source or self.source
        uploads = self._upload_files()
        if source == "upload" and not uploads:
            self.jobs.show_error("Choose an .npz, a pair of .npy files, a .csv or a .parquet file, then press "
                                 "'Load uploaded file'.")
            return
        label = {"mcq": "Asking the language model", "upload": "Reading the upload"}.get(source,
                                                                                       "Loading the digits network")
        kind = self.upload_kind
        self.jobs.submit(lambda progress: CLASSIFIER_SOURCES.load(source, progress, uploads, kind=kind), label,
                         slot="load", on_done=functools.partial(self._set_outputs, source))

    def _set_outputs(self, source: str, outputs) -> None:
        self.selected_row = -1
        self.example_filter = "all"
        self._loaded_source = source
        self.source = source  # an upload shows as the source only once it has loaded
        self.analysis.outputs = outputs

    def _on_source(self, _event) -> None:
        if self.source not in ("upload", self._loaded_source):
            self._load_current()

    def _load_upload(self, _event) -> None:
        self._load_current("upload")

    def _on_settings(self, *_events) -> None:
        """Show what is cached now; compute the rest in the job runner, then show everything."""
        if self.analysis.outputs is None:
            return
        adopt_warm_results(self.analysis)
        self._show()
        if not self.analysis.is_computed():
            self.jobs.submit(self.analysis.compute, "Computing the sets", slot="compute", on_done=self._show_all,
                             on_error=self._show_failed)

    def _show_all(self, _analysis=None) -> None:
        self._show()

    def _show_failed(self, err: BaseException) -> None:
        """The job failed: the parts it did not compute say why (the message box says it too)."""
        self._show(failed=err if isinstance(err, InputError) else InputError("Computing the sets failed."))

    def _on_select(self, event) -> None:
        if event.new:
            self.selected_row = int(self._table.value["row"].iloc[event.new[0]])

    # ------------------------------------------------------------------ showing cached results
    def _show(self, failed: InputError | None = None) -> None:
        """Refill every part whose results changed, from cached results; a part whose result is still
        computing keeps what it showed (the job redraws it when it ends), or says why the job
        ``failed``. One document update."""
        with pn.io.hold(pn.state.curdoc):
            self._summary.object = self._read(self._summary_html, self._summary.object)
            for part in PARTS:
                self._draw(part, failed)
            self._show_examples()

    def _read(self, render: Callable, current):
        """``render()`` from cached results only; the current content while they are computing, the
        reason when they cannot be computed."""
        if self.analysis.outputs is None:
            return current
        try:
            with self.analysis.reading():
                return render()
        except NotComputed:
            return current
        except InputError as err:
            if isinstance(current, pd.DataFrame):
                return pd.DataFrame()
            return f"<div class='cp-error'>{html.escape(str(err))}</div>"

    def _draw(self, part: str, failed: InputError | None = None) -> None:
        """Refill one part's sources from cached results (see :data:`PARTS`); a part that cannot be
        computed (or was not, by a job that ``failed``) shows why in its figures' titles."""
        if self.analysis.outputs is None:
            return
        try:
            with self.analysis.reading():
                try:
                    getattr(self, f"_draw_{part}")()
                except NotComputed:
                    if failed is None:
                        return
                    raise failed from None
        except InputError as err:
            figures, sources = PARTS[part]
            self._shown.pop(part, None)
            for name in sources:
                self._src[name].data = {column: [] for column in SOURCES[name]}
            for name in figures:
                self._figures[name].title.text = str(err)[:100]

    def _changed(self, part: str, *results) -> bool:
        """True (and remembered) when ``results`` differ from what ``part`` shows now."""
        if part in self._shown and _same(self._shown[part], results):
            return False
        self._shown[part] = results
        return True

    def _show_examples(self, *_events) -> None:
        """The example table (refilled only when the examples or the filter changed) and the selected row."""
        shown = self._read(lambda: (self.analysis.examples(), self.example_filter), None)
        if isinstance(shown, str):  # the examples cannot be computed: the summary says why
            self._shown.pop("table", None)
            self._table.value = pd.DataFrame()
        elif shown is not None and self._changed("table", *shown):
            self._table.value = self._read(self._filtered_examples, self._table.value)
            self._table.selection = []
        self._show_example()

    def _show_example(self, *_events) -> None:
        self._example.object = self._read(self._example_html, self._example.object)
        self._draw_example()

    # ------------------------------------------------------------------ layout
    def _build(self) -> pn.viewable.Viewable:
        analysis = self.analysis
        load = pn.widgets.Button(label="Load uploaded file", color="primary", width=160)
        load.on_click(self._load_upload)
        raps = pn.Column(pn.widgets.Checkbox.from_param(analysis.param.raps_tuning, name="Tune lambda, k_reg (paper)"),
                         pn.Row(pn.widgets.FloatInput.from_param(analysis.param.raps_lambda, name="lambda", width=120),
                                pn.widgets.IntInput.from_param(analysis.param.raps_k_reg, name="k_reg", width=120)),
                         visible=analysis.param.method.rx() == "raps", margin=0)
        controls = pn.Column(
            pn.widgets.Select.from_param(self.param.source, name="Data"),
            pn.pane.Markdown("**Upload outputs**: `.npz`, two `.npy`, `.csv` or `.parquet` "
                             "(scores per class + a `label` column).", margin=(0, 10)),
            self._upload,
            pn.widgets.RadioButtonGroup.from_param(self.param.upload_kind, color="light"),
            load,
            self.jobs,
            pn.layout.Divider(),
            pn.widgets.Select.from_param(analysis.param.method, name="Score"),
            pn.widgets.Checkbox.from_param(analysis.param.randomised, name="Randomised APS/RAPS (U ~ Uniform)",
                                           visible=analysis.param.method.rx().rx.in_(["aps", "raps"])),
            raps,
            pn.widgets.FloatSlider.from_param(analysis.param.alpha, name="alpha (miscoverage)", format="0.000",
                                              css_classes=["cp-alpha"]),
            pn.widgets.FloatSlider.from_param(analysis.param.calibration_fraction, name="Calibration fraction"),
            pn.Row(pn.widgets.IntInput.from_param(analysis.param.seed, name="Seed", width=120),
                   pn.widgets.IntInput.from_param(analysis.param.n_splits, name="Random splits", width=120)),
            pn.widgets.Checkbox.from_param(analysis.param.class_conditional, css_classes=["cp-class-conditional"],
                                           name="Class-conditional (Mondrian) thresholds"),
            pn.layout.Divider(),
            pn.Row(download_button(self._sets_csv, "conformal_sets.csv", "Export sets CSV", width=145),
                   download_button(self._metrics_csv, "conformal_metrics.csv", "Export metrics CSV", width=145)),
            width=320, margin=(0, 10),
        )
        row = functools.partial(pn.Row, sizing_mode="stretch_width")
        plots = {name: pn.pane.Bokeh(self._figures[name], sizing_mode="stretch_width", css_classes=[f"cp-{name}"])
                 for name in PLOTS}
        results = pn.Column(
            self._summary,
            row(plots["split_coverage"], plots["coverage_curve"]),
            row(plots["size_curve"], plots["size_histogram"]),
            row(plots["size_coverage"], plots["class_coverage"]),
            pn.pane.Markdown("### Example browser: test rows, their set and the model's probabilities"),
            row(pn.Column(pn.widgets.Select.from_param(self.param.example_filter, width=260),
                          self._table, sizing_mode="stretch_width", min_width=360),
                pn.Column(self._example,
                          pn.Column(pn.pane.Bokeh(self._figures["example_image"]), margin=0,
                                    visible=analysis.param["outputs"].rx().rx.pipe(_has_images)),
                          pn.pane.Bokeh(self._figures["example_bars"]), width=370)),
            pn.pane.Markdown("### Set size and entropy (Conformal Information Pursuit)"),
            row(plots["entropy_scatter"], plots["cip_curve"]),
            sizing_mode="stretch_width",
        )
        return pn.Row(controls, results, sizing_mode="stretch_width")

    def __panel__(self):
        return self._layout

    def _sets_csv(self) -> str:
        return self._read(self.analysis.sets_csv, "") if self.analysis.outputs is not None else ""

    def _metrics_csv(self) -> str:
        return self._read(self.analysis.metrics_csv, "") if self.analysis.outputs is not None else ""

    # ------------------------------------------------------------------ figures (built once)
    def _build_figures(self) -> None:
        """Every plot as a Bokeh figure over the page's sources (:data:`SOURCES`); later changes only
        set source data, ranges, spans and titles."""
        src = self._src = {name: ColumnDataSource({c: [] for c in columns}, name=f"cp-{name}")
                           for name, columns in SOURCES.items()}
        figs = self._figures = {}
        self._spans = {}

        split = figs["split_coverage"] = _figure("split_coverage", "test coverage (band: 90% of its law; red: 1 − α)",
                                                 "density", x_range=Range1d(0, 1))
        self._band = BoxAnnotation(left=0, right=0, fill_color=TEAL, fill_alpha=0.12, line_alpha=0)
        split.add_layout(self._band)
        bars = split.quad(left="left", right="right", top="density", bottom=0, source=src["split_hist"],
                          color=TEAL, alpha=0.55, line_color=None)
        split.line("coverage", "density", source=src["split_pdf"], color=INK, line_width=2, legend_label="Beta law")
        self._spans["split_target"] = Span(location=0.9, dimension="height", line_color=RED, line_dash="dashed",
                                           line_width=2)
        self._spans["split_upper"] = Span(location=0.9, dimension="height", line_color=AMBER, line_dash="dotted",
                                          line_width=2)
        split.add_layout(self._spans["split_target"])
        split.add_layout(self._spans["split_upper"])
        split.add_tools(HoverTool(renderers=[bars], tooltips=[("coverage", "@left{0.000} to @right{0.000}"),
                                                              ("density", "@density{0.00}")]))
        split.legend.location = "top_left"

        coverage = figs["coverage_curve"] = _figure("coverage_curve", "1 − alpha", "coverage")
        coverage.title.text = "Empirical coverage vs 1 − α on this split"
        coverage.varea("target", "beta_low", "beta_high", source=src["alpha_curve"], color=TEAL, alpha=0.15,
                       legend_label="Beta 90% band")
        coverage.line([0.5, 1.0], [0.5, 1.0], color=GREY, line_dash="dashed")
        line = coverage.line("target", "coverage", source=src["alpha_curve"], color=TEAL, line_width=2,
                             legend_label="empirical (test rows)")
        coverage.scatter("target", "coverage", source=src["current"], color=RED, size=10)
        coverage.add_tools(HoverTool(renderers=[line], mode="vline", tooltips=[
            ("alpha", "@alpha{0.00}"), ("coverage", "@coverage{0.000}"), ("mean size", "@mean_size{0.00}")]))
        coverage.legend.location = "bottom_right"

        size = figs["size_curve"] = _figure("size_curve", "alpha", "mean set size")
        size.title.text = "Mean set size vs alpha"
        line = size.line("alpha", "mean_size", source=src["alpha_curve"], color=TEAL, line_width=2)
        size.scatter("alpha", "mean_size", source=src["current"], color=RED, size=10)
        size.add_tools(HoverTool(renderers=[line], mode="vline", tooltips=[
            ("alpha", "@alpha{0.00}"), ("mean size", "@mean_size{0.00}"), ("coverage", "@coverage{0.000}")]))

        for name, column, colour, y_label, title in (
                ("size_histogram", "rows", TEAL, "rows", "Set-size histogram (test rows)"),
                ("size_coverage", "coverage", AMBER, "coverage", "Size-stratified coverage (red: 1 − α)")):
            fig = figs[name] = _figure(name, "set size", y_label, x_range=Range1d(-0.5, 4.5), y_range=Range1d(0, 1))
            fig.title.text = title
            bars = fig.vbar("size", top=column, width=0.9, source=src["sizes"], color=colour, alpha=0.85)
            fig.add_tools(HoverTool(renderers=[bars], tooltips=[("set size", "@size"), ("rows", "@rows"),
                                                                ("coverage", "@coverage{0.000}")]))
        self._spans["size_target"] = Span(location=0.9, dimension="width", line_color=RED, line_dash="dashed")
        figs["size_coverage"].add_layout(self._spans["size_target"])
        figs["size_coverage"].y_range.end = 1.05

        classes = figs["class_coverage"] = _figure("class_coverage", "class", "coverage",
                                                   x_range=FactorRange(factors=[]), y_range=Range1d(0, 1.05))
        bars = classes.vbar("class", top="coverage", width=0.8, source=src["classes"], color=TEAL, alpha=0.8)
        self._spans["class_target"] = Span(location=0.9, dimension="width", line_color=RED, line_dash="dashed")
        classes.add_layout(self._spans["class_target"])
        classes.add_tools(HoverTool(renderers=[bars], tooltips=[("class", "@class"), ("coverage", "@coverage{0.000}"),
                                                                ("rows", "@rows")]))

        scatter = figs["entropy_scatter"] = _figure("entropy_scatter", "entropy of the model's probabilities (bits)",
                                                    "set size (jittered)")
        scatter.title.text = "Set size vs predictive entropy"
        # one renderer per status with a fixed colour: a legend_field legend indexes the colour array of a
        # source that a patch has just replaced, which BokehJS can read out of bounds
        dots = [scatter.scatter("entropy_bits", "jittered_size", source=src["scatter"], size=5, alpha=0.6,
                                color=colour, legend_label=status,
                                view=CDSView(filter=GroupFilter(column_name="status", group=status)))
                for status, colour in STATUS_COLOURS.items()]
        scatter.add_tools(HoverTool(renderers=dots, tooltips=[("row", "@row"), ("true", "@true"),
                                                                ("set size", "@size"), ("entropy", "@entropy_bits{0.00}")]))
        legend = scatter.legend[0]              # below the plot: the points fill every corner
        scatter.center.remove(legend)
        legend.orientation = "horizontal"
        scatter.add_layout(legend, "below")

        cip = figs["cip_curve"] = _figure("cip_curve", "alpha", "bits")
        cip.title.text = "C-IP estimate of H(Y | X) vs alpha"
        line = cip.line("alpha", "cip_bits", source=src["alpha_curve"], color=TEAL, line_width=2,
                        legend_label="C-IP estimate")
        self._entropy_item = cip.line("alpha", "bits", source=src["entropy_line"], color=AMBER, line_dash="dashed",
                                      line_width=2, legend_label="model entropy")
        cip.scatter("alpha", "cip_bits", source=src["current"], color=RED, size=10)
        cip.add_tools(HoverTool(renderers=[line], mode="vline", tooltips=[
            ("alpha", "@alpha{0.00}"), ("C-IP", "@cip_bits{0.00} bits"), ("mean size", "@mean_size{0.00}")]))
        cip.legend.location = "top_right"

        image = figs["example_image"] = _figure("example_image", "", "", height=190, width=190, sizing_mode="fixed", toolbar_location=None,
                                                x_range=Range1d(0, 8), y_range=Range1d(0, 8), tools="")
        image.image(image="image", x="x", y="y", dw="dw", dh="dh", source=src["example_image"],
                    palette=list(reversed(Greys256)))
        image.axis.visible = image.grid.visible = False
        probabilities = figs["example_bars"] = _figure("example_bars", "", "probability", height=240, width=350, sizing_mode="fixed",
                                                       x_range=FactorRange(factors=[]), y_range=Range1d(0, 1.02))
        bars = probabilities.vbar("label", top="probability", width=0.8, source=src["example_bars"], color="colour")
        probabilities.add_tools(HoverTool(renderers=[bars], tooltips=[("label", "@label"), ("status", "@status"),
                                                                      ("probability", "@probability{0.000}")]))

    # ------------------------------------------------------------------ parts (read cached results)
    def _draw_split_coverage(self) -> None:
        a = self.analysis
        coverages, law, density, s = a.split_coverage(), a.coverage_law(), a.coverage_density(), a.summary()
        if not self._changed("split_coverage", coverages, density):
            return
        edges = density["edges"]
        self._src["split_hist"].data = {"left": edges[:-1], "right": edges[1:], "density": density["density"]}
        self._src["split_pdf"].data = {"coverage": density["grid"], "density": density["pdf"]}
        self._band.left, self._band.right = float(law["test_low"]), float(law["test_high"])
        self._spans["split_target"].location = float(s["target"])
        self._spans["split_upper"].location = float(s["upper_bound"])
        fig = self._figures["split_coverage"]
        fig.x_range.start, fig.x_range.end = float(edges[0]), float(edges[-1])
        fig.legend.items[0].label = literal(f"Beta({law['a']}, {law['b']})")
        fig.legend.visible = len(density["grid"]) > 0
        fig.title.text = f"Coverage over {len(coverages)} splits (mean {coverages.mean():.3f})"

    def _draw_alpha_curves(self) -> None:
        curve = self.analysis.alpha_curve()
        if self._changed("alpha_curves", curve):
            self._src["alpha_curve"].data = _columns(curve, SOURCES["alpha_curve"])
            self._figures["coverage_curve"].title.text = "Empirical coverage vs 1 − α on this split"
            self._figures["size_curve"].title.text = "Mean set size vs alpha"
            self._figures["cip_curve"].title.text = "C-IP estimate of H(Y | X) vs alpha"

    def _draw_current(self) -> None:
        """The markers at the current alpha and the model-entropy line (cheap: every settings change)."""
        s = self.analysis.summary()
        if not self._changed("current", s):
            return
        alpha = self.analysis.alpha
        self._src["current"].data = {"alpha": [alpha], "target": [s["target"]], "coverage": [s["coverage"]],
                                     "mean_size": [s["mean_size"]], "cip_bits": [s["cip_bits"]]}
        self._src["entropy_line"].data = {"alpha": [0.0, 0.5], "bits": [s["mean_entropy_bits"]] * 2}
        self._entropy_item_label(s["mean_entropy_bits"])
        for name in ("size_target", "class_target"):
            self._spans[name].location = 1 - alpha

    def _entropy_item_label(self, bits: float) -> None:
        legend = self._figures["cip_curve"].legend[0]
        item = next(item for item in legend.items if self._entropy_item in item.renderers)
        item.label = literal(f"model entropy {bits:.2f}")

    def _draw_sizes(self) -> None:
        table = self.analysis.size_table()
        if not self._changed("sizes", table):
            return
        present = table.loc[table["rows"] > 0, "size"]
        top = int(present.max()) if len(present) else 1
        self._src["sizes"].data = {"size": table["size"].to_numpy(), "rows": table["rows"].to_numpy(),
                                   "coverage": table["coverage"].fillna(0).to_numpy()}
        right = min(max(top, 4), len(table) - 1) + 0.5
        for name in ("size_histogram", "size_coverage"):
            self._figures[name].x_range.end = right
        self._figures["size_histogram"].y_range.end = float(max(table["rows"].max(), 1)) * 1.05
        self._figures["size_histogram"].title.text = "Set-size histogram (test rows)"
        self._figures["size_coverage"].title.text = "Size-stratified coverage (red: 1 − α)"

    def _draw_classes(self) -> None:
        table = self.analysis.class_table()
        if not self._changed("classes", table, self.analysis.class_conditional):
            return
        fig = self._figures["class_coverage"]
        names = [str(c) for c in table["class"]]
        if list(fig.x_range.factors) != names:
            fig.x_range.factors = names
            fig.xaxis.major_label_orientation = 0.8 if len(names) > 12 else 0
        self._src["classes"].data = {"class": names, "coverage": table["coverage"].to_numpy(),
                                     "rows": table["rows"].to_numpy()}
        kind = "class-conditional" if self.analysis.class_conditional else "marginal"
        fig.title.text = f"Per-class coverage ({kind})"

    def _draw_scatter(self) -> None:
        a = self.analysis
        sizes_and_hits, entropy = a.test_sizes_and_coverage(), a.test_entropy()
        if not self._changed("scatter", sizes_and_hits, entropy):
            return
        sizes, hit = (t.numpy() for t in sizes_and_hits)
        _, _, test = a.split()
        rows = test.numpy()
        names = np.array(a.data.class_names)
        self._src["scatter"].data = {
            "entropy_bits": entropy.numpy(), "jittered_size": sizes + self._jitter(len(sizes)), "size": sizes.tolist(),
            # text columns as lists: Bokeh sends a NumPy string array as a binary buffer BokehJS cannot read
            "status": np.where(hit, "covered", "missed").tolist(), "row": rows.tolist(),
            "true": names[a.data.labels[test].numpy()].tolist()}
        self._figures["entropy_scatter"].title.text = "Set size vs predictive entropy"

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def _jitter(n: int) -> np.ndarray:
        """The same small vertical jitter for every redraw of ``n`` points (sizes stay readable)."""
        jitter = np.random.default_rng(0).uniform(-0.18, 0.18, n)
        jitter.flags.writeable = False
        return jitter

    def _draw_example(self) -> None:
        """The selected row's image and per-class probability bars (cached results only)."""
        if self.analysis.outputs is None:
            return
        try:
            with self.analysis.reading():
                example = self._current_example()
                frame = None if example is None else self.analysis.example_labels(int(example["row"]))
        except NotComputed:
            return
        except InputError:
            example = frame = None
        bars, image = self._figures["example_bars"], self._figures["example_image"]
        if frame is None:
            self._src["example_bars"].data = {c: [] for c in SOURCES["example_bars"]}
            self._src["example_image"].data = {c: [] for c in SOURCES["example_image"]}
            bars.title.text = "No test row matches this filter."
            return
        row = int(example["row"])
        status = [("true label, " if true else "") + ("in set" if in_set else "not in set")
                  for true, in_set in zip(frame["true"], frame["in_set"])]
        labels = [str(label) for label in frame["label"]]
        if list(bars.x_range.factors) != labels:
            bars.x_range.factors = labels
            bars.xaxis.major_label_orientation = 0.8 if len(labels) > 12 else 0
        self._src["example_bars"].data = {"label": labels, "probability": frame["probability"].to_numpy(),
                                          "status": status, "colour": [BAR_COLOURS[s] for s in status]}
        bars.title.text = "Probabilities (dark: true label)"
        images = self.analysis.data.images
        if images is not None:
            picture = np.flipud(np.asarray(images[row], dtype=float))
            height, width = picture.shape
            self._src["example_image"].data = {"image": [picture], "x": [0], "y": [0], "dw": [width], "dh": [height]}
            image.x_range.end, image.y_range.end = width, height
            image.title.text = f"digit, row {row}"

    # ------------------------------------------------------------------ helpers reading cached results
    def _filtered_examples(self) -> pd.DataFrame:
        table = self.analysis.examples()
        keep = {"all": table["size"] >= 0, "missed": ~table["covered"], "empty": table["size"] == 0,
                "multi": table["size"] >= 2}[self.example_filter]
        columns = ["row", "true", "set", "size", "covered", "p_true"]
        return table.loc[keep, columns].round({"p_true": 3}).reset_index(drop=True)

    def _current_example(self) -> pd.Series | None:
        """The full example line of the selected row (or of the first row the filter lists)."""
        listed = self._filtered_examples()
        if listed.empty:
            return None
        row = self.selected_row if self.selected_row in set(listed["row"]) else int(listed["row"].iloc[0])
        table = self.analysis.examples()
        return table[table["row"] == row].iloc[0]

    # ------------------------------------------------------------------ renderers
    def _summary_html(self) -> str:
        s = self.analysis.summary()
        data = self.analysis.data
        threshold = "per class" if self.analysis.class_conditional else (
            "+inf" if np.isinf(s["threshold"]) else f"{s['threshold']:.4f}")
        cards = [("coverage", f"{s['coverage']:.1%}", f"target ≥ {s['target']:.1%}"),
                 ("mean set size", f"{s['mean_size']:.2f}", f"{s['singleton_fraction']:.0%} singletons, "
                                                              f"{s['empty_fraction']:.0%} empty"),
                 ("threshold qhat", threshold, f"k = {s['rank_k']} of n = {s['n_calibration']}"),
                 ("rows", f"{s['n_calibration']} / {s['n_test']}", "calibration / test"
                  + (f" (+{s['n_tuning']} tuning)" if s["n_tuning"] else "")),
                 ("coverage gap", f"{s['coverage_gap']:.3f}", "mean |cov_c − (1−α)| over classes"),
                 ("C-IP estimate", f"{s['cip_bits']:.2f} bits", f"model entropy {s['mean_entropy_bits']:.2f} bits")]
        if self.analysis.method == "raps":
            cards.append(("RAPS", f"λ = {s['raps_lambda']:g}", f"k_reg = {s['raps_k_reg']}"))
        body = "".join(card(label, value, note, prefix="cp") for label, value, note in cards)
        notes = warning_notes(self.analysis.warnings(), "cp-warning")
        return (f"<div class='cp-summary-body'><div style='font-size:14px;margin-bottom:6px'>"
                f"<b>{html.escape(data.name)}</b> · {html.escape(data.description)}</div>{body}{notes}</div>")

    def _example_html(self) -> str:
        example = self._current_example()
        if example is None:
            return "<i>No test row matches this filter.</i>"
        status = "covered" if example["covered"] else "<span style='color:#dc2626'>missed</span>"
        head = (f"<div class='cp-example-body' style='font-size:15px'><b>Row {int(example['row'])}</b> · true label "
                f"<b class='cp-example-true'>{html.escape(str(example['true']))}</b> · set "
                f"<b class='cp-example-set'>{html.escape(example['set'])}</b> (size {int(example['size'])}) · "
                f"{status} · entropy {example['entropy_bits']:.2f} bits</div>")
        texts = self.analysis.data.texts
        if texts is not None:
            body = html.escape(texts[int(example["row"])]).replace("\n", "<br>")
            head += f"<div class='cp-example-text' style='margin-top:6px;font-family:ui-monospace,monospace'>{body}</div>"
        return head
