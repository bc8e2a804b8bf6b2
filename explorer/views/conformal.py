"""The conformal sets page: drag alpha and see coverage, set sizes, the sets themselves and C-IP.

A thin view over :class:`explorer.analyses.conformal.ConformalAnalysis`: widgets come from its
parameters; loading data (training the digits network, asking the language model, reading an
upload) and computing the sets run in the page's :class:`JobRunner` off the event loop. A settings
change redraws at once whatever is already cached (the cards, the curves' markers), and what needs
the long part follows when the job ends; every derived result is computed once per change.
"""

from __future__ import annotations

import functools
import html

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from explorer.analyses.base import NotComputed
from explorer.analyses.conformal import ConformalAnalysis
from explorer.data.classifier_outputs import KINDS
from explorer.data.sources import CLASSIFIER_SOURCES
from explorer.errors import InputError
from explorer.views.jobs import JobRunner
from explorer.views.links import PageLinks
from explorer.views.shared import AMBER, GREY, RED, TEAL, card, download_button, on_open, upload_widget, uploaded, \
    warning_notes

hv.extension("bokeh", logo=False)

SETTINGS = ("outputs", "method", "randomised", "alpha", "calibration_fraction", "seed", "class_conditional",
            "raps_tuning", "raps_lambda", "raps_k_reg", "n_splits")
STATUS_COLOURS = {"covered": TEAL, "missed": RED}
BAR_COLOURS = {"true label, in set": TEAL, "true label, not in set": RED, "in set": "#5eead4", "not in set": GREY}
FILTERS = {"all test rows": "all", "missed (true label not in set)": "missed", "empty sets": "empty",
           "sets of 2 or more": "multi"}
PLOT = dict(height=320, responsive=True, show_grid=True, tools=["hover"], toolbar="right")
PLOTS = ("split_coverage", "coverage_curve", "size_curve", "size_histogram", "size_coverage", "class_coverage",
         "entropy_scatter", "cip_curve")


def _has_images(outputs) -> bool:
    return outputs is not None and outputs.images is not None


def _placeholder(title: str):
    return hv.Curve([]).opts(title=title, **PLOT)


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
        self._table = pn.widgets.Tabulator(pd.DataFrame(), selectable=1, disabled=True, pagination="local",
                                           layout="fit_data_stretch", widths={"set": 120},
                                           page_size=8, show_index=False, sizing_mode="stretch_width", height=330,
                                           css_classes=["cp-examples"])
        self._table.param.watch(self._on_select, "selection")
        self._summary = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["cp-summary"])
        self._plots = {name: pn.pane.HoloViews(_placeholder("Loading data…"), sizing_mode="stretch_width",
                                               linked_axes=False) for name in PLOTS}
        self._example = pn.pane.HTML("", css_classes=["cp-example"], width=360)
        self._example_image = pn.pane.HoloViews(None, linked_axes=False, width=200)
        self._example_bars = pn.pane.HoloViews(_placeholder("Loading data…"), linked_axes=False, width=360)
        self.analysis.param.watch(self._on_settings, list(SETTINGS))
        self.param.watch(self._show_examples, ["example_filter"])
        self.param.watch(self._show_example, ["selected_row"])
        self.param.watch(self._on_source, ["source"])
        self._layout = self._build()
        if self.analysis.outputs is None:
            on_open(self._load_current)
        else:
            on_open(self._on_settings)

    # ------------------------------------------------------------------ actions (no computation here)
    def _load_current(self, source: str | None = None) -> None:
        source = source or self.source
        uploads = uploaded(self._upload) or []
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
        self._show()
        if not self.analysis.is_computed():
            self.jobs.submit(self.analysis.compute, "Computing the sets", slot="compute", on_done=self._show_all)

    def _show_all(self, _analysis=None) -> None:
        self._show()

    def _on_select(self, event) -> None:
        if event.new:
            self.selected_row = int(self._table.value["row"].iloc[event.new[0]])

    # ------------------------------------------------------------------ showing cached results
    def _show(self) -> None:
        """Redraw every part from cached results; a part whose result is still computing keeps what it
        showed (the job redraws it when it ends)."""
        with pn.io.hold(pn.state.curdoc):
            self._summary.object = self._read(self._summary_html, self._summary.object)
            for name, pane in self._plots.items():
                pane.object = self._read(getattr(self, f"_plot_{name}"), pane.object)
            self._show_examples()

    def _read(self, render, current):
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
            return f"<div class='cp-error'>{html.escape(str(err))}</div>" if isinstance(current, str) \
                else _placeholder(str(err)[:80])

    def _show_examples(self, *_events) -> None:
        self._table.value = self._read(self._filtered_examples, self._table.value)
        self._table.selection = []
        self._show_example()

    def _show_example(self, *_events) -> None:
        self._example.object = self._read(self._example_html, self._example.object)
        self._example_image.object = self._read(self._plot_example_image, self._example_image.object)
        self._example_bars.object = self._read(self._plot_example_bars, self._example_bars.object)

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
            pn.widgets.FloatSlider.from_param(analysis.param.alpha, name="alpha (miscoverage)", format="0.000"),
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
        plots = self._plots
        results = pn.Column(
            self._summary,
            row(plots["split_coverage"], plots["coverage_curve"]),
            row(plots["size_curve"], plots["size_histogram"]),
            row(plots["size_coverage"], plots["class_coverage"]),
            pn.pane.Markdown("### Example browser: test rows, their set and the model's probabilities"),
            row(pn.Column(pn.widgets.Select.from_param(self.param.example_filter, width=260),
                          self._table, sizing_mode="stretch_width", min_width=360),
                pn.Column(self._example,
                          pn.Column(self._example_image, margin=0,
                                    visible=analysis.param["outputs"].rx().rx.pipe(_has_images)),
                          self._example_bars, width=370)),
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

    def _plot_split_coverage(self):
        coverages = self.analysis.split_coverage()
        law = self.analysis.coverage_law()
        density = self.analysis.coverage_density()
        s = self.analysis.summary()
        edges = density["edges"]
        overlays = [hv.VSpan(law["test_low"], law["test_high"]).opts(color=TEAL, alpha=0.12),
                    hv.Histogram((edges, density["density"]), kdims=["coverage"], vdims=["density"]).opts(
                        color=TEAL, alpha=0.55, line_color=None)]
        if len(density["grid"]):
            overlays.append(hv.Curve((density["grid"], density["pdf"]), "coverage", "density",
                                     label=f"Beta({law['a']}, {law['b']})").opts(color="#111827", line_width=2))
        overlays += [hv.VLine(s["target"]).opts(color=RED, line_dash="dashed", line_width=2),
                     hv.VLine(s["upper_bound"]).opts(color=AMBER, line_dash="dotted", line_width=2)]
        return hv.Overlay(overlays).opts(
            title=f"Coverage over {len(coverages)} splits (mean {coverages.mean():.3f})",
            xlabel="test coverage (band: 90% of its law; red: 1 − α)", ylabel="density",
            xlim=(edges[0], edges[-1]), legend_position="bottom", legend_cols=3, **PLOT)

    def _plot_coverage_curve(self):
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

    def _plot_size_curve(self):
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

    def _plot_size_histogram(self):
        return self._size_bars("rows", TEAL).opts(title="Set-size histogram (test rows)", ylabel="rows")

    def _plot_size_coverage(self):
        target = hv.HLine(1 - self.analysis.alpha).opts(color=RED, line_dash="dashed")
        return (self._size_bars("coverage", AMBER) * target).opts(
            title="Size-stratified coverage (red: 1 − α)", ylim=(0, 1.05))

    def _plot_class_coverage(self):
        table = self.analysis.class_table()
        bars = hv.Bars(table, "class", ["coverage", "rows"]).opts(color=TEAL, alpha=0.8)
        target = hv.HLine(1 - self.analysis.alpha).opts(color=RED, line_dash="dashed")
        kind = "class-conditional" if self.analysis.class_conditional else "marginal"
        return (bars * target).opts(title=f"Per-class coverage ({kind})",
                                    ylim=(0, 1.05), xrotation=45 if len(table) > 12 else 0, **PLOT)

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

    def _plot_example_image(self):
        example = self._current_example()
        images = self.analysis.data.images
        if example is None or images is None:
            return None
        row = int(example["row"])
        return hv.Image(np.flipud(images[row]), bounds=(0, 0, 8, 8)).opts(
            cmap="gray_r", xaxis=None, yaxis=None, width=190, height=190, title=f"digit, row {row}", toolbar=None)

    def _plot_example_bars(self):
        example = self._current_example()
        if example is None:
            return _placeholder("No test row matches this filter.")
        frame = self.analysis.example_labels(int(example["row"]))
        frame["status"] = [("true label, " if true else "") + ("in set" if in_set else "not in set")
                           for true, in_set in zip(frame["true"], frame["in_set"])]
        return hv.Bars(frame, "label", ["probability", "status"]).opts(
            color="status", cmap=BAR_COLOURS, title="Probabilities (dark: true label)",
            ylim=(0, 1.02), show_legend=False, **{**PLOT, "height": 240, "responsive": False, "width": 350},
            xrotation=45 if len(frame) > 12 else 0)

    def _plot_entropy_scatter(self):
        table = self.analysis.examples()
        jitter = np.random.default_rng(0).uniform(-0.18, 0.18, len(table))
        frame = pd.DataFrame({"entropy_bits": table["entropy_bits"], "set size": table["size"] + jitter,
                              "status": np.where(table["covered"], "covered", "missed"), "row": table["row"],
                              "true": table["true"]})
        points = hv.Points(frame, ["entropy_bits", "set size"], ["status", "row", "true"]).opts(
            color="status", cmap=STATUS_COLOURS, size=5, alpha=0.6, legend_position="bottom", legend_cols=2)
        return points.opts(title="Set size vs predictive entropy",
                           xlabel="entropy of the model's probabilities (bits)", ylabel="set size (jittered)", **PLOT)

    def _plot_cip_curve(self):
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
