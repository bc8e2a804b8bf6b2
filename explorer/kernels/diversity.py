"""Diversity of a set of samples: Vendi score of any order, RKE, matrix Renyi entropy, effective rank,
diffusion spectral entropy (DSE) and its mutual information with labels (DSMI).

Every measure is a function of one spectrum: the eigenvalues ``lambda`` of ``K / tr K`` for a kernel
matrix ``K`` (``K / n`` when ``K_ii = 1``). :func:`kernel_spectrum` computes it once (dual ``d x d``
path for linear/cosine kernels, float64 ``eigvalsh`` otherwise, Nystrom for large ``n``) and
:class:`Spectrum` turns it into any score in microseconds. Definitions: ../shared/reference/formulas.md
section 4 (Friedman and Dieng, "The Vendi Score", 2023; Jalali et al., RKE, 2023; Giraldo et al.,
matrix-based Renyi entropy, 2014; Roy and Vetterli, effective rank, 2007; Liao et al., "Assessing
neural network representations during training using noise-resilient diffusion spectral entropy", 2023).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.linalg
import torch

KERNELS = ("cosine", "linear", "rbf", "polynomial")
Kernel = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------- kernels
def median_bandwidth(X: torch.Tensor, max_points: int = 2000, seed: int = 0) -> float:
    """Median heuristic: sigma = median of the pairwise distances ``||x_i - x_j||`` (i < j), on at
    most ``max_points`` seeded rows."""
    if X.shape[0] > max_points:
        gen = torch.Generator().manual_seed(seed)
        X = X[torch.randperm(X.shape[0], generator=gen)[:max_points].to(X.device)]
    dist = torch.cdist(X.double(), X.double())
    upper = dist[torch.triu_indices(len(X), len(X), 1, device=X.device).unbind()]
    median = float(upper.median()) if upper.numel() else 1.0
    return median if median > 0 else 1.0


def pairwise_kernel(A: torch.Tensor, B: torch.Tensor, kernel: Kernel = "cosine", sigma: float | None = None,
                    degree: int = 3, coef0: float = 1.0) -> torch.Tensor:
    """Kernel block ``k(a_i, b_j)``: cosine ``<a,b>/(|a||b|)``, linear ``<a,b>``,
    RBF ``exp(-|a-b|^2 / (2 sigma^2))``, polynomial ``(<a,b>/d + coef0)^degree``, or a callable
    ``kernel(A, B) -> |A| x |B|`` working on batches."""
    if callable(kernel):
        return kernel(A, B)
    if kernel == "cosine":
        return _unit_rows(A) @ _unit_rows(B).T
    if kernel == "linear":
        return A @ B.T
    if kernel == "rbf":
        if sigma is None or sigma <= 0:
            raise ValueError("the RBF kernel needs sigma > 0")
        # |a|^2 - 2<a,b> + |b|^2 in one matrix product and in-place passes (no n x n temporaries)
        sq = torch.addmm((B * B).sum(1).unsqueeze(0), A, B.T, alpha=-2).add_((A * A).sum(1, keepdim=True))
        return sq.clamp_min_(0).mul_(-1 / (2 * sigma**2)).exp_()
    if kernel == "polynomial":
        return (A @ B.T / A.shape[1] + coef0) ** degree
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS} or pass a callable")


def _unit_rows(X: torch.Tensor) -> torch.Tensor:
    return X / X.norm(dim=1, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)


def _resolved_sigma(X: torch.Tensor, kernel: Kernel, sigma: float | None) -> float | None:
    return median_bandwidth(X) if kernel == "rbf" and sigma is None else sigma


# ------------------------------------------------------------------------------------- eigen solver
#: CPU eigensolver by size: scipy (OpenBLAS) up to SCIPY_UP_TO, torch (MKL) from TORCH_FROM. In between the two
#: cross where the CPU decides: 2-core AVX2 machine, torch 1.4x faster at 3,000; 2-core AVX-512 machine, scipy
#: 1.1-1.4x faster at 3,000 in one run, torch 1.1x in another; both machines: scipy 1.6-2x faster at 1,000-1,500,
#: torch 1.5x at 5,000. There the first matrix of each size bucket (a quarter octave) is solved by both and the
#: faster solver is kept for that bucket in this process, so results still repeat bit for bit in a process.
SCIPY_UP_TO = 2000
TORCH_FROM = 4500
_TIMED_SOLVERS: dict[int, str] = {}   # size bucket -> the solver timed faster in this process
_TIMED_LOCK = threading.Lock()


def _size_bucket(n: int) -> int:
    return round(4 * math.log2(n))


def cpu_solver(n: int) -> str | None:
    """"scipy" or "torch" for an ``n x n`` symmetric spectrum on a CPU; None between :data:`SCIPY_UP_TO` and
    :data:`TORCH_FROM` until a matrix of ``n``'s size bucket was timed with both (:func:`symmetric_eigenvalues`)."""
    if n <= SCIPY_UP_TO:
        return "scipy"
    if n >= TORCH_FROM:
        return "torch"
    with _TIMED_LOCK:
        return _TIMED_SOLVERS.get(_size_bucket(n))


def _cpu_eigenvalues(M: torch.Tensor, solver: str, overwrite: bool) -> torch.Tensor:
    if solver == "torch":
        return torch.linalg.eigvalsh(M).double()
    return torch.from_numpy(scipy.linalg.eigvalsh(M.numpy().T, overwrite_a=overwrite, check_finite=False)).double()


def _solved_by_the_faster(M: torch.Tensor, overwrite: bool) -> torch.Tensor:
    """The first matrix of an undecided size bucket: solved by both solvers (torch first: it leaves ``M``
    alone), the faster one kept for the bucket; returns that one's eigenvalues."""
    values, seconds = {}, {}
    for solver in ("torch", "scipy"):
        started = time.perf_counter()
        values[solver] = _cpu_eigenvalues(M, solver, overwrite and solver == "scipy")
        seconds[solver] = time.perf_counter() - started
    with _TIMED_LOCK:
        chosen = _TIMED_SOLVERS.setdefault(_size_bucket(M.shape[0]), min(seconds, key=seconds.get))
    return values[chosen]


def symmetric_eigenvalues(M: torch.Tensor, dtype: torch.dtype = torch.float64, overwrite: bool = False) -> torch.Tensor:
    """Eigenvalues (ascending, float64) of a symmetric matrix computed in ``dtype``, on ``M``'s device.

    CPU: scipy's LAPACK or torch's, as :func:`cpu_solver` picks for the size; scipy reads the
    transposed view (Fortran order: no copy), and overwrites ``M`` when ``overwrite`` (the caller's
    own scratch matrix). GPU: ``torch.linalg.eigvalsh`` with a CPU fallback when it fails."""
    converted = M.dtype != dtype
    M = M.to(dtype)
    if M.device.type != "cpu":
        try:
            return torch.linalg.eigvalsh(M).double()
        except RuntimeError:
            return symmetric_eigenvalues(M.cpu(), dtype, overwrite=True).to(M.device)
    solver = cpu_solver(M.shape[0])
    if solver is None:
        return _solved_by_the_faster(M, overwrite or converted)
    return _cpu_eigenvalues(M, solver, overwrite or converted)


def round_off_tolerance(values: torch.Tensor, n: int, dtype: torch.dtype = torch.float64) -> float:
    """``n * eps * max |lambda|``: eigenvalues of an ``n x n`` problem solved in ``dtype`` at or below this
    are round-off of zero (a backward-stable solver errs by about ``eps * ||K||`` per eigenvalue, and a
    kernel or Gram matrix summed over n terms by up to n times that), so every rule that treats zero
    eigenvalues apart counts them as zero (formulas.md section 3, Vendi of order 0)."""
    return n * torch.finfo(dtype).eps * float(values.abs().max()) if values.numel() else 0.0


def _zero_round_off(values: torch.Tensor, n: int, dtype: torch.dtype = torch.float64,
                    cut: float | None = None) -> torch.Tensor:
    """``values`` with those at or below ``cut`` (default: :func:`round_off_tolerance`) set to 0, negatives too."""
    cut = round_off_tolerance(values, n, dtype) if cut is None else cut
    return torch.where(values > cut, values, 0.0)


# ---------------------------------------------------------------------------------------- spectrum
@dataclass(frozen=True)
class Spectrum:
    """Normalised eigenvalues (descending, >= 0, summing to 1) of one kernel matrix, and every score
    they give. ``exact`` is False for Nystrom spectra (:class:`NystromSpectrum`); ``error`` then
    estimates the relative error of the order-1 Vendi score."""

    eigenvalues: torch.Tensor  # float64, descending, sum 1 (up to round-off), round-off of zero set to 0
    n: int
    exact: bool = True
    error: float = 0.0
    method: str = "exact"
    eigenvalue_error: float = 0.0  # bound on |computed - exact| of each normalised eigenvalue

    def entropy(self, q: float = 1.0) -> float:
        """Renyi entropy of order q of the eigenvalues, in nats (q = 1: Shannon; q = inf: -log max)."""
        lam = self.eigenvalues
        if math.isinf(q):
            return -math.log(float(lam[0]))
        positive = lam[lam > 0]
        if q == 1:
            return float(-(positive * positive.log()).sum())
        if q == 0:
            return math.log(positive.numel())
        return float(torch.log((positive ** q).sum()) / (1 - q))

    def vendi(self, q: float = 1.0) -> float:
        """Vendi score of order q: ``exp(H_q(lambda))``, in [1, n]."""
        return math.exp(self.entropy(q))

    def vendi_error(self, q: float = 1.0) -> float:
        """A bound on the relative error of :meth:`vendi` from ``eigenvalue_error`` (0 when none is recorded).

        Every computed eigenvalue is within delta = ``eigenvalue_error`` of an exact one (Weyl), so:
        q = 1: ``|dH| <= sum_i min(eta(delta), delta max |log x + 1|)`` over ``x`` in ``[lambda_i +- delta]``
        (``eta(h) = -h log h``: Fannes' continuity bound ``|eta(x) - eta(y)| <= eta(|x - y|)``);
        q != 1: ``|dS| <= sum_i |d lambda_i^q|`` (``delta^q`` for q < 1 by Hoelder continuity, else the
        largest slope ``q x^(q-1) delta`` on the interval) and ``|dH| <= |dS| / ((S - |dS|) |1 - q|)``;
        q = inf: ``delta / lambda_max``. The relative error of ``VS = exp(H)`` is ``expm1(|dH|)``.
        q = 0 counts eigenvalues, which an approximate spectrum cannot certify: inf."""
        delta = self.eigenvalue_error
        if delta <= 0:
            return 0.0
        lam = self.eigenvalues
        if math.isinf(q):
            return delta / float(lam[0])
        if q == 0 or delta >= 0.5:
            return math.inf
        low, high = lam - delta, lam + delta
        if q == 1:
            fannes = delta * math.log(1 / delta)
            slope = delta * torch.maximum((low.clamp_min(1e-300).log() + 1).abs(), (high.log() + 1).abs())
            change = float(torch.where(low > 0, slope.clamp_max(fannes), fannes).sum())
        else:
            if q < 1:
                slope = q * low.clamp_min(1e-300) ** (q - 1) * delta
                steps = torch.where(low > 0, slope.clamp_max(delta ** q), delta ** q)
            else:
                steps = q * high ** (q - 1) * delta
            total, moved = float((lam[lam > 0] ** q).sum()), float(steps.sum())
            change = moved / ((total - moved) * abs(1 - q)) if total > moved else math.inf
        return math.expm1(change)

    def vendi_upper_bound(self, q: float = 1.0) -> float:
        """A guaranteed upper bound on the true order-q score (the score itself when exact)."""
        return self.vendi(q)

    def rke(self) -> float:
        """RKE (Jalali et al.) = ``1 / sum lambda^2`` = Vendi of order 2."""
        return self.vendi(2.0)

    def renyi_bits(self, alpha: float = 2.0) -> float:
        """Matrix-based Renyi entropy (Giraldo): ``log2 sum lambda^alpha / (1 - alpha)`` in bits."""
        return self.entropy(alpha) / math.log(2)

    def effective_rank(self) -> float:
        """Effective rank (Roy and Vetterli) of the kernel's feature matrix: ``exp(H(s / sum s))``
        with singular values ``s = sqrt(lambda)``; for the linear kernel, that of ``X`` itself."""
        s = self.eigenvalues.clamp_min(0).sqrt()
        return Spectrum(s / s.sum(), self.n).vendi(1.0)


def _normalised(values: torch.Tensor, n: int | None = None, dtype: torch.dtype = torch.float64,
                trace: float | None = None, tolerance: float | None = None) -> torch.Tensor:
    """Eigenvalues sorted descending, divided by ``trace`` (default: their sum), with negatives and the
    round-off of zero set to 0: that of an ``n x n`` problem solved in ``dtype`` (:func:`round_off_tolerance`),
    or those at or below ``tolerance`` (in units of the normalised eigenvalues)."""
    values = values.double().sort(descending=True).values
    if tolerance is not None:
        values = _zero_round_off(values, 0, cut=tolerance * trace)
    else:
        values = _zero_round_off(values, n, dtype) if n is not None else values.clamp_min(0)
    return values / (values.sum() if trace is None else trace)


PRECISIONS = ("float64", "float32")


def kernel_spectrum(X: torch.Tensor | None = None, *, K: torch.Tensor | None = None, kernel: Kernel = "cosine",
                    sigma: float | None = None, weights: torch.Tensor | None = None, method: str = "auto",
                    landmarks: int = 1000, approx_above: int = 12000, seed: int = 0,
                    precision: str = "float64") -> Spectrum:
    """The spectrum of ``K / tr K`` (or of ``diag(sqrt p) K diag(sqrt p) / sum p_i K_ii`` with weights p).

    ``method``: "exact", "nystrom", or "auto" (exact, except Nystrom for non-linear kernels with
    ``n > approx_above``). Linear and cosine kernels use the dual ``d x d`` matrix when ``d < n``.
    ``precision`` of the exact eigensolver: "float64", or "float32" (about 1.5x faster for large n; the
    kernel is still built in float64). A float32 spectrum records ``eigenvalue_error`` = 2 delta with
    ``delta = 2 eps32 lambda_max + eps32 sqrt(sum lambda^2) / 2`` per normalised eigenvalue: the solver's
    backward error eps ||K||_2 (the LAPACK Users' Guide's approximate error bound for the symmetric
    eigenproblem, section 4.7.1, p(n) = 1; doubled) plus rounding K to float32 (``||dK||_2 <= ||dK||_F
    <= eps/2 ||K||_F``); computed values at or below delta count as 0. :meth:`Spectrum.vendi_error`
    turns it into a bound on each score. Eigenvalues are divided by the exact (float64) trace.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if K is not None:
        return _exact_from_matrix(K, weights, precision, owned=False)
    n, d = X.shape
    sigma = _resolved_sigma(X, kernel, sigma)
    if kernel in ("cosine", "linear"):
        Y = _unit_rows(X.double()) if kernel == "cosine" else X.double()
        if weights is not None:
            Y = Y * weights.double().to(Y.device).sqrt()[:, None]
        gram = Y.T @ Y if d < n else Y @ Y.T
        spectrum = _exact_from_matrix(gram, None, "float64", owned=True, rows=n)
        return replace(spectrum, method="dual" if d < n else "exact")
    if method == "nystrom" or (method == "auto" and n > approx_above):
        return nystrom_spectrum(X, kernel, sigma, landmarks, seed, weights)
    return _exact_from_matrix(pairwise_kernel(X.double(), X.double(), kernel, sigma), weights, precision, owned=True)


def _exact_from_matrix(K: torch.Tensor, weights: torch.Tensor | None, precision: str, owned: bool,
                       rows: int | None = None) -> Spectrum:
    """The exact spectrum of ``K`` (``rows`` samples; the dual Gram is smaller). ``owned``: K is scratch."""
    K = K.double()
    if weights is not None:
        root = weights.double().to(K.device).sqrt()
        K = (K.mul_ if owned else K.mul)(root[:, None]).mul_(root[None, :])
        owned = True
    n = K.shape[0] if rows is None else rows
    trace = float(K.diagonal().sum())
    if precision == "float64":
        return Spectrum(_normalised(symmetric_eigenvalues(K, overwrite=owned), n, trace=trace), n)
    eps = torch.finfo(torch.float32).eps
    frobenius = float(torch.linalg.matrix_norm(K)) / trace  # sqrt(sum lambda^2), before K is overwritten
    values = symmetric_eigenvalues(K, torch.float32, overwrite=owned)
    # per normalised eigenvalue: the solver's eps ||K||_2 (doubled) + rounding K to float32; a computed
    # value at or below it is indistinguishable from 0, and then within 2x of the exact one
    solver_error = 2 * eps * float(values.abs().max()) / trace + eps * frobenius / 2
    return Spectrum(_normalised(values, trace=trace, tolerance=solver_error), n, method="exact float32",
                    eigenvalue_error=2 * solver_error)


NYSTROM_LEVELS = (0.5, 0.625, 0.75, 0.875, 1.0)  # landmark fractions whose estimates are extrapolated


@dataclass(frozen=True)
class NystromSpectrum(Spectrum):
    """A Nystrom spectrum at several nested landmark counts, extrapolated to ``m = n``.

    ``K ~ K_nm (K_mm + eps I)^-1 K_mn`` is below ``K`` in the PSD order, so each Nystrom eigenvalue is
    below the true one of the same rank (Weyl), and the trace it misses (``tr K - sum lambda~``) is
    known exactly. Each level's entropy spreads that trace as a flat tail; the entropies at
    ``m_1 < ... < m_L`` landmarks are fitted by ``H(m) = a + b m^-gamma`` (least squares) and read at
    ``m = n``, where Nystrom is exact. ``error`` (order 1) is the largest relative change of the
    extrapolated score when the fit leaves one level out or uses only the three smallest or the three
    largest levels: an estimate of the extrapolation's uncertainty, not a bound.
    :meth:`vendi_upper_bound` is a bound: the largest score of any spectrum above the Nystrom one with
    the same trace (water-filling). ``eigenvalues`` are those at the largest level with a flat tail."""

    levels: tuple[int, ...] = ()
    level_eigenvalues: tuple[torch.Tensor, ...] = ()  # Nystrom eigenvalues of K at each level, raw
    trace: float = 1.0
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    def entropy(self, q: float = 1.0) -> float:
        """The extrapolated order-q entropy, capped by that of the water-filled bound."""
        key = ("entropy", q)
        if key not in self._memo:
            self._memo[key] = min(self._extrapolated(q)[0], self._bound_spectrum().entropy(q))
        return self._memo[key]

    def vendi_error(self, q: float = 1.0) -> float:
        """Estimated relative error of the order-q score (leave-one-level-out spread of the fit)."""
        return self._extrapolated(q)[1]

    def vendi_upper_bound(self, q: float = 1.0) -> float:
        return self._bound_spectrum().vendi(q)

    def _level_entropies(self, q: float) -> list[float]:
        return [_flat_tail_entropy(values, self.n, self.trace, q) for values in self.level_eigenvalues]

    def _extrapolated(self, q: float) -> tuple[float, float]:
        if q not in self._memo:
            self._memo[q] = self._extrapolate(q)
        return self._memo[q]

    def _extrapolate(self, q: float) -> tuple[float, float]:
        entropies = self._level_entropies(q)
        estimate = _power_law_at(self.levels, entropies, self.n)
        if estimate is None:  # no decrease with m to extrapolate: the largest level, its last change as error
            return entropies[-1], abs(math.expm1(entropies[-2] - entropies[-1])) if len(entropies) > 1 else 0.0
        count = len(self.levels)
        subsets = [[i for i in range(count) if i != out] for out in range(count)]  # leave one level out
        subsets += [list(range(3)), list(range(count - 3, count))]  # the smallest / largest levels alone
        spread = 0.0
        for kept in subsets:
            other = _power_law_at([self.levels[i] for i in kept], [entropies[i] for i in kept], self.n)
            spread = max(spread, abs(math.expm1((other if other is not None else entropies[-1]) - estimate)))
        return estimate, spread

    def _bound_spectrum(self) -> Spectrum:
        if "bound" not in self._memo:
            self._memo["bound"] = Spectrum(water_filled(self.level_eigenvalues[-1], self.n, self.trace), self.n)
        return self._memo["bound"]


def _power_law_at(levels, entropies, n: int) -> float | None:
    """Least-squares fit of ``H(m) = a + b m^-gamma`` (b > 0, gamma on a grid in (0, 3]) read at m = n;
    None when the entropies do not decrease with m."""
    m = np.asarray(levels, dtype=np.float64)
    h = np.asarray(entropies, dtype=np.float64)
    if len(m) < 3 or not h[0] - h[-1] > 1e-9 * max(1.0, abs(h[-1])):
        return None
    gammas = np.linspace(0.01, 3.0, 300)[:, None]
    x = m[None, :] ** -gammas  # one row per gamma
    xc = x - x.mean(1, keepdims=True)
    b = (xc * (h - h.mean())).sum(1) / (xc * xc).sum(1)
    a = h.mean() - b * x.mean(1)
    residual = ((a[:, None] + b[:, None] * x - h) ** 2).sum(1)
    residual[b <= 0] = np.inf
    best = int(np.argmin(residual))
    return None if not np.isfinite(residual[best]) else float(a[best] + b[best] * n ** -gammas[best, 0])


def water_filled(top: torch.Tensor, n: int, trace: float) -> torch.Tensor:
    """The most uniform spectrum with ``lambda_i >= top_i`` (sorted, padded with zeros to n) and
    ``sum lambda = trace``: ``lambda_i = max(top_i, tau)``. It is majorised by every such spectrum,
    so its Vendi score of every order bounds theirs from above. Returned normalised."""
    values = torch.zeros(n, dtype=torch.float64, device=top.device)
    values[:top.numel()] = top.double().clamp_min(0)
    ascending = values.sort().values
    missing = trace - float(ascending.sum())
    if missing <= 0:
        return _normalised(values)
    # tau solves sum_i max(tau - v_i, 0) = missing over the k smallest values (v_k <= tau <= v_{k+1})
    cumulative = torch.cumsum(ascending, 0)
    counts = torch.arange(1, n + 1, dtype=torch.float64, device=top.device)
    taus = (missing + cumulative) / counts
    upper = torch.cat([ascending[1:], ascending.new_tensor([math.inf])])
    k = int(torch.nonzero(taus <= upper)[0])
    return _normalised(ascending.clamp_min(float(taus[k])))


def _flat_tail_entropy(top: torch.Tensor, n: int, trace: float, q: float) -> float:
    """Order-q entropy of :func:`_with_flat_tail` without building the n-vector."""
    top = top.double().clamp_min(0) / trace
    top = top[top > 0]
    slots = n - top.numel()
    share = max(1.0 - float(top.sum()), 0.0)
    tail = share / slots if slots and share > 0 else 0.0
    slots = slots if tail > 0 else 0
    if math.isinf(q):
        return -math.log(max(float(top.max()) if top.numel() else 0.0, tail))
    if q == 0:
        return math.log(top.numel() + slots)
    if q == 1:
        return float(-(top * top.log()).sum()) - (slots * tail * math.log(tail) if slots else 0.0)
    return math.log(float((top ** q).sum()) + slots * tail ** q) / (1 - q)


def _with_flat_tail(top: torch.Tensor, n: int, trace: float) -> torch.Tensor:
    """Normalised Nystrom eigenvalues completed to n: the trace the low-rank part misses
    (``tr K - sum top``, known exactly) is spread evenly over the ``n - r`` remaining eigenvalues
    (r = the number of positive ones)."""
    top = top.double().clamp_min(0).sort(descending=True).values
    top = top[top > 0]  # a zero Nystrom eigenvalue is a free slot for the tail
    missing = max(trace - float(top.sum()), 0.0)
    tail = torch.full((n - top.numel(),), missing / max(n - top.numel(), 1), dtype=torch.float64, device=top.device)
    return _normalised(torch.cat([top, tail]))


def _kernel_diagonal(X: torch.Tensor, kernel: Kernel, sigma: float | None) -> torch.Tensor:
    if kernel == "rbf":
        return torch.ones(X.shape[0], dtype=torch.float64, device=X.device)
    return torch.cat([pairwise_kernel(chunk, chunk, kernel, sigma).diagonal()
                      for chunk in X.double().split(1024)]).double()


def _nested_nystrom_gram(X: torch.Tensor, kernel: Kernel, sigma: float | None, landmarks: torch.Tensor,
                         weights: torch.Tensor | None) -> torch.Tensor:
    """``M = C^T C`` for ``C = K_nm L^-T`` with ``L L^T = K_mm + eps I`` (Cholesky, float64). Because
    L is triangular, ``C[:, :k]`` are the Nystrom features of the first k landmarks, so the Nystrom
    eigenvalues at every level k are those of ``M[:k, :k]``: one O(n m^2) pass serves all levels.
    The n x m work runs in float32 on centred data (whitened features are well conditioned)."""
    Xc = (X - X.mean(0)) if kernel == "rbf" else X
    Xw = Xc.float()
    L = Xw[landmarks]
    W = pairwise_kernel(Xc[landmarks].double(), Xc[landmarks].double(), kernel, sigma)
    jitter = 1e-6 * float(W.diagonal().mean())
    chol = torch.linalg.cholesky(W + jitter * torch.eye(len(W), dtype=W.dtype, device=W.device)).float()
    M = torch.zeros(len(landmarks), len(landmarks), dtype=torch.float64, device=X.device)
    root = weights.double().sqrt() if weights is not None else None
    for rows in torch.arange(X.shape[0], device=X.device).split(16384):
        block = pairwise_kernel(Xw[rows], L, kernel, sigma)
        C = torch.linalg.solve_triangular(chol, block.T, upper=False).T  # block L^-T
        if root is not None:
            C = C * root[rows].float()[:, None]
        M += (C.T @ C).double()
    return M


def nystrom_spectrum(X: torch.Tensor, kernel: Kernel, sigma: float | None, landmarks: int = 1000, seed: int = 0,
                     weights: torch.Tensor | None = None) -> NystromSpectrum:
    """Nystrom spectra with ``m * (1/2, 5/8, 3/4, 7/8, 1)`` nested seeded landmarks from one
    O(n m d + n m^2) pass, extrapolated in m to m = n (see :class:`NystromSpectrum`)."""
    n, m = X.shape[0], min(landmarks, X.shape[0])
    diagonal = _kernel_diagonal(X, kernel, sigma)
    trace = float((diagonal * weights.double().to(diagonal.device)).sum() if weights is not None else diagonal.sum())
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m].to(X.device)
    M = _nested_nystrom_gram(X, kernel, sigma, chosen, weights)
    levels = tuple(sorted({max(2, round(m * f)) for f in NYSTROM_LEVELS}))
    level_eigenvalues = tuple(_zero_round_off(symmetric_eigenvalues(M[:k, :k].clone(), overwrite=True), k)
                              for k in levels)
    spectrum = NystromSpectrum(_with_flat_tail(level_eigenvalues[-1], n, trace), n, exact=False,
                               method=f"nystrom m={m}, extrapolated", levels=levels,
                               level_eigenvalues=level_eigenvalues, trace=trace)
    return replace(spectrum, error=spectrum.vendi_error(1.0))


# -------------------------------------------------------------------------------------- Vendi score
def order2_vendi(X: torch.Tensor | None = None, *, K: torch.Tensor | None = None, kernel: Kernel = "cosine",
                 sigma: float | None = None) -> float:
    """RKE = Vendi of order 2 = ``(tr K)^2 / ||K||_F^2``, no eigendecomposition (``||X^T X||_F`` for
    linear/cosine)."""
    if K is None and kernel in ("cosine", "linear"):
        Y = _unit_rows(X.double()) if kernel == "cosine" else X.double()
        gram = Y.T @ Y
        return float(gram.trace() ** 2 / (gram * gram).sum())
    if K is None:
        K = pairwise_kernel(X.double(), X.double(), kernel, _resolved_sigma(X, kernel, sigma))
    K = K.double()
    return float(K.trace() ** 2 / (K * K).sum())


#: half a unit in the 4th significant digit, at worst (of 9.999): below this a score reads the same
DISPLAY_RELATIVE_ERROR = 5e-5


def vendi_score(X: torch.Tensor | None = None, *, K: torch.Tensor | None = None, q: float = 1.0,
                kernel: Kernel = "cosine", sigma: float | None = None, weights: torch.Tensor | None = None,
                precision: str = "float64") -> float:
    """Vendi score of order ``q`` in [0, inf]: ``VS_q = exp(log(sum lambda_i^q) / (1 - q))`` with
    ``lambda`` the eigenvalues of ``K / n`` (q = 1: ``exp(-sum lambda log lambda)``, q = inf:
    ``1 / max lambda``). ``X`` is n x d (kernel: cosine, linear, rbf with ``sigma`` or the median
    heuristic, polynomial, or a batched callable), or pass a precomputed kernel ``K`` with unit
    diagonal. ``weights`` p (summing to 1) use ``diag(sqrt p) K diag(sqrt p)``.
    ``precision``: "float64" (default), "float32" (see :func:`kernel_spectrum`), or "auto" for a value
    that is shown to 4 significant digits: for q > 1 an n x n spectrum is computed in float32 and kept
    when its error bound (:meth:`Spectrum.vendi_error`) is below :data:`DISPLAY_RELATIVE_ERROR`, else
    recomputed in float64; q <= 1 uses float64 (its bound grows like ``n delta log(1/delta)`` and stays
    above the display precision at the sizes where float32 would save time).
    Source: Friedman and Dieng 2023; formulas.md section 4."""
    if (X is None) == (K is None):
        raise ValueError("pass exactly one of X or K")
    if q < 0:
        raise ValueError("q must be >= 0")
    if precision not in (*PRECISIONS, "auto"):
        raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}, got {precision!r}")
    if q == 2 and weights is None:
        return order2_vendi(X, K=K, kernel=kernel, sigma=sigma)
    settings = {"K": K, "kernel": kernel, "sigma": sigma, "weights": weights, "method": "exact"}
    if precision == "auto":
        if q > 1:
            spectrum = kernel_spectrum(X, precision="float32", **settings)
            if spectrum.vendi_error(q) <= DISPLAY_RELATIVE_ERROR:
                return spectrum.vendi(q)
        precision = "float64"
    return kernel_spectrum(X, precision=precision, **settings).vendi(q)


def vendi_vs_sample_size(X: torch.Tensor, sizes: list[int], q: float = 1.0, kernel: Kernel = "cosine",
                         sigma: float | None = None, repeats: int = 5, seed: int = 0) -> torch.Tensor:
    """Vendi score of seeded random subsets: a ``len(sizes) x 2`` tensor of (mean, sd) over ``repeats``.
    Subsample averages are biased low relative to the full set."""
    sigma = _resolved_sigma(X, kernel, sigma)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for size in sizes:
        scores = torch.tensor([kernel_spectrum(X[torch.randperm(X.shape[0], generator=gen)[:size].to(X.device)],
                                               kernel=kernel, sigma=sigma, method="exact").vendi(q)
                               for _ in range(repeats)], dtype=torch.float64)
        rows.append(torch.stack([scores.mean(), scores.std(unbiased=False)]))
    return torch.stack(rows)


# --------------------------------------------------------------------------- diffusion spectral entropy
def diffusion_eigenvalues(X: torch.Tensor, sigma: float) -> torch.Tensor:
    """Eigenvalues of the diffusion matrix ``P = D^-1 G``, ``G_ij = exp(-|x_i - x_j|^2 / (2 sigma^2))``,
    computed as those of the symmetric ``D^-1/2 G D^-1/2`` (float64)."""
    G = pairwise_kernel(X.double(), X.double(), "rbf", sigma)
    root = G.sum(1).rsqrt()
    return symmetric_eigenvalues(G.mul_(root[:, None]).mul_(root[None, :]), overwrite=True)


def dse_from_eigenvalues(eigenvalues: torch.Tensor, t: float = 1.0) -> float:
    """``mu_i = |lambda_i|^t / sum_j |lambda_j|^t``; DSE = ``-sum mu_i log2 mu_i`` bits, in [0, log2 n].
    Eigenvalues at or below :func:`round_off_tolerance` (float64, n = their number) count as 0: with t < 1
    the ``|1e-16|^t`` of round-off would otherwise add real mass."""
    powered = _zero_round_off(eigenvalues.double().abs(), len(eigenvalues)) ** t
    mu = powered / powered.sum()
    mu = mu[mu > 0]
    return float(-(mu * mu.log2()).sum())


def diffusion_spectral_entropy(X: torch.Tensor, sigma: float, t: float = 1.0) -> float:
    """Diffusion spectral entropy in bits (Liao et al. 2023; formulas.md section 4). The reference
    default is sigma = 10, t = 1; sigma must suit the data's scale."""
    if sigma <= 0:
        raise ValueError("sigma must be > 0")
    return dse_from_eigenvalues(diffusion_eigenvalues(X, sigma), t)


def dsmi_spectra(X: torch.Tensor, labels, sigma: float, repeats: int = 5, seed: int = 0,
                 on_class: Callable[[int, int], None] | None = None) -> list[tuple[float, torch.Tensor, list[torch.Tensor]]]:
    """What DSMI needs at every t, computed once: for each class with at least two members, (its share
    ``n_c / N``, the diffusion eigenvalues within the class, those of ``repeats`` seeded random subsets
    of the same size). ``on_class(done, total)`` reports progress."""
    labels = np.asarray(labels)
    if len(labels) != X.shape[0]:
        raise ValueError(f"{len(labels)} labels for {X.shape[0]} samples")
    gen, parts = torch.Generator().manual_seed(seed), []
    classes = np.unique(labels)
    for done, value in enumerate(classes):
        if on_class is not None:
            on_class(done, len(classes))
        members = torch.from_numpy(np.flatnonzero(labels == value)).to(X.device)
        if len(members) < 2:
            continue
        within = diffusion_eigenvalues(X[members], sigma)
        random_sets = [diffusion_eigenvalues(X[torch.randperm(X.shape[0], generator=gen)[:len(members)].to(X.device)],
                                             sigma) for _ in range(repeats)]
        parts.append((len(members) / X.shape[0], within, random_sets))
    return parts


def dsmi_from_spectra(parts: list[tuple[float, torch.Tensor, list[torch.Tensor]]], t: float = 1.0) -> float:
    """DSMI(Z; Y) = ``sum_c (n_c/N) [mean_r DSE_t(random subset of size n_c) - DSE_t(Z | Y = c)]`` in bits,
    from :func:`dsmi_spectra`."""
    return float(sum(share * (np.mean([dse_from_eigenvalues(e, t) for e in random_sets]) - dse_from_eigenvalues(within, t))
                     for share, within, random_sets in parts))


def diffusion_spectral_mutual_information(X: torch.Tensor, labels, sigma: float, t: float = 1.0,
                                          repeats: int = 5, seed: int = 0) -> float:
    """DSMI(Z; Y) = ``sum_c (n_c/N) [mean_r DSE(random subset of size n_c) - DSE(Z | Y = c)]`` in bits:
    how much lower the entropy within a class is than that of a same-size random subset (larger =
    more label information). Classes with one member contribute 0 (Liao et al. 2023; formulas.md)."""
    return dsmi_from_spectra(dsmi_spectra(X, labels, sigma, repeats, seed), t)
