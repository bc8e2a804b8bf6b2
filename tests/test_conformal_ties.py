"""Conformal sets at exact ties: scores that are equal in exact arithmetic but rounded differently
(probabilities like 0.05 k, sums like 0.1 + 0.2) against sets computed in exact rationals
(``fractions.Fraction``), through the kernels and through :class:`ConformalAnalysis`; and the sort-free
paths (calibration scores, prefix sets) against the sorted path, ties in probability included."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.analyses.conformal import ConformalAnalysis
from explorer.data.classifier_outputs import outputs_from_arrays
from explorer.kernels import conformal as cp


def grid_rows(n: int, num_classes: int, units: int, seed: int) -> list[list[Fraction]]:
    """Rows whose probabilities are multiples of 1/units (random compositions of ``units``)."""
    gen = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        cuts = np.sort(gen.integers(0, units + 1, num_classes - 1))
        parts = np.diff(np.concatenate([[0], cuts, [units]]))
        rows.append([Fraction(int(part), units) for part in parts])
    return rows


def exact_score(row: list[Fraction], y: int, method: str, lam: Fraction, k_reg: int) -> Fraction:
    """The definition (formulas.md section 5) in rationals; "ranked above" = the stable descending order."""
    above = [j for j in range(len(row)) if row[j] > row[y] or (row[j] == row[y] and j < y)]
    if method == "lac":
        return 1 - row[y]
    if method == "topk":
        return Fraction(len(above) + 1)
    score = sum((row[j] for j in above), Fraction(0)) + row[y]
    return score + lam * max(len(above) + 1 - k_reg, 0) if method == "raps" else score


def exact_sets(rows, labels, calibration, test, method, alpha, lam, k_reg, class_conditional):
    num_classes = len(rows[0])
    scores = {i: exact_score(rows[i], labels[i], method, lam, k_reg) for i in calibration}
    groups = [[i for i in calibration if labels[i] == c] for c in range(num_classes)] if class_conditional \
        else [list(calibration)]
    thresholds = []
    for members in groups:
        k = math.ceil((len(members) + 1) * (1 - Fraction(repr(alpha))))
        ordered = sorted(scores[i] for i in members)
        thresholds.append(ordered[k - 1] if k <= len(members) else math.inf)
    qhat = thresholds if class_conditional else thresholds * num_classes
    return [[exact_score(rows[i], y, method, lam, k_reg) <= qhat[y] for y in range(num_classes)] for i in test]


CELLS = [(method, class_conditional, units) for method in ("aps", "raps", "lac", "topk")
         for class_conditional in (False, True) for units in (20, 32)]


@pytest.mark.parametrize("method, class_conditional, units", CELLS)
def test_non_randomised_sets_equal_exact_rational_sets(method, class_conditional, units):
    """units = 20: probabilities 0.05 k, whose float sums differ from equal exact sums by an ulp (the
    old comparison dropped the label in about 1 cell of 5); units = 32: exact binary fractions."""
    rows = grid_rows(400, 5, units, seed=units + len(method))
    labels = [int(np.random.default_rng(i).choice(5, p=[float(p) for p in row])) for i, row in enumerate(rows)]
    probs = torch.tensor([[float(p) for p in row] for row in rows], dtype=torch.float64)
    y = torch.tensor(labels)
    lam, k_reg = (0.1, 1) if method == "raps" else (0.0, 0)
    calibration, test = range(0, 200), range(200, 400)
    for alpha in (0.1, 0.2, 0.35):
        expected = exact_sets(rows, labels, calibration, test, method, alpha, Fraction(repr(lam)), k_reg,
                              class_conditional)
        qhat = cp.calibrate(probs[:200], y[:200], alpha, method, class_conditional=class_conditional,
                            lam=lam, k_reg=k_reg)
        sets = cp.prediction_sets(probs[200:], qhat, method, lam=lam, k_reg=k_reg)
        assert sets.tolist() == expected, alpha


@pytest.mark.parametrize("method", ["aps", "raps"])
@pytest.mark.parametrize("class_conditional", [False, True])
def test_analysis_sets_sizes_and_coverage_equal_exact_rational_sets(method, class_conditional):
    rows = grid_rows(300, 4, 20, seed=7)
    labels = [int(np.random.default_rng(100 + i).choice(4, p=[float(p) for p in row])) for i, row in enumerate(rows)]
    probs = np.array([[float(p) for p in row] for row in rows])
    outputs = outputs_from_arrays(probs, np.array(labels), class_names=list("abcd"), name="grid")
    analysis = ConformalAnalysis(outputs=outputs, method=method, randomised=False, class_conditional=class_conditional,
                                 raps_tuning=False, raps_lambda=0.1, raps_k_reg=1, alpha=0.2, seed=2)
    calibration, _, test = analysis.split()
    expected = exact_sets(rows, labels, calibration.tolist(), test.tolist(), method, 0.2,
                          Fraction(1, 10) if method == "raps" else Fraction(0), 1 if method == "raps" else 0,
                          class_conditional)
    assert analysis.test_sets().tolist() == expected
    sizes, hit = analysis.test_sizes_and_coverage()
    assert sizes.tolist() == [sum(row) for row in expected]
    assert hit.tolist() == [row[labels[i]] for row, i in zip(expected, test.tolist())]


def test_summation_slack_is_stated_and_tight():
    assert cp.score_tolerance("lac", 1000) == cp.score_tolerance("topk", 1000) == 0.0
    assert cp.score_tolerance("aps", 1000) == pytest.approx(1002 * 2.0**-52)
    # 0.1 + 0.2 and 0.3 are equal exact sums: admitted; a score 1e-9 above is not
    def f64(value):
        return torch.tensor(value, dtype=torch.float64)
    assert cp.admitted(f64([0.1 + 0.2]), f64(0.3), "aps", 3).item()
    assert not cp.admitted(f64([0.1 + 0.2]), f64(0.3), "lac", 3).item()
    assert not cp.admitted(f64([0.3 + 1e-9]), f64(0.3), "aps", 3).item()
    assert cp.admitted(f64([5.0]), f64(math.inf), "raps", 3).item()


# ------------------------------------------------------------------------------ sort-free paths
def tied_probs(n: int, num_classes: int, seed: int, levels: int) -> torch.Tensor:
    """Rows with many exactly tied probabilities (few distinct logits)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randint(0, levels, (n, num_classes), generator=gen).double()
    return torch.softmax(logits, dim=1)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), num_classes=st.integers(2, 60), levels=st.sampled_from([2, 3, 1000]),
       method=st.sampled_from(cp.METHODS), randomised=st.booleans(), first=st.sampled_from([None, 1, 3]))
def test_sort_free_paths_equal_the_sorted_path(seed, num_classes, levels, method, randomised, first):
    probs = tied_probs(80, num_classes, seed, levels)
    labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)
    u = torch.rand(80, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) if randomised else None
    lam, k_reg = 0.05, 2
    ranked = cp.rank_scores(probs, method, u=u, lam=lam, k_reg=k_reg)
    sorted_true = cp.ranked_true_scores(ranked, labels)
    direct_true = cp.calibration_scores(probs, labels, method, u=u, lam=lam, k_reg=k_reg)
    assert torch.allclose(direct_true, sorted_true, rtol=0, atol=cp.score_tolerance(method, num_classes) * 2)
    for alpha in (0.05, 0.3, 0.8):
        qhat = cp.conformal_threshold(sorted_true, alpha)
        sizes = cp.set_sizes_from_ranked(ranked.scores, qhat, method)
        assert torch.equal(cp.prefix_set_sizes(probs, qhat, method, u=u, lam=lam, k_reg=k_reg, first=first), sizes)
        expected = cp.sets_from_ranked(ranked, sizes)
        assert torch.equal(cp.prediction_sets(probs, qhat, method, u=u, lam=lam, k_reg=k_reg), expected)
        scores = torch.empty_like(ranked.scores).scatter_(1, ranked.labels, ranked.scores)
        assert torch.equal(cp.admitted(scores, qhat, method, num_classes), expected)


def test_tied_labels_enter_the_set_in_label_order():
    probs = torch.tensor([[0.1, 0.3, 0.3, 0.3]], dtype=torch.float64)  # three-way tie, p = 0.3
    assert cp.calibration_scores(probs, torch.tensor([2]), "aps").item() == pytest.approx(0.6)
    assert cp.calibration_scores(probs, torch.tensor([3]), "topk").item() == 3
    for first in (1, 2, 4):  # the tie group straddles the first k: rows are widened, not guessed
        sizes = cp.prefix_set_sizes(probs, 0.65, "aps", first=first)
        assert sizes.tolist() == [2]
    assert cp.prediction_sets(probs, 0.65, "aps").tolist() == [[False, True, True, False]]
