"""Conformal kernels: exact order statistics, scores, sets, metrics, and MAPIE 1.6 as the peer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from explorer.kernels import conformal as cp
from bench.peers import mapie_split_sets


def simulated(n: int, num_classes: int, seed: int, sharpness: float = 2.0):
    """Exchangeable rows: softmax of Gaussian logits, labels drawn from those probabilities."""
    generator = torch.Generator().manual_seed(seed)
    probs = torch.softmax(sharpness * torch.randn(n, num_classes, generator=generator, dtype=torch.float64), 1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return probs, labels


# ----------------------------------------------------------------------------- thresholds
@pytest.mark.parametrize("n, alpha, k", [
    (9, 0.1, 9), (9, 0.2, 8), (10, 0.1, 10), (19, 0.05, 19), (4, 0.5, 3),
    (24, 0.44, 14),   # float: 25 * 0.56 = 14.000000000000002 -> 15 (one step conservative)
    (19, 0.95, 1),    # float: 1.0000000000000009 -> 2
    (8, 0.1, 9),      # k > n: qhat = +inf
])
def test_conformal_rank_hand_cases(n, alpha, k):
    assert cp.conformal_rank(n, alpha) == k


def test_threshold_is_kth_order_statistic_by_hand():
    scores = torch.tensor([0.7, 0.1, 0.4, 0.9, 0.3, 0.2, 0.8, 0.6, 0.5])  # sorted: .1 .2 ... .9
    assert float(cp.conformal_threshold(scores, 0.2)) == pytest.approx(0.8)   # k = ceil(10 * .8) = 8
    assert float(cp.conformal_threshold(scores, 0.5)) == pytest.approx(0.5)   # k = 5
    assert math.isinf(float(cp.conformal_threshold(scores, 0.05)))            # k = 10 > 9
    assert float(cp.conformal_threshold(scores, 0.99)) == pytest.approx(0.1)  # k = 1
    sorted_scores = scores.sort().values
    assert float(cp.order_statistic(sorted_scores, 0.2)) == pytest.approx(0.8)
    assert math.isinf(float(cp.order_statistic(sorted_scores, 0.05)))


def test_threshold_with_ties_and_empty_calibration():
    scores = torch.tensor([0.5, 0.5, 0.5, 0.25, 0.25])
    assert float(cp.conformal_threshold(scores, 0.5)) == 0.5   # k = 3: third smallest is a tied 0.5
    assert float(cp.conformal_threshold(scores, 0.7)) == 0.25  # k = 2
    assert math.isinf(float(cp.conformal_threshold(torch.zeros(0), 0.1)))
    with pytest.raises(ValueError):
        cp.conformal_rank(10, 1.0)
    with pytest.raises(ValueError):
        cp.conformal_rank(10, 0.0)


@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=60), st.floats(0.001, 0.999))
@settings(max_examples=60, deadline=None, derandomize=True)
def test_threshold_property_kthvalue_equals_sorted_lookup(values, alpha):
    scores = torch.tensor(values, dtype=torch.float64)
    n, k = len(values), cp.conformal_rank(len(values), alpha)
    expected = math.inf if k > n else sorted(values)[k - 1]
    assert float(cp.conformal_threshold(scores, alpha)) == expected
    assert float(cp.order_statistic(scores.sort().values, alpha)) == expected
    # At least k of the n scores are <= qhat, i.e. the calibration set's own coverage >= k / n.
    if k <= n:
        assert int((scores <= expected).sum()) >= k


def test_class_thresholds_by_hand():
    scores = torch.tensor([0.5, 0.1, 0.3, 0.2, 0.9])
    labels = torch.tensor([0, 0, 1, 1, 1])
    qhat = cp.class_thresholds(scores, labels, 3, 0.4)
    # class 0: n=2, k=ceil(3*.6)=2 -> .5; class 1: n=3, k=ceil(4*.6)=3 -> .9; class 2: empty -> inf
    assert qhat[:2].tolist() == [0.5, pytest.approx(0.9)]
    assert math.isinf(float(qhat[2]))


# ----------------------------------------------------------------------------- scores by hand
def test_scores_by_hand():
    probs = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    assert cp.label_scores(probs, "lac").tolist()[0] == pytest.approx([0.8, 0.5, 0.7])
    assert cp.label_scores(probs, "aps").tolist()[0] == pytest.approx([1.0, 0.5, 0.8])
    u = torch.tensor([0.5], dtype=torch.float64)
    assert cp.label_scores(probs, "aps", u=u).tolist()[0] == pytest.approx([0.9, 0.25, 0.65])
    raps = cp.label_scores(probs, "raps", lam=0.1, k_reg=1)   # + 0.1 * (rank - 1)^+
    assert raps.tolist()[0] == pytest.approx([1.2, 0.5, 0.9])
    assert cp.label_scores(probs, "topk").tolist()[0] == [3.0, 1.0, 2.0]


def test_sets_by_hand():
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.7, 0.2, 0.1]], dtype=torch.float64)
    assert cp.prediction_sets(probs, 0.75, "lac").tolist() == [[False, True, True], [True, False, False]]
    assert cp.prediction_sets(probs, 0.9, "aps").tolist() == [[False, True, True], [True, True, False]]
    assert cp.prediction_sets(probs, 1.0, "topk").tolist() == [[False, True, False], [True, False, False]]
    per_class = torch.tensor([0.9, 0.4, 0.75], dtype=torch.float64)  # class-conditional thresholds
    assert cp.prediction_sets(probs, per_class, "lac").tolist() == [[True, False, True], [True, False, False]]


@pytest.mark.parametrize("method", cp.METHODS)
@pytest.mark.parametrize("randomised", [False, True])
def test_fast_path_equals_direct_sets(method, randomised):
    probs, labels = simulated(400, 12, seed=3)
    u = torch.rand(400, generator=torch.Generator().manual_seed(1), dtype=torch.float64) if randomised else None
    params = {"u": u, "lam": 0.05, "k_reg": 2}
    ranked = cp.rank_scores(probs, method, **params)
    assert torch.all(ranked.scores[:, 1:] >= ranked.scores[:, :-1])  # monotone along ranks
    for alpha in (0.02, 0.1, 0.3, 0.7):
        qhat = cp.calibrate(probs[:200], labels[:200], alpha, method, u=None if u is None else u[:200],
                            lam=0.05, k_reg=2)
        direct = cp.prediction_sets(probs, qhat, method, **params)
        sizes = cp.set_sizes_from_ranked(ranked.scores, qhat, method)
        assert torch.equal(sizes, cp.set_sizes(direct))
        assert torch.equal(cp.sets_from_ranked(ranked, sizes), direct)


@given(st.integers(0, 10_000), st.sampled_from(cp.METHODS), st.floats(0.01, 0.5), st.floats(0.01, 0.5))
@settings(max_examples=30, deadline=None, derandomize=True)
def test_sets_are_nested_in_alpha(seed, method, alpha_a, alpha_b):
    probs, labels = simulated(120, 6, seed)
    small, large = sorted((alpha_a, alpha_b))
    wide = cp.prediction_sets(probs[60:], cp.calibrate(probs[:60], labels[:60], small, method), method)
    narrow = cp.prediction_sets(probs[60:], cp.calibrate(probs[:60], labels[:60], large, method), method)
    assert torch.all(wide | ~narrow)  # narrow subset of wide


# ----------------------------------------------------------------------------- coverage guarantee
@given(st.integers(0, 1000), st.sampled_from([10, 19, 24, 49]), st.sampled_from([0.05, 0.1, 0.2, 0.44]),
       st.sampled_from(["lac", "aps"]))
@settings(max_examples=12, deadline=None, derandomize=True)
@example(seed=3, n=19, alpha=0.05, method="aps")  # tied scores
def test_mean_coverage_over_splits_is_in_the_guarantee_band(seed, n, alpha, method):
    """Exchangeable data: E[coverage] = k / (n + 1) in [1 - a, 1 - a + 1/(n+1)] for distinct scores, and at
    least k / (n + 1) with ties. Found by a fresh CI run: seed 3, n 19, alpha 0.05, APS has 3 tied scores."""
    probs, labels = simulated(n + 200, 5, seed)
    true_scores = cp.true_label_scores(cp.label_scores(probs, method), labels)
    splits = 3000
    coverage = cp.split_coverages(true_scores, n, alpha, splits, torch.Generator().manual_seed(seed),
                                  num_classes=5, method=method)
    error = 4 * float(coverage.std()) / math.sqrt(splits) + 1e-9
    mean = float(coverage.mean())
    assert 1 - alpha - error <= mean <= 1 - alpha + 1 / (n + 1) + error
    expected = min(cp.conformal_rank(n, alpha), n + 1) / (n + 1)
    if true_scores.unique().numel() == true_scores.numel():
        assert mean == pytest.approx(expected, abs=error)
    else:  # tied scores (APS sums reaching 1 exactly) can only make the sets more conservative
        assert mean >= expected - error


def test_class_conditional_covers_every_class():
    probs, labels = simulated(3000, 4, seed=5, sharpness=1.0)
    true_scores = cp.true_label_scores(cp.label_scores(probs, "lac"), labels)
    # Per-class coverage, averaged over splits, is >= 1 - alpha for every class.
    generator = torch.Generator().manual_seed(0)
    perms = [torch.randperm(3000, generator=generator) for _ in range(200)]
    per_class = torch.zeros(4, dtype=torch.float64)
    for perm in perms:
        cal, test = perm[:300], perm[300:]
        qhat = cp.class_thresholds(true_scores[cal], labels[cal], 4, 0.1)
        hit = true_scores[test] <= qhat[labels[test]]
        per_class += cp.per_class_coverage(hit, labels[test], 4)[0] / len(perms)
    assert torch.all(per_class >= 0.9 - 0.01)
    marginal = cp.split_coverages(true_scores, 300, 0.1, 50, torch.Generator().manual_seed(1), labels, 4,
                                  method="lac")
    assert float(marginal.mean()) >= 0.9 - 0.01


def test_beta_law_parameters_and_infinite_threshold():
    assert cp.coverage_beta_parameters(99, 0.1) == (90, 10)   # l = floor(100 * .1) = 10; mean 90/100
    assert cp.coverage_beta_parameters(8, 0.1) == (9, 0)      # l = 0: k > n, coverage 1
    coverage = cp.split_coverages(torch.rand(30, dtype=torch.float64), 8, 0.1, 20, method="lac")
    assert torch.all(coverage == 1.0)


# ----------------------------------------------------------------------------- metrics
def test_metrics_by_hand():
    sets = torch.tensor([[True, False, False], [True, True, False], [False, False, False], [True, True, True]])
    labels = torch.tensor([0, 2, 1, 1])
    sizes = cp.set_sizes(sets)
    hit = cp.covered(sets, labels)
    assert sizes.tolist() == [1, 2, 0, 3] and hit.tolist() == [True, False, False, True]
    assert cp.size_histogram(sizes, 3).tolist() == [1, 1, 1, 1]
    by_size, counts = cp.size_stratified_coverage(sizes, hit, 3)
    assert counts.tolist() == [1, 1, 1, 1] and by_size.tolist() == [0.0, 1.0, 0.0, 1.0]
    by_class, counts = cp.per_class_coverage(hit, labels, 3)
    assert counts.tolist() == [1, 2, 1] and by_class.tolist() == [1.0, 0.5, 0.0]
    assert float(cp.coverage_gap(by_class, 0.2)) == pytest.approx((0.2 + 0.3 + 0.8) / 3)
    nan_class = torch.tensor([1.0, math.nan])
    assert float(cp.coverage_gap(nan_class, 0.1)) == pytest.approx(0.1)


def test_entropy_and_cip_by_hand():
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    assert cp.predictive_entropy_bits(probs).tolist() == pytest.approx([1.0, 2.0])
    sizes = torch.tensor([2, 4, 1, 1])
    hit = torch.tensor([True, True, True, False])
    alpha, n, k = 0.25, 9, 4
    expected = (-(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
                + (0.75 + 0.1) * (1 + 2 + 0) / 3 + 0.25 * math.log2(3))
    assert float(cp.cip_entropy_bits(sizes, hit, alpha, n, k)) == pytest.approx(expected)


def test_raps_tuning_picks_the_smallest_mean_size():
    probs, labels = simulated(500, 10, seed=2, sharpness=1.5)
    lam, k_reg = cp.tune_raps(probs, labels, 0.1)
    ranks = cp.true_label_scores(cp.label_scores(probs, "topk"), labels)
    assert k_reg == int(cp.conformal_threshold(ranks, 0.1))
    def mean_size(value):
        qhat = cp.calibrate(probs, labels, 0.1, "raps", lam=value, k_reg=k_reg)
        return float(cp.prediction_sets(probs, qhat, "raps", lam=value, k_reg=k_reg).sum(1).double().mean())
    assert mean_size(lam) == min(mean_size(value) for value in cp.RAPS_LAMBDAS)


def test_rejects_unknown_method():
    with pytest.raises(ValueError, match="Unknown conformal method"):
        cp.label_scores(torch.ones(1, 2) / 2, "bogus")


# ----------------------------------------------------------------------------- MAPIE 1.6 as the peer
def _mapie_sets(probs, labels, alpha, score, include_last_label=True, seed=0):
    return mapie_split_sets(probs, labels, len(labels) // 2, alpha, score, include_last_label, seed)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_lac_sets_agree_with_mapie(alpha):
    probs, labels = simulated(1200, 10, seed=7)
    sets, mapie_qhat = _mapie_sets(probs.numpy(), labels.numpy(), alpha, "lac")
    qhat = cp.calibrate(probs[:600], labels[:600], alpha, "lac")
    assert float(qhat) == mapie_qhat
    assert np.array_equal(cp.prediction_sets(probs[600:], qhat, "lac").numpy(), sets)


def test_mapie_threshold_is_one_step_conservative_where_float_rounding_bites():
    """n = 24, alpha = 0.44: exact k = 14; MAPIE computes ceil(25 * 0.56) = 15 in floating point."""
    probs, labels = simulated(48, 6, seed=11)
    _, mapie_qhat = _mapie_sets(probs.numpy(), labels.numpy(), 0.44, "lac")
    scores = cp.true_label_scores(cp.label_scores(probs[:24], "lac"), labels[:24]).sort().values
    assert float(cp.calibrate(probs[:24], labels[:24], 0.44, "lac")) == float(scores[13])
    assert mapie_qhat == float(scores[14])  # the 15th smallest: one order statistic too high


def test_aps_agrees_with_mapie_once_its_conventions_are_matched():
    """MAPIE 1.6 APS calibrates the randomised score cumsum - V p_y (V from its random_state), i.e.
    ours with U = 1 - V; the same threshold results. Its test sets are NOT the randomised sets:
    include_last_label=True keeps every label whose mass above it is <= qhat (ours with U = 0,
    over-covering), False keeps labels whose cumulative mass is <= qhat (ours with U = 1) plus the
    top label when that is empty. The sizes differ from our randomised APS by the amounts printed.
    """
    probs, labels = simulated(2000, 10, seed=0)
    cal, test = slice(0, 1000), slice(1000, None)
    u_cal = torch.tensor(1 - np.random.RandomState(0).uniform(size=1000))
    qhat = cp.calibrate(probs[cal], labels[cal], 0.1, "aps", u=u_cal)
    including, mapie_qhat = _mapie_sets(probs.numpy(), labels.numpy(), 0.1, "aps", include_last_label=True)
    excluding, _ = _mapie_sets(probs.numpy(), labels.numpy(), 0.1, "aps", include_last_label=False)
    assert float(qhat) == pytest.approx(mapie_qhat, abs=1e-12)
    upper = cp.prediction_sets(probs[test], qhat, "aps", u=torch.zeros(1000, dtype=torch.float64)).numpy()
    lower = cp.prediction_sets(probs[test], qhat, "aps").numpy()
    lower[np.arange(1000), probs[test].argmax(1).numpy()] = True
    assert np.array_equal(upper, including) and np.array_equal(lower, excluding)
    ours = cp.prediction_sets(probs[test], qhat, "aps",
                              u=torch.rand(1000, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    sizes = {name: float(s.sum(1).mean()) for name, s in
             [("mapie_true", including), ("mapie_false", excluding), ("ours_randomised", ours.numpy())]}
    print("APS mean set sizes:", sizes)
    assert sizes["mapie_false"] < sizes["ours_randomised"] < sizes["mapie_true"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", cp.METHODS)
def test_same_sets_on_the_gpu(method):
    probs, labels = simulated(2000, 20, seed=4)
    u = torch.rand(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    results = []
    for device in ("cpu", "cuda"):
        p, y, uu = probs.to(device), labels.to(device), u.to(device)
        qhat = cp.calibrate(p[:1000], y[:1000], 0.1, method, u=uu[:1000], lam=0.01, k_reg=2)
        sets = cp.prediction_sets(p[1000:], qhat, method, u=uu[1000:], lam=0.01, k_reg=2)
        assert sets.device.type == device
        results.append(sets.cpu())
    assert torch.equal(results[0], results[1])
