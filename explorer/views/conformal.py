"""The conformal sets page: drag alpha and see coverage, set sizes, the sets themselves and C-IP.

A thin view over :class:`explorer.analyses.conformal.ConformalAnalysis`: widgets come from its
parameters, plots are HoloViews objects bound to them, and loading data (training the digits
network, asking the language model) runs in a :class:`BackgroundTask` off the event loop.
"""

from __future__ import annotations

import functools
import html
import io
import re

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from explorer.analyses.conformal import SOURCES, ConformalAnalysis, load_source
from explorer.data.classifier_outputs import KINDS
from explorer.errors import InputError
from explorer.views.task import BackgroundTask

hv.extension("bokeh", logo=False)

SETTINGS = ("outputs", "method", "randomised", "alpha", "calibration_fraction", "seed", "class_conditional",
            "raps_tuning", "raps_lambda", "raps_k_reg", "n_splits")
TEAL, RED, GREY, AMBER = "#0f766e", "#dc2626", "#9ca3af", "#b45309"
STATUS_COLOURS = {"covered": TEAL, "missed": RED}
BAR_COLOURS = {"true label, in set": TEAL, "true label, not in set": RED, "in set": "#5eead4", "not in set": GREY}
FILTERS = {"all test rows": "all", "missed (true label not in set)": "missed", "empty sets": "empty",
           "sets of 2 or more": "multi"}
PLOT = dict(height=320, responsive=True, show_grid=True, tools=["hover"], toolbar="right")
CARD_CSS = ("display:inline-block;padding:6px 12px;border:1px solid #e5e7eb;border-radius:8px;margin:0 8px 8px 0;"
            "vertical-align:top")


def _has_images(outputs) -> bool:
    return outputs is not None and outputs.images is not None


def _placeholder(title: str):
    return hv.Curve([]).opts(title=title, **PLOT)


def guarded(function):
    """Render a placeholder with the reason when the analysis cannot produce a result yet."""
    @functools.wraps(function)
    def wrapper(self, *args, **kwargs):
        if self.analysis.outputs is None:
            return _placeholder("Loading data…") if function.__name__.startswith("_plot") else ""
        try:
            return function(self, *args, **kwargs)
        except InputError as err:
            return _placeholder(str(err)[:80]) if function.__name__.startswith("_plot") else \
                f"<div class='cp-error'>{html.escape(str(err))}</div>"
    return wrapper


class ConformalExplorer(pn.viewable.Viewer):
    """Split-conformal prediction sets for a classifier or an LLM answering multiple-choice questions.

    ``ConformalExplorer()`` renders the whole page (``panel serve`` or a notebook) and loads the
    bundled digits network; pass a ``ConformalAnalysis`` with ``outputs`` to drive it from code.
    """

    analysis = param.ClassSelector(class_=ConformalAnalysis)
    source = param.Selector(objects=SOURCES, default="digits", doc="Which classifier outputs to study.")
    upload_kind = param.Selector(objects=list(KINDS), default="auto", label="Uploaded scores are")
    example_filter = param.Selector(objects=FILTERS, default="all", label="Show")
    selected_row = param.Integer(default=-1, doc="Data row shown in the example browser (-1: the first listed).")

    def __init__(self, **params):
        params.setdefault("analysis", ConformalAnalysis())
        super().__init__(**params)
        self.task = BackgroundTask()
        self._loaded_source = None
        self._upload = pn.widgets.FileInput(accept=".npz,.npy,.csv,.parquet", multiple=True, label="Outputs file(s)")
        self._table = pn.widgets.Tabulator(pd.DataFrame(), selectable=1, disabled=True, pagination="local",
                                           layout="fit_data_stretch", widths={"set": 120},
                                           page_size=8, show_index=False, sizing_mode="stretch_width", height=330,
                                           css_classes=["cp-examples"])
        self._table.param.watch(self._on_select, "selection")
        self.analysis.param.watch(self._refresh_table, list(SETTINGS))
        self.param.watch(self._refresh_table, ["example_filter"])
        self.param.watch(self._on_source, ["source"])
        self._layout = self._build()
        if self.analysis.outputs is None:
            pn.state.onload(self._load_current)
        else:
            self._refresh_table()

    # ------------------------------------------------------------------ actions (no computation here)
    async def _load_current(self, source: str | None = None) -> None:
        source, kind = source or self.source, self.upload_kind
        files = dict(zip(self._upload.filename or [], self._upload.value or []))
        if source == "upload" and not files:
            self.task.show_error("Choose an .npz, a pair of .npy files, a .csv or a .parquet file, then press "
                                 "'Load uploaded file'.")
            return
        label = {"mcq": "Asking the language model", "upload": "Reading the upload"}.get(source, "Loading the digits network")
        await self.task.run(lambda progress: load_source(source, progress, files, kind),
                            functools.partial(self._set_outputs, source), label)

    def _set_outputs(self, source: str, outputs) -> None:
        self.selected_row = -1
        self.example_filter = "all"
        self._loaded_source = source
        self.source = source  # an upload shows as the source only once it has loaded
        self.analysis.outputs = outputs

    def _on_source(self, _event) -> None:
        if self.source not in ("upload", self._loaded_source):
            pn.state.execute(self._load_current)

    def _load_upload(self, _event) -> None:
        pn.state.execute(functools.partial(self._load_current, "upload"))

    def _refresh_table(self, *_events) -> None:
        self._table.value = self._filtered_examples()
        self._table.selection = []

    def _on_select(self, event) -> None:
        if event.new:
            self.selected_row = int(self._table.value["row"].iloc[event.new[0]])

    # ------------------------------------------------------------------ layout
    def _bind(self, function, *extra):
        return pn.bind(function, *[self.analysis.param[name] for name in SETTINGS], *extra)

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
            self.task,
            pn.layout.Divider(),
            pn.widgets.Select.from_param(analysis.param.method, name="Score"),
            pn.widgets.Checkbox.from_param(analysis.param.randomised, name="Randomised APS/RAPS (U ~ Uniform)",
                                           visible=analysis.param.method.rx().rx.in_(["aps", "raps"])),
            raps,
            pn.widgets.FloatSlider.from_param(analysis.param.alpha, name="alpha (miscoverage)", format="0.000"),
            pn.widgets.FloatSlider.from_param(analysis.param.calibration_fraction, name="Calibration fraction"),
            pn.Row(pn.widgets.IntInput.from_param(analysis.param.seed, name="Seed", width=120),
                   pn.widgets.IntInput.from_param(analysis.param.n_splits, name="Random splits", width=120)),
            pn.widgets.Checkbox.from_param(analysis.param.class_conditional, css_classes=["cp-class-conditional"],
                                           name="Class-conditional (Mondrian) thresholds"),
            pn.layout.Divider(),
            pn.Row(self._download("sets"), self._download("metrics")),
            width=320, margin=(0, 10),
        )
        row = functools.partial(pn.Row, sizing_mode="stretch_width")
        plot = functools.partial(pn.pane.HoloViews, sizing_mode="stretch_width", linked_axes=False)
        results = pn.Column(
            pn.pane.HTML(self._bind(self._summary_html), sizing_mode="stretch_width", css_classes=["cp-summary"]),
            row(plot(self._bind(self._plot_split_coverage)), plot(self._bind(self._plot_coverage_curve))),
            row(plot(self._bind(self._plot_size_curve)), plot(self._bind(self._plot_size_histogram))),
            row(plot(self._bind(self._plot_size_coverage)), plot(self._bind(self._plot_class_coverage))),
            pn.pane.Markdown("### Example browser: test rows, their set and the model's probabilities"),
            row(pn.Column(pn.widgets.Select.from_param(self.param.example_filter, width=260),
                          self._table, sizing_mode="stretch_width", min_width=360),
                pn.Column(pn.pane.HTML(self._bind(self._example_html, self.param.selected_row,
                                                  self.param.example_filter), css_classes=["cp-example"], width=360),
                          pn.Column(pn.pane.HoloViews(self._bind(self._plot_example_image, self.param.selected_row,
                                                                 self.param.example_filter), linked_axes=False,
                                                      width=200),
                                    visible=analysis.param["outputs"].rx().rx.pipe(_has_images), margin=0),
                          pn.pane.HoloViews(self._bind(self._plot_example_bars, self.param.selected_row,
                                                       self.param.example_filter), linked_axes=False, width=360),
                          width=370)),
            pn.pane.Markdown("### Set size and entropy (Conformal Information Pursuit)"),
            row(plot(self._bind(self._plot_entropy_scatter)), plot(self._bind(self._plot_cip_curve))),
            sizing_mode="stretch_width",
        )
        return pn.Row(controls, results, sizing_mode="stretch_width")

    def __panel__(self):
        return self._layout

    def _download(self, what: str) -> pn.widgets.FileDownload:
        def payload():
            if self.analysis.outputs is None:
                return io.BytesIO(b"")
            text = self.analysis.sets_csv() if what == "sets" else self.analysis.metrics_csv()
            return io.BytesIO(text.encode())

        return pn.widgets.FileDownload(callback=payload, filename=f"conformal_{what}.csv",
                                       label=f"Export {what} CSV", color="light", width=145)

    # ------------------------------------------------------------------ helpers reading cached results
    def _filtered_examples(self) -> pd.DataFrame:
        if self.analysis.outputs is None:
            return pd.DataFrame()
        try:
            table = self.analysis.examples()
        except InputError:
            return pd.DataFrame()
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
    @guarded
    def _summary_html(self, *_settings) -> str:
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
        body = "".join(f"<div style='{CARD_CSS}'><div style='font-size:11px;color:#6b7280'>{label}</div>"
                       f"<div class='cp-card-{re.sub('[^a-z0-9]+', '-', label.lower())}' style='font-size:19px;"
                       f"font-weight:600'>{value}</div><div style='font-size:11px;color:#6b7280'>{note}</div></div>"
                       for label, value, note in cards)
        notes = "".join(f"<div class='cp-warning' style='background:#fef3c7;border-radius:6px;padding:6px 10px;"
                        f"margin:4px 0'>⚠ {html.escape(text)}</div>" for text in self.analysis.warnings())
        return (f"<div class='cp-summary-body'><div style='font-size:14px;margin-bottom:6px'>"
                f"<b>{html.escape(data.name)}</b> · {html.escape(data.description)}</div>{body}{notes}</div>")

    @guarded
    def _plot_split_coverage(self, *_settings):
        coverages = self.analysis.split_coverage()
        law = self.analysis.coverage_law()
        s = self.analysis.summary()
        low, high = min(coverages.min(), law["test_low"]), max(coverages.max(), law["test_high"])
        edges = np.linspace(low - 0.005, high + 0.005, 31)
        counts, _ = np.histogram(coverages, edges, density=True)
        overlays = [hv.VSpan(law["test_low"], law["test_high"]).opts(color=TEAL, alpha=0.12),
                    hv.Histogram((edges, counts), kdims=["coverage"], vdims=["density"]).opts(color=TEAL, alpha=0.55, line_color=None)]
        if law["b"] > 0:
            from scipy import stats

            grid = np.linspace(edges[0], edges[-1], 200)
            overlays.append(hv.Curve((grid, stats.beta.pdf(grid, law["a"], law["b"])), "coverage", "density",
                                     label=f"Beta({law['a']}, {law['b']})").opts(color="#111827", line_width=2))
        overlays += [hv.VLine(s["target"]).opts(color=RED, line_dash="dashed", line_width=2),
                     hv.VLine(s["upper_bound"]).opts(color=AMBER, line_dash="dotted", line_width=2)]
        return hv.Overlay(overlays).opts(
            title=f"Coverage over {len(coverages)} splits (mean {coverages.mean():.3f})",
            xlabel="test coverage (band: 90% of its law; red: 1 − α)", ylabel="density",
            xlim=(edges[0], edges[-1]), legend_position="bottom", legend_cols=3, **PLOT)

    @guarded
    def _plot_coverage_curve(self, *_settings):
        curve = self.analysis.alpha_curve()
        s = self.analysis.summary()
        diagonal = hv.Curve(([0.5, 1.0], [0.5, 1.0]), "1 − alpha", "coverage").opts(color=GREY, line_dash="dashed")
        band = hv.Area(curve, "target", ["beta_low", "beta_high"], label="Beta 90% band").opts(color=TEAL, alpha=0.15)
        line = hv.Curve(curve, "target", ["coverage", "alpha", "mean_size"], label="empirical (test rows)").opts(
            color=TEAL, line_width=2)
        point = hv.Scatter(([s["target"]], [s["coverage"]]), "target", "coverage").opts(color=RED, size=10)
        return (band * diagonal * line * point).opts(
            title="Empirical coverage vs 1 − α on this split", xlabel="1 − alpha", ylabel="coverage",
            legend_position="bottom", legend_cols=2, **PLOT)

    @guarded
    def _plot_size_curve(self, *_settings):
        curve = self.analysis.alpha_curve()
        s = self.analysis.summary()
        line = hv.Curve(curve, "alpha", ["mean_size", "coverage"]).opts(color=TEAL, line_width=2)
        point = hv.Scatter(([self.analysis.alpha], [s["mean_size"]]), "alpha", "mean_size").opts(color=RED, size=10)
        return (line * point).opts(title="Mean set size vs alpha", ylabel="mean set size", **PLOT)

    def _size_bars(self, column: str, colour: str):
        """A bar per set size 0..K (as a histogram with unit bins, readable for any K)."""
        table = self.analysis.size_table()
        edges = np.arange(len(table) + 1) - 0.5
        present = table.loc[table["rows"] > 0, "size"]
        top = int(present.max()) if len(present) else 1
        return hv.Histogram((edges, table[column].fillna(0).to_numpy()), kdims=["set size"], vdims=[column]).opts(
            color=colour, alpha=0.85, xlim=(-0.5, min(max(top, 4), len(table) - 1) + 0.5), **PLOT)

    @guarded
    def _plot_size_histogram(self, *_settings):
        return self._size_bars("rows", TEAL).opts(title="Set-size histogram (test rows)", ylabel="rows")

    @guarded
    def _plot_size_coverage(self, *_settings):
        target = hv.HLine(1 - self.analysis.alpha).opts(color=RED, line_dash="dashed")
        return (self._size_bars("coverage", AMBER) * target).opts(
            title="Size-stratified coverage (red: 1 − α)", ylim=(0, 1.05))

    @guarded
    def _plot_class_coverage(self, *_settings):
        table = self.analysis.class_table()
        bars = hv.Bars(table, "class", ["coverage", "rows"]).opts(color=TEAL, alpha=0.8)
        target = hv.HLine(1 - self.analysis.alpha).opts(color=RED, line_dash="dashed")
        kind = "class-conditional" if self.analysis.class_conditional else "marginal"
        return (bars * target).opts(title=f"Per-class coverage ({kind})",
                                    ylim=(0, 1.05), xrotation=45 if len(table) > 12 else 0, **PLOT)

    @guarded
    def _example_html(self, *_settings) -> str:
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

    @guarded
    def _plot_example_image(self, *_settings):
        example = self._current_example()
        images = self.analysis.data.images
        if example is None or images is None:
            return None
        row = int(example["row"])
        return hv.Image(np.flipud(images[row]), bounds=(0, 0, 8, 8)).opts(
            cmap="gray_r", xaxis=None, yaxis=None, width=190, height=190, title=f"digit, row {row}", toolbar=None)

    @guarded
    def _plot_example_bars(self, *_settings):
        example = self._current_example()
        if example is None:
            return _placeholder("No test row matches this filter.")
        data = self.analysis.data
        row = int(example["row"])
        probs = data.probs[row].numpy()
        in_set = set(example["set"].strip("{}").split(", ")) if example["size"] else set()
        status = []
        for index, name in enumerate(data.class_names):
            true = index == int(data.labels[row])
            status.append(("true label, " if true else "") + ("in set" if name in in_set else "not in set"))
        frame = pd.DataFrame({"label": list(data.class_names), "probability": probs, "status": status})
        return hv.Bars(frame, "label", ["probability", "status"]).opts(
            color="status", cmap=BAR_COLOURS, title="Probabilities (dark: true label)",
            ylim=(0, 1.02), show_legend=False, **{**PLOT, "height": 240, "responsive": False, "width": 350},
            xrotation=45 if len(frame) > 12 else 0)

    @guarded
    def _plot_entropy_scatter(self, *_settings):
        table = self.analysis.examples()
        jitter = np.random.default_rng(0).uniform(-0.18, 0.18, len(table))
        frame = pd.DataFrame({"entropy_bits": table["entropy_bits"], "set size": table["size"] + jitter,
                              "status": np.where(table["covered"], "covered", "missed"), "row": table["row"],
                              "true": table["true"]})
        points = hv.Points(frame, ["entropy_bits", "set size"], ["status", "row", "true"]).opts(
            color="status", cmap=STATUS_COLOURS, size=5, alpha=0.6, legend_position="bottom", legend_cols=2)
        return points.opts(title="Set size vs predictive entropy",
                           xlabel="entropy of the model's probabilities (bits)", ylabel="set size (jittered)", **PLOT)

    @guarded
    def _plot_cip_curve(self, *_settings):
        curve = self.analysis.alpha_curve()
        s = self.analysis.summary()
        line = hv.Curve(curve, "alpha", [("cip_bits", "bits"), "mean_size"], label="C-IP estimate").opts(
            color=TEAL, line_width=2)
        entropy = hv.HLine(s["mean_entropy_bits"]).opts(color=AMBER, line_dash="dashed", line_width=2)
        label = hv.Curve([], "alpha", "bits", label=f"model entropy {s['mean_entropy_bits']:.2f}").opts(
            color=AMBER, line_dash="dashed")
        point = hv.Scatter(([self.analysis.alpha], [s["cip_bits"]]), "alpha", "bits").opts(color=RED, size=10)
        return (line * entropy * label * point).opts(
            title="C-IP estimate of H(Y | X) vs alpha", legend_position="bottom", legend_cols=2,
            ylabel="bits", **PLOT)
