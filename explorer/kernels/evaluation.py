"""Evaluating an uncertainty measure against correctness: curves, areas, calibration, bootstrap.

Pure torch, float64, results on the input's device. Convention (formulas.md section 3): higher
uncertainty = more likely wrong; a "wrong" answer is the positive class of the ROC and PR curves,
and the most uncertain answers are rejected first.

- ROC / PR curves, AUROC, average precision: scikit-learn's conventions (``roc_curve``,
  ``precision_recall_curve``, ``roc_auc_score``, ``average_precision_score`` with
  ``y_true = is_wrong``, ``y_score = uncertainty``): one point per distinct uncertainty, so tied
  rows enter a curve together. AUROC = P(U_wrong > U_right) + P(tie) / 2.
- Rejection (risk-coverage) curve: keeping the k least uncertain answers, k = 1..n, the mean of a
  value (a loss for the risk, a quality for PRR) over the answers kept. Tied uncertainties are
  rejected together: inside a block of tied rows the curve is the average over every order of
  those rows (the kept total grows linearly through the block), so nothing depends on the order
  of the rows. At the end of each block this is the plain thresholded curve.
- AURC (Geifman et al. 2019, "Bias-reduced uncertainty estimation for deep neural classifiers"):
  (1/n) sum_k risk(k); E-AURC = AURC - AURC of the oracle that rejects the largest losses first.
- PRR (Malinin et al. 2017; LM-Polygraph's convention): (AUC_unc - AUC_random) /
  (AUC_oracle - AUC_random), with AUC = mean over the kept counts k of the mean quality of the k
  kept answers; AUC_random = the mean quality; the oracle rejects the lowest qualities first. With
  ``max_rejection`` < 1 only the first floor(max_rejection * n) rejection steps count (kept counts
  n - n_rej + 1 .. n), as LM-Polygraph's ``PredictionRejectionArea(max_rejection)``; we floor with
  a 1e-9 slack so that round-off in max_rejection * n never drops a step (LM-Polygraph's int()
  does), and our AUC_unc averages over tie orders where LM-Polygraph's argsort does not.
- ECE with equal-mass bins: the answers sorted by confidence are cut into ``n_bins`` runs of equal
  size (sizes differ by at most one); ECE = sum_b (n_b / n) |accuracy_b - confidence_b|. Tied
  confidences that straddle a cut contribute their tie block's mean accuracy to each side (the
  average over every order of the tied rows). Brier score = mean (confidence - correct)^2.
- Bootstrap (Efron): resample the questions with replacement, n of n, seeded; percentile
  intervals. A resample is a vector of counts; :func:`auroc`, :func:`average_precision`,
  :func:`aurc`, :func:`e_aurc` and :func:`prr` take such counts as ``weights``, so one sort per
  measure serves all resamples. A paired bootstrap evaluates two statistics on the same resampled
  questions.

Rows whose uncertainty or label is NaN are left out (weight 0). A statistic that is undefined
(AUROC with only right or only wrong answers, PRR with all qualities equal, ...) is NaN;
:func:`undefined_reason` says why in words.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

#: slack added to max_rejection * n before flooring (round-off in the product must not drop a step)
REJECTION_SLACK = 1e-9


# ---------------------------------------------------------------- inputs ----------------------

def _float64(x) -> Tensor:
    x = torch.as_tensor(x)
    return x.to(torch.float64)


def _check_binary(labels: Tensor, name: str) -> None:
    known = labels[~labels.isnan()]
    if not ((known == 0) | (known == 1)).all():
        raise ValueError(f"{name} must hold 0/1 (or booleans); got other values")


def _prepare(uncertainty, target, weights=None) -> tuple[Tensor, Tensor, Tensor]:
    """float64 uncertainty [..., n], target and weights broadcast to it; NaN rows get weight 0."""
    u = _float64(uncertainty)
    t = _float64(target).to(u.device)
    if u.dim() == 0 or t.dim() == 0 or u.shape[-1] != t.shape[-1]:
        raise ValueError(f"uncertainty and target need the same last dimension, got {tuple(u.shape)} and "
                         f"{tuple(t.shape)}")
    w = torch.ones_like(u[..., :1]) if weights is None else _float64(weights).to(u.device)
    if weights is not None and ((w < 0) | (w != w.round())).any():
        raise ValueError("weights must be whole non-negative counts (how often each row is drawn)")
    valid = ~(u.isnan() | t.isnan())
    w = torch.where(valid, w, 0.0)
    return u, torch.where(t.isnan(), 0.0, t), w


def _sorted_with_ends(values: Tensor) -> tuple[Tensor, Tensor]:
    """(order, is_end): ascending sort (NaN last, each NaN alone) and True at the last position of
    each block of exactly tied values."""
    ordered, order = torch.sort(values, dim=-1)
    differs = ordered[..., 1:] != ordered[..., :-1]
    return order, torch.cat([differs, torch.ones_like(differs[..., :1])], -1)


class _Ranked(NamedTuple):
    """Rows sorted by ascending value with their tie blocks (positions inclusive)."""
    order: Tensor    # [..., n] row index at each sorted position
    start: Tensor    # [..., n] first sorted position of the block holding this position
    end: Tensor      # [..., n] last sorted position of that block


def _rank(values: Tensor) -> _Ranked:
    order, is_end = _sorted_with_ends(values)
    n = values.shape[-1]
    pos = torch.arange(n, device=values.device).expand_as(order)
    is_start = torch.cat([torch.ones_like(is_end[..., :1]), is_end[..., :-1]], -1)
    start = torch.where(is_start, pos, 0).cummax(-1).values
    end = torch.where(is_end, pos, n).flip(-1).cummin(-1).values.flip(-1)
    return _Ranked(order, start, end)


def _in_order(x: Tensor, order: Tensor) -> Tensor:
    """x [..., n] gathered along the last dimension by ``order``, both broadcast first."""
    shape = torch.broadcast_shapes(x.shape, order.shape)
    return x.expand(shape).gather(-1, order.expand(shape))


def _cumsum0(x: Tensor) -> Tensor:
    """[..., n + 1] running totals with a leading 0: entry i = sum of the first i values."""
    return torch.nn.functional.pad(x.cumsum(-1), (1, 0))


def _at(totals: Tensor, index: Tensor) -> Tensor:
    """totals [..., n + 1] read at index [..., n] (broadcast)."""
    shape = torch.broadcast_shapes(totals.shape[:-1], index.shape[:-1])
    return totals.expand(*shape, totals.shape[-1]).gather(-1, index.expand(*shape, index.shape[-1]))


class _Blocks(NamedTuple):
    """Rows sorted by ascending value, grouped in blocks of exactly tied values."""
    order: Tensor         # [..., n] row index at each sorted position
    ends: Tensor | None   # [..., G + 1]: 0, then the number of rows up to the end of each block (padded
    #                       with n: empty blocks); None when no two values tie (every row a block)


def _blocks(values: Tensor) -> _Blocks:
    order, is_end = _sorted_with_ends(values)
    if bool(is_end.all()):
        return _Blocks(order, None)
    n = values.shape[-1]
    block = is_end.cumsum(-1) - 1                                  # block of each position
    size = int(block[..., -1].max()) + 1
    slot = torch.where(is_end, block, size)                        # non-ends go to a spare slot
    through = torch.arange(1, n + 1, device=values.device).expand_as(order)
    ends = torch.full((*order.shape[:-1], size + 1), n, dtype=torch.long, device=values.device)
    ends = ends.scatter(-1, slot, through)[..., :size]             # padded with n: empty blocks
    return _Blocks(order, torch.nn.functional.pad(ends, (1, 0)))


def _block_totals(x_sorted: Tensor, blocks: _Blocks) -> Tensor:
    """[..., G + 1] running totals of x at the block ends (0 first)."""
    totals = _cumsum0(x_sorted)
    return totals if blocks.ends is None else _at(totals, blocks.ends)


# ---------------------------------------------------------------- cores on block totals -------
# K: running weight, R / P / C: running weight of right answers / wrong answers / values, all at
# the block ends ([..., G + 1], from :func:`_block_totals`).

def _auroc_from_totals(K: Tensor, R: Tensor) -> Tensor:
    """sum over blocks of wrong_g (right below g + half the right in g) / (n_wrong n_right)."""
    wrong_in = K.diff() - R.diff()
    twice_below = R[..., :-1] + R[..., 1:]
    n_right = R[..., -1]
    return (wrong_in * twice_below).sum(-1) / (2 * (K[..., -1] - n_right) * n_right)


def _average_precision_from_totals(K: Tensor, P: Tensor) -> Tensor:
    """sum over distinct thresholds t (descending) of (R_t - R_t-1) P_t, with P_t, R_t counting the
    rows whose uncertainty is >= t (a tie block enters at once)."""
    positives = P[..., -1:]
    above_wrong = positives - P[..., :-1]
    above = (K[..., -1:] - K[..., :-1]).clamp(min=1e-300)      # 0 only where above_wrong is 0
    return (P.diff() * above_wrong / above).sum(-1) / positives.squeeze(-1)


@functools.lru_cache(maxsize=8)
def _harmonic_table(size: int, device: torch.device) -> Tensor:
    """H(k) for k = 0..size - 1: digamma(k + 1) + Euler's gamma."""
    return torch.special.digamma(torch.arange(1, size + 1, dtype=torch.float64, device=device)) + 0.5772156649015329


def _harmonic(counts: Tensor) -> Tensor:
    """H(k) = sum_{j=1}^{k} 1/j for whole counts k >= 0 (a table lookup)."""
    k = counts.long()
    largest = int(k.max()) if k.numel() else 0
    return _harmonic_table(1 << largest.bit_length(), counts.device)[k]


def _kept_steps(total: Tensor, max_rejection: float) -> Tensor:
    """Number of rejection steps counted: floor(max_rejection * n), at least 1."""
    if max_rejection >= 1:
        return total
    return torch.floor(max_rejection * total + REJECTION_SLACK).clamp(min=1)


def _rejection_area_from_totals(K: Tensor, C: Tensor, max_rejection: float = 1.0) -> Tensor:
    """(1 / n_rej) sum_{k = n - n_rej + 1}^{n} C(k) / k, C(k) = total value of the k least uncertain
    rows averaged over tie orders.

    Inside a block g spanning kept counts (K_g-1, K_g] with value total S_g and mean m_g = S_g / W_g,
    C(k) = C_g-1 + (k - K_g-1) m_g, so its part of the sum is
    (C_g-1 - K_g-1 m_g) (H(b) - H(a)) + m_g (b - a) over the counted kept range (a, b].
    """
    k0, k1, c0 = K[..., :-1], K[..., 1:], C[..., :-1]
    mean = C.diff() / (k1 - k0).clamp(min=1e-300)              # an empty block has total 0
    n = K[..., -1:]
    if max_rejection >= 1:
        h = _harmonic(K)
        return ((c0 - k0 * mean) * h.diff()).sum(-1) / n.squeeze(-1) + C[..., -1] / n.squeeze(-1)
    steps = _kept_steps(n, max_rejection)
    a = torch.maximum(k0, n - steps)
    b = torch.maximum(k1, a)
    part = (c0 - k0 * mean) * (_harmonic(b) - _harmonic(a)) + mean * (b - a)
    return part.sum(-1) / steps.squeeze(-1)


def _sorted_totals(u: Tensor, w: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Running weight and running weighted values at the tie-block ends of ascending u."""
    blocks = _blocks(u)
    w_sorted = _in_order(w, blocks.order)
    return _block_totals(w_sorted, blocks), _block_totals(w_sorted * _in_order(values, blocks.order), blocks)


def _all_equal(values: Tensor, w: Tensor) -> Tensor:
    """True where every row of positive weight holds the same value (or no row has weight)."""
    inf = torch.tensor(math.inf, dtype=values.dtype, device=values.device)
    present = w > 0
    return torch.where(present, values, -inf).amax(-1) <= torch.where(present, values, inf).amin(-1)


def _prr_from_areas(ours: Tensor, oracle: Tensor, random: Tensor, flat: Tensor) -> Tensor:
    return torch.where(flat, math.nan, (ours - random) / (oracle - random))


# ---------------------------------------------------------------- scalar measures -------------

def auroc(uncertainty: Tensor, is_wrong: Tensor, weights: Tensor | None = None) -> Tensor:
    """AUROC of uncertainty for predicting a wrong answer: P(U_wrong > U_right) + P(tie) / 2
    (Mann-Whitney; equals scikit-learn's ``roc_auc_score(is_wrong, uncertainty)``).

    ``uncertainty`` [..., n]; ``is_wrong`` (0/1) and ``weights`` (non-negative counts, e.g. a
    bootstrap resample) broadcast against it. Returns [...]; NaN when all answers are right or all
    wrong.
    """
    u, wrong, w = _prepare(uncertainty, is_wrong, weights)
    _check_binary(wrong, "is_wrong")
    return _auroc_from_totals(*_sorted_totals(u, w, 1 - wrong))


def average_precision(uncertainty: Tensor, is_wrong: Tensor, weights: Tensor | None = None) -> Tensor:
    """PR-AUC with wrong answers as positives: AP = sum_t (R_t - R_t-1) P_t over the distinct
    uncertainties t, descending (scikit-learn's ``average_precision_score(is_wrong, uncertainty)``,
    no interpolation). Shapes as :func:`auroc`; NaN when no answer is wrong."""
    u, wrong, w = _prepare(uncertainty, is_wrong, weights)
    _check_binary(wrong, "is_wrong")
    return _average_precision_from_totals(*_sorted_totals(u, w, wrong))


def aurc(uncertainty: Tensor, loss: Tensor, weights: Tensor | None = None) -> Tensor:
    """Area under the risk-coverage curve: (1/n) sum_{k=1}^{n} mean loss of the k least uncertain
    answers, ties averaged over their orders (the mean of :func:`risk_coverage`'s risk).

    ``loss``: 1 - correct, or any per-answer loss. Shapes as :func:`auroc`. Lower is better.
    """
    u, risk, w = _prepare(uncertainty, loss, weights)
    return _rejection_area_from_totals(*_sorted_totals(u, w, risk))


def e_aurc(uncertainty: Tensor, loss: Tensor, weights: Tensor | None = None) -> Tensor:
    """Excess AURC: AURC - AURC of the oracle (the answers rejected by descending loss). >= 0."""
    u, risk, w = _prepare(uncertainty, loss, weights)
    oracle = torch.where(u.isnan(), math.nan, risk)
    return aurc(u, risk, w) - aurc(oracle, risk, w)


def prr(uncertainty: Tensor, quality: Tensor, weights: Tensor | None = None,
        max_rejection: float = 1.0) -> Tensor:
    """Prediction rejection ratio (AUC_unc - AUC_random) / (AUC_oracle - AUC_random).

    Rejection curves: mean quality (1 = right, 0 = wrong, or a graded score; higher = better) of
    the answers kept when the most uncertain are rejected first, averaged over the kept counts
    (all of them, or the first floor(max_rejection * n) rejection steps). Tied uncertainties are
    rejected together (averaged over every order of the tied rows). Shapes as :func:`auroc`. NaN
    when all qualities are equal (or max_rejection leaves one step: nothing can beat random).
    """
    if not 0 < max_rejection <= 1:
        raise ValueError(f"max_rejection must be in (0, 1], got {max_rejection}")
    u, q, w = _prepare(uncertainty, quality, weights)
    K, C = _sorted_totals(u, w, q)
    K_best, C_best = _sorted_totals(torch.where(u.isnan(), math.nan, -q), w, q)
    random = C[..., -1] / K[..., -1]
    flat = _all_equal(q, w) | (_kept_steps(K[..., -1], max_rejection) < 2)
    return _prr_from_areas(_rejection_area_from_totals(K, C, max_rejection),
                           _rejection_area_from_totals(K_best, C_best, max_rejection), random, flat)


def brier_score(confidence: Tensor, correct: Tensor) -> Tensor:
    """mean (confidence - correct)^2 over the answers, ``[..., n] -> [...]`` (scikit-learn's
    ``brier_score_loss(correct, confidence)``). ``confidence``: the probability that the answer is
    right (P(True), the MSP answer's probability), in [0, 1]."""
    p, y, w = _prepare(confidence, correct, None)
    _check_probability(p)
    _check_binary(y, "correct")
    return (w * torch.where(w > 0, p - y, 0.0) ** 2).sum(-1) / w.sum(-1)


def _check_probability(p: Tensor) -> None:
    known = p[~p.isnan()]
    if ((known < 0) | (known > 1)).any():
        raise ValueError("confidence must lie in [0, 1] (a probability that the answer is right)")


# ---------------------------------------------------------------- curves ----------------------

class RocCurve(NamedTuple):
    fpr: Tensor         # false positive rate: share of right answers with uncertainty >= threshold
    tpr: Tensor         # true positive rate: share of wrong answers with uncertainty >= threshold
    thresholds: Tensor  # decreasing; the first is +inf (nothing flagged)


class PrecisionRecallCurve(NamedTuple):
    precision: Tensor   # share of wrong answers among those with uncertainty >= threshold; last 1
    recall: Tensor      # share of the wrong answers flagged; decreasing, last 0
    thresholds: Tensor  # increasing, one fewer than precision / recall


class RiskCoverage(NamedTuple):
    coverage: Tensor    # [..., n] k / n, k = 1..n answers kept
    risk: Tensor        # [..., n] mean value (loss or quality) of the k kept, ties averaged
    thresholds: Tensor  # [..., n] largest uncertainty kept


def _rows_1d(uncertainty, is_wrong) -> tuple[Tensor, Tensor]:
    u, wrong, w = _prepare(uncertainty, is_wrong)
    if u.dim() != 1:
        raise ValueError(f"curves take one measure at a time: a 1-D tensor, got shape {tuple(u.shape)}")
    _check_binary(wrong, "is_wrong")
    keep = w > 0
    return u[keep], wrong[keep]


def _confusion_at_thresholds(u: Tensor, wrong: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(fps, tps, thresholds) at each distinct uncertainty, descending (scikit-learn's order)."""
    score, order = torch.sort(u, descending=True)
    last = torch.nonzero(score[1:] != score[:-1]).flatten()
    idx = torch.cat([last, torch.tensor([u.numel() - 1], device=u.device)])
    tps = wrong[order].cumsum(0)[idx]
    return 1 + idx.to(torch.float64) - tps, tps, score[idx]


def _with_ends(inner: Tensor) -> Tensor:
    """Indices of the points to keep: the first, the last, and those flagged in between."""
    edge = torch.ones(1, dtype=torch.bool, device=inner.device)
    return torch.nonzero(torch.cat([edge, inner, edge])).flatten()


def roc_curve(uncertainty: Tensor, is_wrong: Tensor, drop_intermediate: bool = True) -> RocCurve:
    """ROC curve of uncertainty for flagging wrong answers, as scikit-learn's
    ``roc_curve(is_wrong, uncertainty)`` (one point per distinct uncertainty, a first point (0, 0)
    at threshold +inf, collinear points dropped with ``drop_intermediate``). 1-D input; fpr (tpr)
    is NaN when no answer is right (wrong)."""
    u, wrong = _rows_1d(uncertainty, is_wrong)
    if u.numel() == 0:
        nan = torch.full((1,), math.nan, dtype=torch.float64, device=u.device)
        return RocCurve(nan, nan.clone(), torch.full_like(nan, math.inf))
    fps, tps, thresholds = _confusion_at_thresholds(u, wrong)
    if drop_intermediate and fps.numel() > 2:
        keep = _with_ends((fps.diff(2) != 0) | (tps.diff(2) != 0))     # corners of the curve
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    zero = torch.zeros(1, dtype=torch.float64, device=u.device)
    fps, tps = torch.cat([zero, fps]), torch.cat([zero, tps])
    thresholds = torch.cat([zero + math.inf, thresholds])
    return RocCurve(fps / fps[-1] if fps[-1] > 0 else torch.full_like(fps, math.nan),
                    tps / tps[-1] if tps[-1] > 0 else torch.full_like(tps, math.nan), thresholds)


def precision_recall_curve(uncertainty: Tensor, is_wrong: Tensor,
                           drop_intermediate: bool = False) -> PrecisionRecallCurve:
    """Precision-recall curve with wrong answers as positives, as scikit-learn's
    ``precision_recall_curve(is_wrong, uncertainty)``: recall decreasing to a last point
    (recall 0, precision 1). Differs where no answer is wrong: recall is NaN here (scikit-learn
    sets it to 1 with a warning). 1-D input."""
    u, wrong = _rows_1d(uncertainty, is_wrong)
    if u.numel() == 0:
        one = torch.ones(1, dtype=torch.float64, device=u.device)
        return PrecisionRecallCurve(one, one * 0, one[:0])
    fps, tps, thresholds = _confusion_at_thresholds(u, wrong)
    if drop_intermediate and fps.numel() > 2:
        rises = tps.diff() != 0                          # first and last point of each recall
        keep = _with_ends(rises[:-1] | rises[1:])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    flagged = tps + fps
    precision = torch.where(flagged > 0, tps / flagged.clamp(min=1), 0.0)
    recall = tps / tps[-1] if tps[-1] > 0 else torch.full_like(tps, math.nan)
    one = torch.ones(1, dtype=torch.float64, device=u.device)
    return PrecisionRecallCurve(torch.cat([precision.flip(0), one]), torch.cat([recall.flip(0), one * 0]),
                                thresholds.flip(0))


def risk_coverage(uncertainty: Tensor, values: Tensor) -> RiskCoverage:
    """Rejection curve: keeping the k least uncertain answers (k = 1..n), the mean of ``values`` over
    them. ``values`` = a loss (1 - correct) gives the risk-coverage curve of AURC; a quality gives
    the curve behind PRR. Tied uncertainties are rejected together: inside a tie block the curve is
    the average over every order of the tied rows; at each block's end it is the thresholded curve
    (keep uncertainty <= threshold). Batched ``[..., n]``; rows with NaN are left out, so use 1-D
    input when some are NaN."""
    u, v, w = _prepare(uncertainty, values)
    if not bool((w > 0).all()):
        if w.dim() != 1:
            raise ValueError("risk_coverage leaves out NaN rows only for 1-D input")
        u, v = u[w > 0], v[w > 0]
    ranked = _rank(u)
    v_sorted = _in_order(v, ranked.order)
    n = u.shape[-1]
    kept = torch.arange(1, n + 1, dtype=torch.float64, device=u.device)
    totals = _cumsum0(v_sorted)
    start, after = ranked.start.to(torch.float64), (ranked.end + 1).to(torch.float64)
    before, block = _at(totals, ranked.start), _at(totals, ranked.end + 1) - _at(totals, ranked.start)
    expected = before + (kept - start) * block / (after - start)
    return RiskCoverage((kept / n).expand_as(expected), expected / kept, torch.gather(u, -1, ranked.order))


# ---------------------------------------------------------------- calibration -----------------

class Calibration(NamedTuple):
    ece: Tensor         # [...]
    count: Tensor       # [..., n_bins] answers per bin (equal mass: sizes differ by at most one)
    confidence: Tensor  # [..., n_bins] mean confidence per bin (NaN for an empty bin)
    accuracy: Tensor    # [..., n_bins] share of right answers per bin, tie-averaged (NaN if empty)


def expected_calibration_error(confidence: Tensor, correct: Tensor, n_bins: int = 10) -> Calibration:
    """ECE = sum_b (n_b / n) |accuracy_b - confidence_b| over ``n_bins`` equal-mass bins of the
    answers sorted by confidence (position i of m goes to bin floor(i n_bins / m)); tied
    confidences split by a cut give each side their block's mean accuracy. Returns the bins for a
    reliability diagram. ``confidence`` in [0, 1], ``[..., n]``; NaN rows are left out."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p, y, w = _prepare(confidence, correct)
    _check_probability(p)
    _check_binary(y, "correct")
    p = torch.where(w > 0, p, math.nan)                  # left-out rows sort last
    ranked = _rank(p)
    valid = _in_order(w, ranked.order) > 0
    right = _cumsum0(torch.where(valid, _in_order(y, ranked.order), 0.0))
    block_right = _at(right, ranked.end + 1) - _at(right, ranked.start)
    block_mean = block_right / (ranked.end - ranked.start + 1)
    m = valid.sum(-1, keepdim=True)
    pos = torch.arange(p.shape[-1], device=p.device)
    bins = torch.where(valid, pos * n_bins // m.clamp(min=1), 0)
    zeros = torch.zeros(*p.shape[:-1], n_bins, dtype=torch.float64, device=p.device)
    count = zeros.scatter_add(-1, bins, valid.to(torch.float64))
    conf = zeros.scatter_add(-1, bins, torch.where(valid, torch.gather(p, -1, ranked.order), 0.0))
    acc = zeros.scatter_add(-1, bins, torch.where(valid, block_mean, 0.0))
    conf, acc = conf / count, acc / count
    gap = torch.where(count > 0, count * (acc - conf).abs(), 0.0).sum(-1) / m.squeeze(-1)
    return Calibration(gap, count, conf, acc)


# ---------------------------------------------------------------- bootstrap -------------------

class BootstrapCI(NamedTuple):
    estimate: Tensor    # statistic on the data as given
    low: Tensor         # percentile interval, (1 - confidence) / 2 quantile of the replicates
    high: Tensor        # (1 + confidence) / 2 quantile
    replicates: Tensor  # [n_resamples, ...]; NaN where a resample leaves the statistic undefined


class PairedBootstrap(NamedTuple):
    estimate: Tensor    # statistic_a - statistic_b on the data
    low: Tensor
    high: Tensor
    replicates: Tensor  # differences on the same resampled questions
    p_value: Tensor     # two-sided: min(1, 2 min(share of replicates <= 0, share >= 0))


def bootstrap_weights(n_items: int, n_resamples: int, seed: int = 0, device=None) -> Tensor:
    """[n_resamples, n_items] float64 counts: resample r draws n_items questions with replacement.

    Drawn by a seeded CPU generator, so the resamples are the same on every device.
    """
    if n_items < 1 or n_resamples < 1:
        raise ValueError(f"need n_items >= 1 and n_resamples >= 1, got {n_items} and {n_resamples}")
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(n_items, (n_resamples, n_items), generator=g)
    counts = torch.zeros(n_resamples, n_items, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(n_resamples, n_items, dtype=torch.float64))
    return counts.to(device) if device is not None else counts


#: resamples per chunk are sized so that one chunk's [r, ..., n] arrays stay in the CPU cache
CHUNK_ELEMENTS = 1 << 18


def _replicates(statistic: Callable[[Tensor], Tensor], n_items: int, n_resamples: int, seed: int,
                chunk_size: int | None, device, rows: int = 16) -> tuple[Tensor, Tensor]:
    chunk_size = chunk_size or max(1, CHUNK_ELEMENTS // (rows * n_items))
    estimate = statistic(torch.ones(1, n_items, dtype=torch.float64, device=device))[0]
    counts = bootstrap_weights(n_items, n_resamples, seed, device)
    replicates = torch.cat([statistic(chunk) for chunk in counts.split(chunk_size)])
    return estimate, replicates


def _percentiles(replicates: Tensor, confidence: float) -> tuple[Tensor, Tensor]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2
    q = torch.tensor([tail, 1 - tail], dtype=replicates.dtype, device=replicates.device)
    low, high = torch.nanquantile(replicates, q, dim=0)
    return low, high


def bootstrap_ci(statistic: Callable[[Tensor], Tensor], n_items: int, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0, chunk_size: int | None = None,
                 device=None) -> BootstrapCI:
    """Percentile bootstrap over questions for any weighted statistic.

    ``statistic(weights)`` takes counts ``[r, n_items]`` (r resamples) and returns ``[r, ...]``: e.g.
    ``lambda w: auroc(U, wrong, w[:, None])`` for U ``[measures, n]`` gives one interval per
    measure, all measures on the same resampled questions; for TSU,
    ``lambda w: 100 * (w * rising).sum(-1) / w.sum(-1)`` with ``rising`` the 0/1 per-question
    indicator of a strictly rising chain. Resamples are processed ``chunk_size``
    at a time; those where the statistic is NaN (e.g. a resample with no wrong answer) are left
    out of the quantiles.
    """
    estimate, replicates = _replicates(statistic, n_items, n_resamples, seed, chunk_size, device)
    low, high = _percentiles(replicates, confidence)
    return BootstrapCI(estimate, low, high, replicates)


def paired_bootstrap(statistic_a: Callable[[Tensor], Tensor], statistic_b: Callable[[Tensor], Tensor],
                     n_items: int, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                     chunk_size: int | None = None, device=None) -> PairedBootstrap:
    """Bootstrap of statistic_a - statistic_b with both evaluated on the same resampled questions
    (two measures, or two runs whose rows are the same questions in the same order)."""
    ci = bootstrap_ci(lambda w: statistic_a(w) - statistic_b(w), n_items, n_resamples, confidence, seed,
                      chunk_size, device)
    defined = ~ci.replicates.isnan()
    n = defined.sum(0).clamp(min=1)
    below = ((ci.replicates <= 0) & defined).sum(0) / n
    above = ((ci.replicates >= 0) & defined).sum(0) / n
    p_value = torch.where(defined.any(0), (2 * torch.minimum(below, above)).clamp(max=1), math.nan)
    return PairedBootstrap(ci.estimate, ci.low, ci.high, ci.replicates, p_value.to(torch.float64))


class _TablePlan(NamedTuple):
    blocks: _Blocks            # per measure, by ascending uncertainty
    valid: Tensor | None       # [M, n] 1.0 where the measure has a value (sorted), None when all do
    correct: Tensor            # [M, n] correctness in each measure's order
    best: _Blocks              # the oracle: by descending correctness
    best_valid: Tensor | None  # [M, n] in the oracle's order, None when all valid
    best_correct: Tensor       # [1, n]


def _plan(u: Tensor, correct: Tensor) -> _TablePlan:
    valid = (~(u.isnan() | correct.isnan())).to(torch.float64)
    ok = torch.where(correct.isnan(), 0.0, correct).unsqueeze(0)
    blocks, best = _blocks(u), _blocks(-ok)
    if bool(valid.all()):
        return _TablePlan(blocks, None, _in_order(ok, blocks.order), best, None, _in_order(ok, best.order))
    return _TablePlan(blocks, _in_order(valid, blocks.order), _in_order(ok, blocks.order), best,
                      _in_order(valid, best.order), _in_order(ok, best.order))


def _table_statistics(plan: _TablePlan, counts: Tensor, max_rejection: float) -> Tensor:
    """[r, 4, M]: AUROC, PRR, AURC, E-AURC for counts [r, n]."""
    w, w_best = counts[:, plan.blocks.order], counts[:, plan.best.order]
    if plan.valid is not None:
        w, w_best = w * plan.valid, w_best * plan.best_valid
    K, R = _block_totals(w, plan.blocks), _block_totals(w * plan.correct, plan.blocks)
    K_best, R_best = _block_totals(w_best, plan.best), _block_totals(w_best * plan.best_correct, plan.best)
    area = _rejection_area_from_totals(K, R)
    oracle = _rejection_area_from_totals(K_best, R_best)
    capped, capped_oracle = area, oracle
    if max_rejection < 1:
        capped = _rejection_area_from_totals(K, R, max_rejection)
        capped_oracle = _rejection_area_from_totals(K_best, R_best, max_rejection)
    total, right = K[..., -1], R[..., -1]
    flat = (R_best[..., -1] == 0) | (R_best[..., -1] == K_best[..., -1]) | (_kept_steps(total, max_rejection) < 2)
    ratio = _prr_from_areas(capped, capped_oracle, right / total, flat)
    # loss = 1 - correct: AURC = 1 - area of the correctness (C_loss(k) = k - C_correct(k))
    return torch.stack([_auroc_from_totals(K, R), ratio, 1 - area, oracle - area], 1)


TABLE_STATISTICS = ("auroc", "prr", "aurc", "e_aurc")


def evaluation_table(uncertainty: Tensor, correct: Tensor, n_resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0, max_rejection: float = 1.0,
                     chunk_size: int | None = None) -> dict[str, BootstrapCI]:
    """AUROC, PRR, AURC and E-AURC of M measures with bootstrap intervals, in one pass.

    ``uncertainty`` [M, n] (a NaN leaves that question out for that measure), ``correct`` [n] 0/1
    (loss = 1 - correct, quality = correct). Every measure is scored on the same resampled
    questions, so intervals of differences can be read from the replicates. Each measure is
    sorted once; a resample only gathers its counts. Values equal :func:`auroc`, :func:`prr`,
    :func:`aurc` and :func:`e_aurc` with the same weights.
    """
    if not 0 < max_rejection <= 1:
        raise ValueError(f"max_rejection must be in (0, 1], got {max_rejection}")
    u = _float64(uncertainty)
    ok = _float64(correct).to(u.device)
    if u.dim() != 2 or ok.shape != u.shape[-1:]:
        raise ValueError(f"need uncertainty [measures, n] and correct [n], got {tuple(u.shape)} and {tuple(ok.shape)}")
    _check_binary(ok, "correct")
    plan = _plan(u, ok)
    estimate, replicates = _replicates(lambda w: _table_statistics(plan, w, max_rejection), u.shape[-1],
                                       n_resamples, seed, chunk_size, u.device, rows=u.shape[0])
    low, high = _percentiles(replicates, confidence)
    return {name: BootstrapCI(estimate[i], low[i], high[i], replicates[:, i])
            for i, name in enumerate(TABLE_STATISTICS)}


# ---------------------------------------------------------------- undefined cases -------------

def undefined_reason(statistic: str, uncertainty: Tensor, target: Tensor, max_rejection: float = 1.0) -> str | None:
    """Why ``statistic`` (a function name of this module) is NaN for one measure, in words for the
    page; None when it is defined. ``target`` is what that function takes (is_wrong, quality, loss
    or correct)."""
    u, t, w = _prepare(uncertainty, target)
    if w.dim() != 1:
        raise ValueError(f"undefined_reason takes one measure: 1-D tensors, got shape {tuple(w.shape)}")
    present = w > 0
    n = int(present.sum())
    if n == 0:
        return "no question has both an uncertainty value and a label"
    t = t[present]
    if statistic in ("auroc", "roc_curve"):
        wrong = int((t == 1).sum())
        if wrong in (0, n):
            every = "wrong" if wrong == n else "right"
            return (f"every answer is {every} ({n} questions): AUROC compares right with wrong answers "
                    "and needs both")
    elif statistic in ("average_precision", "precision_recall_curve"):
        if not (t == 1).any():
            return f"no answer is wrong ({n} questions): precision-recall needs wrong answers to find"
    elif statistic == "prr":
        if bool((t == t[0]).all()):
            return (f"every answer has the same quality ({float(t[0]):g}): no rejection order can beat a "
                    "random one")
        if float(_kept_steps(torch.tensor(float(n)), max_rejection)) < 2:
            return f"max_rejection {max_rejection:g} rejects no answer among {n}"
    elif statistic not in ("aurc", "e_aurc", "risk_coverage", "expected_calibration_error", "brier_score"):
        raise ValueError(f"unknown statistic {statistic!r}")
    return None
