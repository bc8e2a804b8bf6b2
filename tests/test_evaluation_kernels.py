"""Hand cases, scikit-learn, brute force over tie orders and properties for explorer.kernels.evaluation."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom, norm
from sklearn import metrics as skm

from explorer.kernels import evaluation as E

U4 = torch.tensor([0.1, 0.9, 0.5, 0.3])
WRONG4 = torch.tensor([0, 1, 0, 1])


def _tensors(rows):
    u = torch.tensor([float(a) for a, _ in rows], dtype=torch.float64)
    return u, torch.tensor([float(b) for _, b in rows], dtype=torch.float64)


rows_with_ties = st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=40)


# ---------------------------------------------------------------- by hand ------------------------

def test_scalar_measures_by_hand():
    assert float(E.auroc(U4, WRONG4)) == pytest.approx(0.75)   # pairs (0.9>0.1, 0.9>0.5, 0.3>0.1, 0.3<0.5)
    # kept in order q = 1, 0, 1, 0: means 1, 1/2, 2/3, 1/2; oracle 1, 1, 2/3, 1/2; random 1/2
    assert float(E.prr(U4, 1 - WRONG4)) == pytest.approx(4 / 7)
    assert float(E.prr(torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([1, 1, 0, 0]))) == pytest.approx(1.0)
    # risks 0, 1/2, 1/3, 1/2 -> AURC 1/3; oracle 0, 0, 1/3, 1/2 -> 5/24
    assert float(E.aurc(U4, WRONG4)) == pytest.approx(1 / 3)
    assert float(E.e_aurc(U4, WRONG4)) == pytest.approx(1 / 3 - 5 / 24)
    # flagged by descending u: wrong, right, wrong, right -> AP = (1/2)(1) + (1/2)(2/3)
    assert float(E.average_precision(U4, WRONG4)) == pytest.approx(5 / 6)
    assert math.isnan(E.auroc(U4, torch.zeros(4)))


def test_tied_uncertainties_are_rejected_together():
    # one tie, one right and one wrong answer: both orders average to random, so PRR = 0 (the
    # old stable argsort kept the first row first and reported a perfect 1.0)
    assert float(E.prr(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]))) == pytest.approx(0.0)
    assert float(E.prr(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0]))) == pytest.approx(0.0)
    # a tie of all rows: risk at k = 1 is the mean loss, not the first row's loss
    curve = E.risk_coverage(torch.zeros(3), torch.tensor([1.0, 0.0, 0.0]))
    assert curve.risk.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert curve.coverage.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_prr_of_sixty_tied_rows_does_not_depend_on_row_order():
    # a heavily tied measure (discrete semantic entropy over 5 answers takes few values), fed in
    # question order as the temperature page does
    g = torch.Generator().manual_seed(3)
    levels = torch.tensor([0.0, 0.5004, 0.6730, 0.9503, 1.0549, 1.3322, 1.6094], dtype=torch.float64)
    u = levels[torch.randint(0, 7, (60,), generator=g)]
    q = (torch.rand(60, generator=g) > 0.25 + 0.4 * u / 1.6094).double()
    values = {round(float(E.prr(u[p], q[p])), 12) for p in (torch.randperm(60, generator=g) for _ in range(5))}
    assert len(values) == 1
    assert values.pop() == pytest.approx(float(E.prr(u, q)))


def test_ece_and_brier_by_hand():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.8, 0.9])
    ok = torch.tensor([0, 0, 1, 0, 1, 1])
    cal = E.expected_calibration_error(p, ok, n_bins=2)
    assert cal.count.tolist() == [3, 3]
    assert cal.confidence.tolist() == pytest.approx([0.2, 0.7])
    assert cal.accuracy.tolist() == pytest.approx([1 / 3, 2 / 3])
    assert float(cal.ece) == pytest.approx(0.5 * (1 / 3 - 0.2) + 0.5 * (0.7 - 2 / 3))
    assert float(E.brier_score(p, ok)) == pytest.approx(np.mean((p.numpy() - ok.numpy()) ** 2))
    # four tied confidences cut into two bins: each bin gets the block's mean accuracy
    tied = E.expected_calibration_error(torch.full((4,), 0.5), torch.tensor([1, 0, 0, 0]), n_bins=2)
    assert tied.accuracy.tolist() == pytest.approx([0.25, 0.25])
    assert float(tied.ece) == pytest.approx(0.25)
    # more bins than answers: empty bins are NaN and do not count
    few = E.expected_calibration_error(torch.tensor([0.2, 0.9]), torch.tensor([0, 1]), n_bins=4)
    assert few.count.tolist() == [1, 0, 1, 0]
    assert float(few.ece) == pytest.approx(0.5 * 0.2 + 0.5 * 0.1)


def test_ece_bins_have_equal_mass_and_batch():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 103, generator=g, dtype=torch.float64)
    ok = (torch.rand(3, 103, generator=g) < p).double()
    cal = E.expected_calibration_error(p, ok, n_bins=10)
    assert cal.count.sum(-1).tolist() == [103, 103, 103]
    assert set(cal.count.flatten().tolist()) <= {10.0, 11.0}
    for i in range(3):
        assert float(E.expected_calibration_error(p[i], ok[i], 10).ece) == pytest.approx(float(cal.ece[i]))
        # direct: sort, cut by position, compare means
        order = torch.argsort(p[i])
        bins = torch.arange(103) * 10 // 103
        direct = sum((bins == b).sum() / 103 * abs(ok[i][order][bins == b].mean() - p[i][order][bins == b].mean())
                     for b in range(10))
        assert float(cal.ece[i]) == pytest.approx(float(direct))


# ---------------------------------------------------------------- scikit-learn -------------------

@settings(max_examples=60, deadline=None)
@given(rows_with_ties)
def test_scalar_measures_match_sklearn(rows):
    u, wrong = _tensors(rows)
    if wrong.all() or not wrong.any():
        return
    assert float(E.auroc(u, wrong)) == pytest.approx(skm.roc_auc_score(wrong.numpy(), u.numpy()), abs=1e-12)
    assert float(E.average_precision(u, wrong)) == pytest.approx(
        skm.average_precision_score(wrong.numpy(), u.numpy()), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(rows_with_ties, st.booleans())
def test_curves_match_sklearn(rows, drop):
    u, wrong = _tensors(rows)
    if wrong.all() or not wrong.any():
        return
    ours = E.roc_curve(u, wrong, drop_intermediate=drop)
    peer = skm.roc_curve(wrong.numpy(), u.numpy(), drop_intermediate=drop)
    for a, b in zip(ours, peer):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-12)
    ours = E.precision_recall_curve(u, wrong, drop_intermediate=drop)
    peer = skm.precision_recall_curve(wrong.numpy(), u.numpy(), drop_intermediate=drop)
    for a, b in zip(ours, peer):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10), st.booleans()), min_size=1, max_size=40))
def test_brier_matches_sklearn(rows):
    p = torch.tensor([a / 10 for a, _ in rows], dtype=torch.float64)
    ok = torch.tensor([float(b) for _, b in rows], dtype=torch.float64)
    assert float(E.brier_score(p, ok)) == pytest.approx(skm.brier_score_loss(ok.numpy(), p.numpy(), pos_label=1.0),
                                                        abs=1e-12)


# ---------------------------------------------------------------- definitions, brute force -------

def _rejection_auc(quality_in_keep_order: np.ndarray) -> float:
    return float(np.mean(np.cumsum(quality_in_keep_order) / np.arange(1, len(quality_in_keep_order) + 1)))


def _every_tie_order(u: np.ndarray):
    blocks = [np.flatnonzero(u == v) for v in np.unique(u)]
    for perms in itertools.product(*(itertools.permutations(b) for b in blocks)):
        yield np.concatenate(perms)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), min_size=2, max_size=7))
def test_prr_and_aurc_average_every_order_of_tied_rows(rows):
    u, q = (t.numpy() for t in _tensors(rows))
    aucs = [_rejection_auc(q[order]) for order in _every_tie_order(u)]
    risks = [_rejection_auc((3 - q)[order]) for order in _every_tie_order(u)]
    assert float(E.aurc(torch.tensor(u), torch.tensor(3 - q))) == pytest.approx(np.mean(risks), abs=1e-12)
    oracle, random = _rejection_auc(np.sort(q)[::-1]), q.mean()
    ours = float(E.prr(torch.tensor(u), torch.tensor(q)))
    if oracle == random:
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx((np.mean(aucs) - random) / (oracle - random), abs=1e-12)
        # the ratio is bounded by the oracle, the curve is the mean of the tie-averaged curves
        assert ours <= 1 + 1e-12
    curve = E.risk_coverage(torch.tensor(u), torch.tensor(q))
    per_order = [np.cumsum(q[o]) / np.arange(1, len(q) + 1) for o in _every_tie_order(u)]
    np.testing.assert_allclose(curve.risk.numpy(), np.mean(per_order, axis=0), atol=1e-12)


def _lm_polygraph_prr(u: np.ndarray, q: np.ndarray, max_rejection: float) -> float:
    """LM-Polygraph's PredictionRejectionArea(max_rejection), normalised by oracle and random."""
    def area(estimator):
        n = len(estimator)
        n_rej = int(max_rejection * n)
        cumsum = np.cumsum(q[np.argsort(estimator)])[-n_rej:]
        return np.sum((cumsum / np.arange(n - n_rej + 1, n + 1))[::-1]) / n_rej
    return (area(u) - q.mean()) / (area(-q) - q.mean())


@pytest.mark.parametrize("max_rejection", [1.0, 0.75, 0.5, 0.25])
def test_prr_with_max_rejection_matches_lm_polygraph_without_ties(max_rejection):
    g = torch.Generator().manual_seed(int(max_rejection * 100))
    for n in (8, 40, 200):
        u = torch.randn(n, generator=g, dtype=torch.float64)          # no ties: the orders agree
        q = (torch.rand(n, generator=g) < torch.sigmoid(-u)).double() * torch.rand(n, generator=g).round(decimals=1)
        expected = _lm_polygraph_prr(u.numpy(), q.numpy(), max_rejection)
        assert float(E.prr(u, q, max_rejection=max_rejection)) == pytest.approx(expected, abs=1e-12)


def test_max_rejection_rounding_keeps_every_step():
    # 0.29 * 100 = 28.999999999999996 in floating point: int() would count 28 steps
    g = torch.Generator().manual_seed(1)
    u, q = torch.randn(100, generator=g, dtype=torch.float64), (torch.rand(100, generator=g) < 0.5).double()
    kept = q[torch.argsort(u)].cumsum(0) / torch.arange(1, 101)
    area, oracle_kept = float(kept[-29:].mean()), torch.sort(q, descending=True).values.cumsum(0) / torch.arange(1, 101)
    expected = (area - float(q.mean())) / (float(oracle_kept[-29:].mean()) - float(q.mean()))
    assert float(E.prr(u, q, max_rejection=0.29)) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(rows_with_ties)
def test_e_aurc_is_aurc_minus_the_oracles(rows):
    u, loss = _tensors(rows)
    oracle = E.aurc(loss, loss)
    assert float(E.e_aurc(u, loss)) == pytest.approx(float(E.aurc(u, loss) - oracle), abs=1e-12)
    assert float(E.e_aurc(u, loss)) >= -1e-12
    assert float(E.aurc(u, loss)) == pytest.approx(float(E.risk_coverage(u, loss).risk.mean()), abs=1e-12)
    # binary loss: the oracle keeps every right answer first
    r, n = float(loss.mean()), len(rows)
    kept = torch.arange(1, n + 1, dtype=torch.float64)
    direct = ((kept - n * (1 - r)).clamp(min=0) / kept).mean()
    assert float(oracle) == pytest.approx(float(direct), abs=1e-12)


# ---------------------------------------------------------------- invariances, weights, NaN ------

@settings(max_examples=40, deadline=None)
@given(rows_with_ties, st.randoms(use_true_random=False))
def test_no_measure_depends_on_row_order(rows, rnd):
    u, wrong = _tensors(rows)
    perm = list(range(len(rows)))
    rnd.shuffle(perm)
    p = torch.tensor(perm)
    conf = u / 5
    for f, args in ((E.auroc, (u, wrong)), (E.average_precision, (u, wrong)), (E.aurc, (u, wrong)),
                    (E.e_aurc, (u, wrong)), (E.prr, (u, 1 - wrong)), (E.brier_score, (conf, 1 - wrong)),
                    (lambda *a: E.expected_calibration_error(*a, n_bins=3).ece, (conf, 1 - wrong))):
        a, b = f(*args), f(*(x[p] for x in args))
        assert (a.isnan() and b.isnan()) or float(a) == pytest.approx(float(b), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.integers(0, 3)), min_size=1, max_size=15),
       st.sampled_from([1.0, 0.5, 0.3]))
def test_weights_count_repeated_rows(rows, max_rejection):
    u = torch.tensor([float(a) for a, _, _ in rows], dtype=torch.float64)
    wrong = torch.tensor([float(b) for _, b, _ in rows], dtype=torch.float64)
    w = torch.tensor([c for _, _, c in rows])
    if w.sum() == 0:
        return
    rep = lambda x: x.repeat_interleave(w)  # noqa: E731
    for f in (E.auroc, E.average_precision, E.aurc, E.e_aurc,
              lambda a, b, c=None: E.prr(a, b, c, max_rejection=max_rejection)):
        a, b = f(u, wrong, w.double()), f(rep(u), rep(wrong))
        assert (a.isnan() and b.isnan()) or float(a) == pytest.approx(float(b), abs=1e-12)


def test_nan_rows_are_left_out():
    g = torch.Generator().manual_seed(2)
    u, wrong = torch.randn(30, generator=g, dtype=torch.float64), (torch.rand(30, generator=g) < 0.4).double()
    u_nan, wrong_nan = u.clone(), wrong.clone()
    u_nan[:4] = math.nan
    wrong_nan[4:6] = math.nan
    keep = slice(6, None)
    for f in (E.auroc, E.average_precision, E.aurc, E.e_aurc, E.prr):
        assert float(f(u_nan, wrong_nan)) == pytest.approx(float(f(u[keep], wrong[keep])), abs=1e-12)
    curve, direct = E.roc_curve(u_nan, wrong_nan), E.roc_curve(u[keep], wrong[keep])
    assert all(torch.equal(a, b) for a, b in zip(curve, direct))
    assert torch.allclose(E.risk_coverage(u_nan, wrong_nan).risk, E.risk_coverage(u[keep], wrong[keep]).risk)
    conf = torch.sigmoid(u_nan)
    assert float(E.expected_calibration_error(conf, 1 - wrong_nan, 4).ece) == pytest.approx(
        float(E.expected_calibration_error(conf[keep], 1 - wrong[keep], 4).ece))


def test_batched_measures_equal_one_at_a_time():
    g = torch.Generator().manual_seed(4)
    U = torch.randn(5, 50, generator=g, dtype=torch.float64).round(decimals=1)
    wrong = (torch.rand(50, generator=g) < 0.3).double()
    for f in (E.auroc, E.average_precision, E.aurc, E.e_aurc, E.prr):
        batched = f(U, wrong)
        assert batched.shape == (5,)
        assert torch.allclose(batched, torch.stack([f(U[i], wrong) for i in range(5)]), atol=1e-12)


# ---------------------------------------------------------------- undefined cases, bad input -----

def test_undefined_cases_are_nan_with_a_reason():
    u = torch.tensor([0.2, 0.5, 0.9])
    for labels, word in ((torch.zeros(3), "right"), (torch.ones(3), "wrong")):
        assert math.isnan(E.auroc(u, labels))
        assert f"every answer is {word}" in E.undefined_reason("auroc", u, labels)
    assert math.isnan(E.average_precision(u, torch.zeros(3)))
    assert "no answer is wrong" in E.undefined_reason("average_precision", u, torch.zeros(3))
    assert math.isnan(E.prr(u, torch.full((3,), 0.7)))
    assert "same quality" in E.undefined_reason("prr", u, torch.full((3,), 0.7))
    assert math.isnan(E.prr(u, torch.tensor([1.0, 0.0, 1.0]), max_rejection=0.5))     # floor(1.5) = 1 step
    assert "rejects no answer" in E.undefined_reason("prr", u, torch.tensor([1.0, 0.0, 1.0]), max_rejection=0.5)
    nan = torch.full((3,), math.nan)
    assert math.isnan(E.auroc(nan, torch.tensor([0, 1, 0])))
    assert "no question" in E.undefined_reason("aurc", nan, torch.tensor([0, 1, 0]))
    assert E.undefined_reason("auroc", u, torch.tensor([0, 1, 0])) is None
    assert E.undefined_reason("prr", u, torch.tensor([0.1, 0.3, 0.2])) is None
    fpr, tpr, _ = E.roc_curve(u, torch.ones(3))
    assert fpr.isnan().all() and not tpr.isnan().any()
    with pytest.raises(ValueError, match="unknown statistic"):
        E.undefined_reason("accuracy", u, torch.tensor([0, 1, 0]))


@settings(max_examples=40, deadline=None)
@given(rows_with_ties)
def test_nan_exactly_where_a_reason_is_given(rows):
    u, wrong = _tensors(rows)
    for name, target in (("auroc", wrong), ("average_precision", wrong), ("prr", 1 - wrong), ("aurc", wrong)):
        value = getattr(E, name)(u, target)
        assert bool(value.isnan()) == (E.undefined_reason(name, u, target) is not None)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="0/1"):
        E.auroc(U4, torch.tensor([0, 2, 0, 1]))
    with pytest.raises(ValueError, match="last dimension"):
        E.prr(U4, torch.ones(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        E.brier_score(torch.tensor([1.2, 0.3]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="counts"):
        E.auroc(U4, WRONG4, torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="counts"):
        E.auroc(U4, WRONG4, torch.tensor([1.0, 0.5, 1.0, 1.0]))
    with pytest.raises(ValueError, match="max_rejection"):
        E.prr(U4, WRONG4, max_rejection=0)
    with pytest.raises(ValueError, match="1-D"):
        E.roc_curve(U4.expand(2, 4), WRONG4)


# ---------------------------------------------------------------- bootstrap ----------------------

def test_evaluation_table_equals_the_single_measures():
    g = torch.Generator().manual_seed(5)
    U = torch.randn(6, 120, generator=g, dtype=torch.float64)
    U[2] = U[2].round()                                       # a heavily tied measure
    U[4, :7] = math.nan                                      # a measure missing on some questions
    ok = (torch.rand(120, generator=g) < 0.6).double()
    for cap in (1.0, 0.6):
        table = E.evaluation_table(U, ok, n_resamples=64, seed=9, max_rejection=cap)
        counts = E.bootstrap_weights(120, 64, seed=9)
        singles = {"auroc": lambda w: E.auroc(U, 1 - ok, w), "prr": lambda w: E.prr(U, ok, w, max_rejection=cap),
                   "aurc": lambda w: E.aurc(U, 1 - ok, w), "e_aurc": lambda w: E.e_aurc(U, 1 - ok, w)}
        for name, single in singles.items():
            assert torch.allclose(table[name].estimate, single(torch.ones(120, dtype=torch.float64)), atol=1e-12)
            assert torch.allclose(table[name].replicates, single(counts[:, None]), atol=1e-12, equal_nan=True)
            assert (table[name].low <= table[name].high).all()


def test_bootstrap_weights_are_seeded_resamples():
    a, b = E.bootstrap_weights(50, 30, seed=1), E.bootstrap_weights(50, 30, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, E.bootstrap_weights(50, 30, seed=2))
    assert (a.sum(1) == 50).all() and (a == a.round()).all()
    # each question is drawn Binomial(50, 1/50) times: mean 1
    assert float(E.bootstrap_weights(50, 2000, seed=3).mean()) == pytest.approx(1.0)


def test_bootstrap_intervals_cover_the_true_auroc():
    # right answers U ~ N(0, 1), wrong answers U ~ N(1, 1): true AUROC = Phi(1 / sqrt 2)
    truth = norm.cdf(1 / math.sqrt(2))
    g = torch.Generator().manual_seed(11)
    reps, covered = 200, 0
    for rep in range(reps):
        wrong = (torch.rand(150, generator=g) < 0.4).double()
        u = torch.randn(150, generator=g, dtype=torch.float64) + wrong
        ci = E.bootstrap_ci(lambda w: E.auroc(u, wrong, w), 150, n_resamples=400, seed=rep)
        covered += int(ci.low <= truth <= ci.high)
    # two-sided binomial acceptance at level 0.002 around the nominal 95 %
    assert binom.cdf(covered, reps, 0.95) > 0.001 and binom.sf(covered - 1, reps, 0.95) > 0.001, covered


def test_paired_bootstrap():
    g = torch.Generator().manual_seed(6)
    wrong = (torch.rand(80, generator=g) < 0.4).double()
    good = torch.randn(80, generator=g, dtype=torch.float64) + 2 * wrong
    poor = torch.randn(80, generator=g, dtype=torch.float64)
    a = lambda w: E.auroc(good, wrong, w)  # noqa: E731
    b = lambda w: E.auroc(poor, wrong, w)  # noqa: E731
    self_diff = E.paired_bootstrap(a, a, 80, n_resamples=200)
    assert (self_diff.replicates == 0).all() and float(self_diff.low) == 0 == float(self_diff.high)
    assert float(self_diff.p_value) == 1.0
    diff = E.paired_bootstrap(a, b, 80, n_resamples=200, seed=4)
    one, two = E.bootstrap_ci(a, 80, 200, seed=4), E.bootstrap_ci(b, 80, 200, seed=4)
    assert torch.allclose(diff.replicates, one.replicates - two.replicates, atol=1e-15)
    assert float(diff.low) > 0 and float(diff.p_value) < 0.01
    ci = E.bootstrap_ci(a, 80, 200, confidence=0.9)
    assert float(ci.low) == pytest.approx(float(torch.quantile(ci.replicates, 0.05)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(7)
    U = torch.randn(4, 300, generator=g, dtype=torch.float64).round(decimals=1)
    ok = (torch.rand(300, generator=g) < 0.5).double()
    cpu = E.evaluation_table(U, ok, n_resamples=50)
    gpu = E.evaluation_table(U.cuda(), ok.cuda(), n_resamples=50)
    for name in cpu:
        assert gpu[name].replicates.device.type == "cuda"
        assert torch.allclose(gpu[name].replicates.cpu(), cpu[name].replicates, atol=1e-12)
    cal = E.expected_calibration_error(torch.sigmoid(U).cuda(), ok.cuda())
    assert torch.allclose(cal.ece.cpu(), E.expected_calibration_error(torch.sigmoid(U), ok).ece)
