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
import time
from collections.abc import Callable
from dataclasses import dataclass

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
        sq = (A * A).sum(1, keepdim=True) - 2 * A @ B.T + (B * B).sum(1)
        return torch.exp(-sq.clamp_min(0) / (2 * sigma**2))
    if kernel == "polynomial":
        return (A @ B.T / A.shape[1] + coef0) ** degree
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS} or pass a callable")


def _unit_rows(X: torch.Tensor) -> torch.Tensor:
    return X / X.norm(dim=1, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)


def _resolved_sigma(X: torch.Tensor, kernel: Kernel, sigma: float | None) -> float | None:
    return median_bandwidth(X) if kernel == "rbf" and sigma is None else sigma


# ------------------------------------------------------------------------------------- eigen solver
_CPU_SOLVER: list[str] = []


def _scipy_eigvalsh(M: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(scipy.linalg.eigvalsh(M.numpy(), overwrite_a=True, check_finite=False))


def cpu_solver() -> str:
    """"scipy" or "torch": whichever computes a 600 x 600 symmetric spectrum faster here (best of 3),
    measured once per process (the issue: scipy's was 2x faster on a 2-core CPU, not everywhere)."""
    if not _CPU_SOLVER:
        A = torch.rand(600, 600, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        A = A + A.T
        best = {}
        for name, solve in (("scipy", lambda: _scipy_eigvalsh(A.clone())), ("torch", lambda: torch.linalg.eigvalsh(A))):
            times = []
            for _ in range(3):
                start = time.perf_counter()
                solve()
                times.append(time.perf_counter() - start)
            best[name] = min(times)
        _CPU_SOLVER.append(min(best, key=best.get))
    return _CPU_SOLVER[0]


def symmetric_eigenvalues(M: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric matrix in float64, on ``M``'s device.

    CPU: scipy's LAPACK or torch's, whichever :func:`cpu_solver` measured faster; GPU:
    ``torch.linalg.eigvalsh`` with a CPU fallback when it fails (e.g. cusolver not converging)."""
    M = M.double()
    if M.device.type == "cpu":
        return _scipy_eigvalsh(M.clone()) if cpu_solver() == "scipy" else torch.linalg.eigvalsh(M)
    try:
        return torch.linalg.eigvalsh(M)
    except RuntimeError:
        return symmetric_eigenvalues(M.cpu()).to(M.device)


# ---------------------------------------------------------------------------------------- spectrum
@dataclass(frozen=True)
class Spectrum:
    """Normalised eigenvalues (descending, >= 0, summing to 1) of one kernel matrix, and every score
    they give. ``exact`` is False for Nystrom spectra; ``error`` then estimates the relative error of
    the order-1 Vendi score (difference between ``m`` and ``m/2`` landmarks)."""

    eigenvalues: torch.Tensor  # float64, descending, sum 1
    n: int
    exact: bool = True
    error: float = 0.0
    method: str = "exact"

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


def _normalised(values: torch.Tensor) -> torch.Tensor:
    values = values.double().clamp_min(0).sort(descending=True).values
    return values / values.sum()


def kernel_spectrum(X: torch.Tensor | None = None, *, K: torch.Tensor | None = None, kernel: Kernel = "cosine",
                    sigma: float | None = None, weights: torch.Tensor | None = None, method: str = "auto",
                    landmarks: int = 1000, approx_above: int = 12000, seed: int = 0) -> Spectrum:
    """The spectrum of ``K / tr K`` (or of ``diag(sqrt p) K diag(sqrt p) / sum p_i K_ii`` with weights p).

    ``method``: "exact", "nystrom", or "auto" (exact, except Nystrom for non-linear kernels with
    ``n > approx_above``). Linear and cosine kernels use the dual ``d x d`` matrix when ``d < n``.
    """
    if K is not None:
        return _exact_from_matrix(K, weights)
    n, d = X.shape
    sigma = _resolved_sigma(X, kernel, sigma)
    if kernel in ("cosine", "linear"):
        Y = _unit_rows(X.double()) if kernel == "cosine" else X.double()
        if weights is not None:
            Y = Y * weights.double().to(Y.device).sqrt()[:, None]
        gram = Y.T @ Y if d < n else Y @ Y.T
        return Spectrum(_normalised(symmetric_eigenvalues(gram)), n, method="dual" if d < n else "exact")
    if method == "nystrom" or (method == "auto" and n > approx_above):
        return nystrom_spectrum(X, kernel, sigma, landmarks, seed, weights)
    return _exact_from_matrix(pairwise_kernel(X.double(), X.double(), kernel, sigma), weights)


def _exact_from_matrix(K: torch.Tensor, weights: torch.Tensor | None) -> Spectrum:
    K = K.double()
    if weights is not None:
        root = weights.double().to(K.device).sqrt()
        K = K * root[:, None] * root[None, :]
    return Spectrum(_normalised(symmetric_eigenvalues(K)), K.shape[0])


def _nystrom_eigenvalues(X, kernel, sigma, m, gen, weights) -> torch.Tensor:
    n = X.shape[0]
    idx = torch.randperm(n, generator=gen)[:m].to(X.device)
    K_mm = pairwise_kernel(X[idx].double(), X[idx].double(), kernel, sigma)
    evals, evecs = torch.linalg.eigh(K_mm)
    keep = evals > evals.max() * 1e-10
    inv_root = evecs[:, keep] / evals[keep].sqrt()
    C = torch.cat([pairwise_kernel(chunk.double(), X[idx].double(), kernel, sigma) @ inv_root
                   for chunk in X.split(8192)])  # n x r, K ~ C C^T
    if weights is not None:
        C = C * weights.double().to(C.device).sqrt()[:, None]
    return symmetric_eigenvalues(C.T @ C)


def _with_flat_tail(top: torch.Tensor, n: int, trace: float) -> torch.Tensor:
    """Normalised Nystrom eigenvalues completed to n: the trace the low-rank part misses
    (``tr K - sum top``, known exactly) is spread evenly over the ``n - r`` remaining eigenvalues."""
    top = top.double().clamp_min(0).sort(descending=True).values
    missing = max(trace - float(top.sum()), 0.0)
    tail = torch.full((n - top.numel(),), missing / max(n - top.numel(), 1), dtype=torch.float64, device=top.device)
    return _normalised(torch.cat([top, tail]))


def nystrom_spectrum(X: torch.Tensor, kernel: Kernel, sigma: float | None, landmarks: int = 1000, seed: int = 0,
                     weights: torch.Tensor | None = None) -> Spectrum:
    """Nystrom approximation ``K ~ K_nm K_mm^+ K_mn`` with ``m`` seeded landmarks: O(n m^2); the trace
    it misses is spread as a flat tail (exact for ``K = low rank + c I``). The error estimate is the
    relative change of the order-1 Vendi score between m/2 and m landmarks."""
    n, m = X.shape[0], min(landmarks, X.shape[0])
    trace = float(weights.sum()) if weights is not None else float(n)  # unit-diagonal kernels (rbf, callable)
    if kernel == "polynomial" or weights is None and callable(kernel):
        diag = torch.stack([pairwise_kernel(x[None], x[None], kernel, sigma)[0, 0] for x in X.double()])
        trace = float((diag * (weights.double() if weights is not None else 1)).sum())
    gen = torch.Generator().manual_seed(seed)
    full = Spectrum(_with_flat_tail(_nystrom_eigenvalues(X, kernel, sigma, m, gen, weights), n, trace), n)
    half = Spectrum(_with_flat_tail(_nystrom_eigenvalues(X, kernel, sigma, max(m // 2, 2), gen, weights), n, trace), n)
    error = abs(full.vendi(1.0) - half.vendi(1.0)) / full.vendi(1.0)
    return Spectrum(full.eigenvalues, n, exact=False, error=error, method=f"nystrom m={m}")


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


def vendi_score(X: torch.Tensor | None = None, *, K: torch.Tensor | None = None, q: float = 1.0,
                kernel: Kernel = "cosine", sigma: float | None = None, weights: torch.Tensor | None = None) -> float:
    """Vendi score of order ``q`` in [0, inf]: ``VS_q = exp(log(sum lambda_i^q) / (1 - q))`` with
    ``lambda`` the eigenvalues of ``K / n`` (q = 1: ``exp(-sum lambda log lambda)``, q = inf:
    ``1 / max lambda``). ``X`` is n x d (kernel: cosine, linear, rbf with ``sigma`` or the median
    heuristic, polynomial, or a batched callable), or pass a precomputed kernel ``K`` with unit
    diagonal. ``weights`` p (summing to 1) use ``diag(sqrt p) K diag(sqrt p)``.
    Source: Friedman and Dieng 2023; formulas.md section 4."""
    if (X is None) == (K is None):
        raise ValueError("pass exactly one of X or K")
    if q < 0:
        raise ValueError("q must be >= 0")
    if q == 2 and weights is None:
        return order2_vendi(X, K=K, kernel=kernel, sigma=sigma)
    return kernel_spectrum(X, K=K, kernel=kernel, sigma=sigma, weights=weights, method="exact").vendi(q)


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
    return symmetric_eigenvalues(G * root[:, None] * root[None, :])


def dse_from_eigenvalues(eigenvalues: torch.Tensor, t: float = 1.0) -> float:
    """``mu_i = |lambda_i|^t / sum_j |lambda_j|^t``; DSE = ``-sum mu_i log2 mu_i`` bits, in [0, log2 n]."""
    powered = eigenvalues.double().abs() ** t
    mu = powered / powered.sum()
    mu = mu[mu > 0]
    return float(-(mu * mu.log2()).sum())


def diffusion_spectral_entropy(X: torch.Tensor, sigma: float, t: float = 1.0) -> float:
    """Diffusion spectral entropy in bits (Liao et al. 2023; formulas.md section 4). The reference
    default is sigma = 10, t = 1; sigma must suit the data's scale."""
    if sigma <= 0:
        raise ValueError("sigma must be > 0")
    return dse_from_eigenvalues(diffusion_eigenvalues(X, sigma), t)


def diffusion_spectral_mutual_information(X: torch.Tensor, labels, sigma: float, t: float = 1.0,
                                          repeats: int = 5, seed: int = 0) -> float:
    """DSMI(Z; Y) = ``sum_c (n_c/N) [mean_r DSE(random subset of size n_c) - DSE(Z | Y = c)]`` in bits:
    how much lower the entropy within a class is than that of a same-size random subset (larger =
    more label information). Classes with one member contribute 0."""
    labels = np.asarray(labels)
    if len(labels) != X.shape[0]:
        raise ValueError(f"{len(labels)} labels for {X.shape[0]} samples")
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for value in np.unique(labels):
        members = torch.from_numpy(np.flatnonzero(labels == value)).to(X.device)
        if len(members) < 2:
            continue
        conditional = diffusion_spectral_entropy(X[members], sigma, t)
        random_sets = [diffusion_spectral_entropy(
            X[torch.randperm(X.shape[0], generator=gen)[:len(members)].to(X.device)], sigma, t)
            for _ in range(repeats)]
        total += len(members) / X.shape[0] * (float(np.mean(random_sets)) - conditional)
    return total
