"""The evaluation panel of a stored run: how well each uncertainty measure flags wrong answers.

A thin view over :class:`~explorer.analyses.runs.RunResults` at one temperature: ROC, precision-recall
and risk-coverage curves of the chosen measures overlaid, the reliability diagram of a
probability-like measure with its ECE, the table of every measure with bootstrap intervals (and
why a statistic is undefined, in words), TSU with intervals, and the paired bootstrap difference
of two measures. The bootstrap tables run in the page's :class:`JobRunner`; the curves are cheap
cached results. The plots are Bokeh figures built once over ColumnDataSources this panel owns: a
choice refills their data in place.

    EvaluationPanel(results=RunResults(db_path, run_id))      # alone, in a notebook
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, Range1d
from bokeh.plotting import figure

from explorer.analyses.base import NotComputed
from explorer.analyses.runs import (PROBABILITY_MEASURES, STATISTICS, RunResults, evaluation_display,
                                    tsu_display)
from explorer.analyses.uncertainty_measures import MEASURE_LABELS
from explorer.views.jobs import JobRunner
from explorer.views.shared import GREY, PALETTE, TEAL

DEFAULT_OVERLAY = ("se_discrete", "msp", "p_true", "inv_entropy")
PLOT_WIDTH, PLOT_HEIGHT = 330, 300
TABLE_COLUMNS = ["AUROC", "PR-AUC", "PRR", "AURC", "E-AURC", "ECE", "Brier", "questions", "wrong"]
#: column widths (px): interval texts are long, and columns must not be sized on an empty first table
WIDTHS = {"measure": 230, **{name: 175 for name in STATISTICS}, "ECE": 120, "Brier": 70, "questions": 85, "wrong": 65}


def _figure(title: str, x_label: str, y_label: str, name: str, **kwargs):
    kwargs.setdefault("width", PLOT_WIDTH)
    fig = figure(title=title, height=PLOT_HEIGHT, x_axis_label=x_label, y_axis_label=y_label,
                 tools="pan,wheel_zoom,box_zoom,reset,save", toolbar_location="right", x_range=Range1d(-0.02, 1.02),
                 y_range=Range1d(-0.02, 1.02), name=name, **kwargs)
    fig.title.text_font_size = "12px"
    fig.toolbar.logo = None
    return fig


def _curves(frame: pd.DataFrame, x: str, y: str, colours: dict[str, str]) -> dict:
    """One multi-line entry per measure of a long curve table (the data of a MultiLine source)."""
    data = {"xs": [], "ys": [], "label": [], "color": []}
    if frame is None or frame.empty:
        return data
    for m, part in frame.groupby("measure", sort=False):
        keep = part[x].notna() & part[y].notna()
        if keep.sum() < 2:
            continue                                   # undefined curve (no wrong or no right answer)
        data["xs"].append(part.loc[keep, x].to_numpy())
        data["ys"].append(part.loc[keep, y].to_numpy())
        data["label"].append(MEASURE_LABELS.get(m, m))
        data["color"].append(colours[m])
    return data


class EvaluationPanel(pn.viewable.Viewer):
    """Curves, reliability, intervals and paired differences of one stored run's measures."""

    results = param.ClassSelector(class_=RunResults, allow_None=True)
    temperature = param.Number(default=None, allow_None=True, label="Evaluate at T")
    measures = param.List(default=[], item_type=str, label="Measures on the curves")
    calibrated = param.String(default=None, allow_None=True, label="Reliability of")
    pair_a = param.String(default=None, allow_None=True, label="Measure A")
    pair_b = param.String(default=None, allow_None=True, label="Measure B")
    statistic = param.Selector(objects=list(STATISTICS), default="AUROC", label="Paired difference of")
    max_rejection = param.Number(default=1.0, bounds=(0.05, 1.0), step=0.05, label="PRR: reject at most (share)")
    n_resamples = param.Integer(default=1000, bounds=(10, 20_000), label="Bootstrap resamples")

    def __init__(self, jobs: JobRunner | None = None, **params):
        results = params.pop("results", None)
        super().__init__(**params)
        self.jobs = jobs if jobs is not None else JobRunner()
        self._own_jobs = jobs is None
        self._src = {name: ColumnDataSource({"xs": [], "ys": [], "label": [], "color": []}, name=f"ev-{name}")
                     for name in ("roc", "pr", "rc")}
        self._src["pr_base"] = ColumnDataSource({"x": [0.0, 1.0], "y": [math.nan, math.nan]}, name="ev-pr-base")
        self._src["rc_base"] = ColumnDataSource({"x": [0.0, 1.0], "y": [math.nan, math.nan]}, name="ev-rc-base")
        self._src["bins"] = ColumnDataSource({"confidence": [], "accuracy": [], "count": [], "size": []},
                                             name="ev-bins")
        self._build_figures()
        self._status = pn.pane.Markdown("Open a run to evaluate its measures.", css_classes=["ev-status"],
                                        sizing_mode="stretch_width")
        self._notes = pn.pane.Alert("", alert_type="warning", visible=False, sizing_mode="stretch_width",
                                    css_classes=["ev-undefined"])
        self._table = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, sizing_mode="stretch_width",
                                           height=200, css_classes=["ev-table"], frozen_columns=["measure"],
                                           widths=WIDTHS)
        self._tsu = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, sizing_mode="stretch_width",
                                         height=200, css_classes=["ev-tsu"], frozen_columns=["measure"])
        self._pair = pn.pane.Markdown("", css_classes=["ev-paired"], sizing_mode="stretch_width")
        self._colours: dict[str, str] = {}
        # choices whose options come with the run: each widget gets its options and value in one update
        self._choices = {
            "temperature": pn.widgets.Select(label="Evaluate at T", width=120),
            "measures": pn.widgets.MultiChoice(label="Measures on the curves", sizing_mode="stretch_width",
                                               css_classes=["ev-measures"]),
            "calibrated": pn.widgets.Select(label="Reliability of", width=300),
            "pair_a": pn.widgets.Select(label="Measure A", sizing_mode="stretch_width"),
            "pair_b": pn.widgets.Select(label="Measure B", sizing_mode="stretch_width")}
        for name, widget in self._choices.items():
            widget.link(self, value=name, bidirectional=True)
        self.param.watch(lambda *_events: (self._refresh(), self._refresh_pair()),
                         ["temperature", "max_rejection", "n_resamples"])
        self.param.watch(lambda *_events: self._show_curves(), "measures")
        self.param.watch(lambda *_events: self._show_reliability(), "calibrated")
        self.param.watch(lambda *_events: self._refresh_pair(), ["pair_a", "pair_b", "statistic"])
        self.param.watch(lambda *_events: self._on_results(), "results")
        if results is not None:
            self.results = results

    # ------------------------------------------------------------------ figures (built once)
    def _build_figures(self) -> None:
        src = self._src
        wide = dict(width=None, sizing_mode="stretch_width", min_width=200)
        roc = _figure("ROC (wrong = positive)", "false positive rate", "true positive rate", "ev-roc-figure", **wide)
        roc.line([0, 1], [0, 1], color=GREY, line_dash="dashed")
        lines = roc.multi_line("xs", "ys", source=src["roc"], line_color="color", line_width=2, legend_field="label")
        roc.add_tools(HoverTool(renderers=[lines], tooltips=[("measure", "@label")]))
        pr = _figure("Precision-recall", "recall (of wrong answers)", "precision", "ev-pr-figure", **wide)
        pr.line("x", "y", source=src["pr_base"], color=GREY, line_dash="dashed")
        lines = pr.multi_line("xs", "ys", source=src["pr"], line_color="color", line_width=2, legend_field="label")
        pr.add_tools(HoverTool(renderers=[lines], tooltips=[("measure", "@label")]))
        rc = _figure("Risk-coverage", "coverage (least uncertain kept)", "risk (share wrong)", "ev-rc-figure", **wide)
        rc.line("x", "y", source=src["rc_base"], color=GREY, line_dash="dashed")
        lines = rc.multi_line("xs", "ys", source=src["rc"], line_color="color", line_width=2, legend_field="label")
        rc.add_tools(HoverTool(renderers=[lines], tooltips=[("measure", "@label")]))
        for fig in (roc, pr, rc):
            fig.add_layout(fig.legend[0], "below")
            fig.legend.label_text_font_size = "10px"
            fig.legend.spacing, fig.legend.padding, fig.legend.margin = 0, 2, 2
        reliability = _figure("Reliability (equal-mass bins)", "confidence p = exp(-u)", "share right",
                              "ev-reliability-figure")
        reliability.line([0, 1], [0, 1], color=GREY, line_dash="dashed")
        reliability.line("confidence", "accuracy", source=src["bins"], color=TEAL, line_width=2)
        dots = reliability.scatter("confidence", "accuracy", source=src["bins"], size="size", color=TEAL, alpha=0.6)
        reliability.add_tools(HoverTool(renderers=[dots], tooltips=[
            ("answers", "@count"), ("confidence", "@confidence{0.000}"), ("share right", "@accuracy{0.000}")]))
        self._figures = {"roc": roc, "pr": pr, "rc": rc, "reliability": reliability}

    # ------------------------------------------------------------------ a run is opened
    def _on_results(self) -> None:
        results = self.results
        if results is None:
            self._status.object = "Open a run to evaluate its measures."
            return
        names = results.measure_names
        labels = {MEASURE_LABELS[m]: m for m in names}
        self._colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(names)}
        probability = {MEASURE_LABELS[m]: m for m in results.probability_measures}
        first = names[0] if names else None
        pair_b = next((m for m in ("se_discrete", "p_true") if m in names and m != first), names[-1] if names else None)
        choices = {"temperature": ({f"{t:g}": t for t in results.temperatures}, results.default_temperature),
                   "measures": (labels, [m for m in DEFAULT_OVERLAY if m in names][:3] or names[:3]),
                   "calibrated": (probability or {"(none in this run)": None}, next(iter(probability.values()), None)),
                   "pair_a": (labels, first), "pair_b": (labels, pair_b)}
        with param.parameterized.batch_call_watchers(self):
            for name, (options, value) in choices.items():
                self._choices[name].param.update(options=options, value=value)
        self._refresh()
        self._refresh_pair()

    # ------------------------------------------------------------------ long parts, in jobs
    def _settle_settings(self) -> RunResults | None:
        results = self.results
        if results is not None:
            results.param.update(max_rejection=self.max_rejection, n_resamples=self.n_resamples)
        return results

    def _refresh(self) -> None:
        """The table and TSU intervals at the chosen temperature: shown at once when cached, else computed in a job."""
        results, t = self._settle_settings(), self.temperature
        if results is None or t is None:
            return
        if not results.has_labels:
            self._status.object = ("**No evaluation:** the questions of this run have no reference answers, so "
                                   "correctness is unknown.")
            self._show_tsu()
            return
        if results.is_cached("evaluation", t) and results.is_cached("tsu_intervals"):
            self._show()
            return
        self._status.object = f"*Computing the evaluation at T={t:g} ({self.n_resamples} bootstrap resamples)…*"
        self.jobs.submit(lambda progress: (results.evaluation(t), results.tsu_intervals()),
                         f"Evaluating at T={t:g}", slot="evaluation", on_done=lambda _done: self._show())

    def _refresh_pair(self) -> None:
        results, t, a, b, statistic = self._settle_settings(), self.temperature, self.pair_a, self.pair_b, self.statistic
        if results is None or t is None or a is None or b is None or not results.has_labels:
            self._pair.object = ""
            return
        if a == b:
            self._pair.object = "Pick two different measures to compare."
            return
        self._pair.object = "*Computing the paired difference…*"
        self.jobs.submit(lambda progress: results.paired_difference(a, b, t, statistic), "Paired bootstrap",
                         slot="paired", on_done=lambda diff: self._show_pair(a, b, t, diff))

    # ------------------------------------------------------------------ showing cached results
    def _show(self) -> None:
        results, t = self.results, self.temperature
        try:
            with results.reading():
                table = results.evaluation(t)
        except NotComputed:
            return                                    # a newer choice is being computed
        shown = evaluation_display(table)
        self._table.value = shown[TABLE_COLUMNS].rename_axis("measure").reset_index()
        self._table.height = min(60 + 31 * len(shown), 640)
        grouped: dict[str, list[str]] = {}                 # measures sharing a reason share a line, in table order
        for label, note in table.loc[table["note"] != "", "note"].items():
            grouped.setdefault(note, []).append(label)
        self._notes.object = "  \n".join(
            f"**{'Every measure' if len(labels) == len(table) else html.escape(', '.join(labels))}** at T={t:g}: "
            f"{html.escape(note)}" for note, labels in grouped.items())
        self._notes.visible = bool(grouped)
        level = f"{results.confidence:.0%}"
        self._status.object = (f"At T={t:g}: {int(table['questions'].max())} questions with reference answers, "
                               f"{int(table['wrong'].max())} answered wrong (the most probable answer). Intervals: "
                               f"{level} percentile bootstrap over questions, {results.n_resamples} resamples. ECE and "
                               f"Brier for the probability-like scores: {self._probability_note()}.")
        self._show_tsu()
        self._show_curves()
        self._show_reliability()

    @staticmethod
    def _probability_note() -> str:
        return "; ".join(f"{MEASURE_LABELS[m]}: p = exp(-u), the {what}" for m, what in PROBABILITY_MEASURES.items())

    def _show_tsu(self) -> None:
        try:
            with self.results.reading():
                tsu = self.results.tsu_intervals()
        except NotComputed:
            return
        shown = tsu_display(tsu).rename_axis("measure").reset_index() if not tsu.empty else pd.DataFrame()
        self._tsu.widths = {column: WIDTHS["measure"] if column == "measure" else 150 for column in shown}
        self._tsu.value = shown
        self._tsu.height = min(60 + 31 * len(tsu), 640)

    def _show_curves(self) -> None:
        results, t = self.results, self.temperature
        if results is None or t is None or not results.has_labels:
            return
        chosen = tuple(m for m in self.measures if m in results.measure_names)
        colours = self._colours
        self._src["roc"].data = _curves(results.roc_curves(t, chosen), "fpr", "tpr", colours)
        self._src["pr"].data = _curves(results.pr_curves(t, chosen), "recall", "precision", colours)
        for name, title, missing in (("roc", "ROC (wrong = positive)", "needs right and wrong answers"),
                                     ("pr", "Precision-recall", "needs wrong answers")):
            drawn = bool(self._src[name].data["xs"]) or not chosen
            self._figures[name].title.text = title if drawn else f"{title}: undefined, {missing}"
        self._src["rc"].data = _curves(results.risk_coverage_curves(t, chosen), "coverage", "risk", colours)
        labelled = results.labelled(t)
        wrong = float((1 - labelled["correct"]).mean()) if len(labelled) else math.nan
        self._src["pr_base"].data = {"x": [0.0, 1.0], "y": [wrong, wrong]}      # a random ranking's precision
        self._src["rc_base"].data = {"x": [0.0, 1.0], "y": [wrong, wrong]}      # a random ranking's risk

    def _show_reliability(self) -> None:
        results, t, m = self.results, self.temperature, self.calibrated
        fig = self._figures["reliability"]
        if results is None or t is None or m is None or not results.has_labels:
            self._src["bins"].data = {"confidence": [], "accuracy": [], "count": [], "size": []}
            fig.title.text = "Reliability: no probability-like measure (P(True), MSP) in this run"
            return
        bins = results.reliability(t, m)
        bins = bins[bins["count"] > 0]
        counts = bins["count"].to_numpy()
        self._src["bins"].data = {"confidence": bins["confidence"].to_numpy(), "accuracy": bins["accuracy"].to_numpy(),
                                  "count": counts, "size": 6 + 14 * np.sqrt(counts / max(counts.max(), 1))}
        fig.title.text = (f"ECE {bins.attrs['ece']:.3f} · {len(bins)} bins of {int(counts.min())}"
                          + (f"-{int(counts.max())}" if counts.max() > counts.min() else "") + " answers")

    def _show_pair(self, a: str, b: str, t: float, diff: dict) -> None:
        name = diff["statistic"]
        head = (f"**{name}({html.escape(MEASURE_LABELS[a])}) − {name}({html.escape(MEASURE_LABELS[b])})** "
                f"at T={t:g}")
        if math.isnan(diff["estimate"]):
            self._pair.object = f"{head}: undefined. {html.escape(diff['note'])}"
            return
        self._pair.object = (f"{head}: {diff['estimate']:+.3f}, {self.results.confidence:.0%} interval "
                             f"[{diff['low']:+.3f}, {diff['high']:+.3f}], two-sided bootstrap p = {diff['p_value']:.3f} "
                             f"({diff['questions']} questions, both measures on the same resampled questions)."
                             + (f" {html.escape(diff['note'])}" if diff["note"] else ""))

    # ------------------------------------------------------------------ layout
    def __panel__(self):
        choices = self._choices
        controls = pn.Column(
            pn.Row(choices["temperature"], pn.widgets.FloatInput.from_param(self.param.max_rejection, width=170),
                   pn.widgets.IntInput.from_param(self.param.n_resamples, width=150)),
            choices["measures"], sizing_mode="stretch_width")
        pair = pn.Column(choices["pair_a"], choices["pair_b"],
                         pn.widgets.Select.from_param(self.param.statistic, width=150), sizing_mode="stretch_width")
        figures = self._figures
        body = [controls, self._status, self._notes, self._table,
                pn.Row(*(pn.pane.Bokeh(figures[k], margin=(5, 5), sizing_mode="stretch_width")
                         for k in ("roc", "pr", "rc")), sizing_mode="stretch_width", margin=0),
                pn.Row(pn.Column(choices["calibrated"], pn.pane.Bokeh(figures["reliability"], margin=(5, 5)), width=340),
                       pn.Column("#### Paired difference of two measures", pair, self._pair,
                                 sizing_mode="stretch_width", min_width=240), sizing_mode="stretch_width"),
                "#### TSU with bootstrap intervals (% of questions strictly increasing)", self._tsu]
        if self._own_jobs:
            body.insert(0, self.jobs)
        return pn.Column(*body, sizing_mode="stretch_width", css_classes=["ev-panel"])

