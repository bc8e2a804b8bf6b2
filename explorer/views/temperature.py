"""The temperature sensitivity page: run a sweep, then compare measures across temperatures.

A thin view over :mod:`explorer.analyses.temperature`: the settings form comes from
:class:`TemperatureStudy`'s parameters, sampling runs in a :class:`BackgroundTask`, and every plot
and table reads a stored :class:`RunResults` (past runs reopen instantly from the DuckDB store).
"""

from __future__ import annotations

import html
import tempfile
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from explorer.analyses.temperature import (MEASURE_LABELS, QuestionDetail, RunResults, TemperatureStudy, _temperatures,
                                           list_runs, resume_run)
from explorer.data.questions import load_questions
from explorer.errors import InputError
from explorer.views.task import BackgroundTask

hv.extension("bokeh", logo=False)

FORM = ("model_name", "max_questions", "n_samples", "max_new_tokens", "seed", "batch_questions",
        "equivalence_threshold", "correctness", "with_p_true", "with_inv_entropy", "n_perturbations", "replicates",
        "bootstrap", "similarity_mapping", "db_path")
INT_FIELDS = ("max_questions", "n_samples", "max_new_tokens", "seed", "batch_questions", "n_perturbations",
              "replicates", "bootstrap")
PLOT = dict(height=330, responsive=True, show_grid=True, toolbar="right")
TEAL, GREY = "#0f766e", "#94a3b8"
FALLBACK_NOTE = ("Semantic equivalence uses the offline fallback: embedding cosine >= threshold with "
                 "all-MiniLM-L6-v2 (not NLI entailment). Inv-Entropy perturbations are paraphrases written by the "
                 "model itself; MSP uses the most probable sampled answer.")


class TemperatureSensitivity(pn.viewable.Viewer):
    """Sequence-level uncertainty across temperatures, TSU, AUROC/PRR and per-question drill-down.

    ``TemperatureSensitivity()`` renders with defaults in a notebook or under ``panel serve``.
    """

    study = param.ClassSelector(class_=TemperatureStudy)
    results = param.ClassSelector(class_=RunResults, allow_None=True)
    temperatures_text = param.String(default="0.3, 0.7, 1.0, 1.4", label="Temperatures (increasing)")
    measure = param.Selector(objects={v: k for k, v in MEASURE_LABELS.items()}, default="se_discrete", label="Measure")
    question_index = param.Integer(default=0, bounds=(0, None), label="Question")
    drill_temperature = param.Selector(objects=[None], default=None, label="Inv-Entropy matrices at T")

    def __init__(self, **params):
        params.setdefault("study", TemperatureStudy())
        super().__init__(**params)
        self.task = BackgroundTask()
        self._upload = pn.widgets.FileInput(accept=".csv,.jsonl,.parquet", name="Question file")
        self._upload.param.watch(self._on_upload, "value")
        self._runs = pn.widgets.Tabulator(pd.DataFrame(), height=180, sizing_mode="stretch_width", disabled=True,
                                          selectable=1, show_index=False, name="runs")
        self._runs.param.watch(self._on_run_selected, "selection")
        self._start = pn.widgets.Button(name="Start run", button_type="primary", width=110)
        self._start.on_click(self._on_start)
        self._resume = pn.widgets.Button(name="Resume selected", width=140)
        self._resume.on_click(self._on_resume)
        self._question = pn.widgets.Select(name="Question", options={}, sizing_mode="stretch_width")
        self._question.param.watch(lambda e: setattr(self, "question_index", e.new), "value")
        self._refresh_runs()

    # ------------------------------------------------------------------ actions (no computation here)
    def _on_upload(self, event) -> None:
        try:
            table = load_questions(event.new, name=self._upload.filename or "upload.csv")
        except InputError as err:
            self.task.show_error(err)
            return
        folder = Path(tempfile.mkdtemp(prefix="questions-"))
        path = folder / "questions.csv"
        table.assign(answer=table["answers"].map("|".join))[["question", "answer"]].to_csv(path, index=False)
        self.study.questions_path = str(path)
        self.task.show_error(f"Loaded {len(table)} questions from {html.escape(self._upload.filename or 'upload')}.")

    async def _on_start(self, _event) -> None:
        try:
            self.study.temperatures = _temperatures(self.temperatures_text.replace(";", ",").split(","))
            self.study.validate()
            self.study.questions()
        except (InputError, ValueError) as err:
            self.task.show_error(err if isinstance(err, InputError) else InputError(f"Bad temperatures: {err}"))
            return
        await self.task.run(self.study.run, on_done=self._open_run, label="Sampling")

    async def _on_resume(self, _event) -> None:
        rows = self._runs.selection
        if not rows:
            self.task.show_error("Select a run in the table first.")
            return
        run_id, db = self._runs.value["run_id"].iloc[rows[0]], self.study.db_path
        await self.task.run(lambda progress: resume_run(db, run_id, progress), on_done=self._open_run,
                            label="Resuming")

    def _on_run_selected(self, event) -> None:
        if event.new:
            try:
                self._open_run(self._runs.value["run_id"].iloc[event.new[0]], refresh=False)
            except InputError as err:
                self.task.show_error(err)

    def _open_run(self, run_id: str, refresh: bool = True) -> None:
        results = RunResults(self.study.db_path, run_id)
        names = results.measure_names
        self.param.measure.objects = {MEASURE_LABELS[m]: m for m in names or MEASURE_LABELS}
        if names and self.measure not in names:
            self.measure = names[0]
        self._question.options = {f"{i + 1}. {q}": i for i, q in enumerate(results.questions["question"])}
        self.param.drill_temperature.objects = results.temperatures
        self.drill_temperature = results.temperatures[0]
        self.results = results
        if refresh:
            self._refresh_runs()

    @param.depends("study.db_path", watch=True)
    def _refresh_runs(self) -> None:
        try:
            runs = list_runs(self.study.db_path)
        except InputError as err:
            self.task.show_error(err)
            return
        self._runs.value = runs[["run_id", "name", "created", "model", "status", "answers"]]

    # ------------------------------------------------------------------ views
    @param.depends("study.max_questions", "study.n_samples", "study.with_inv_entropy", "study.n_perturbations",
                   "study.replicates", "temperatures_text")
    def _cost(self):
        try:
            temps = _temperatures(self.temperatures_text.replace(";", ",").split(","))
        except (InputError, ValueError) as err:
            return pn.pane.Markdown(f"**Temperatures:** {html.escape(str(err))}", styles={"color": "#b91c1c"})
        study = TemperatureStudy(**{**self.study.settings(), "temperatures": temps})
        return pn.pane.Markdown(f"**Cost:** {study.generations():,} generations "
                                f"({len(temps)} temperatures x {self.study.max_questions} questions).")

    @param.depends("results", "measure")
    def _curves(self):
        if self.results is None or self.measure not in self.results.measure_names:
            return hv.Curve([], "temperature", "uncertainty").opts(title="Start or select a run", **PLOT)
        u = self.results.u_matrix(self.measure)
        temps = u.columns.to_numpy(dtype=float)
        lines = [hv.Curve((temps, row), "temperature", "uncertainty").opts(color=GREY, alpha=0.45, line_width=1)
                 for row in u.to_numpy(dtype=float)]
        mean, sd = np.nanmean(u.to_numpy(dtype=float), 0), np.nanstd(u.to_numpy(dtype=float), 0)
        band = hv.Spread((temps, mean, sd), "temperature", ["uncertainty", "sd"]).opts(color=TEAL, alpha=0.2)
        mean_line = hv.Curve((temps, mean), "temperature", "uncertainty", label="mean ± sd").opts(
            color=TEAL, line_width=3, tools=["hover"])
        return hv.Overlay([*lines, band, mean_line]).opts(
            title=f"{MEASURE_LABELS[self.measure]}: one line per question", legend_position="top_left", **PLOT)

    @param.depends("results")
    def _tables(self):
        if self.results is None:
            return pn.pane.Markdown("No run selected.")
        tsu = self.results.tsu_table.round(1)
        parts = [pn.pane.Markdown("### TSU (% of questions strictly increasing)"),
                 pn.widgets.Tabulator(tsu, disabled=True, sizing_mode="stretch_width", height=min(50 + 31 * len(tsu), 640))]
        evaluation = self.results.evaluation.round(3)
        if len(evaluation):
            acc = ", ".join(f"T={t:g}: {v:.0%}" for t, v in self.results.accuracy.items())
            parts += [pn.pane.Markdown(f"### AUROC / PRR for predicting a wrong answer\nAccuracy of the most probable "
                                       f"answer: {acc}"),
                      pn.widgets.Tabulator(evaluation, disabled=True, sizing_mode="stretch_width",
                                           height=min(50 + 31 * len(evaluation), 640))]
        return pn.Column(*parts, sizing_mode="stretch_width")

    @param.depends("results", "question_index", "drill_temperature")
    def _drill(self):
        if self.results is None:
            return pn.pane.Markdown("Select a run to inspect its questions.")
        detail = QuestionDetail(self.results, self.question_index)
        answers = detail.answers
        q = self.results.questions.iloc[self.question_index]
        header = pn.pane.Markdown(f"**{html.escape(q['question'])}**  reference: "
                                  f"{html.escape(' | '.join(q['answers']) or '(none)')}")
        table = pn.widgets.Tabulator(answers[["temperature", "sample_index", "cluster", "text", "log_prob", "tokens"]]
                                     .round(3), disabled=True, sizing_mode="stretch_width", height=260,
                                     show_index=False, name="samples")
        return pn.Column(header, table, pn.pane.HoloViews(self._entropy_curves(answers), sizing_mode="stretch_width"),
                         self._inv_entropy_view(detail), sizing_mode="stretch_width")

    @staticmethod
    def _entropy_curves(answers: pd.DataFrame):
        curves = [hv.Curve((np.arange(1, len(e) + 1), list(e)), "token", "entropy (nats)",
                           label=f"T={t:g}").opts(line_width=1.2, alpha=0.8)
                  for t, e in zip(answers["temperature"], answers["token_entropies"])]
        return hv.Overlay(curves).opts(title="Token entropy of each sample (see the lens page for one sample)",
                                       show_legend=False, height=260, responsive=True, show_grid=True)

    def _inv_entropy_view(self, detail: QuestionDetail):
        temperature = self.drill_temperature if self.drill_temperature is not None else self.results.temperatures[0]
        matrices = detail.inv_entropy_matrices(temperature)
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
        return pn.Column(pn.pane.Markdown(f"**Perturbed questions (T={temperature:g}, first replicate):**\n\n{listing}"),
                         pn.Row(pn.pane.HoloViews(heat(sim_x, "S_x: questions"), sizing_mode="stretch_width"),
                                pn.pane.HoloViews(heat(sim_y, "S_y: answers"), sizing_mode="stretch_width"),
                                sizing_mode="stretch_width"), sizing_mode="stretch_width")

    def __panel__(self):
        form = pn.Param(self.study, parameters=list(FORM), show_name=False, width=300,
                        widgets={"model_name": {"placeholder": "SmolLM2-135M-Instruct"},
                                 **{n: pn.widgets.IntInput for n in INT_FIELDS}})
        settings = pn.Column("### Run settings", pn.widgets.TextInput.from_param(self.param.temperatures_text, width=280),
                             form, self._upload, self._cost, pn.Row(self._start, self._resume), width=320)
        results = pn.Column(
            pn.pane.Alert(FALLBACK_NOTE, alert_type="info", sizing_mode="stretch_width"),
            self.task, "### Past runs", self._runs,
            pn.widgets.Select.from_param(self.param.measure, width=320),
            pn.pane.HoloViews(self._curves, sizing_mode="stretch_width"),
            self._tables, "### Drill-down", pn.Row(self._question, pn.widgets.Select.from_param(
                self.param.drill_temperature, width=200), sizing_mode="stretch_width"), self._drill, sizing_mode="stretch_width")
        return pn.Row(settings, results, sizing_mode="stretch_width")
