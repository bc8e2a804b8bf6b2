"""Stored temperature-sensitivity runs read back: tables, TSU, evaluation, comparisons, drill-downs.

:class:`RunResults` is the analysis of one stored run (settings: the store and the run id): the
run's tables are read once (``compute``), and every table the page shows (the questions x
temperatures matrix U of a measure, TSU for every pair and the chain, AUROC / PRR, accuracy) is
derived and cached. A question's drill-down (its answers in meaning classes, the Inv-Entropy
similarity matrices) embeds texts and may run an NLI model: it is a long result, computed in a job.
:class:`RunComparison` puts two runs side by side; :func:`export_run` returns a run as a zip of
Parquet files.
"""

from __future__ import annotations

import itertools

import pandas as pd
import param
import torch

from explorer.analyses.base import Analysis, result
from explorer.analyses.uncertainty_measures import MEASURE_LABELS, PERTURBATION_LABELS, Equivalence
from explorer.data.store import ResultsStore
from explorer.errors import InputError
from explorer.kernels import evaluation
from explorer.kernels import uncertainty as unc
from explorer.progress import Progress


class RunResults(Analysis):
    """One stored run read back as DataFrames; every table is computed once and cached.

    ``RunResults(db_path, run_id)``; the run is read on first use (``compute()`` in a job on a page).
    """

    db_path = param.String(default="", doc="The DuckDB results file.")
    run_id = param.String(default="", doc="The run to read.")

    def __init__(self, db_path: str = "", run_id: str = "", **params):
        super().__init__(db_path=str(db_path), run_id=str(run_id), **params)

    def compute_steps(self):
        return [("Reading the run", self.tables), ("TSU and evaluation", lambda progress: (
            self.tsu_table(), self.evaluation(), self.accuracy()))]

    def not_computed_message(self, name: str) -> str:
        return "Reading the run…"

    @result("db_path", "run_id", heavy=True)
    def tables(self, progress: Progress | None = None) -> dict:
        """The run's record (settings, model, status), questions, samples and measures."""
        if not self.run_id:
            raise InputError("No run selected.")
        store = ResultsStore(self.db_path)
        try:
            return {"info": store.run(self.run_id), "questions": store.questions(self.run_id),
                    "samples": store.samples(self.run_id), "measures": store.measures(self.run_id)}
        finally:
            store.close()

    # ------------------------------------------------------------------ the record
    @property
    def info(self) -> dict:
        return self.tables()["info"]

    @property
    def questions(self) -> pd.DataFrame:
        return self.tables()["questions"]

    @property
    def samples(self) -> pd.DataFrame:
        return self.tables()["samples"]

    @property
    def measures(self) -> pd.DataFrame:
        return self.tables()["measures"]

    @property
    def temperatures(self) -> list[float]:
        return [float(t) for t in self.info["settings"]["temperatures"]]

    @property
    def equivalence(self) -> str:
        """How this run's answers were grouped into meaning classes (recorded when measures were computed)."""
        settings = self.info["settings"]
        return settings.get("equivalence") or (f"embedding cosine >= {settings.get('equivalence_threshold', 0.85):g} "
                                               "with all-MiniLM-L6-v2 (offline fallback, not NLI)")

    @property
    def perturbation(self) -> str:
        """How this run's Inv-Entropy perturbations were made (runs from before the setting: paraphrases)."""
        settings = self.info["settings"]
        if not settings.get("with_inv_entropy", True):
            return "none (Inv-Entropy off)"
        return PERTURBATION_LABELS.get(settings.get("perturbation") or "paraphrase", settings.get("perturbation"))

    @property
    def label(self) -> str:
        s = self.info["settings"]
        return (f"{self.run_id} · {self.info['model']} · N={s.get('n_samples')} · "
                f"T={', '.join(f'{t:g}' for t in self.temperatures)}")

    @property
    def measure_names(self) -> list[str]:
        present = set(self.measures["measure"])
        return [m for m in MEASURE_LABELS if m in present]

    # ------------------------------------------------------------------ tables
    @result("tables")
    def u_matrix(self, measure: str) -> pd.DataFrame:
        """Questions x temperatures (ascending) of one measure."""
        table = self.measures[self.measures.measure == measure]
        return table.pivot(index="question_index", columns="temperature", values="value").sort_index(axis=1)

    @result("tables")
    def mean_curve(self, measure: str) -> pd.DataFrame:
        """Mean and standard deviation over questions of one measure per temperature."""
        u = self.u_matrix(measure)
        return pd.DataFrame({"temperature": u.columns.to_numpy(dtype=float), "mean": u.mean().to_numpy(),
                             "sd": u.std(ddof=0).to_numpy(), "questions": u.notna().sum().to_numpy()})

    @result("tables")
    def tsu_table(self) -> pd.DataFrame:
        """TSU (strict) per measure for every temperature pair and the full chain."""
        temps = self.temperatures
        columns = [(f"TSU({temps[a]:g}, {temps[b]:g})", [a, b]) for a, b in itertools.combinations(range(len(temps)), 2)]
        if len(temps) > 2:
            columns.append((f"TSU({temps[0]:g}-{temps[-1]:g})", list(range(len(temps)))))
        rows = {}
        for m in self.measure_names:
            u = torch.tensor(self.u_matrix(m).to_numpy(dtype=float))
            if u.shape[1] != len(temps):
                continue
            rows[MEASURE_LABELS[m]] = {name: unc.tsu(u, columns=cols) for name, cols in columns}
        return pd.DataFrame.from_dict(rows, orient="index")

    @result("tables")
    def evaluation(self) -> pd.DataFrame:
        """AUROC (predicting a wrong most-probable answer) and PRR per measure, over all questions and
        temperatures; empty when the questions have no reference answers."""
        correct = self.measures[self.measures.measure == "correct"]
        if correct.empty:
            return pd.DataFrame(columns=["AUROC", "PRR"])
        key = ["question_index", "temperature"]
        rows = {}
        for m in self.measure_names:
            both = self.measures[self.measures.measure == m].merge(correct, on=key, suffixes=("", "_ok"))
            u, ok = torch.tensor(both["value"].to_numpy()), torch.tensor(both["value_ok"].to_numpy())
            rows[MEASURE_LABELS[m]] = {"AUROC": float(evaluation.auroc(u, 1 - ok)), "PRR": float(evaluation.prr(u, ok))}
        return pd.DataFrame.from_dict(rows, orient="index")

    @result("tables")
    def accuracy(self) -> pd.Series:
        acc = self.measures[self.measures.measure == "correct"]
        return acc.groupby("temperature")["value"].mean()

    def question_samples(self, question_index: int, kind: str = "answer") -> pd.DataFrame:
        table = self.samples[(self.samples.kind == kind) & (self.samples.question_index == question_index)]
        return table.reset_index(drop=True)

    # ------------------------------------------------------------------ drill-down (long: embeddings, NLI)
    @result("tables", heavy=True)
    def _equivalence(self) -> Equivalence:
        """The run's own grouping into meaning classes (NLI when the run used it), with the embedder."""
        from explorer.models.embedder import load_embedder

        settings = self.info["settings"]
        nli = settings.get("nli_model", "") if settings.get("equivalence_method") == "nli" else ""
        return Equivalence(nli, settings.get("equivalence_threshold", 0.85), load_embedder())

    @result("tables", heavy=True)
    def question_answers(self, question_index: int, progress: Progress | None = None) -> pd.DataFrame:
        """Every answer to one question with its temperature, semantic cluster, sequence log-probability
        and length."""
        table = self.question_samples(question_index)
        question = self.questions["question"].iloc[question_index]
        parts = []
        for _, group in table.groupby("temperature", sort=True):
            ids = unc.semantic_clusters(self._equivalence().matrix(question, group["text"].tolist()))
            parts.append(group.assign(cluster=ids.tolist(), log_prob=group["token_log_probs"].map(sum),
                                      tokens=group["token_ids"].map(len)))
        if not parts:
            return pd.DataFrame(columns=["temperature", "sample_index", "cluster", "text", "log_prob", "tokens",
                                         "prompt", "token_entropies"])
        return pd.concat(parts, ignore_index=True)

    @result("tables", heavy=True)
    def inv_entropy_matrices(self, question_index: int, temperature: float,
                             progress: Progress | None = None) -> tuple[list[str], torch.Tensor, torch.Tensor] | None:
        """The perturbed inputs of one question at one temperature and the similarity matrices S_x
        (inputs) and S_y (their first replicate answers); None when the run has no perturbations."""
        table = self.question_samples(question_index, "perturbed")
        table = table[(table.temperature == temperature) & (table.sample_index == 0)].sort_values("variant")
        if table.empty:
            return None
        embedder = self._equivalence()._embedder
        mapping = self.info["settings"].get("similarity_mapping", "paper")
        inputs = table["prompt"].tolist()
        inputs[0] = self.questions["question"].iloc[question_index]
        x = embedder.encode(inputs).double()
        y = embedder.encode([t or " " for t in table["text"]]).double()
        return (inputs, unc.cosine_to_similarity((x @ x.T).clamp(-1, 1), mapping),
                unc.cosine_to_similarity((y @ y.T).clamp(-1, 1), mapping))

    # ------------------------------------------------------------------ report
    report_title = "Temperature sensitivity run"

    def report_sections(self, measure: str | None = None) -> list:
        """The run as data for :mod:`explorer.analyses.report`: its record and settings, one line per
        question of ``measure`` (default: the first present), the mean curve of every measure, TSU,
        AUROC / PRR, accuracy and the questions."""
        from explorer.analyses import report as r

        info, names = self.info, self.measure_names
        if not names:
            raise InputError(f"Run {self.run_id} has no measures yet (status: {info['status']}).")
        measure = measure if measure in names else names[0]
        settings = info["settings"]
        parts = [r.Facts(f"Run {self.run_id}", {"database": self.db_path, "model": info["model"], "status": info["status"],
                                                "created": info.get("created"), "questions": len(self.questions),
                                                "samples per question": settings.get("n_samples"),
                                                "temperatures": self.temperatures, "semantic equivalence": self.equivalence,
                                                "Inv-Entropy perturbations": self.perturbation}),
                 r.Facts("Settings of the run", {k: v for k, v in settings.items() if not isinstance(v, dict)})]
        u = self.u_matrix(measure)
        temps = u.columns.to_numpy(dtype=float)
        mean = self.mean_curve(measure)
        lines = [r.Line(temps, row, "", r.GREY, 1.2, alpha=0.55) for row in u.to_numpy(dtype=float)]
        parts += [r.Heading(MEASURE_LABELS[measure]),
                  r.Plot(f"{MEASURE_LABELS[measure]}: one line per question, mean ± sd", "temperature", "uncertainty",
                         [*lines, r.Band(mean["temperature"], mean["mean"] - mean["sd"], mean["mean"] + mean["sd"]),
                          r.Line(mean["temperature"], mean["mean"], "mean", r.TEAL, 3)]),
                  r.Table(f"{MEASURE_LABELS[measure]} per question and temperature",
                          u.set_axis([f"T={t:g}" for t in temps], axis=1).round(4)),
                  r.Heading("Every measure")]
        means = pd.concat([self.mean_curve(m).assign(measure=MEASURE_LABELS[m]) for m in names])
        parts += [r.Table("Mean ± sd over questions", means.pivot(index="measure", columns="temperature",
                                                                  values="mean").round(4)),
                  r.Table("TSU (% of questions strictly increasing)", self.tsu_table().round(1))]
        evaluation = self.evaluation()
        if len(evaluation):
            accuracy = ", ".join(f"T={t:g}: {v:.0%}" for t, v in self.accuracy().items())
            parts.append(r.Table("AUROC / PRR for predicting a wrong answer", evaluation.round(3),
                                 f"Accuracy of the most probable answer: {accuracy}"))
        questions = self.questions.assign(answers=self.questions["answers"].map(lambda a: " | ".join(a)))
        parts.append(r.Table("Questions", questions))
        return parts


class RunComparison(Analysis):
    """Two stored runs side by side (A and B): settings, mean curves per measure, TSU per measure."""

    first = param.ClassSelector(class_=RunResults, allow_None=True, doc="Run A.")
    second = param.ClassSelector(class_=RunResults, allow_None=True, doc="Run B.")

    def __init__(self, first: RunResults | None = None, second: RunResults | None = None, **params):
        super().__init__(first=first, second=second, **params)

    def compute_steps(self):
        return [("Reading run A", lambda progress: self.first.compute(progress)),
                ("Reading run B", lambda progress: self.second.compute(progress)),
                ("Comparing", lambda progress: (self.overview(), self.tsu()))]

    @property
    def runs(self) -> dict[str, RunResults]:
        if self.first is None or self.second is None:
            raise InputError("Pick two runs to compare.")
        return {"A": self.first, "B": self.second}

    @result("first", "second")
    def overview(self) -> pd.DataFrame:
        """One row per run: id, model, status, questions, N, temperatures, equivalence."""
        return pd.DataFrame([dict(run=key, run_id=r.run_id, model=r.info["model"], status=r.info["status"],
                                  questions=len(r.questions), n_samples=r.info["settings"].get("n_samples"),
                                  temperatures=", ".join(f"{t:g}" for t in r.temperatures), equivalence=r.equivalence)
                             for key, r in self.runs.items()]).set_index("run")

    @property
    def measure_names(self) -> list[str]:
        """Measures present in both runs."""
        second = set(self.runs["B"].measure_names)
        return [m for m in self.runs["A"].measure_names if m in second]

    def mean_curves(self, measure: str | None = None) -> pd.DataFrame:
        """Long table run, measure, temperature, mean, sd, questions (one measure or every common one)."""
        names = [measure] if measure is not None else self.measure_names
        parts = [r.mean_curve(m).assign(run=key, measure=m) for m in names for key, r in self.runs.items()
                 if m in r.measure_names]
        columns = ["run", "measure", "temperature", "mean", "sd", "questions"]
        return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)

    @result("first", "second")
    def tsu(self) -> pd.DataFrame:
        """TSU per measure (rows), each run's pairs and chain as columns "A: TSU(...)", "B: TSU(...)"."""
        return pd.concat([r.tsu_table().add_prefix(f"{key}: ") for key, r in self.runs.items()], axis=1)


def list_runs(db_path: str) -> pd.DataFrame:
    store = ResultsStore(db_path)
    try:
        return store.runs()
    finally:
        store.close()


def export_run(db_path: str, run_id: str) -> bytes:
    """A stored run as a zip of three Parquet files (questions, samples, measures)."""
    store = ResultsStore(db_path)
    try:
        return store.export_parquet_zip(run_id)
    finally:
        store.close()
