"""Stored temperature-sensitivity runs read back: tables, TSU, evaluation, comparisons, drill-downs.

:class:`RunResults` is the analysis of one stored run (settings: the store and the run id, and how
to evaluate): the run's tables are read once (``compute``), and every table the page shows (the
questions x temperatures matrix U of a measure, TSU for every pair and the chain, accuracy) is
derived and cached. A question's drill-down (its answers in meaning classes, the Inv-Entropy
similarity matrices) embeds texts and may run an NLI model: it is a long result, computed in a job.

Evaluation against correctness (:mod:`explorer.kernels.evaluation`), at one temperature: each
question's uncertainty against whether its most probable answer is right ("correct"; questions
without reference answers are left out). Higher uncertainty = more likely wrong. AUROC and PR-AUC
flag wrong answers; PRR (optionally capped at ``max_rejection``), AURC and E-AURC come from the
rejection curves; every one has a percentile bootstrap interval over questions (``n_resamples``
resamples of the questions, seeded by ``bootstrap_seed``; every measure on the same resamples).
For the probability-like scores, P(True) (p = exp(-u): u is the mean of -log P(True) over the
sampled answers, so p is their geometric mean) and MSP (p = exp(-u), the most probable answer's
sequence probability), the reliability diagram, ECE (equal-mass bins) and the Brier score. A
statistic that is undefined (every answer right, ...) is NaN in the table and ``note`` says why in
words. Temperatures are evaluated one at a time: each is its own set of predictions.

:class:`RunComparison` puts two runs side by side (paired bootstrap of a statistic on the same
questions); :func:`export_run` returns a run as a zip of Parquet files.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
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


#: probability-like scores: measure -> (what p = exp(-u) is)
PROBABILITY_MEASURES = {"p_true": "P(True), geometric mean over the sampled answers",
                        "msp": "sequence probability of the most probable answer"}
#: evaluation statistics: name -> (kernel statistic for undefined_reason, f(uncertainty, correct, weights, max_rejection))
STATISTICS: dict[str, tuple[str, Callable]] = {
    "AUROC": ("auroc", lambda u, ok, w, cap: evaluation.auroc(u, 1 - ok, w)),
    "PR-AUC": ("average_precision", lambda u, ok, w, cap: evaluation.average_precision(u, 1 - ok, w)),
    "PRR": ("prr", lambda u, ok, w, cap: evaluation.prr(u, ok, w, cap)),
    "AURC": ("aurc", lambda u, ok, w, cap: evaluation.aurc(u, 1 - ok, w)),
    "E-AURC": ("e_aurc", lambda u, ok, w, cap: evaluation.e_aurc(u, 1 - ok, w)),
}
EVALUATION_COLUMNS = ["measure", *[f"{s}{part}" for s in STATISTICS for part in ("", " low", " high")], "ECE",
                      "ECE bins", "Brier", "questions", "wrong", "note"]


def _target(statistic: str, ok: torch.Tensor) -> torch.Tensor:
    """What the kernel's ``statistic`` takes: is_wrong, quality or loss."""
    return ok if statistic == "prr" else 1 - ok


def _undefined_note(u: torch.Tensor, ok: torch.Tensor, max_rejection: float) -> str:
    """Why some statistics of one measure are undefined, in words ("" when all are defined)."""
    reasons: dict[str, list[str]] = {}
    for name, (statistic, _f) in STATISTICS.items():
        reason = evaluation.undefined_reason(statistic, u, _target(statistic, ok), max_rejection)
        if reason is not None:
            reasons.setdefault(reason, []).append(name)
    return "; ".join(f"{', '.join(names)} undefined: {reason}" for reason, names in reasons.items())


def _probability(u: torch.Tensor) -> torch.Tensor:
    """p = exp(-u) of a probability-like score, in [0, 1]."""
    return torch.exp(-u).clamp(0.0, 1.0)


def with_intervals(table: pd.DataFrame, names, digits: int = 3) -> pd.DataFrame:
    """``table``'s statistics ``names`` as text "estimate [low, high]" (columns ``<name> low`` /
    ``<name> high``; without them just the estimate); NaN reads "undefined" (a note says why)."""
    def text(value, low=None, high=None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "undefined"
        if low is None or isinstance(low, float) and math.isnan(low):
            return f"{value:.{digits}f}"
        return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
    out = pd.DataFrame(index=table.index)
    for name in names:
        if f"{name} low" in table:
            out[name] = [text(v, lo, hi) for v, lo, hi in zip(table[name], table[f"{name} low"], table[f"{name} high"])]
        else:
            out[name] = [text(v) for v in table[name]]
    return out


def evaluation_display(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """An :meth:`RunResults.evaluation` table as text: each statistic "estimate [low, high]", ECE with
    its number of non-empty bins and Brier ("n/a" for a measure that is not a probability), the
    counts and the note on undefined statistics."""
    out = with_intervals(table, STATISTICS, digits)
    probability = table["measure"].isin(list(PROBABILITY_MEASURES))
    out["ECE"] = [f"{e:.{digits}f} ({int(b)} bins)" if p and not math.isnan(e) else "n/a" if not p else "undefined"
                  for e, b, p in zip(table["ECE"], table["ECE bins"].fillna(0), probability)]
    out["Brier"] = [f"{v:.{digits}f}" if p and not math.isnan(v) else "n/a" if not p else "undefined"
                    for v, p in zip(table["Brier"], probability)]
    for column in ("questions", "wrong", "note"):
        out[column] = table[column]
    if "temperature" in table:
        out.insert(0, "T", table["temperature"].map(lambda t: f"{t:g}"))
    return out


def tsu_display(tsu: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """A :meth:`RunResults.tsu_intervals` table as text, "TSU [low, high]" per pair and chain."""
    return pd.DataFrame({column: with_intervals(tsu[column].set_axis([column, f"{column} low", f"{column} high"],
                                                                     axis=1), [column], digits)[column]
                         for column in tsu.columns.get_level_values(0).unique()}, index=tsu.index)


def paired_statistic(statistic: str, u_a: torch.Tensor, ok_a: torch.Tensor, u_b: torch.Tensor, ok_b: torch.Tensor,
                     settings: "RunResults") -> dict:
    """Paired bootstrap of ``statistic`` (a key of :data:`STATISTICS`) of A minus B, rows = the same
    questions in the same order (two measures, or one measure in two runs), with ``settings``'s
    resamples, level, seed and PRR cap: estimate, low, high, p_value, questions, note."""
    if statistic not in STATISTICS:
        raise InputError(f"Unknown statistic {statistic!r}: use one of {list(STATISTICS)}.")
    kernel, f = STATISTICS[statistic]
    cap, n = settings.max_rejection, len(ok_a)
    out = dict(statistic=statistic, estimate=math.nan, low=math.nan, high=math.nan, p_value=math.nan, questions=n)
    if n == 0:
        return {**out, "note": "no question has a value for both"}
    notes = [f"{side}: {statistic} undefined: {reason}" for side, u, ok in (("A", u_a, ok_a), ("B", u_b, ok_b))
             if (reason := evaluation.undefined_reason(kernel, u, _target(kernel, ok), cap)) is not None]
    pb = evaluation.paired_bootstrap(lambda w: f(u_a, ok_a, w, cap), lambda w: f(u_b, ok_b, w, cap), n,
                                     settings.n_resamples, settings.confidence, settings.bootstrap_seed)
    return {**out, "estimate": float(pb.estimate), "low": float(pb.low), "high": float(pb.high),
            "p_value": float(pb.p_value), "note": "; ".join(notes)}


class RunResults(Analysis):
    """One stored run read back as DataFrames; every table is computed once and cached.

    ``RunResults(db_path, run_id)``; the run is read on first use (``compute()`` in a job on a page).
    """

    db_path = param.String(default="", doc="The DuckDB results file.")
    run_id = param.String(default="", doc="The run to read.")
    max_rejection = param.Number(default=1.0, bounds=(0.0, 1.0), inclusive_bounds=(False, True),
                                 label="PRR: reject at most (share)",
                                 doc="PRR over the first floor(max_rejection * n) rejection steps only (1: all).")
    n_resamples = param.Integer(default=1000, bounds=(10, 100_000), label="Bootstrap resamples")
    confidence = param.Number(default=0.95, bounds=(0.5, 0.999), label="Interval level")
    bootstrap_seed = param.Integer(default=0, bounds=(0, None), label="Bootstrap seed")
    ece_bins = param.Integer(default=10, bounds=(1, 100), label="Calibration bins (equal mass)")

    def __init__(self, db_path: str = "", run_id: str = "", **params):
        super().__init__(db_path=str(db_path), run_id=str(run_id), **params)

    def compute_steps(self):
        return [("Reading the run", self.tables), ("TSU and evaluation", lambda progress: (
            self.tsu_table(), self.tsu_intervals(), self.evaluation(self.default_temperature), self.accuracy()))]

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

    @result("tables", "n_resamples", "confidence", "bootstrap_seed", heavy=True)
    def tsu_intervals(self) -> pd.DataFrame:
        """TSU per measure (rows) for every pair and the chain, with a bootstrap interval over questions:
        columns ``(TSU column, "TSU" | "low" | "high")``; every measure on the same resamples."""
        temps = self.temperatures
        columns = [(f"TSU({temps[a]:g}, {temps[b]:g})", [a, b]) for a, b in itertools.combinations(range(len(temps)), 2)]
        if len(temps) > 2:
            columns.append((f"TSU({temps[0]:g}-{temps[-1]:g})", list(range(len(temps)))))
        names = [m for m in self.measure_names if self.u_matrix(m).shape[1] == len(temps)]
        if not names:
            return pd.DataFrame()
        u = torch.stack([torch.tensor(np.ascontiguousarray(self.u_matrix(m).to_numpy(dtype=float)))
                         for m in names])                                                          # [M, n, T]
        rising = torch.stack([(u[..., cols].diff(dim=-1) > 0).all(-1) for _, cols in columns], -1)  # [M, n, C]
        indicator = rising.permute(1, 0, 2).reshape(u.shape[1], -1).double()                       # [n, M * C]
        ci = evaluation.bootstrap_ci(lambda w: 100 * (w @ indicator) / w.sum(-1, keepdim=True), u.shape[1],
                                     self.n_resamples, self.confidence, self.bootstrap_seed)
        shape = (len(names), len(columns))
        parts = {(name, part): getattr(ci, field).reshape(shape)[:, c].numpy()
                 for c, (name, _cols) in enumerate(columns)
                 for part, field in (("TSU", "estimate"), ("low", "low"), ("high", "high"))}
        return pd.DataFrame(parts, index=[MEASURE_LABELS[m] for m in names])

    # ------------------------------------------------------------------ evaluation against correctness
    @property
    def default_temperature(self) -> float:
        """The temperature evaluated first: the one closest to 1 (the model's own distribution)."""
        return min(self.temperatures, key=lambda t: (abs(t - 1.0), t))

    @property
    def has_labels(self) -> bool:
        """True when some question has reference answers (correctness is known)."""
        return bool((self.measures.measure == "correct").any())

    @property
    def probability_measures(self) -> list[str]:
        """The probability-like measures of this run (calibration applies to them)."""
        return [m for m in PROBABILITY_MEASURES if m in self.measure_names]

    def _temperature(self, temperature: float | None) -> float:
        if temperature is None:
            return self.default_temperature
        match = [t for t in self.temperatures if math.isclose(t, float(temperature), rel_tol=1e-9, abs_tol=1e-12)]
        if not match:
            raise InputError(f"This run has no temperature {temperature:g}; it has {self.temperatures}.")
        return match[0]

    @result("tables")
    def labelled(self, temperature: float) -> pd.DataFrame:
        """At one temperature, the questions with a known correctness: one column per measure
        (uncertainty, NaN where missing) and ``correct`` (1 = the most probable answer is right)."""
        t = self._temperature(temperature)
        table = self.measures[self.measures.temperature == t]
        wide = table.pivot(index="question_index", columns="measure", values="value")
        if "correct" not in wide:
            return pd.DataFrame(columns=[*self.measure_names, "correct"])
        wide = wide[wide["correct"].notna()]
        return wide.reindex(columns=[*self.measure_names, "correct"]).sort_index()

    def _tensors(self, temperature: float, measures: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        table = self.labelled(temperature)
        u = torch.tensor(np.ascontiguousarray(table[measures].to_numpy(dtype=float).T))
        u = u.reshape(len(measures), len(table))
        return u, torch.tensor(np.ascontiguousarray(table["correct"].to_numpy(dtype=float)))

    @result("tables", "max_rejection", "n_resamples", "confidence", "bootstrap_seed", "ece_bins", heavy=True)
    def evaluation(self, temperature: float | None = None, progress: Progress | None = None) -> pd.DataFrame:
        """Every measure against correctness at ``temperature`` (None: every temperature, with a
        ``temperature`` column): AUROC, PR-AUC, PRR, AURC, E-AURC with bootstrap intervals
        (``<name> low`` / ``<name> high``), ECE and Brier for the probability-like measures, the number
        of questions and of wrong answers, and a ``note`` naming every undefined statistic and why.
        Indexed by the measure's label; empty when no question has reference answers."""
        if temperature is None:
            parts = [self.evaluation(t).assign(temperature=t) for t in self.temperatures]
            return pd.concat(parts) if parts else pd.DataFrame(columns=["temperature", *EVALUATION_COLUMNS])
        names = self.measure_names
        table = self.labelled(temperature)
        if table.empty or not names:
            return pd.DataFrame(columns=EVALUATION_COLUMNS)
        u, ok = self._tensors(temperature, names)
        ci = evaluation.evaluation_table(u, ok, self.n_resamples, self.confidence, self.bootstrap_seed,
                                         self.max_rejection)
        ci["average_precision"] = evaluation.bootstrap_ci(
            lambda w: evaluation.average_precision(u, 1 - ok, w[:, None]), len(ok), self.n_resamples,
            self.confidence, self.bootstrap_seed)
        rows = []
        for i, m in enumerate(names):
            row = {"measure": m}
            for name, (statistic, _f) in STATISTICS.items():
                found = ci[statistic]
                row.update({name: float(found.estimate[i]), f"{name} low": float(found.low[i]),
                            f"{name} high": float(found.high[i])})
            row.update(ECE=math.nan, Brier=math.nan)
            row["ECE bins"] = math.nan
            defined = ~u[i].isnan()
            if m in PROBABILITY_MEASURES and bool(defined.any()):
                p = _probability(u[i][defined])
                calibration = evaluation.expected_calibration_error(p, ok[defined], self.ece_bins)
                row.update(ECE=float(calibration.ece), Brier=float(evaluation.brier_score(p, ok[defined])))
                row["ECE bins"] = int((calibration.count > 0).sum())
            row.update(questions=int(defined.sum()), wrong=int((1 - ok[defined]).sum()),
                       note=_undefined_note(u[i], ok, self.max_rejection))
            rows.append(row)
        return pd.DataFrame(rows, columns=EVALUATION_COLUMNS, index=[MEASURE_LABELS[m] for m in names])

    def _curve_rows(self, temperature: float, measures, make) -> pd.DataFrame:
        parts = []
        for m in measures:
            u, ok = self._tensors(temperature, [m])
            parts.append(make(u[0], ok).assign(measure=m, label=MEASURE_LABELS.get(m, m)))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    @result("tables")
    def roc_curves(self, temperature: float, measures: tuple[str, ...]) -> pd.DataFrame:
        """ROC curves (wrong answers flagged by high uncertainty): measure, label, fpr, tpr, threshold."""
        def make(u, ok):
            curve = evaluation.roc_curve(u, 1 - ok)
            return pd.DataFrame({"fpr": curve.fpr.numpy(), "tpr": curve.tpr.numpy(), "threshold": curve.thresholds.numpy()})
        return self._curve_rows(temperature, measures, make)

    @result("tables")
    def pr_curves(self, temperature: float, measures: tuple[str, ...]) -> pd.DataFrame:
        """Precision-recall curves with wrong answers as positives: measure, label, recall, precision,
        threshold (NaN at the last point, recall 0)."""
        def make(u, ok):
            curve = evaluation.precision_recall_curve(u, 1 - ok)
            thresholds = torch.cat([curve.thresholds, torch.tensor([math.nan], dtype=torch.float64)])
            return pd.DataFrame({"recall": curve.recall.numpy(), "precision": curve.precision.numpy(),
                                 "threshold": thresholds.numpy()})
        return self._curve_rows(temperature, measures, make)

    @result("tables")
    def risk_coverage_curves(self, temperature: float, measures: tuple[str, ...]) -> pd.DataFrame:
        """Risk-coverage curves (the most uncertain rejected first, ties together): measure, label,
        coverage (share kept), risk (share of the kept answers that are wrong), threshold."""
        def make(u, ok):
            curve = evaluation.risk_coverage(u, 1 - ok)
            return pd.DataFrame({"coverage": curve.coverage.numpy(), "risk": curve.risk.numpy(),
                                 "threshold": curve.thresholds.numpy()})
        return self._curve_rows(temperature, measures, make)

    @result("tables", "ece_bins")
    def reliability(self, temperature: float, measure: str) -> pd.DataFrame:
        """Reliability diagram of a probability-like measure: per equal-mass bin its count, mean
        confidence p = exp(-u) and share of right answers (``attrs["ece"]``: ECE)."""
        if measure not in PROBABILITY_MEASURES:
            raise InputError(f"{MEASURE_LABELS.get(measure, measure)} is not a probability: a reliability diagram "
                             f"needs one of {[MEASURE_LABELS[m] for m in PROBABILITY_MEASURES]}.")
        u, ok = self._tensors(temperature, [measure])
        defined = ~u[0].isnan()
        calibration = evaluation.expected_calibration_error(_probability(u[0][defined]), ok[defined], self.ece_bins)
        frame = pd.DataFrame({"bin": range(self.ece_bins), "count": calibration.count.numpy(),
                              "confidence": calibration.confidence.numpy(), "accuracy": calibration.accuracy.numpy()})
        frame.attrs["ece"] = float(calibration.ece)
        return frame

    @result("tables", "max_rejection", "n_resamples", "confidence", "bootstrap_seed", heavy=True)
    def paired_difference(self, measure_a: str, measure_b: str, temperature: float,
                          statistic: str = "AUROC") -> dict:
        """``statistic`` of measure A minus measure B on the same resampled questions (those where both
        have a value): estimate, low, high, p_value (two-sided), questions, note."""
        u, ok = self._tensors(temperature, [measure_a, measure_b])
        both = ~u.isnan().any(0)
        return paired_statistic(statistic, u[0][both], ok[both], u[1][both], ok[both], self)

    # ------------------------------------------------------------------ adaptive sampling
    @result("tables")
    def answers_used(self) -> pd.DataFrame:
        """Questions x temperatures: the answers each question used (all N unless adaptive)."""
        answers = self.samples[self.samples.kind == "answer"]
        return answers.groupby(["question_index", "temperature"]).size().unstack("temperature").sort_index(axis=1)

    @property
    def is_adaptive(self) -> bool:
        return bool(self.info["settings"].get("adaptive", False))

    @result("tables")
    def answers_summary(self) -> dict:
        """Answers generated against a fixed N (N_max) for every question and temperature."""
        used = self.answers_used()
        fixed = int(self.info["settings"].get("n_samples", 0)) * used.size
        total = int(used.to_numpy().sum())
        return {"adaptive": self.is_adaptive, "answers": total, "fixed_n_answers": fixed,
                "saved": 1 - total / fixed if fixed else 0.0, "mean_per_question": float(used.to_numpy().mean())
                if used.size else math.nan}

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
                ("Comparing", lambda progress: (self.overview(), self.tsu(), self.answers(),
                                                self.side_by_side(self.default_temperature)
                                                if self.default_temperature is not None else None))]

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

    # ------------------------------------------------------------------ paired evaluation (same questions)
    @property
    def same_questions(self) -> bool:
        """True when both runs ask the same questions in the same order (paired comparisons need it)."""
        a, b = (r.questions["question"].tolist() for r in self.runs.values())
        return a == b

    @property
    def common_temperatures(self) -> list[float]:
        second = self.runs["B"].temperatures
        return [t for t in self.runs["A"].temperatures if any(math.isclose(t, u) for u in second)]

    @property
    def default_temperature(self) -> float | None:
        """The temperature both runs have that is closest to 1 (None when they share none)."""
        common = self.common_temperatures
        return min(common, key=lambda t: (abs(t - 1.0), t)) if common else None

    def _evaluation_settings(self) -> tuple:
        """Run A's evaluation settings (resamples, level, seed, cap): part of the cache key."""
        a = self.runs["A"]
        return a.n_resamples, a.confidence, a.bootstrap_seed, a.max_rejection

    def _paired_rows(self, measure: str, temperature: float) -> tuple[torch.Tensor, ...]:
        if not self.same_questions:
            raise InputError("Runs A and B do not ask the same questions in the same order: a paired comparison "
                             "needs them.")
        a, b = (r.labelled(temperature) for r in self.runs.values())
        if measure not in a or measure not in b:
            raise InputError(f"{MEASURE_LABELS.get(measure, measure)} is not measured in both runs.")
        rows = a.index.intersection(b.index)
        a, b = a.loc[rows], b.loc[rows]
        both = (a[measure].notna() & b[measure].notna()).to_numpy()
        return tuple(torch.tensor(frame[column].to_numpy(dtype=float)[both])
                     for frame in (a, b) for column in (measure, "correct"))

    @result("first", "second", heavy=True, key="_evaluation_settings")
    def paired_difference(self, measure: str, temperature: float, statistic: str = "AUROC") -> dict:
        """``statistic`` of ``measure`` in run A minus run B on the same resampled questions (those
        labelled in both, with a value in both), with run A's bootstrap settings."""
        u_a, ok_a, u_b, ok_b = self._paired_rows(measure, temperature)
        return paired_statistic(statistic, u_a, ok_a, u_b, ok_b, self.runs["A"])

    @result("first", "second", heavy=True, key="_evaluation_settings")
    def side_by_side(self, temperature: float) -> pd.DataFrame:
        """Per measure in both runs: AUROC of A and B at ``temperature`` with intervals, their paired
        difference (when the runs ask the same questions) and each run's TSU over its temperature chain
        with an interval; ``answers`` rows say how many answers each run generated."""
        rows = {}
        tsu = {key: r.tsu_intervals() for key, r in self.runs.items()}
        for m in self.measure_names:
            label, row = MEASURE_LABELS[m], {}
            for key, r in self.runs.items():
                table = r.evaluation(temperature)
                if label in table.index:
                    row.update({f"{key} AUROC": table.loc[label, "AUROC"], f"{key} AUROC low": table.loc[label, "AUROC low"],
                                f"{key} AUROC high": table.loc[label, "AUROC high"]})
                if label in tsu[key].index:
                    chain = tsu[key].columns.get_level_values(0)[-1]
                    row.update({f"{key} TSU": tsu[key].loc[label, (chain, "TSU")],
                                f"{key} TSU low": tsu[key].loc[label, (chain, "low")],
                                f"{key} TSU high": tsu[key].loc[label, (chain, "high")], f"{key} chain": chain})
            if self.same_questions and all(r.has_labels for r in self.runs.values()):
                diff = self.paired_difference(m, temperature)
                row.update({"ΔAUROC (A - B)": diff["estimate"], "ΔAUROC (A - B) low": diff["low"],
                            "ΔAUROC (A - B) high": diff["high"], "p": diff["p_value"], "note": diff["note"]})
            rows[label] = row
        return pd.DataFrame.from_dict(rows, orient="index")

    @result("first", "second")
    def answers(self) -> pd.DataFrame:
        """Answers generated by each run (adaptive or not) and the fixed-N count they stand against."""
        return pd.DataFrame({key: r.answers_summary() for key, r in self.runs.items()}).T


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
