"""Split-conformal prediction sets for classifiers: scores, exact thresholds, sets and metrics.

All functions are pure torch, batched over rows, and return tensors on the input's device.
Definitions follow ``shared/reference/formulas.md`` section 5 (split conformal; calibration
scores s_1..s_n, level alpha):

- threshold: qhat = the k-th smallest calibration score, k = ceil((n + 1)(1 - alpha)), and
  qhat = +inf when k > n (Vovk et al. 2005; Angelopoulos & Bates, "A Gentle Introduction to
  Conformal Prediction", 2021). Computed as an order statistic, never with a generic quantile.
- LAC (Sadinle, Lei & Wasserman 2019): s(x, y) = 1 - p_y.
- APS (Romano, Sesia & Candes 2020): labels sorted by descending p; s(x, y) = sum of p over the
  labels ranked above y + U p_y (U ~ Uniform(0, 1) when randomised, U = 1 otherwise).
- RAPS (Angelopoulos et al. 2021): APS + lambda (rank(y) - k_reg)^+.
- Top-K: s(x, y) = rank of y (1 = most probable).
- Every set is C(x) = {y : s(x, y) <= qhat}; class-conditional (Mondrian) sets use one qhat per
  class, computed from that class's calibration scores.

Rounding ties: APS/RAPS scores are float sums over many labels, computed in different orders for
different rows; :func:`admitted`, the one comparison behind every set and coverage, therefore counts a
score within the summation's error bound of qhat as equal to it (see there). Scores are float64.

Ties in probability: "ranked above" is the order of a stable descending sort (equal probabilities
in label order), in every path.

Speed: every score above is non-decreasing along the labels sorted by descending probability, so a
set is a prefix of that order. :func:`calibration_scores` needs no sort (masked sums over the labels
ranked above y); :func:`prediction_sets` finds each prefix among the row's top labels
(:func:`prefix_set_sizes`: ``topk``, widened only for the rows whose set reaches its end). For a page
that moves alpha, :func:`rank_scores` sorts each row and takes the cumulative sums once per data set;
a new alpha is then an order-statistic lookup (:func:`order_statistic`) plus a recount
(:func:`set_sizes_from_ranked`, a ``searchsorted`` per row).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import torch
from torch import Tensor

METHODS = ("lac", "aps", "raps", "topk")
RAPS_LAMBDAS = (0.001, 0.01, 0.1, 0.2, 0.5)


# ----------------------------------------------------------------------------- thresholds
def _check_alpha(alpha: float) -> Fraction:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}.")
    return Fraction(repr(alpha))


def conformal_rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)), computed exactly in rationals from alpha's decimal form.

    Floating point gets this wrong for ordinary levels: (24 + 1) * (1 - 0.44) evaluates to
    14.000000000000002, whose ceiling is 15, one order statistic too conservative (MAPIE 1.6 and
    most recipes compute it that way). ``k > n`` means qhat = +inf.
    """
    exact = (n + 1) * (1 - _check_alpha(alpha))
    return math.ceil(exact)


def order_statistic(sorted_scores: Tensor, alpha: float) -> Tensor:
    """qhat from calibration scores already sorted ascending along the last dim (``[..., n]``).

    Returns the k-th smallest score (k = :func:`conformal_rank`), or +inf when k > n.
    """
    n = sorted_scores.shape[-1]
    k = conformal_rank(n, alpha)
    if k > n:
        return torch.full(sorted_scores.shape[:-1], math.inf, dtype=sorted_scores.dtype,
                          device=sorted_scores.device)
    return sorted_scores[..., k - 1]


def conformal_threshold(scores: Tensor, alpha: float) -> Tensor:
    """qhat from unsorted calibration scores ``[..., n]``: the k-th smallest (``kthvalue``) or +inf."""
    n = scores.shape[-1]
    k = conformal_rank(n, alpha)
    if n == 0 or k > n:
        return torch.full(scores.shape[:-1], math.inf, dtype=scores.dtype, device=scores.device)
    return scores.kthvalue(k, dim=-1).values


def class_thresholds(scores: Tensor, labels: Tensor, num_classes: int, alpha: float) -> Tensor:
    """One qhat per class (Mondrian / class-conditional): ``Tensor[num_classes]``.

    Class c uses only the calibration rows labelled c: k_c = ceil((n_c + 1)(1 - alpha)) and
    qhat_c = +inf when k_c > n_c (including classes with no calibration rows).
    """
    order = scores.argsort(stable=True)
    grouped = order[labels[order].argsort(stable=True)]  # rows grouped by class, scores ascending
    sorted_scores = scores[grouped]
    counts = torch.bincount(labels, minlength=num_classes)
    starts = counts.cumsum(0) - counts
    ranks = [conformal_rank(n_c, alpha) for n_c in counts.tolist()]
    k = torch.tensor(ranks, device=scores.device)
    finite = k <= counts
    index = (starts + k - 1).clamp(0, max(len(scores) - 1, 0))
    picked = sorted_scores[index] if len(scores) else torch.zeros(num_classes, dtype=scores.dtype,
                                                                  device=scores.device)
    return torch.where(finite, picked, torch.full_like(picked, math.inf))


# ----------------------------------------------------------------------------- the set rule
def score_tolerance(method: str, num_classes: int) -> float:
    """Relative slack of :func:`admitted`: ``(K + 2) eps`` (float64) for APS/RAPS, 0 for LAC and Top-K.

    An APS/RAPS score adds up to K non-negative float64 terms (and U p_y, lam (rank - k_reg)^+): in any
    order of summation it is within ``(K + 1) u max(1, |s|)`` of its exact value (u = eps / 2), so a test
    score and a calibration score that are equal in exact arithmetic differ by at most
    ``(K + 2) eps max(1, |qhat|)`` (2.2e-13 for K = 1,000). LAC (1 - p) and Top-K (ranks) give equal
    floats for equal inputs."""
    _check_method(method)
    return 0.0 if method in ("lac", "topk") else (num_classes + 2) * torch.finfo(torch.float64).eps


def set_bound(threshold: Tensor | float, method: str, num_classes: int, like: Tensor) -> Tensor:
    """``qhat + score_tolerance * max(1, |qhat|)`` (0-d or per class), float64 on ``like``'s device."""
    qhat = torch.as_tensor(threshold, dtype=torch.float64, device=like.device)
    tolerance = score_tolerance(method, num_classes)
    return qhat + tolerance * qhat.abs().clamp_min(1) if tolerance else qhat


def admitted(scores: Tensor, threshold: Tensor | float, method: str, num_classes: int) -> Tensor:
    """The set rule ``s(x, y) <= qhat``: the one comparison every set, set size and coverage uses.

    For APS/RAPS a score within :func:`score_tolerance` of qhat counts as equal to it, so a label whose
    score equals qhat in exact arithmetic is in the set however the two sums were rounded; a label
    whose exact score exceeds qhat by less than that slack (relative 2.2e-13 at K = 1,000) is admitted
    too. ``threshold`` is 0-d, or per class (then ``scores`` are ``[n, K]`` in label order)."""
    return scores <= set_bound(threshold, method, num_classes, scores)


# ----------------------------------------------------------------------------- scores
def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown conformal method {method!r}; choose one of {METHODS}.")


def _float64(probs: Tensor) -> Tensor:
    return probs if probs.dtype == torch.float64 else probs.double()


class RankedScores(NamedTuple):
    """Scores of every label in rank order, computed once per data set and method.

    ``scores[i, j]`` is the score of ``labels[i, j]``, the label ranked j-th (0-based) by
    descending probability in row i; ``scores`` is non-decreasing along dim 1.
    """

    scores: Tensor
    labels: Tensor


def rank_scores(probs: Tensor, method: str = "lac", u: Tensor | None = None, lam: float = 0.0,
                k_reg: int = 0) -> RankedScores:
    """Sort each row once and return the conformity score of every label in rank order.

    ``probs``: ``[n, K]`` rows on the simplex. ``u``: ``[n]`` uniforms for the randomised APS/RAPS
    score (one per row, shared by its labels); ``None`` gives the non-randomised score (U = 1).
    ``lam``, ``k_reg``: the RAPS penalty lam * (rank - k_reg)^+ with 1-based ranks.
    """
    _check_method(method)
    sorted_p, order = _float64(probs).sort(dim=1, descending=True, stable=True)
    return RankedScores(_scores_in_rank_order(sorted_p, method, u, lam, k_reg), order)


def _scores_in_rank_order(sorted_p: Tensor, method: str, u: Tensor | None, lam: float, k_reg: int) -> Tensor:
    """Scores of the labels in rank order from their sorted probabilities (also for the first k ranks
    alone: the first k columns give the first k scores)."""
    if method == "lac":
        return 1 - sorted_p
    if method == "topk":
        return _ranks(sorted_p).expand_as(sorted_p).contiguous()
    scores = _aps_in_rank_order(sorted_p, u)
    return scores.add_(lam * _raps_penalty(sorted_p, k_reg)) if method == "raps" else scores


def _ranks(sorted_p: Tensor) -> Tensor:
    return torch.arange(1, sorted_p.shape[1] + 1, device=sorted_p.device, dtype=sorted_p.dtype)


def _raps_penalty(sorted_p: Tensor, k_reg: int) -> Tensor:
    """``(rank - k_reg)^+`` of each rank: ``[k]``."""
    return (_ranks(sorted_p) - k_reg).clamp_(min=0)


def _aps_in_rank_order(sorted_p: Tensor, u: Tensor | None) -> Tensor:
    """APS scores in rank order: the cumulative mass, or with U the mass ranked above plus U p (a new
    tensor; non-decreasing in floats too, since ``fl(above + U p) <= fl(above + p)``)."""
    cumulative = sorted_p.cumsum(dim=1)
    if u is None:
        return cumulative
    scores = torch.empty_like(cumulative)
    scores[:, 0] = 0
    scores[:, 1:] = cumulative[:, :-1]
    return scores.addcmul_(u.to(sorted_p.dtype).unsqueeze(1), sorted_p)


def label_scores(probs: Tensor, method: str = "lac", u: Tensor | None = None, lam: float = 0.0,
                 k_reg: int = 0) -> Tensor:
    """The conformity score s(x, y) of every label, in the original label order: ``[n, K]``."""
    if method == "lac":  # no ranking needed: the same values as rank_scores, unsorted
        return 1 - _float64(probs)
    ranked = rank_scores(probs, method, u=u, lam=lam, k_reg=k_reg)
    return torch.empty_like(ranked.scores).scatter_(1, ranked.labels, ranked.scores)


def ranked_true_scores(ranked: RankedScores, labels: Tensor) -> Tensor:
    """s(x_i, y_i) read from rank-ordered scores (the true label's position found per row): ``[n]``."""
    position = (ranked.labels == labels.long().unsqueeze(1)).to(torch.uint8).argmax(dim=1)
    return ranked.scores.gather(1, position.unsqueeze(1)).squeeze(1)


def true_label_scores(scores: Tensor, labels: Tensor) -> Tensor:
    """s(x_i, y_i) from a ``[n, K]`` label-order score matrix: ``[n]``."""
    return scores.gather(1, labels.long().unsqueeze(1)).squeeze(1)


#: rows processed together so that a block of probabilities stays in the CPU cache over several passes
CHUNK_ELEMENTS = 1 << 18


def _row_chunks(n: int, num_classes: int, device: torch.device) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(num_classes, 1)) if device.type == "cpu" else max(n, 1)
    return [slice(start, start + step) for start in range(0, n, step)]


def calibration_scores(probs: Tensor, labels: Tensor, method: str = "lac", u: Tensor | None = None,
                       lam: float = 0.0, k_reg: int = 0) -> Tensor:
    """s(x_i, y_i) of each row's true label without sorting: ``[n]`` (float64).

    APS/RAPS: the mass of the labels ranked above y (``p_j > p_y``, or ``p_j = p_y`` with ``j < y``: the
    stable descending order of :func:`rank_scores`) plus ``U p_y``; RAPS adds
    ``lam (rank(y) - k_reg)^+`` with ``rank(y) = 1 + #{j ranked above y}``; Top-K is that rank. A few
    passes over each cache-sized block of rows instead of a sort; the sums differ from the sorted
    path's cumulative sums only by round-off, which :func:`admitted` allows for."""
    _check_method(method)
    probs = _float64(probs)
    y = labels.long().to(probs.device).unsqueeze(1)
    p_y = probs.gather(1, y).squeeze(1)
    if method == "lac":
        return 1 - p_y
    mass = torch.empty_like(p_y)
    count = torch.empty_like(p_y)
    columns = torch.arange(probs.shape[1], device=probs.device)
    for rows in _row_chunks(*probs.shape, probs.device):
        part, label, p = probs[rows], y[rows], p_y[rows].unsqueeze(1)
        above = (part > p) | ((part == p) & (columns < label))
        mass[rows] = torch.where(above, part, 0.0).sum(1)
        count[rows] = above.sum(1)
    if method == "topk":
        return count + 1
    scores = mass + (p_y if u is None else u.to(probs) * p_y)
    if method == "raps":
        scores = scores + lam * (count + 1 - k_reg).clamp(min=0)
    return scores


# ----------------------------------------------------------------------------- calibrate and predict
def calibrate(probs: Tensor, labels: Tensor, alpha: float, method: str = "lac",
              class_conditional: bool = False, u: Tensor | None = None, lam: float = 0.0,
              k_reg: int = 0) -> Tensor:
    """The split-conformal threshold from calibration rows ``probs [n, K]``, ``labels [n]``.

    Marginal: a 0-d tensor qhat; class-conditional: ``[K]``, one per class. +inf where the
    calibration set is too small for the level (k > n).
    """
    scores = calibration_scores(probs, labels, method, u=u, lam=lam, k_reg=k_reg)
    if class_conditional:
        return class_thresholds(scores, labels.long(), probs.shape[1], alpha)
    return conformal_threshold(scores, alpha)


def prediction_sets(probs: Tensor, threshold: Tensor | float, method: str = "lac",
                    u: Tensor | None = None, lam: float = 0.0, k_reg: int = 0) -> Tensor:
    """C(x) = {y : s(x, y) <= qhat} (:func:`admitted`) as a bool ``[n, K]``; ``threshold`` is 0-d or
    ``[K]`` per class. A marginal APS/RAPS/Top-K set is a prefix of the row's labels in rank order,
    found among its top labels (:func:`prefix_set_sizes`, no full sort); LAC and per-class thresholds
    compare every label."""
    _check_method(method)
    probs = _float64(probs)
    if method == "lac" or torch.as_tensor(threshold).dim() > 0:
        return admitted(label_scores(probs, method, u=u, lam=lam, k_reg=k_reg), threshold, method, probs.shape[1])
    sets = torch.zeros(probs.shape, dtype=torch.bool, device=probs.device)
    for rows, sizes, ranked_labels in _prefixes(probs, threshold, method, u, lam, k_reg):
        in_set = torch.arange(ranked_labels.shape[1], device=probs.device) < sizes.unsqueeze(1)
        sets[rows.unsqueeze(1).expand_as(in_set)[in_set], ranked_labels[in_set]] = True
    return sets


def prefix_set_sizes(probs: Tensor, threshold: Tensor | float, method: str, u: Tensor | None = None,
                     lam: float = 0.0, k_reg: int = 0, first: int | None = None) -> Tensor:
    """|C(x)| ``[n]`` for a marginal qhat without sorting whole rows (the sizes of :func:`prediction_sets`)."""
    _check_method(method)
    probs = _float64(probs)
    sizes = torch.zeros(probs.shape[0], dtype=torch.long, device=probs.device)
    for rows, part, _ in _prefixes(probs, threshold, method, u, lam, k_reg, first):
        sizes[rows] = part
    return sizes


def _top_in_rank_order(probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each row's k most probable labels and their probabilities in rank order (descending p, ties in
    label order), except that the last tie group may hold any of its members (``topk`` picks them)."""
    if k >= probs.shape[1]:
        return probs.sort(dim=1, descending=True, stable=True)
    values, labels = probs.topk(k, dim=1)
    if bool((values[:, 1:] == values[:, :-1]).any()):  # topk leaves tied labels in no particular order
        labels, by_label = labels.sort(dim=1)
        values, by_value = values.gather(1, by_label).sort(dim=1, descending=True, stable=True)
        labels = labels.gather(1, by_value)
    return values, labels


def _prefixes(probs: Tensor, threshold: Tensor | float, method: str, u: Tensor | None, lam: float, k_reg: int,
              first: int | None = None):
    """Yields ``(rows, set sizes, top labels in rank order [rows, k])`` until every row has its size.

    The scores of a row's top k labels in rank order are the full ranking's first k scores, and they
    do not decrease, so a set of size m is read from the top k alone when m does not reach into the
    last tie group of the k (``topk`` picks that group's members arbitrarily; k itself is in it); the
    other rows are redone with 4k labels, up to a full stable sort. ``first`` is the initial k
    (default: 1.25 x the 95th percentile of the set sizes of 256 fully sorted sample rows, + 8)."""
    n, num_classes = probs.shape
    if first is None:
        sample = torch.linspace(0, max(n - 1, 0), min(n, 256), device=probs.device).long()
        sample_scores = _scores_in_rank_order(probs[sample].sort(dim=1, descending=True, stable=True).values, method,
                                              None if u is None else u[sample], lam, k_reg)
        sample_sizes = admitted(sample_scores, threshold, method, num_classes).sum(1).double()
        first = int(1.25 * float(sample_sizes.quantile(0.95))) + 8 if n else 1
    k = max(1, min(first, num_classes))
    pending = None  # all rows
    while pending is None or pending.numel():
        part = probs if pending is None else probs[pending]
        rows = torch.arange(n, device=probs.device) if pending is None else pending
        values, top = _top_in_rank_order(part, k)
        scores = _scores_in_rank_order(values, method, None if u is None else u[rows], lam, k_reg)
        sizes = admitted(scores, threshold, method, num_classes).sum(1)
        if k >= num_classes:
            yield rows, sizes, top
            return
        settled = sizes <= (values == values[:, -1:]).to(torch.uint8).argmax(1)  # positions before it are exact
        yield rows[settled], sizes[settled], top[settled]
        pending = rows[~settled]
        k = min(4 * k, num_classes)


def set_sizes_from_ranked(ranked_scores: Tensor, threshold: Tensor | float, method: str) -> Tensor:
    """|C(x)| for a marginal qhat by a binary search in each row of pre-ranked scores: ``[n]`` (the rule
    of :func:`admitted`)."""
    qhat = set_bound(threshold, method, ranked_scores.shape[1], ranked_scores).to(ranked_scores.dtype)
    query = qhat.reshape(1, 1).expand(ranked_scores.shape[0], 1).contiguous()
    return torch.searchsorted(ranked_scores, query, right=True).squeeze(1)


def sets_from_ranked(ranked: RankedScores, sizes: Tensor) -> Tensor:
    """The bool ``[n, K]`` sets given each row's size (the top ``sizes[i]`` ranked labels)."""
    n, num_classes = ranked.scores.shape
    in_set = torch.arange(num_classes, device=sizes.device).unsqueeze(0) < sizes.unsqueeze(1)
    return torch.zeros((n, num_classes), dtype=torch.bool, device=sizes.device).scatter_(1, ranked.labels, in_set)


# ----------------------------------------------------------------------------- RAPS tuning
def tune_raps(probs: Tensor, labels: Tensor, alpha: float, lambdas=RAPS_LAMBDAS,
              u: Tensor | None = None) -> tuple[float, int]:
    """The RAPS paper's tuning on held-out calibration rows: returns ``(lam, k_reg)``.

    k_reg = the (1 - alpha) conformal order statistic of the true label's rank (capped at K);
    lam = the value in ``lambdas`` whose RAPS sets (calibrated and evaluated on these rows) have
    the smallest mean size; ties go to the first. Use rows that are not used to calibrate after.
    """
    num_classes = probs.shape[1]
    sorted_p, order = _float64(probs).sort(dim=1, descending=True, stable=True)
    position = (order == labels.long().unsqueeze(1)).to(torch.uint8).argmax(dim=1, keepdim=True)
    k_reg = conformal_threshold((position.squeeze(1) + 1).to(probs.dtype), alpha)
    k_reg = num_classes if math.isinf(float(k_reg)) else int(k_reg)
    best_lam, best_size = float(lambdas[0]), math.inf
    aps, penalty = _aps_in_rank_order(sorted_p, u), _raps_penalty(sorted_p, k_reg)
    for lam in lambdas:
        scores = aps + float(lam) * penalty  # = _scores_in_rank_order(sorted_p, "raps", u, lam, k_reg)
        qhat = conformal_threshold(scores.gather(1, position).squeeze(1), alpha)
        size = float(set_sizes_from_ranked(scores, qhat, "raps").double().mean())
        if size < best_size:
            best_lam, best_size = float(lam), size
    return best_lam, k_reg


# ----------------------------------------------------------------------------- metrics
def set_sizes(sets: Tensor) -> Tensor:
    """|C(x)| per row of a bool ``[n, K]``."""
    return sets.sum(dim=1)


def covered(sets: Tensor, labels: Tensor) -> Tensor:
    """Whether each row's set contains its true label: bool ``[n]``."""
    return sets.gather(1, labels.long().unsqueeze(1)).squeeze(1)


def size_histogram(sizes: Tensor, num_classes: int) -> Tensor:
    """Number of rows with each set size 0..K: ``[K + 1]``."""
    return torch.bincount(sizes.long(), minlength=num_classes + 1)


def _grouped_mean(values: Tensor, groups: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    counts = torch.bincount(groups.long(), minlength=num_groups)
    sums = torch.zeros(num_groups, dtype=torch.float64, device=values.device)
    sums.index_add_(0, groups.long(), values.double())
    means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, math.nan))
    return means, counts


def size_stratified_coverage(sizes: Tensor, is_covered: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Coverage among rows of each set size 0..K (NaN where none) and the row counts."""
    return _grouped_mean(is_covered, sizes, num_classes + 1)


def per_class_coverage(is_covered: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Coverage among rows of each true class (NaN where none) and the row counts: ``[K]`` each."""
    return _grouped_mean(is_covered, labels, num_classes)


def coverage_gap(class_coverage: Tensor, alpha: float) -> Tensor:
    """Mean over classes (with rows) of |cov_c - (1 - alpha)|."""
    present = ~torch.isnan(class_coverage)
    return (class_coverage[present] - (1 - alpha)).abs().mean()


# ----------------------------------------------------------------------------- repeated splits
def split_coverages(true_scores: Tensor, n_calibration: int, alpha: float, n_splits: int,
                    generator: torch.Generator | None = None, labels: Tensor | None = None,
                    num_classes: int | None = None, *, method: str) -> Tensor:
    """Empirical test coverage over ``n_splits`` random calibration/test splits: ``[n_splits]``.

    ``true_scores [N]``: s(x_i, y_i) of every row (the score function must not depend on the
    split) for ``method`` over ``num_classes`` labels. Each split draws a permutation; its first
    ``n_calibration`` rows calibrate, the rest are tested (:func:`admitted`). With ``labels``,
    thresholds are class-conditional.
    """
    if method not in ("lac", "topk") and num_classes is None:
        raise ValueError(f"{method} coverage needs num_classes: the slack of the set rule depends on it.")
    total = true_scores.shape[0]
    if not 0 < n_calibration < total:
        raise ValueError(f"n_calibration must lie in 1..{total - 1}, got {n_calibration}.")
    perms = torch.rand(n_splits, total, generator=generator, device="cpu").argsort(dim=1).to(true_scores.device)
    shuffled = true_scores[perms]
    calibration, test = shuffled[:, :n_calibration], shuffled[:, n_calibration:]
    if labels is None:
        qhat = conformal_threshold(calibration, alpha).unsqueeze(1)
        return admitted(test, qhat, method, num_classes or 1).double().mean(dim=1)
    shuffled_labels = labels.long()[perms]
    coverages = []
    for split in range(n_splits):
        qhat = class_thresholds(calibration[split], shuffled_labels[split, :n_calibration], num_classes, alpha)
        hit = admitted(test[split], qhat[shuffled_labels[split, n_calibration:]], method, num_classes)
        coverages.append(hit.double().mean())
    return torch.stack(coverages)


def coverage_beta_parameters(n_calibration: int, alpha: float) -> tuple[int, int]:
    """(a, b) of the Beta(n + 1 - l, l) law of coverage over calibration draws, l = floor((n + 1) alpha).

    l = 0 means k > n: qhat = +inf and coverage is 1 on every draw.
    """
    exact = (n_calibration + 1) * _check_alpha(alpha)
    low = math.floor(exact)
    return n_calibration + 1 - low, low


# ----------------------------------------------------------------------------- entropy link (C-IP)
def predictive_entropy_bits(probs: Tensor) -> Tensor:
    """H(p) = -sum_y p_y log2 p_y per row (0 log 0 = 0): ``[n]``."""
    logs = torch.where(probs > 0, probs.log2(), torch.zeros_like(probs))
    return -(probs * logs).sum(dim=1)


def binary_entropy_bits(p: float) -> float:
    """h_b(p) = -p log2 p - (1 - p) log2 (1 - p)."""
    return -sum(q * math.log2(q) for q in (p, 1 - p) if q > 0)


def cip_entropy_bits(sizes: Tensor, is_covered: Tensor, alpha: float, n_calibration: int,
                     num_classes: int) -> Tensor:
    """Conformal Information Pursuit's estimate of H(Y | X) in bits from set sizes (formulas.md 5).

    H_hat = h_b(alpha) + (1 - alpha + 1/(n+1)) mean_{covered} log2 |C|
            + alpha mean_{uncovered} log2 (K - |C|).
    A mean over no rows contributes 0.
    """
    sizes = sizes.double()
    inside = sizes[is_covered]
    outside = sizes[~is_covered]
    covered_term = inside.log2().mean() if inside.numel() else sizes.new_zeros(())
    missed_term = (num_classes - outside).log2().mean() if outside.numel() else sizes.new_zeros(())
    weight = 1 - alpha + 1 / (n_calibration + 1)
    return binary_entropy_bits(alpha) + weight * covered_term + alpha * missed_term
