"""ConformalAnalysis: results agree with the kernels, caching keeps alpha moves cheap, exports."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from explorer.analyses.conformal import ConformalAnalysis, minimum_calibration_rows
from explorer.data.classifier_outputs import outputs_from_arrays
from explorer.errors import InputError
from explorer.kernels import conformal as cp


def synthetic_outputs(n=600, k=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    probs = torch.softmax(2 * torch.randn(n, k, generator=generator, dtype=torch.float64), 1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return outputs_from_arrays(probs.numpy(), labels.numpy(), class_names=[f"c{i}" for i in range(k)], name="synthetic")


@pytest.fixture(scope="module")
def outputs():
    return synthetic_outputs()


@pytest.mark.parametrize("alpha, rows", [(0.1, 9), (0.05, 19), (0.3, 3), (0.44, 2), (0.5, 1)])
def test_minimum_calibration_rows(alpha, rows):
    assert cp.conformal_rank(rows, alpha) <= rows
    assert rows == 1 or cp.conformal_rank(rows - 1, alpha) > rows - 1
    assert minimum_calibration_rows(alpha) == rows


@pytest.mark.parametrize("method", cp.METHODS)
@pytest.mark.parametrize("class_conditional", [False, True])
def test_summary_matches_the_kernels_on_the_same_split(outputs, method, class_conditional):
    analysis = ConformalAnalysis(outputs=outputs, method=method, class_conditional=class_conditional,
                                 alpha=0.15, seed=3)
    calibration, tuning, test = analysis.split()
    assert len(set(calibration.tolist()) | set(tuning.tolist()) | set(test.tolist())) == outputs.num_rows
    u = analysis.uniforms()
    lam, k_reg = analysis.raps_parameters()
    if method == "raps":
        assert len(tuning) > 0
        assert (lam, k_reg) == cp.tune_raps(outputs.probs[tuning], outputs.labels[tuning], 0.15, u=u[tuning])
    part = lambda rows: None if u is None else u[rows]  # noqa: E731
    qhat = cp.calibrate(outputs.probs[calibration], outputs.labels[calibration], 0.15, method,
                        class_conditional=class_conditional, u=part(calibration), lam=lam, k_reg=k_reg)
    sets = cp.prediction_sets(outputs.probs[test], qhat, method, u=part(test), lam=lam, k_reg=k_reg)
    assert torch.equal(analysis.test_sets(), sets)
    summary = analysis.summary()
    assert summary["coverage"] == pytest.approx(float(cp.covered(sets, outputs.labels[test]).double().mean()))
    assert summary["mean_size"] == pytest.approx(float(sets.sum(1).double().mean()))
    examples = analysis.examples()
    assert examples["size"].tolist() == sets.sum(1).tolist()
    assert examples["covered"].tolist() == cp.covered(sets, outputs.labels[test]).tolist()


def test_new_alpha_reuses_the_ranked_scores(outputs):
    analysis = ConformalAnalysis(outputs=outputs, method="aps")
    ranked, calibration_scores = analysis.ranked(), analysis.sorted_calibration_scores()
    sizes_before = analysis.summary()["mean_size"]
    analysis.alpha = 0.3
    assert analysis.ranked() is ranked and analysis.sorted_calibration_scores() is calibration_scores
    assert analysis.summary()["mean_size"] < sizes_before
    analysis.seed = 1  # a new split (and new U) recomputes
    assert analysis.ranked() is not ranked


def test_alpha_curve_is_monotone_and_within_beta_band(outputs):
    analysis = ConformalAnalysis(outputs=outputs, method="lac")
    curve = analysis.alpha_curve()
    assert np.all(np.diff(curve["mean_size"]) <= 1e-12) and np.all(np.diff(curve["coverage"]) <= 1e-12)
    assert np.all(curve["beta_low"] <= curve["target"] + 1e-9) and np.all(curve["beta_high"] >= curve["target"])
    row = curve.iloc[(curve["alpha"] - 0.1).abs().argmin()]
    analysis.alpha = float(row["alpha"])
    assert analysis.summary()["coverage"] == pytest.approx(row["coverage"])


def test_split_coverage_distribution_matches_the_law(outputs):
    analysis = ConformalAnalysis(outputs=outputs, method="lac", n_splits=400, alpha=0.1)
    coverages = analysis.split_coverage()
    law = analysis.coverage_law()
    assert len(coverages) == 400
    assert law["a"] == 300 + 1 - 30 and law["b"] == 30
    assert abs(coverages.mean() - law["mean"]) < 4 * coverages.std() / np.sqrt(400) + 1e-9
    inside = ((coverages >= law["test_low"]) & (coverages <= law["test_high"])).mean()
    assert 0.8 <= inside <= 0.98  # a 90% band, with Monte-Carlo slack


def test_too_few_calibration_rows_are_explained():
    small = synthetic_outputs(n=20)
    analysis = ConformalAnalysis(outputs=small, alpha=0.05, calibration_fraction=0.5)
    (note,) = analysis.warnings()
    assert "Only 10 calibration rows" in note and "at least 19" in note and "+inf" in note
    assert analysis.summary()["mean_size"] == small.num_classes and analysis.summary()["coverage"] == 1.0
    analysis.class_conditional = True
    assert "class(es) have fewer than 19 calibration rows" in analysis.warnings()[0]


def test_missing_outputs_is_an_input_error():
    with pytest.raises(InputError, match="No classifier outputs"):
        ConformalAnalysis().summary()


def test_exports_read_back(outputs):
    analysis = ConformalAnalysis(outputs=outputs, method="raps", alpha=0.2)
    sets = pd.read_csv(io.StringIO(analysis.sets_csv()), comment="#")
    assert len(sets) == analysis.summary()["n_test"]
    assert set(sets.columns) >= {"row", "true", "set", "size", "covered", "p_true", "entropy_bits"}
    assert sets["set"].str.startswith("{").all()
    metrics = analysis.metrics_csv()
    for section in ("# summary", "# alpha_curve", "# per_class", "# per_size"):
        assert section in metrics
    summary = pd.read_csv(io.StringIO(metrics.split("# alpha_curve")[0]), comment="#")
    assert summary["method"].iloc[0] == "raps" and summary["alpha"].iloc[0] == 0.2


def test_cip_estimate_and_entropy_are_reported(outputs):
    analysis = ConformalAnalysis(outputs=outputs, method="aps")
    summary = analysis.summary()
    sizes, hit = analysis.test_sizes_and_coverage()
    assert summary["cip_bits"] == pytest.approx(float(cp.cip_entropy_bits(sizes, hit, 0.1, summary["n_calibration"], 6)))
    _, _, test = analysis.split()
    assert summary["mean_entropy_bits"] == pytest.approx(float(cp.predictive_entropy_bits(outputs.probs[test]).mean()))
