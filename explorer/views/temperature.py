"""The temperature sensitivity page: run a sweep, then compare measures across temperatures.

A thin view over :class:`~explorer.analyses.temperature.TemperatureAnalysis` (the run's settings)
and :class:`~explorer.analyses.runs.RunResults` (a stored run): the settings form comes from the
analysis's parameters (adaptive sampling and the Dask cluster included: a run started here samples
on the configured scheduler, and the page links its dashboard); sampling, reading a stored run,
comparing two runs, the evaluation's bootstrap tables (:class:`~explorer.views.run_evaluation.EvaluationPanel`),
a question's drill-down (embeddings, NLI) and reading an uploaded question file all run in the
page's :class:`JobRunner`. Plots and tables read cached results only. An adaptive run is compared
with a fixed-N run of the same questions when the store holds one.
"""

from __future__ import annotations

import html
import json
from urllib.parse import urlencode

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401 - registers the Bokeh backend (hv.extension would reset session hooks)
import numpy as np
import pandas as pd
import panel as pn
import param

from explorer.analyses.base import NotComputed
from explorer.analyses.runs import RunComparison, RunResults, export_run, list_runs, with_intervals
from explorer.analyses.temperature import TemperatureAnalysis, parse_temperatures
from explorer.analyses.uncertainty_measures import MEASURE_LABELS
from explorer.data.sources import QUESTION_SOURCES
from explorer.errors import InputError
from explorer.views.jobs import JobRunner, loop_caller
from explorer.views.links import PageLinks
from explorer.views.run_evaluation import EvaluationPanel
from explorer.views.server import checked_path, current_user, default_store_path
from explorer.views.shared import ORANGE, TEAL, download_button, upload_widget, uploaded

FORM = ("model_name", "questions_path", "max_questions", "n_samples", "max_new_tokens", "seed", "batch_questions",
        "adaptive", "adaptive_round", "adaptive_epsilon", "adaptive_rounds", "adaptive_min",
        "equivalence_threshold", "nli_model", "correctness", "with_p_true", "with_inv_entropy", "perturbation",
        "n_perturbations", "replicates", "bootstrap", "similarity_mapping", "db_path", "scheduler", "cluster")
#: the analysis settings the cost line depends on
COST_SETTINGS = ("max_questions", "n_samples", "with_inv_entropy", "adaptive", "perturbation", "n_perturbations",
                 "replicates")
INT_FIELDS = ("max_questions", "n_samples", "max_new_tokens", "seed", "batch_questions", "n_perturbations",
              "replicates", "bootstrap", "adaptive_round", "adaptive_rounds", "adaptive_min")
CHECKBOXES = ("with_p_true", "with_inv_entropy", "adaptive")
PLOT = dict(height=330, responsive=True, show_grid=True, toolbar="right")
GREY = "#64748b"
METHOD_NOTE = "MSP uses the most probable sampled answer."
PERTURBATION_NOTE = ("Inv-Entropy perturbations: paraphrases written by the model itself, or GAAP (the paper's genetic "
                     "algorithm over WordNet synonyms of the question's keywords), as chosen in the settings.")
NO_RUN_NOTE = ("Semantic equivalence: NLI bidirectional entailment when an NLI model is named and can be loaded, "
               "otherwise the offline fallback, embedding cosine >= threshold with all-MiniLM-L6-v2. " + PERTURBATION_NOTE
               + " " + METHOD_NOTE)


def lens_url(prompt: str, text: str, temperature: float) -> str:
    """The lens page scoring ``text`` after ``prompt`` (chat template), re-scored at ``temperature``."""
    return "?" + urlencode({"page": "lens", "prompt": prompt, "text": text, "temperature": f"{temperature:g}"})


def uncertainty_curves(u: pd.DataFrame, title: str) -> hv.Overlay:
    """One thin grey line per question (rows of U, columns ascending temperatures) and the mean ± sd band."""
    temps = u.columns.to_numpy(dtype=float)
    values = u.to_numpy(dtype=float)
    lines = [hv.Curve((temps, row), "temperature", "uncertainty", group="Question").opts(
        color=GREY, alpha=0.55, line_width=1.2) for row in values]
    mean, sd = np.nanmean(values, 0), np.nanstd(values, 0)
    band = hv.Spread((temps, mean, sd), "temperature", ["uncertainty", "sd"]).opts(
        color=TEAL, alpha=0.15, line_alpha=0)
    mean_line = hv.Curve((temps, mean), "temperature", "uncertainty", label="mean ± sd").opts(
        color=TEAL, line_width=3, tools=["hover"])
    return hv.Overlay([band, *lines, mean_line]).opts(title=title, legend_position="top_left", **PLOT)


def comparison_curves(curves: pd.DataFrame, labels: dict[str, str], title: str) -> hv.Overlay:
    """Mean ± sd over questions of each run (``RunComparison.mean_curves`` of one measure)."""
    parts = []
    for (key, table), colour in zip(curves.groupby("run", sort=True), (TEAL, ORANGE)):
        t = table["temperature"].to_numpy(dtype=float)
        parts += [hv.Spread((t, table["mean"], table["sd"]), "temperature", ["uncertainty", "sd"]).opts(
                      color=colour, alpha=0.15),
                  hv.Curve((t, table["mean"]), "temperature", "uncertainty", label=f"{key}: {labels[key]}").opts(
                      color=colour, line_width=3, tools=["hover"])]
    if not parts:
        return hv.Curve([], "temperature", "uncertainty").opts(title="No measure in common", **PLOT)
    return hv.Overlay(parts).opts(title=title, legend_position="top_left", **PLOT)


class TemperatureSensitivity(pn.viewable.Viewer):
    """Sequence-level uncertainty across temperatures, TSU, AUROC/PRR and per-question drill-down.

    ``TemperatureSensitivity()`` renders with defaults in a notebook or under ``panel serve``; pass
    ``analysis=TemperatureAnalysis(...)`` to start from other settings.
    """

    analysis = param.ClassSelector(class_=TemperatureAnalysis)
    results = param.ClassSelector(class_=RunResults, allow_None=True)
    comparison = param.ClassSelector(class_=RunComparison, allow_None=True)
    temperatures_text = param.String(default="0.3, 0.7, 1.0, 1.4", label="Temperatures (increasing)")
    measure = param.Selector(objects={v: k for k, v in MEASURE_LABELS.items()}, default="se_discrete", label="Measure")
    question_index = param.Integer(default=0, bounds=(0, None), label="Question")
    drill_temperature = param.Selector(objects=[None], default=None, label="Inv-Entropy matrices at T")
    run_id = param.String(default="", label="Run", doc="The open run (a link opens it).")

    def __init__(self, **params):
        params.setdefault("analysis", TemperatureAnalysis(db_path=default_store_path()))
        super().__init__(**params)
        self.links = PageLinks(self, "temperature")
        self.jobs = JobRunner()
        self._upload = upload_widget("Question file", ".csv,.jsonl,.parquet", "ts-upload")
        self._upload.param.watch(self._on_upload, "value")
        self._runs = pn.widgets.Tabulator(pd.DataFrame(), height=180, sizing_mode="stretch_width", disabled=True,
                                          selectable=1, show_index=False, name="runs")
        self._runs.param.watch(self._on_run_selected, "selection")
        self._start = pn.widgets.Button(name="Start run", button_type="primary", width=110)
        self._start.on_click(self._on_start)
        self._resume = pn.widgets.Button(name="Resume selected", width=140)
        self._resume.on_click(self._on_resume)
        self._compare = pn.widgets.Select(name="Compare with run", options={"(none)": ""}, value="", width=420)
        self._compare.param.watch(self._on_compare, "value")
        self._export = download_button(self._export_payload, "run.zip", "Export run (Parquet, zip)", width=220)
        self._export.disabled = True
        self._question = pn.widgets.Select(name="Question", options={}, sizing_mode="stretch_width")
        self._question.param.watch(lambda e: setattr(self, "question_index", e.new), "value")
        self._drill = pn.Column(pn.pane.Markdown("Select a run to inspect its questions."), sizing_mode="stretch_width")
        self.param.watch(self._on_drill_choice, ["question_index", "drill_temperature"])
        self.evaluation = EvaluationPanel(jobs=self.jobs)
        self._dashboard = pn.pane.Markdown("", css_classes=["ts-dashboard"], sizing_mode="stretch_width")
        self._call = loop_caller()
        self._all_runs = pd.DataFrame()
        self.param.watch(self._on_run_id, "run_id")
        self._cost = pn.pane.Markdown("", sizing_mode="stretch_width", css_classes=["ts-cost"])
        self.analysis.param.watch(self._show_cost, list(COST_SETTINGS))
        self.param.watch(self._show_cost, ["temperatures_text"])
        self._show_cost()
        self._refresh_runs()

    # ------------------------------------------------------------------ actions (no computation here)
    def _on_upload(self, _event) -> None:
        upload = uploaded(self._upload)
        if upload is None:
            return

        def loaded(table):
            self.analysis.questions_upload = upload
            self.jobs.show_message(f"Loaded {len(table)} questions from {upload.name}: the next run uses them.")
        self.jobs.submit(lambda progress: QUESTION_SOURCES.load("upload", progress, (upload,)),
                         f"Reading {upload.name}", slot="questions", on_done=loaded)

    def _on_start(self, _event) -> None:
        try:
            self.analysis.temperatures = parse_temperatures(self.temperatures_text)
            self.analysis.param.update(
                db_path=checked_path(self.analysis.db_path, "results database"), run_by=current_user(),
                questions_path=checked_path(self.analysis.questions_path, "question file", read_only=True))
            self.analysis.validate()
        except InputError as err:
            self.jobs.show_error(err)
            return

        analysis = self.analysis

        def check_and_run(progress):
            analysis.questions()   # a bad question file fails here, before any model loads
            return analysis.run(progress, on_cluster=self._cluster_connected)
        self._dashboard.object = ""
        self.jobs.submit(check_and_run, "Connecting to the Dask cluster" if analysis.cluster or analysis.scheduler
                         else "Sampling", slot="run", on_done=self._opened_new_run)

    def _cluster_connected(self, link: str) -> None:
        """Called in the run's job once the Dask cluster answers: link its dashboard on the page."""
        text = f"Sampling on a Dask cluster: [open its dashboard]({link}) (workers, tasks, progress)."
        self._call(lambda: setattr(self._dashboard, "object", text))

    def _on_resume(self, _event) -> None:
        rows = self._runs.selection
        if not rows:
            self.jobs.show_error("Select a run in the table first.")
            return
        from explorer.analyses.temperature import resume_run

        run_id, db = self._runs.value["run_id"].iloc[rows[0]], self._store()
        if db is None:
            return
        placement = {"cluster": self.analysis.cluster, "scheduler": self.analysis.scheduler}
        self.jobs.submit(lambda progress: resume_run(db, run_id, progress, on_cluster=self._cluster_connected,
                                                     **placement), "Resuming", slot="run",
                         on_done=self._opened_new_run)

    def _opened_new_run(self, run_id: str) -> None:
        self._refresh_runs()
        self._open_run(run_id)

    def _on_run_selected(self, event) -> None:
        if event.new:
            self._open_run(self._runs.value["run_id"].iloc[event.new[0]])

    def _open_run(self, run_id: str) -> None:
        """Read a stored run in a job; the page shows it when it is read."""
        db = self._store()
        if db is None:
            return
        results = RunResults(db, run_id)
        self.jobs.submit(results.compute, f"Reading run {run_id}", slot="open", on_done=self._show_run)

    def _on_run_id(self, event) -> None:
        if event.new and (self.results is None or self.results.run_id != event.new):
            self._open_run(event.new)

    def _show_run(self, results: RunResults) -> None:
        names = results.measure_names
        question = self.question_index
        self.param.measure.objects = {MEASURE_LABELS[m]: m for m in names or MEASURE_LABELS}
        if names and self.measure not in names:
            self.measure = names[0]
        self._question.options = {f"{i + 1}. {q}": i for i, q in enumerate(results.questions["question"])}
        self._question.value = question if question < len(results.questions) else 0
        self.param.drill_temperature.objects = results.temperatures
        with param.parameterized.batch_call_watchers(self):
            self.drill_temperature = results.temperatures[0]
            self.results = results
            self.run_id = results.run_id
        self._export.filename, self._export.disabled = f"run_{results.run_id}.zip", False
        self.evaluation.results = results
        self._compare_options()
        twin = self._fixed_n_twin(results) if results.is_adaptive and not self._compare.value else ""
        if twin:
            self._compare.value = twin                               # watched: compares with it
        else:
            self._on_compare()
        self._on_drill_choice()

    def _fixed_n_twin(self, results: RunResults) -> str:
        """The newest finished fixed-N run of the same questions, model and temperatures ("" if none)."""
        settings = results.info["settings"]
        same = ("questions_path", "max_questions", "temperatures", "model_name", "seed")
        for row in self._all_runs.itertuples():
            other = json.loads(row.settings) if isinstance(row.settings, str) else row.settings
            if (row.run_id != results.run_id and row.status == "done" and not other.get("adaptive", False)
                    and all(other.get(k) == settings.get(k) for k in same)):
                return row.run_id
        return ""

    def _compare_options(self) -> None:
        runs = self._runs.value
        current = self.results.run_id if self.results is not None else None
        options = {"(none)": ""}
        if isinstance(runs, pd.DataFrame) and len(runs):
            options.update({f"{r.run_id} · {r.model} · {r.status} · {r.answers} answers": r.run_id
                            for r in runs.itertuples() if r.run_id != current})
        value = self._compare.value if self._compare.value in options.values() else ""
        self._compare.options, self._compare.value = options, value

    def _on_compare(self, _event=None) -> None:
        other = self._compare.value
        if not other or self.results is None:
            self.jobs.cancel("compare")
            self.comparison = None
            return
        db = self._store()
        if db is None:
            return
        comparison = RunComparison(self.results, RunResults(db, other))
        self.jobs.submit(comparison.compute, f"Reading run {other}", slot="compare",
                         on_done=lambda done: setattr(self, "comparison", done))

    def _on_drill_choice(self, *_events) -> None:
        """A question's answers in meaning classes and its Inv-Entropy matrices, computed in a job."""
        results, qi, temperature = self.results, self.question_index, self.drill_temperature
        if results is None:
            return
        if qi >= len(results.questions):
            return
        t = temperature if temperature is not None else results.temperatures[0]

        def drill(progress):
            progress.update(0, 2, "Grouping the answers into meaning classes")
            answers = results.question_answers(qi)
            progress.update(1, 2, "Inv-Entropy similarity matrices")
            return answers, results.inv_entropy_matrices(qi, t)
        self._drill[:] = [pn.pane.Markdown("*Computing the drill-down…*")]
        self.jobs.submit(drill, "Drill-down", slot="drill",
                         on_done=lambda done: self._show_drill(results, qi, t, *done))

    def _export_payload(self) -> bytes:
        db = self._store()
        if self.results is None or db is None:
            return b""
        return export_run(db, self.results.run_id)

    @param.depends("analysis.db_path", watch=True)
    def _refresh_runs(self) -> None:
        """The past runs table, read in a job (the store may be large or held by a running sweep)."""
        def shown(runs):
            self._all_runs = runs
            self._runs.value = runs[["run_id", "name", "created", "model", "status", "answers"]]
            self._compare_options()
        db = self._store()
        if db is not None:
            self.jobs.submit(lambda progress: list_runs(db), "Reading past runs", slot="runs", on_done=shown)

    def _store(self) -> str | None:
        """The results database to use; None (and a message) when served and the typed path is outside
        the server's data directory."""
        try:
            return checked_path(self.analysis.db_path, "results database")
        except InputError as err:
            self.jobs.show_error(err)
            return None

    # ------------------------------------------------------------------ views
    def _show_cost(self, *_events) -> None:
        """The cost line, its text changed in place (a new pane per keystroke made the browser lay the
        page out again: about 0.3 s of its CPU per change)."""
        try:
            temps = parse_temperatures(self.temperatures_text)
        except InputError as err:
            self._cost.object = f"**Temperatures:** {html.escape(str(err))}"
            self._cost.styles = {"color": "#b91c1c"}
            return
        generations = self.analysis.generations(temperatures=len(temps))
        bound = "at most " if self.analysis.adaptive else ""
        self._cost.object = (f"**Cost:** {bound}{generations:,} generations "
                             f"({len(temps)} temperatures x {self.analysis.max_questions} questions).")
        self._cost.styles = {}

    @param.depends("results", "measure")
    def _curves(self):
        if self.results is None or self.measure not in self.results.measure_names:
            return hv.Curve([], "temperature", "uncertainty").opts(title="Start or select a run", **PLOT)
        return uncertainty_curves(self.results.u_matrix(self.measure),
                                  f"{MEASURE_LABELS[self.measure]}: one line per question")

    @param.depends("results")
    def _equivalence_note(self):
        text = NO_RUN_NOTE if self.results is None else \
            (f"Semantic equivalence in this run: {self.results.equivalence}. "
             f"Inv-Entropy perturbations in this run: {self.results.perturbation}. {METHOD_NOTE}")
        return pn.pane.Alert(html.escape(text), alert_type="info", sizing_mode="stretch_width",
                             css_classes=["equivalence-note"])

    @param.depends("comparison", "measure")
    def _comparison_view(self):
        if self.comparison is None:
            return pn.pane.Markdown("Pick a second run to compare it with the open one.")
        cmp = self.comparison
        if self.measure in cmp.measure_names:
            labels = {key: r.run_id for key, r in cmp.runs.items()}
            plot = comparison_curves(cmp.mean_curves(self.measure), labels,
                                     f"{MEASURE_LABELS[self.measure]}: mean ± sd over questions, run A vs run B")
        else:
            plot = hv.Curve([], "temperature", "uncertainty").opts(title="This measure is not in both runs", **PLOT)
        tsu = cmp.tsu().round(1)
        overview = cmp.overview()
        side = self._side_by_side(cmp)
        equivalence = "  \n".join(f"**{key}** semantic equivalence: {html.escape(text)}"
                                   for key, text in overview["equivalence"].items())
        return pn.Column(
            pn.widgets.Tabulator(overview.drop(columns="equivalence").reset_index(), disabled=True, show_index=False,
                                 sizing_mode="stretch_width", height=110, name="comparison-runs"),
            pn.pane.Markdown(equivalence, sizing_mode="stretch_width"),
            pn.pane.HoloViews(plot, sizing_mode="stretch_width"),
            pn.pane.Markdown("#### TSU side by side (% of questions strictly increasing)"),
            pn.widgets.Tabulator(tsu, disabled=True, sizing_mode="stretch_width", name="comparison-tsu",
                                 height=min(50 + 31 * len(tsu), 640)),
            *side, sizing_mode="stretch_width")

    def _side_by_side(self, cmp: RunComparison) -> list:
        """Answers generated by each run, and AUROC / TSU of both with intervals and their paired difference."""
        answers = cmp.answers()
        lines = [f"**{key}**: {int(row['answers']):,} answers"
                 + (f" (adaptive: {row['saved']:.0%} fewer than a fixed N, {row['mean_per_question']:.1f} per question "
                    "and temperature)" if row["adaptive"] else " (fixed N)") for key, row in answers.iterrows()]
        parts = [pn.pane.Markdown("#### Answers generated\n" + "  \n".join(lines), css_classes=["comparison-answers"])]
        t = cmp.default_temperature
        if t is None:
            return parts + [pn.pane.Markdown("The runs share no temperature: no side-by-side evaluation.")]
        try:
            with cmp.reading():
                side = cmp.side_by_side(t)
        except NotComputed:                     # the evaluation settings changed: recompute, then redraw
            self.jobs.submit(lambda progress: cmp.side_by_side(t), "Comparing the runs' evaluations",
                             slot="compare-evaluation", on_done=lambda _done: self.param.trigger("comparison"))
            return parts + [pn.pane.Markdown("*Computing the side-by-side evaluation…*")]
        except InputError as err:
            return parts + [pn.pane.Markdown(html.escape(str(err)))]
        names = ["A AUROC", "B AUROC", "ΔAUROC (A - B)", "A TSU", "B TSU"]
        present = [n for n in names if n in side]
        shown = with_intervals(side, present)
        for n in ("A TSU", "B TSU"):
            if n in side:
                shown[n] = with_intervals(side, [n], 1)[n]
        if "p" in side:
            shown["p"] = side["p"].map(lambda p: "undefined" if pd.isna(p) else f"{p:.3f}")
        paired = "ΔAUROC (A - B)" in side
        note = ("paired bootstrap over the same questions" if paired else
                "the runs ask different questions: no paired difference")
        return parts + [pn.pane.Markdown(f"#### AUROC at T={t:g} and TSU over each run's temperatures, side by side "
                                         f"({note})"),
                        pn.widgets.Tabulator(shown.rename_axis("measure").reset_index(), disabled=True, show_index=False,
                                             sizing_mode="stretch_width", css_classes=["comparison-evaluation"],
                                             layout="fit_data_fill", frozen_columns=["measure"],
                                             height=min(60 + 31 * len(shown), 640))]

    @param.depends("results")
    def _run_summary(self):
        if self.results is None:
            return pn.pane.Markdown("No run selected.")
        summary = self.results.answers_summary()
        parts = [f"**Answers:** {summary['answers']:,}"]
        if summary["adaptive"]:
            s = self.results.info["settings"]
            parts.append(f"adaptive sampling (rounds of {s.get('adaptive_round')}, ε = {s.get('adaptive_epsilon'):g} "
                         f"over {s.get('adaptive_rounds')} rounds, N_min {s.get('adaptive_min')}, N {s.get('n_samples')}): "
                         f"{summary['saved']:.0%} fewer than a fixed N ({summary['fixed_n_answers']:,}), "
                         f"{summary['mean_per_question']:.1f} per question and temperature")
        if self.results.has_labels:
            parts.append("accuracy of the most probable answer: "
                         + ", ".join(f"T={t:g}: {v:.0%}" for t, v in self.results.accuracy().items()))
        return pn.pane.Markdown(" · ".join(parts), css_classes=["ts-run-summary"], sizing_mode="stretch_width")

    def _show_drill(self, results: RunResults, question_index: int, temperature: float, answers: pd.DataFrame,
                    matrices) -> None:
        q = results.questions.iloc[question_index]
        header = pn.pane.Markdown(f"**{html.escape(q['question'])}**  reference: "
                                  f"{html.escape(' | '.join(q['answers']) or '(none)')}")
        shown = answers[["temperature", "sample_index", "cluster", "log_prob", "tokens"]].round(3)
        shown["lens"] = [f'<a href="{html.escape(lens_url(p, t, temp))}" target="_blank">open in lens</a>'
                         for p, t, temp in zip(answers["prompt"], answers["text"], answers["temperature"])]
        shown["text"] = answers["text"]
        table = pn.widgets.Tabulator(shown, disabled=True, sizing_mode="stretch_width", height=260,
                                     show_index=False, name="samples", formatters={"lens": {"type": "html"}})
        self._drill[:] = [header, table, pn.pane.HoloViews(self._entropy_curves(answers), sizing_mode="stretch_width"),
                          self._inv_entropy_view(results, temperature, matrices)]

    @staticmethod
    def _entropy_curves(answers: pd.DataFrame):
        curves = [hv.Curve((np.arange(1, len(e) + 1), list(e)), "token", "entropy (nats)",
                           label=f"T={t:g}").opts(line_width=1.2, alpha=0.8)
                  for t, e in zip(answers["temperature"], answers["token_entropies"])]
        return hv.Overlay(curves).opts(title="Token entropy of each sample (see the lens page for one sample)",
                                       show_legend=False, height=260, responsive=True, show_grid=True)

    @staticmethod
    def _inv_entropy_view(results: RunResults, temperature: float, matrices):
        if matrices is None:
            return pn.pane.Markdown("No perturbed questions in this run (Inv-Entropy off).")
        inputs, sim_x, sim_y = matrices
        listing = "\n".join(f"{i}. {html.escape(text)}" for i, text in enumerate(inputs))

        def heat(matrix, title):
            n = matrix.shape[0]
            data = [(i, j, float(matrix[i, j])) for i in range(n) for j in range(n)]
            return hv.HeatMap(data, ["input j", "input i"], "similarity").opts(
                title=title, cmap="viridis", colorbar=True, height=260, responsive=True, invert_yaxis=True,
                tools=["hover"])
        return pn.Column(pn.pane.Markdown(f"**Perturbed questions (T={temperature:g}, first replicate; "
                                          f"{html.escape(results.perturbation)}):**\n\n{listing}"),
                         pn.Row(pn.pane.HoloViews(heat(sim_x, "S_x: questions"), sizing_mode="stretch_width"),
                                pn.pane.HoloViews(heat(sim_y, "S_y: answers"), sizing_mode="stretch_width"),
                                sizing_mode="stretch_width"), sizing_mode="stretch_width")

    def __panel__(self):
        form = pn.Param(self.analysis, parameters=list(FORM), show_name=False, width=300,
                        widgets={"model_name": {"placeholder": "SmolLM2-135M-Instruct"},
                                 "nli_model": {"placeholder": "e.g. microsoft/deberta-large-mnli"},
                                 "questions_path": {"placeholder": "file, dataset folder or hf:owner/name"},
                                 "scheduler": {"placeholder": "tcp://HOST:8786 (empty: this process)"},
                                 "cluster": {"placeholder": "local:2 (empty: this process)"},
                                 **{n: {"type": pn.widgets.Checkbox, "css_classes": [f"ts-{n.replace('_', '-')}"]}
                                    for n in CHECKBOXES},
                                 **{n: pn.widgets.IntInput for n in INT_FIELDS}})
        settings = pn.Column("### Run settings", pn.widgets.TextInput.from_param(self.param.temperatures_text, width=280),
                             form, self._upload, self._cost, pn.Row(self._start, self._resume), width=320)
        results = pn.Column(
            self._equivalence_note,
            self.jobs, self._dashboard, "### Past runs", self._runs, self._export, self._run_summary,
            pn.widgets.Select.from_param(self.param.measure, width=320),
            pn.pane.HoloViews(self._curves, sizing_mode="stretch_width"),
            "### Evaluation against correctness", self.evaluation, "### Compare with another run", self._compare, self._comparison_view, "### Drill-down", pn.Row(self._question, pn.widgets.Select.from_param(
                self.param.drill_temperature, width=200), sizing_mode="stretch_width"), self._drill, sizing_mode="stretch_width")
        return pn.Row(settings, results, sizing_mode="stretch_width")
