"""One split-conformal study of a classifier's outputs: settings, sets, coverage diagnostics.

:class:`ConformalAnalysis` holds the outputs (probabilities + labels) and the user's settings.
Derived results are computed on first use and cached under the settings they depend on:

- per data set and score (method, randomisation, RAPS parameters): every label's score in rank
  order (:func:`explorer.kernels.conformal.rank_scores`: one sort + cumulative sum per row);
- per split (fraction, seed): the sorted calibration scores;
- per alpha: an order-statistic lookup and a recount of the test sets (milliseconds).
"""

from __future__ import annotations

import io
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import param
import torch
from scipy import stats

from explorer.analyses.base import Analysis, result
from explorer.data.classifier_outputs import ClassifierOutputs
from explorer.errors import InputError
from explorer.kernels import conformal as cp
from explorer.progress import Progress

METHOD_NAMES = {"LAC (1 - p of the true label)": "lac", "APS (adaptive sets)": "aps",
                "RAPS (regularised APS)": "raps", "Top-K (rank of the true label)": "topk"}
ALPHA_GRID = np.round(np.arange(0.01, 0.505, 0.01), 3)
BAND = (0.05, 0.95)


def minimum_calibration_rows(alpha: float) -> int:
    """The smallest n with k = ceil((n + 1)(1 - alpha)) <= n, i.e. n >= 1/alpha - 1 (a finite threshold)."""
    exact = 1 / Fraction(repr(float(alpha))) - 1
    return max(1, math.ceil(exact))


class ConformalAnalysis(Analysis):
    """Split-conformal prediction sets over stored classifier outputs, with coverage diagnostics."""

    outputs = param.ClassSelector(class_=ClassifierOutputs, default=None, allow_None=True,
                                  doc="Probabilities and true labels of every row.")
    method = param.Selector(objects=METHOD_NAMES, default="lac", doc="Conformity score.")
    randomised = param.Boolean(default=True, doc="APS/RAPS: randomised score (U ~ Uniform) for exact coverage.")
    alpha = param.Number(default=0.1, bounds=(0.005, 0.5), step=0.005, doc="Miscoverage level: target coverage 1 - alpha.")
    calibration_fraction = param.Number(default=0.5, bounds=(0.1, 0.9), step=0.05,
                                        doc="Share of the rows used to calibrate; the rest are tested.")
    seed = param.Integer(default=0, bounds=(0, None), doc="Seed of the calibration/test split and of U.")
    class_conditional = param.Boolean(default=False, doc="One threshold per class (Mondrian).")
    raps_tuning = param.Boolean(default=True, doc="RAPS: tune lambda and k_reg on 20% of the calibration rows.")
    raps_lambda = param.Number(default=0.01, bounds=(0, 1), step=0.001, doc="RAPS penalty weight (no tuning).")
    raps_k_reg = param.Integer(default=1, bounds=(0, None), doc="RAPS rank without penalty (no tuning).")
    n_splits = param.Integer(default=200, bounds=(10, 2000), doc="Random splits for the coverage distribution.")

    TUNING_FRACTION = 0.2

    # ------------------------------------------------------------------------- data and split
    @property
    def data(self) -> ClassifierOutputs:
        if self.outputs is None:
            raise InputError("No classifier outputs loaded.")
        return self.outputs

    @property
    def uses_tuning(self) -> bool:
        return self.method == "raps" and self.raps_tuning

    def not_computed_message(self, name: str) -> str:
        return "Computing the sets…"

    def compute_steps(self):
        return [("Calibration scores", self.sorted_calibration_scores), ("Test sets", self.test_sets),
                ("Entropy of the test rows", self.test_entropy), ("Coverage over alpha", self.alpha_curve),
                ("Coverage over random splits", self.split_coverage), ("Example rows", self.examples),
                ("Summary", self.summary), ("Tables", lambda progress: (self.size_table(), self.class_table(),
                                                                        self.coverage_density()))]

    @result("outputs", "calibration_fraction", "seed", "method", "raps_tuning")
    def split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row indices (calibration, RAPS tuning, test), seeded; tuning rows come out of calibration."""
        total = self.data.num_rows
        if total < 2:
            raise InputError("Need at least 2 rows to split into calibration and test sets.")
        n_calibration = min(max(int(round(self.calibration_fraction * total)), 1), total - 1)
        order = torch.randperm(total, generator=torch.Generator().manual_seed(self.seed))
        calibration, test = order[:n_calibration], order[n_calibration:]
        n_tuning = int(round(self.TUNING_FRACTION * n_calibration)) if self.uses_tuning else 0
        if self.uses_tuning and not 1 <= n_tuning < n_calibration:
            raise InputError(f"RAPS tuning needs more calibration rows (have {n_calibration}); turn tuning off.")
        return calibration[n_tuning:], calibration[:n_tuning], test

    @result("outputs", "seed", "method", "randomised")
    def uniforms(self) -> torch.Tensor | None:
        """One U ~ Uniform(0, 1) per row for randomised APS/RAPS (seeded), else None."""
        if not (self.randomised and self.method in ("aps", "raps")):
            return None
        return torch.rand(self.data.num_rows, generator=torch.Generator().manual_seed(10_000 + self.seed),
                          dtype=torch.float64)

    def _raps_key(self) -> tuple:
        """What RAPS's parameters depend on besides the split: alpha when tuned, the user's values when not."""
        if self.method != "raps":
            return ()
        return ("tuned", self.alpha) if self.raps_tuning else ("fixed", self.raps_lambda, self.raps_k_reg)

    @result("split", "uniforms", "method", "raps_tuning", heavy=True, key="_raps_key")
    def raps_parameters(self) -> tuple[float, int]:
        """(lambda, k_reg): tuned on the held-out calibration rows (paper) or the user's values."""
        if self.method != "raps":
            return 0.0, 0
        if not self.raps_tuning:
            return float(self.raps_lambda), int(self.raps_k_reg)
        _, tuning, _ = self.split()
        u = self.uniforms()
        return cp.tune_raps(self.data.probs[tuning], self.data.labels[tuning], self.alpha,
                            u=None if u is None else u[tuning])

    # ------------------------------------------------------------------------- scores (once per data set)
    @result("outputs", "method", "uniforms", "raps_parameters", heavy=True)
    def ranked(self) -> cp.RankedScores:
        """Every row's label scores in rank order (sorted once per data set and score)."""
        lam, k_reg = self.raps_parameters()
        return cp.rank_scores(self.data.probs, self.method, u=self.uniforms(), lam=lam, k_reg=k_reg)

    @result("ranked", heavy=True)
    def true_scores(self) -> torch.Tensor:
        """s(x_i, y_i) for every row."""
        return cp.ranked_true_scores(self.ranked(), self.data.labels)

    @result("true_scores", "split", heavy=True)
    def sorted_calibration_scores(self) -> torch.Tensor:
        calibration, _, _ = self.split()
        return self.true_scores()[calibration].sort().values

    # ------------------------------------------------------------------------- per alpha
    @result("sorted_calibration_scores", "class_conditional", "alpha")
    def threshold(self) -> torch.Tensor:
        """qhat (0-d), or one per class when class-conditional."""
        return self._threshold_at(self.alpha)

    def _threshold_at(self, alpha: float) -> torch.Tensor:
        if self.class_conditional:
            calibration, _, _ = self.split()
            return cp.class_thresholds(self.true_scores()[calibration], self.data.labels[calibration],
                                       self.data.num_classes, alpha)
        return cp.order_statistic(self.sorted_calibration_scores(), alpha)

    @result("threshold")
    def test_sizes_and_coverage(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Set size and whether the true label is in the set, for every test row."""
        return self._sizes_at(self.threshold())

    def _sizes_at(self, qhat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Set sizes and coverage of the test rows at threshold(s) ``qhat`` (the alpha curve reads a grid).
        One threshold per class when ``qhat`` has one (not ``self.class_conditional``, which a user may
        flip while a job computes)."""
        _, _, test = self.split()
        ranked_test = self.ranked().scores[test]
        true = self.true_scores()[test]
        method, k = self.method, self.data.num_classes
        if qhat.dim() > 0:
            labels_in_rank_order = self.ranked().labels[test]
            sizes = cp.admitted(ranked_test, qhat[labels_in_rank_order], method, k).sum(dim=1)
            return sizes, cp.admitted(true, qhat[self.data.labels[test]], method, k)
        return cp.set_sizes_from_ranked(ranked_test, qhat, method), cp.admitted(true, qhat, method, k)

    @result("threshold", heavy=True)
    def test_sets(self) -> torch.Tensor:
        """The prediction sets of the test rows at the current alpha: bool ``[n_test, K]``."""
        _, _, test = self.split()
        ranked = self.ranked()
        qhat = self.threshold()
        if self.class_conditional:
            scores = torch.empty_like(ranked.scores[test]).scatter_(1, ranked.labels[test], ranked.scores[test])
            return cp.admitted(scores, qhat, self.method, self.data.num_classes)
        sizes, _ = self.test_sizes_and_coverage()
        return cp.sets_from_ranked(cp.RankedScores(ranked.scores[test], ranked.labels[test]), sizes)

    # ------------------------------------------------------------------------- summaries
    @result("test_sizes_and_coverage", "test_entropy", "raps_parameters")
    def summary(self) -> dict:
        """The headline numbers at the current settings."""
        calibration, tuning, test = self.split()
        sizes, hit = self.test_sizes_and_coverage()
        k = self.data.num_classes
        class_cov, _ = cp.per_class_coverage(hit, self.data.labels[test], k)
        qhat = self.threshold()
        lam, k_reg = self.raps_parameters()
        return {
            "coverage": float(hit.double().mean()), "target": 1 - self.alpha,
            "upper_bound": 1 - self.alpha + 1 / (len(calibration) + 1),
            "mean_size": float(sizes.double().mean()), "empty_fraction": float((sizes == 0).double().mean()),
            "singleton_fraction": float((sizes == 1).double().mean()),
            "threshold": float(qhat) if qhat.dim() == 0 else float("nan"),
            "infinite_thresholds": int(torch.isinf(qhat).sum()),
            "rank_k": cp.conformal_rank(len(calibration), self.alpha),
            "n_calibration": len(calibration), "n_tuning": len(tuning), "n_test": len(test),
            "coverage_gap": float(cp.coverage_gap(class_cov, self.alpha)),
            "cip_bits": self.cip_bits(sizes, hit), "mean_entropy_bits": float(self.test_entropy().mean()),
            "raps_lambda": lam, "raps_k_reg": k_reg, "accuracy": self.data.accuracy,
        }

    @result("threshold")
    def warnings(self) -> list[str]:
        """Plain-language cautions about the current settings (too few calibration rows, ...)."""
        calibration, _, _ = self.split()
        notes = []
        need = minimum_calibration_rows(self.alpha)
        if not self.class_conditional and len(calibration) < need:
            notes.append(f"Only {len(calibration)} calibration rows: alpha = {self.alpha:g} needs at least {need} "
                         f"(k = ceil((n+1)(1-alpha)) = {cp.conformal_rank(len(calibration), self.alpha)} > n), so the "
                         "threshold is +inf and every set holds all classes. Raise alpha or the calibration fraction.")
        if self.class_conditional:
            qhat = self.threshold()
            small = [self.data.class_names[c] for c in torch.nonzero(torch.isinf(qhat)).flatten().tolist()]
            if small:
                notes.append(f"{len(small)} class(es) have fewer than {need} calibration rows (need 1/alpha - 1 = "
                             f"{need}): their threshold is +inf and they are in every set: {', '.join(small[:10])}.")
        return notes

    @result("test_sizes_and_coverage")
    def size_table(self) -> pd.DataFrame:
        """Rows per set size 0..K and the coverage among them (size-stratified coverage)."""
        sizes, hit = self.test_sizes_and_coverage()
        k = self.data.num_classes
        coverage, counts = cp.size_stratified_coverage(sizes, hit, k)
        return pd.DataFrame({"size": np.arange(k + 1), "rows": counts.numpy(), "coverage": coverage.numpy()})

    @result("test_sizes_and_coverage")
    def class_table(self) -> pd.DataFrame:
        """Test rows and coverage per true class (with its threshold when class-conditional)."""
        _, _, test = self.split()
        _, hit = self.test_sizes_and_coverage()
        coverage, counts = cp.per_class_coverage(hit, self.data.labels[test], self.data.num_classes)
        return pd.DataFrame({"class": list(self.data.class_names), "rows": counts.numpy(), "coverage": coverage.numpy()})

    @result("sorted_calibration_scores", "class_conditional", heavy=True)
    def alpha_curve(self, progress: Progress | None = None) -> pd.DataFrame:
        """Coverage, mean set size and C-IP estimate over a grid of alpha on the current split."""
        calibration, _, _ = self.split()
        rows = []
        for alpha in ALPHA_GRID:
            sizes, hit = self._sizes_at(self._threshold_at(float(alpha)))
            a, b = cp.coverage_beta_parameters(len(calibration), float(alpha))
            low, high = (1.0, 1.0) if b == 0 else stats.beta.ppf(BAND, a, b)
            rows.append({"alpha": float(alpha), "target": 1 - alpha, "coverage": float(hit.double().mean()),
                         "mean_size": float(sizes.double().mean()), "beta_low": low, "beta_high": high,
                         "cip_bits": self.cip_bits(sizes, hit, float(alpha))})
        return pd.DataFrame(rows)

    @result("true_scores", "split", "alpha", "n_splits", "class_conditional", heavy=True)
    def split_coverage(self, progress: Progress | None = None) -> np.ndarray:
        """Test coverage over ``n_splits`` seeded random splits of the same size (scores fixed)."""
        calibration, tuning, _ = self.split()
        labels = self.data.labels if self.class_conditional else None
        rows = torch.ones(self.data.num_rows, dtype=torch.bool)
        rows[tuning] = False  # tuning rows are never calibration or test rows
        scores = self.true_scores()[rows]
        return cp.split_coverages(scores, len(calibration), self.alpha, self.n_splits,
                                  torch.Generator().manual_seed(self.seed), None if labels is None else labels[rows],
                                  self.data.num_classes, method=self.method).numpy()

    @result("split", "alpha")
    def coverage_law(self) -> dict:
        """The Beta(n+1-l, l) law of coverage over calibration draws and its finite-test (beta-binomial) band."""
        calibration, _, test = self.split()
        a, b = cp.coverage_beta_parameters(len(calibration), self.alpha)
        if b == 0:
            return {"a": a, "b": b, "mean": 1.0, "low": 1.0, "high": 1.0, "test_low": 1.0, "test_high": 1.0}
        m = len(test)
        test_low, test_high = stats.betabinom.ppf(BAND, m, a, b) / m
        low, high = stats.beta.ppf(BAND, a, b)
        return {"a": a, "b": b, "mean": a / (a + b), "low": low, "high": high, "test_low": test_low,
                "test_high": test_high}

    @result("split_coverage", "coverage_law")
    def coverage_density(self) -> dict[str, np.ndarray]:
        """The split coverages as a density histogram (``edges``, ``density``) and the Beta law's density
        on the same range (``grid``, ``pdf``; empty when coverage is 1 on every draw)."""
        coverages, law = self.split_coverage(), self.coverage_law()
        low, high = min(coverages.min(), law["test_low"]), max(coverages.max(), law["test_high"])
        edges = np.linspace(low - 0.005, high + 0.005, 31)
        density, _ = np.histogram(coverages, edges, density=True)
        grid = np.linspace(edges[0], edges[-1], 200) if law["b"] > 0 else np.array([])
        pdf = stats.beta.pdf(grid, law["a"], law["b"]) if law["b"] > 0 else np.array([])
        return {"edges": edges, "density": density, "grid": grid, "pdf": pdf}

    # ------------------------------------------------------------------------- entropy link
    @result("outputs", "split", heavy=True)
    def test_entropy(self) -> torch.Tensor:
        """Predictive entropy (bits) of every test row."""
        _, _, test = self.split()
        return cp.predictive_entropy_bits(self.data.probs[test])

    def cip_bits(self, sizes: torch.Tensor, hit: torch.Tensor, alpha: float | None = None) -> float:
        calibration, _, _ = self.split()
        return float(cp.cip_entropy_bits(sizes, hit, self.alpha if alpha is None else alpha, len(calibration),
                                         self.data.num_classes))

    # ------------------------------------------------------------------------- rows and export
    @result("test_sets", "test_entropy", heavy=True)
    def examples(self, progress: Progress | None = None) -> pd.DataFrame:
        """One line per test row: true label, its set, size, covered, top probability, entropy."""
        _, _, test = self.split()
        sets = self.test_sets()
        names = np.array(self.data.class_names)
        probs = self.data.probs[test]
        labels = self.data.labels[test]
        top = probs.max(dim=1)
        return pd.DataFrame({
            "row": test.numpy(), "true": names[labels.numpy()],
            "set": ["{" + ", ".join(names[row.numpy()]) + "}" for row in sets],
            "size": sets.sum(1).numpy(), "covered": cp.covered(sets, labels).numpy(),
            "predicted": names[top.indices.numpy()], "p_top": top.values.numpy(),
            "p_true": probs.gather(1, labels.unsqueeze(1)).squeeze(1).numpy(),
            "entropy_bits": self.test_entropy().numpy(),
        })

    def example_labels(self, row: int) -> pd.DataFrame:
        """Every class of one test row: its probability, whether it is in the row's set, whether it is
        the true label (for the example browser)."""
        _, _, test = self.split()
        position = torch.nonzero(test == int(row)).flatten()
        if position.numel() == 0:
            raise InputError(f"Row {row} is not a test row at these settings.")
        in_set = self.test_sets()[int(position[0])].numpy()
        true = np.arange(self.data.num_classes) == int(self.data.labels[int(row)])
        return pd.DataFrame({"label": list(self.data.class_names), "probability": self.data.probs[int(row)].numpy(),
                             "in_set": in_set, "true": true})

    def sets_csv(self) -> str:
        """The test rows' sets as CSV, with the settings in a comment header."""
        buffer = io.StringIO()
        buffer.write(f"# {self.data.name}; method={self.method}; alpha={self.alpha}; "
                     f"class_conditional={self.class_conditional}; seed={self.seed}\n")
        self.examples().to_csv(buffer, index=False)
        return buffer.getvalue()

    def metrics_csv(self) -> str:
        """The headline metrics, the alpha curve and the per-class / per-size tables as one CSV."""
        summary = pd.DataFrame([{"dataset": self.data.name, "method": self.method, "alpha": self.alpha,
                                 "class_conditional": self.class_conditional, "seed": self.seed, **self.summary()}])
        parts = [("summary", summary), ("alpha_curve", self.alpha_curve()), ("per_class", self.class_table()),
                 ("per_size", self.size_table())]
        return "\n".join(f"# {name}\n{table.to_csv(index=False)}" for name, table in parts)

    # ------------------------------------------------------------------------- report
    report_title = "Conformal sets"

    def report_sections(self, examples: int = 100) -> list:
        """The page as data for :mod:`explorer.analyses.report`: the data, cards, warnings, coverage over
        splits and over alpha, set sizes, per-class coverage, C-IP, and the first ``examples`` test rows."""
        from explorer.analyses import report as r

        s, data = self.summary(), self.data
        method = next(label for label, key in METHOD_NAMES.items() if key == self.method)
        threshold = "per class" if self.class_conditional else s["threshold"]
        cards = [("coverage", f"{s['coverage']:.1%}", f"target ≥ {s['target']:.1%}"),
                 ("mean set size", s["mean_size"], f"{s['singleton_fraction']:.0%} singletons, "
                                                   f"{s['empty_fraction']:.0%} empty"),
                 ("threshold qhat", threshold, f"k = {s['rank_k']} of n = {s['n_calibration']}"),
                 ("rows", f"{s['n_calibration']} / {s['n_test']}", "calibration / test"),
                 ("coverage gap", s["coverage_gap"], "mean |cov_c − (1−α)| over classes"),
                 ("C-IP estimate", s["cip_bits"], f"bits; model entropy {s['mean_entropy_bits']:.2f} bits")]
        if self.method == "raps":
            cards.append(("RAPS", f"λ = {s['raps_lambda']:g}", f"k_reg = {s['raps_k_reg']}"))
        parts = [r.Facts(f"Data: {data.name}", {"description": data.description, "rows": data.num_rows,
                                                "classes": data.num_classes, "accuracy": f"{data.accuracy:.1%}",
                                                "score": method, "alpha": self.alpha}),
                 r.Cards(cards), *[r.Note(text, warning=True) for text in self.warnings()]]
        density, law, curve = self.coverage_density(), self.coverage_law(), self.alpha_curve()
        edges = density["edges"]
        split_marks = [r.Bars((edges[:-1] + edges[1:]) / 2, density["density"], "splits", width=float(edges[1] - edges[0])),
                       r.Rule(s["target"]), r.Rule(s["upper_bound"], colour=r.AMBER, dash="dotted")]
        if len(density["grid"]):
            split_marks.append(r.Line(density["grid"], density["pdf"], f"Beta({law['a']}, {law['b']})", r.INK))
        sizes, classes = self.size_table(), self.class_table()
        parts += [r.Heading("Coverage"),
                  r.Plot(f"Coverage over {self.n_splits} random splits (red: 1 − α, amber: upper bound)",
                         "test coverage", "density", split_marks),
                  r.Plot("Empirical coverage vs 1 − α on this split", "1 − alpha", "coverage",
                         [r.Band(curve["target"], curve["beta_low"], curve["beta_high"], label="Beta 90% band"),
                          r.Line([0.5, 1.0], [0.5, 1.0], "", r.GREY, 1, "dashed"),
                          r.Line(curve["target"], curve["coverage"], "empirical (test rows)"),
                          r.Points([s["target"]], [s["coverage"]], colour=r.RED, size=10)]),
                  r.Plot("Per-class coverage (red: 1 − α)", "class", "coverage",
                         [r.Bars([str(c) for c in classes["class"]], classes["coverage"]), r.Rule(1 - self.alpha, "width")]),
                  r.Heading("Set sizes"),
                  r.Plot("Mean set size vs alpha", "alpha", "mean set size",
                         [r.Line(curve["alpha"], curve["mean_size"]),
                          r.Points([self.alpha], [s["mean_size"]], colour=r.RED, size=10)]),
                  r.Plot("Set-size histogram (test rows)", "set size", "rows", [r.Bars(sizes["size"], sizes["rows"])]),
                  r.Plot("Size-stratified coverage (red: 1 − α)", "set size", "coverage",
                         [r.Bars(sizes["size"], sizes["coverage"].fillna(0), colour=r.AMBER),
                          r.Rule(1 - self.alpha, "width")]),
                  r.Heading("Set size and entropy (Conformal Information Pursuit)"),
                  r.Plot("C-IP estimate of H(Y | X) vs alpha (amber: model entropy)", "alpha", "bits",
                         [r.Line(curve["alpha"], curve["cip_bits"], "C-IP estimate"),
                          r.Rule(s["mean_entropy_bits"], "width", r.AMBER),
                          r.Points([self.alpha], [s["cip_bits"]], colour=r.RED, size=10)]),
                  r.Table("Per-class coverage", classes.round(4)), r.Table("Per set size", sizes.round(4)),
                  r.Table(f"First {examples} test rows", self.examples().head(examples).round(4))]
        return parts
