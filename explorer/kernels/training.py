"""Entropy across training: the entropy-collapse law of RL fine-tuning, the entropy change against the
covariance term, power laws of uncertainty against data size, ensemble (epistemic) uncertainty, and the
entropy / information of representations per checkpoint.

Pure torch (scipy only for a Student t quantile); results on the input's device; nats unless a name says
bits. Sources: Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language
Models" (R = -a exp(H) + b; entropy change ~ -Cov(log pi(a), A(a))); Rosso et al. 2025, "Scaling Laws for
Uncertainty in Deep Learning" (uncertainty ~ c n^-k); Lakshminarayanan et al. 2017 and Depeweg et al. 2018
(ensemble entropy decomposition); Liao et al. 2023 (DSE / DSMI, reused from :mod:`explorer.kernels.diversity`).
Definitions: ../shared/reference/formulas.md sections 4 and 6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import scipy.stats
import torch

from explorer.kernels.diversity import (
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    kernel_spectrum,
    median_bandwidth,
)
from explorer.kernels.entropy import token_entropy

MIN_FIT_POINTS = 4  # the entropy law has 2 parameters; fewer than 4 points leave no residual to judge it
_BOOTSTRAP_CELLS = 1 << 22  # resample rows x points counted at once (32 MiB of float64)


def _series(name: str, values) -> torch.Tensor:
    """A finite 1-D float64 tensor (on the input's device)."""
    values = values.to(torch.float64) if torch.is_tensor(values) else torch.tensor(values, dtype=torch.float64)
    if values.dim() != 1:
        raise ValueError(f"{name} must be one value per step (1-D), got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return values


def _paired(entropy, reward) -> tuple[torch.Tensor, torch.Tensor]:
    H, R = _series("entropy", entropy), _series("reward", reward)
    if H.shape != R.shape:
        raise ValueError(f"{len(H)} entropy values for {len(R)} rewards; give one of each per step")
    if len(H) < MIN_FIT_POINTS:
        raise ValueError(f"the entropy law needs at least {MIN_FIT_POINTS} steps, got {len(H)}")
    return H, R.to(H.device)


def _is_constant(x: torch.Tensor) -> bool:
    spread = float(x.max() - x.min())
    return spread <= 8 * torch.finfo(torch.float64).eps * float(x.abs().max())


def _interval(samples: torch.Tensor, level: float) -> tuple[float, float]:
    low, high = torch.quantile(samples, samples.new_tensor([(1 - level) / 2, (1 + level) / 2])).tolist()
    return low, high


# ------------------------------------------------------------------------------- entropy law
@dataclass(frozen=True)
class EntropyLawFit:
    """R = -a exp(H) + b fitted by least squares, with percentile-bootstrap intervals over steps.

    ``ceiling`` = b - a is the predicted reward at H = 0. ``fitted``/``residuals`` are per input step;
    ``samples`` holds the bootstrap (a, b) pairs (``bootstrap`` rows; resamples whose entropies were all
    equal are dropped and counted in ``dropped``)."""

    a: float
    b: float
    a_interval: tuple[float, float]
    b_interval: tuple[float, float]
    ceiling_interval: tuple[float, float]
    level: float
    fitted: torch.Tensor
    residuals: torch.Tensor
    r2: float
    samples: torch.Tensor
    dropped: int = 0

    @property
    def ceiling(self) -> float:
        return self.b - self.a

    @property
    def bootstrap(self) -> int:
        return int(self.samples.shape[0])

    def predict(self, entropy) -> torch.Tensor:
        """R(H) = -a exp(H) + b at the given entropies."""
        return -self.a * torch.as_tensor(entropy, dtype=torch.float64).exp() + self.b

    def prediction_interval(self, entropy) -> tuple[torch.Tensor, torch.Tensor]:
        """Percentile-bootstrap band (low, high) of the fitted curve at the given entropies."""
        x = torch.as_tensor(entropy, dtype=torch.float64, device=self.samples.device).exp()
        if x.numel() == 0:
            return x.clone(), x.clone()
        curves = -self.samples[:, :1] * x + self.samples[:, 1:]
        q = curves.new_tensor([(1 - self.level) / 2, (1 + self.level) / 2])
        low, high = torch.quantile(curves, q, dim=0)
        return low, high


def _line_fits(x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least squares r = -a x + b along the last dimension (rows = resamples): (a, b, sum of squares of
    the centred x). Centred sums: no cancellation when exp(H) is large."""
    mx, mr = x.mean(-1, keepdim=True), r.mean(-1, keepdim=True)
    dx = x - mx
    sxx = (dx * dx).sum(-1)
    a = -(dx * (r - mr)).sum(-1) / sxx
    return a, (mr + a.unsqueeze(-1) * mx).squeeze(-1), sxx


def fit_entropy_law(entropy, reward, bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> EntropyLawFit:
    """Fit ``R = -a exp(H) + b`` (Cui et al. 2025) by ordinary least squares and bootstrap over steps.

    The model is linear in (a, b) given ``x = exp(H)``: ``a = -Cov(x, R) / Var(x)``,
    ``b = mean(R) + a mean(x)``; the ceiling is ``R(H = 0) = b - a``. Intervals are percentile
    intervals of ``bootstrap`` seeded resamples of the (H, R) pairs with replacement, all fitted at
    once (no loop). Resampling steps treats them as exchangeable; consecutive steps of a real run are
    correlated, so the intervals are on the narrow side. Raises ValueError for fewer than 4 steps,
    NaN/inf, or constant entropy (no slope to fit).
    """
    H, R = _paired(entropy, reward)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if bootstrap < 2:
        raise ValueError(f"bootstrap needs at least 2 resamples, got {bootstrap}")
    x = H.exp()
    if _is_constant(x):
        raise ValueError("the entropy is constant across steps: the law has no slope to fit")
    a, b, _ = _line_fits(x, R)
    fitted = -a * x + b
    residuals = R - fitted
    total = float(((R - R.mean()) ** 2).sum())
    r2 = 1 - float((residuals ** 2).sum()) / total if total > 0 else 1.0
    samples = _bootstrap_fits(x, R, bootstrap, seed)
    kept = samples[torch.isfinite(samples).all(1)]
    if len(kept) < 2:
        raise ValueError("almost every bootstrap resample had a constant entropy; log more distinct steps")
    return EntropyLawFit(float(a), float(b), _interval(kept[:, 0], level), _interval(kept[:, 1], level),
                         _interval(kept[:, 1] - kept[:, 0], level), level, fitted, residuals, r2, kept,
                         len(samples) - len(kept))


def _bootstrap_fits(x: torch.Tensor, r: torch.Tensor, bootstrap: int, seed: int) -> torch.Tensor:
    """``bootstrap x 2`` (a, b) of seeded resamples (indices drawn on the CPU: the same draws on every
    device). Each resample is a row of counts, so its four sums (x, x^2, r, x r, on data centred once)
    are one ``counts @ moments`` product; a resample whose x are all equal (up to round-off) gets NaN."""
    n = len(x)
    x_mean, r_mean = x.mean(), r.mean()
    xc, rc = x - x_mean, r - r_mean
    moments = torch.stack([xc, xc * xc, rc, xc * rc], 1)
    index = torch.randint(n, (bootstrap, n), generator=torch.Generator().manual_seed(seed)).to(x.device)
    fits = []
    for chunk in index.split(max(1, _BOOTSTRAP_CELLS // n)):
        counts = torch.zeros(len(chunk), n, dtype=x.dtype, device=x.device)
        counts.scatter_add_(1, chunk, torch.ones_like(chunk, dtype=x.dtype))
        sx, sxx, sr, sxr = (counts @ moments).unbind(1)
        mx, mr = sx / n, sr / n
        spread = sxx - n * mx * mx
        a = -(sxr - n * mx * mr) / spread
        b = mr + a * mx + r_mean + a * x_mean
        degenerate = spread <= 1e-10 * sxx
        fits.append(torch.stack([a, b], 1).masked_fill(degenerate.unsqueeze(1), math.nan))
    return torch.cat(fits)


@dataclass(frozen=True)
class EntropyLawForecast:
    """The law fitted on the first ``split`` steps, predicting the rest: ``predicted`` and its bootstrap
    band (``low``, ``high``) for steps ``split..n-1``; ``error`` = predicted - observed per held-out step."""

    fit: EntropyLawFit
    split: int
    predicted: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    error: torch.Tensor

    @property
    def mean_absolute_error(self) -> float:
        return float(self.error.abs().mean()) if self.error.numel() else math.nan


def forecast_entropy_law(entropy, reward, fraction: float = 0.5, bootstrap: int = 1000, seed: int = 0,
                         level: float = 0.95) -> EntropyLawForecast:
    """Fit the law on the first ``ceil(fraction * n)`` steps (at least 4) and predict the reward of the
    remaining steps from their logged entropy (Cui et al. 2025: the ceiling is predictable early)."""
    H, R = _paired(entropy, reward)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    split = max(MIN_FIT_POINTS, math.ceil(fraction * len(H)))
    fit = fit_entropy_law(H[:split], R[:split], bootstrap, seed, level)
    predicted = fit.predict(H[split:])
    low, high = fit.prediction_interval(H[split:])
    return EntropyLawForecast(fit, split, predicted, low, high, predicted - R[split:])


# ------------------------------------------------------------------- entropy change vs covariance
@dataclass(frozen=True)
class EntropyCovariance:
    """Aligned series: ``entropy_change[i] = H[i+1] - H[i]`` against ``covariance[i]`` (the term measured
    on the batch of step i, before its update), with ``steps[i]`` the step of the update.
    ``correlation``: Pearson correlation (the mechanism predicts it negative; NaN when a series is
    constant); ``slope``: least squares ``dH ~ slope * Cov`` through the origin (the theory: -learning rate)."""

    steps: torch.Tensor
    entropy_change: torch.Tensor
    covariance: torch.Tensor
    correlation: float
    slope: float


def entropy_change_vs_covariance(entropy, covariance, steps=None) -> EntropyCovariance:
    """Entropy change per step against ``Cov(log pi(a), A(a))`` (Cui et al. 2025: under policy-gradient
    updates ``H_{k+1} - H_k ~ -eta Cov_{a ~ pi_k}(log pi_k(a), A(a))``; a positive covariance drives the
    entropy down). ``entropy[i]`` is the policy entropy before the update of step i and ``covariance[i]``
    the covariance on that update's batch. When the log keeps every k-th step the change spans k updates:
    compare the shapes (correlation), not the scale."""
    H, C = _series("entropy", entropy), _series("covariance", covariance)
    if H.shape != C.shape:
        raise ValueError(f"{len(H)} entropy values for {len(C)} covariance values; give one of each per step")
    if len(H) < 3:
        raise ValueError(f"the entropy change needs at least 3 steps, got {len(H)}")
    C = C.to(H.device)
    steps = torch.arange(len(H), device=H.device) if steps is None else torch.as_tensor(steps, device=H.device)
    if steps.shape != H.shape:
        raise ValueError(f"{len(steps)} steps for {len(H)} entropy values")
    change, cov = H[1:] - H[:-1], C[:-1]
    return EntropyCovariance(steps[:-1], change, cov, pearson_correlation(change, cov),
                             float((change * cov).sum() / (cov * cov).sum()) if bool((cov != 0).any()) else math.nan)


def pearson_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two 1-D series (float64, centred sums); NaN when either is constant (up to
    round-off: the mean of equal values can differ from them in the last bit)."""
    x, y = x.double(), y.double()
    if _is_constant(x) or _is_constant(y):
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denominator = float((dx * dx).sum().sqrt() * (dy * dy).sum().sqrt())
    return float((dx * dy).sum()) / denominator if denominator > 0 else math.nan


# --------------------------------------------------------------------------------- power law
@dataclass(frozen=True)
class PowerLawFit:
    """y = c n^-k fitted by least squares on log y = log c - k log n; ``k_interval`` is the Student t
    interval of the slope (n - 2 degrees of freedom) at ``level``."""

    c: float
    k: float
    k_interval: tuple[float, float]
    level: float
    r2: float
    fitted: torch.Tensor

    def predict(self, sizes) -> torch.Tensor:
        return self.c * torch.as_tensor(sizes, dtype=torch.float64) ** -self.k


def fit_power_law(sizes, values, level: float = 0.95) -> PowerLawFit:
    """Fit ``y = c n^-k`` (uncertainty against data size; Rosso et al. 2025) by log-log least squares.
    Repeated sizes (replicates) are allowed; needs at least 3 points, 2 distinct sizes, positive values."""
    n, y = _series("sizes", sizes), _series("values", values)
    if n.shape != y.shape:
        raise ValueError(f"{len(n)} sizes for {len(y)} values")
    if len(n) < 3:
        raise ValueError(f"a power law with an interval needs at least 3 points, got {len(n)}")
    if bool((n <= 0).any()) or bool((y.to(n.device) <= 0).any()):
        raise ValueError("sizes and values must be positive for a log-log fit")
    u, v = n.log(), y.to(n.device).log()
    if _is_constant(u):
        raise ValueError("all sizes are equal: no exponent to fit")
    minus_k, log_c, sxx = _line_fits(u, v)  # v = -minus_k u + log_c, so k = minus_k
    k = float(minus_k)
    fitted_log = -k * u + log_c
    residual = v - fitted_log
    dof = len(u) - 2
    se = math.sqrt(float((residual ** 2).sum()) / dof / float(sxx)) if dof > 0 else math.inf
    half = float(scipy.stats.t.ppf((1 + level) / 2, dof)) * se if dof > 0 else math.inf
    total = float(((v - v.mean()) ** 2).sum())
    r2 = 1 - float((residual ** 2).sum()) / total if total > 0 else 1.0
    return PowerLawFit(math.exp(float(log_c)), k, (k - half, k + half), level, r2, fitted_log.exp())


# -------------------------------------------------------------------------- ensemble uncertainty
@dataclass(frozen=True)
class EnsembleUncertainty:
    """Per input, nats: ``predictive`` H[mean_m p_m] = ``expected`` mean_m H[p_m] (aleatoric part) +
    ``mutual_information`` (epistemic part, the members' disagreement)."""

    predictive: torch.Tensor
    expected: torch.Tensor
    mutual_information: torch.Tensor


def ensemble_uncertainty(probs: torch.Tensor) -> EnsembleUncertainty:
    """Entropy decomposition of an ensemble's or MC-dropout's class probabilities ``[members, n, K]``:
    ``H[p_bar] = E_m H[p_m] + I(y; m)`` with ``p_bar = mean_m p_m`` (Depeweg et al. 2018). The mutual
    information is the difference of the two entropies, clamped at 0 (it is >= 0 by Jensen; round-off
    can make identical members' difference -1e-16)."""
    if probs.dim() != 3 or probs.shape[0] < 1 or probs.shape[2] < 1:
        raise ValueError(f"probs must be [members, n, K], got shape {tuple(probs.shape)}")
    p = probs if probs.dtype in (torch.float32, torch.float64) else probs.float()
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise ValueError("probabilities must be finite and non-negative")
    if not bool(torch.allclose(p.sum(-1), torch.ones((), dtype=p.dtype, device=p.device), atol=1e-4)):
        raise ValueError("each member's probabilities must sum to 1 over the classes")
    predictive = token_entropy(p.mean(0).log())
    expected = token_entropy(p.log()).mean(0)
    return EnsembleUncertainty(predictive, expected, (predictive - expected).clamp_min(0))


# ------------------------------------------------------------------- representations per checkpoint
def batched_dse(eigenvalues: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """Diffusion spectral entropy in bits of every row of ``[..., m]`` eigenvalues at diffusion time ``t``:
    ``mu_i = |lambda_i|^t / sum_j |lambda_j|^t`` along the last dimension, ``DSE = -sum_i mu_i log2 mu_i``
    (Liao et al. 2023; formulas.md section 4). The batched form of
    :func:`explorer.kernels.diversity.dse_from_eigenvalues`: every checkpoint (or class, or random subset)
    at once, so a diffusion-time move re-reads cached spectra without a loop. Zero eigenvalues (also zero
    padding) add nothing (0 log 0 = 0); an all-zero row gives 0."""
    if not t > 0:
        raise ValueError(f"the diffusion time t must be > 0, got {t}")
    powered = eigenvalues.double().abs() ** t
    total = powered.sum(-1, keepdim=True)
    mu = torch.where(total > 0, powered / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return -torch.special.xlogy(mu, mu).sum(-1) / math.log(2)


@dataclass(frozen=True)
class RepresentationEntropy:
    """Measures of one checkpoint's representations ``Z`` of a probe set (bits for DSE / DSMI)."""

    dse: float
    dsmi_labels: float  # DSMI(Z; Y), NaN without labels
    dsmi_inputs: float  # DSMI(Z; X) with X summarised by input clusters, NaN without them
    vendi: float
    effective_rank: float
    sigma: float


def representation_entropy(Z: torch.Tensor, sigma: float | None = None, t: float = 1.0, labels=None,
                           input_clusters=None, q: float = 1.0, vendi_kernel: str = "cosine", repeats: int = 5,
                           seed: int = 0) -> RepresentationEntropy:
    """DSE, DSMI with the labels and with the input clusters (the information plane's I(Z; Y) and
    I(Z; X): the DSMI kernel with the clusters of the inputs as the discrete variable), Vendi score of
    order ``q`` and the effective rank (Roy and Vetterli, of ``Z`` itself) of one ``n x d`` checkpoint.
    ``sigma=None``: the median pairwise distance of ``Z`` (scale-free, so epochs whose activations
    grow stay comparable); a number keeps one scale across checkpoints, as in the DSE paper."""
    sigma = median_bandwidth(Z) if sigma is None else float(sigma)
    dsmi = lambda groups: math.nan if groups is None else diffusion_spectral_mutual_information(
        Z, groups, sigma, t, repeats, seed)
    return RepresentationEntropy(diffusion_spectral_entropy(Z, sigma, t), dsmi(labels), dsmi(input_clusters),
                                 kernel_spectrum(Z, kernel=vendi_kernel).vendi(q),
                                 kernel_spectrum(Z, kernel="linear").effective_rank(), sigma)
