"""Training-dynamics kernels: the entropy law and its bootstrap, the forecast, entropy change vs covariance,
power laws, ensemble entropy decomposition, representation measures; against direct float64 computations,
scipy's linregress, and hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.kernels.diversity import (
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    median_bandwidth,
)
from explorer.kernels.training import (
    ensemble_uncertainty,
    entropy_change_vs_covariance,
    fit_entropy_law,
    fit_power_law,
    forecast_entropy_law,
    representation_entropy,
)


def law_data(n=60, a=0.2, b=1.0, noise=0.03, seed=0, high=2.0):
    rng = np.random.default_rng(seed)
    H = np.sort(rng.uniform(0.05, high, n))[::-1].copy()
    return H, -a * np.exp(H) + b + noise * rng.normal(size=n)


def lstsq_law(H, R):
    """a, b of R = -a exp(H) + b by numpy's SVD least squares (float64)."""
    design = np.stack([-np.exp(H), np.ones_like(H)], 1)
    (a, b), *_ = np.linalg.lstsq(design, R, rcond=None)
    return a, b


# ---------------------------------------------------------------------------------- entropy law
def test_fit_matches_float64_least_squares():
    H, R = law_data()
    fit = fit_entropy_law(H, R, bootstrap=200)
    a, b = lstsq_law(H, R)
    assert fit.a == pytest.approx(a, rel=1e-12)
    assert fit.b == pytest.approx(b, rel=1e-12)
    assert fit.ceiling == pytest.approx(b - a, rel=1e-12)
    expected = -a * np.exp(H) + b
    np.testing.assert_allclose(fit.fitted.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(fit.residuals.numpy(), R - expected, atol=1e-12)
    assert fit.r2 == pytest.approx(1 - ((R - expected) ** 2).sum() / ((R - R.mean()) ** 2).sum(), rel=1e-10)
    np.testing.assert_allclose(fit.predict(H).numpy(), expected, rtol=1e-12)


def test_exact_law_is_recovered_and_intervals_collapse():
    H = np.linspace(2.0, 0.0, 12)
    fit = fit_entropy_law(H, -0.3 * np.exp(H) + 0.9, bootstrap=300)
    assert (fit.a, fit.b, fit.ceiling) == pytest.approx((0.3, 0.9, 0.6), abs=1e-12)
    for (low, high), value in ((fit.a_interval, 0.3), (fit.b_interval, 0.9), (fit.ceiling_interval, 0.6)):
        assert low == pytest.approx(value, abs=1e-10) and high == pytest.approx(value, abs=1e-10)


def test_large_entropies_keep_precision():
    # exp(H) ~ 2e4 with a spread of ~1: uncentred normal equations would lose ~8 digits here.
    H = 10 + np.linspace(0, 0.05, 30)
    R = -1e-4 * np.exp(H) + 3 + np.sin(np.arange(30)) * 1e-3
    fit = fit_entropy_law(H, R, bootstrap=50)
    a, b = lstsq_law(H, R)
    assert fit.a == pytest.approx(a, rel=1e-9) and fit.b == pytest.approx(b, rel=1e-9)
    index = torch.randint(30, (50, 30), generator=torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_allclose(fit.samples.numpy(), [lstsq_law(H[i], R[i]) for i in index], rtol=1e-8)


def test_bootstrap_is_the_loop_of_lstsq_on_the_same_resamples():
    H, R = law_data(n=25, seed=3)
    fit = fit_entropy_law(H, R, bootstrap=40, seed=7)
    index = torch.randint(25, (40, 25), generator=torch.Generator().manual_seed(7)).numpy()
    direct = np.array([lstsq_law(H[i], R[i]) for i in index])
    np.testing.assert_allclose(fit.samples.numpy(), direct, rtol=1e-9, atol=1e-12)
    assert fit.a_interval == pytest.approx(tuple(np.quantile(direct[:, 0], [0.025, 0.975])), rel=1e-9)
    ceilings = direct[:, 1] - direct[:, 0]
    assert fit.ceiling_interval == pytest.approx(tuple(np.quantile(ceilings, [0.025, 0.975])), rel=1e-9)


def test_seeded_and_reproducible():
    H, R = law_data()
    first, second = fit_entropy_law(H, R, seed=4), fit_entropy_law(H, R, seed=4)
    assert first.a_interval == second.a_interval and first.ceiling_interval == second.ceiling_interval
    assert fit_entropy_law(H, R, seed=5).a_interval != first.a_interval


def test_recovers_the_law_within_its_intervals():
    H, R = law_data(n=80, a=0.25, b=0.95, noise=0.02, seed=11)
    fit = fit_entropy_law(H, R)
    assert fit.a_interval[0] <= 0.25 <= fit.a_interval[1]
    assert fit.b_interval[0] <= 0.95 <= fit.b_interval[1]
    assert fit.ceiling_interval[0] <= 0.70 <= fit.ceiling_interval[1]
    assert fit.ceiling_interval[1] - fit.ceiling_interval[0] < 0.05


def test_intervals_cover_at_about_the_nominal_rate():
    # 100 seeded data sets, 90% intervals: the percentile bootstrap over 30 steps covers 0.87-0.89 here
    # (slightly below nominal, as expected of it at small n); 0.80 is 3 binomial sd below 0.9.
    hits = np.zeros(3)
    for trial in range(100):
        H, R = law_data(n=30, a=0.2, b=1.0, noise=0.05, seed=100 + trial)
        fit = fit_entropy_law(H, R, bootstrap=300, seed=trial, level=0.9)
        hits += [fit.a_interval[0] <= 0.2 <= fit.a_interval[1], fit.b_interval[0] <= 1.0 <= fit.b_interval[1],
                 fit.ceiling_interval[0] <= 0.8 <= fit.ceiling_interval[1]]
    assert ((hits / 100 >= 0.80) & (hits / 100 <= 0.97)).all(), hits


def test_degenerate_resamples_are_dropped_not_averaged():
    # three of the four steps share one entropy: about (3/4)^4 = 32% of resamples hold only that value
    H, R = np.array([1.0, 1.0, 1.0, 0.5]), np.array([0.1, 0.2, 0.15, 0.6])
    fit = fit_entropy_law(H, R, bootstrap=500)
    assert fit.dropped > 0 and fit.bootstrap == 500 - fit.dropped
    assert torch.isfinite(fit.samples).all()
    assert all(math.isfinite(v) for v in fit.a_interval + fit.ceiling_interval)


@pytest.mark.parametrize("entropy, reward, message", [
    ([1.0, 0.5, 0.2], [0.1, 0.5, 0.8], "at least 4"),
    ([0.7] * 6, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "constant"),
    ([1.0, 1.0, 1.0, float(np.nextafter(1.0, 2.0))], [0.1, 0.2, 0.3, 0.4], "constant"),
    ([1.0, 0.5, float("nan"), 0.1], [0.1, 0.5, 0.8, 0.9], "NaN"),
    ([1.0, 0.5, 0.2, 0.1], [0.1, 0.5, float("inf"), 0.9], "NaN or infinite"),
    ([1.0, 0.5, 0.2, 0.1], [0.1, 0.5, 0.8], "4 entropy values for 3"),
])
def test_bad_inputs_raise_clear_errors(entropy, reward, message):
    with pytest.raises(ValueError, match=message):
        fit_entropy_law(entropy, reward, bootstrap=10)


# ------------------------------------------------------------------------------------- forecast
def test_forecast_predicts_the_held_out_steps_from_the_early_fit():
    H, R = law_data(n=50, seed=2)
    forecast = forecast_entropy_law(H, R, fraction=0.4, bootstrap=200)
    assert forecast.split == 20
    a, b = lstsq_law(H[:20], R[:20])
    np.testing.assert_allclose(forecast.predicted.numpy(), -a * np.exp(H[20:]) + b, rtol=1e-10)
    np.testing.assert_allclose(forecast.error.numpy(), -a * np.exp(H[20:]) + b - R[20:], atol=1e-12)
    assert forecast.mean_absolute_error == pytest.approx(np.abs(-a * np.exp(H[20:]) + b - R[20:]).mean())
    assert (forecast.low <= forecast.predicted + 1e-12).all() and (forecast.predicted <= forecast.high + 1e-12).all()


def test_forecast_uses_at_least_four_steps_and_may_hold_out_none():
    H, R = law_data(n=10)
    assert forecast_entropy_law(H, R, fraction=0.01, bootstrap=20).split == 4
    everything = forecast_entropy_law(H, R, fraction=1.0, bootstrap=20)
    assert everything.error.numel() == 0 and math.isnan(everything.mean_absolute_error)


# ----------------------------------------------------------------------- entropy change vs covariance
def test_entropy_change_is_aligned_with_the_covariance_of_its_step():
    H = np.array([2.0, 1.6, 1.5, 1.1, 1.0])
    C = np.array([0.4, 0.1, 0.45, 0.05, 9.9])  # the last step's covariance has no next entropy
    result = entropy_change_vs_covariance(H, C, steps=[10, 20, 30, 40, 50])
    np.testing.assert_allclose(result.entropy_change.numpy(), [-0.4, -0.1, -0.4, -0.1], atol=1e-12)
    np.testing.assert_allclose(result.covariance.numpy(), [0.4, 0.1, 0.45, 0.05])
    assert result.steps.tolist() == [10, 20, 30, 40]
    dh, c = np.diff(H), C[:-1]
    assert result.correlation == pytest.approx(np.corrcoef(dh, c)[0, 1], rel=1e-12)
    assert result.slope == pytest.approx((dh * c).sum() / (c * c).sum(), rel=1e-12)


def test_constant_covariance_has_no_correlation():
    result = entropy_change_vs_covariance([3.0, 2.0, 1.5, 1.0], [0.2, 0.2, 0.2, 0.2])
    assert math.isnan(result.correlation)
    assert result.slope == pytest.approx(0.2 * -2.0 / (3 * 0.2**2), rel=1e-12)  # sum(dH C) / sum(C^2)
    zero = entropy_change_vs_covariance([3.0, 2.0, 1.5, 1.0], [0.0, 0.0, 0.0, 0.0])
    assert math.isnan(zero.correlation) and math.isnan(zero.slope)


# ------------------------------------------------------------------------------------- power law
def test_power_law_recovers_exact_exponent():
    n = np.array([50, 100, 200, 400, 800, 1200.0])
    fit = fit_power_law(n, 3.0 * n ** -0.4)
    assert fit.k == pytest.approx(0.4, rel=1e-12) and fit.c == pytest.approx(3.0, rel=1e-12)
    assert fit.k_interval == pytest.approx((0.4, 0.4), abs=1e-9)
    np.testing.assert_allclose(fit.predict(n).numpy(), 3.0 * n ** -0.4, rtol=1e-12)


def test_power_law_interval_is_linregress_t_interval():
    rng = np.random.default_rng(0)
    n = np.repeat([50, 100, 200, 400, 800], 3).astype(float)  # replicates allowed
    y = 2.0 * n ** -0.5 * np.exp(0.1 * rng.normal(size=n.size))
    fit = fit_power_law(n, y, level=0.9)
    peer = scipy.stats.linregress(np.log(n), np.log(y))
    half = scipy.stats.t.ppf(0.95, n.size - 2) * peer.stderr
    assert fit.k == pytest.approx(-peer.slope, rel=1e-12)
    assert fit.c == pytest.approx(math.exp(peer.intercept), rel=1e-12)
    assert fit.k_interval == pytest.approx((-peer.slope - half, -peer.slope + half), rel=1e-10)
    assert fit.r2 == pytest.approx(peer.rvalue ** 2, rel=1e-10)


@pytest.mark.parametrize("sizes, values, message", [
    ([10, 20], [1.0, 0.5], "at least 3"),
    ([10, 20, 40], [1.0, 0.0, 0.5], "positive"),
    ([10, 10, 10], [1.0, 0.9, 0.8], "all sizes are equal"),
])
def test_power_law_bad_inputs(sizes, values, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(sizes, values)


# ------------------------------------------------------------------------------ ensemble entropy
def direct_decomposition(p):
    def entropy(q):
        return -np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0).sum(-1)
    predictive = entropy(p.mean(0))
    expected = entropy(p).mean(0)
    return predictive, expected, predictive - expected


def test_ensemble_decomposition_matches_float64_definition():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(7, 0.3), size=(5, 40))
    p[0, 0] = [1, 0, 0, 0, 0, 0, 0]  # 0 log 0 = 0
    result = ensemble_uncertainty(torch.from_numpy(p))
    for ours, direct in zip((result.predictive, result.expected, result.mutual_information), direct_decomposition(p)):
        np.testing.assert_allclose(ours.numpy(), direct, rtol=1e-10, atol=1e-12)


def test_ensemble_hand_cases():
    agree = torch.tensor([[[0.5, 0.5]], [[0.5, 0.5]]], dtype=torch.float64)
    parts = ensemble_uncertainty(agree)
    assert float(parts.predictive) == pytest.approx(math.log(2)) and float(parts.mutual_information) == 0.0
    disagree = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    parts = ensemble_uncertainty(disagree)
    assert float(parts.expected) == pytest.approx(0.0, abs=1e-12)  # 0 log 0 clamped at exp(-700) by token_entropy
    assert float(parts.mutual_information) == pytest.approx(math.log(2))
    thirds = torch.full((3, 4, 3), 1 / 3, dtype=torch.float64)  # identical members: no epistemic part
    assert (ensemble_uncertainty(thirds).mutual_information == 0).all()


@pytest.mark.parametrize("probs, message", [
    (torch.ones(4, 3), "members, n, K"),
    (torch.tensor([[[0.5, 0.6]]]), "sum to 1"),
    (torch.tensor([[[1.5, -0.5]]]), "non-negative"),
])
def test_ensemble_bad_inputs(probs, message):
    with pytest.raises(ValueError, match=message):
        ensemble_uncertainty(probs)


@settings(max_examples=25, deadline=None)
@given(members=st.integers(1, 5), k=st.integers(2, 6), seed=st.integers(0, 10_000), concentration=st.floats(0.05, 5))
def test_decomposition_bounds(members, k, seed, concentration):
    p = torch.from_numpy(np.random.default_rng(seed).dirichlet(np.full(k, concentration), size=(members, 8)))
    parts = ensemble_uncertainty(p)
    assert (parts.mutual_information >= 0).all()
    assert (parts.predictive <= math.log(k) + 1e-12).all()
    assert (parts.mutual_information <= math.log(members) + 1e-9).all()  # I(y; m) <= H(m)
    torch.testing.assert_close(parts.expected + parts.mutual_information, parts.predictive, rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), a=st.floats(0.01, 2), b=st.floats(-2, 2), n=st.integers(4, 40))
def test_noise_free_law_is_exact_for_any_parameters(seed, a, b, n):
    H = np.random.default_rng(seed).uniform(0, 3, n)
    if np.ptp(H) < 1e-6:
        return
    fit = fit_entropy_law(H, -a * np.exp(H) + b, bootstrap=20, seed=seed)
    assert fit.a == pytest.approx(a, rel=1e-8, abs=1e-10) and fit.b == pytest.approx(b, rel=1e-8, abs=1e-9)


# ------------------------------------------------------------------------- representations per epoch
def test_representation_entropy_reuses_the_diversity_kernels():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 15)
    Z = torch.from_numpy(rng.normal(size=(60, 6)) + 3 * labels[:, None])
    clusters = np.arange(60) % 3
    result = representation_entropy(Z, None, 1.5, labels, clusters, q=2.0)
    sigma = median_bandwidth(Z)
    assert result.sigma == sigma
    assert result.dse == pytest.approx(diffusion_spectral_entropy(Z, sigma, 1.5))
    assert result.dsmi_labels == pytest.approx(diffusion_spectral_mutual_information(Z, labels, sigma, 1.5))
    assert result.dsmi_inputs == pytest.approx(diffusion_spectral_mutual_information(Z, clusters, sigma, 1.5))
    gram = (Z / Z.norm(dim=1, keepdim=True)) @ (Z / Z.norm(dim=1, keepdim=True)).T
    assert result.vendi == pytest.approx(float(60**2 / (gram * gram).sum()), rel=1e-9)  # order 2: 1 / ||K/n||_F^2
    s = np.linalg.svd(Z.numpy(), compute_uv=False)
    assert result.effective_rank == pytest.approx(np.exp(-(s / s.sum() * np.log(s / s.sum())).sum()), rel=1e-9)
    assert result.dsmi_labels > 0.5  # tight classes carry label information


def test_representation_entropy_without_labels_or_inputs_is_nan_there():
    result = representation_entropy(torch.randn(30, 4, generator=torch.Generator().manual_seed(0)), sigma=2.0)
    assert math.isnan(result.dsmi_labels) and math.isnan(result.dsmi_inputs) and result.sigma == 2.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kernels_on_cuda_match_cpu():
    H, R = law_data()
    cpu = fit_entropy_law(torch.from_numpy(H), torch.from_numpy(R), bootstrap=300)
    gpu = fit_entropy_law(torch.from_numpy(H).cuda(), torch.from_numpy(R).cuda(), bootstrap=300)
    assert gpu.fitted.device.type == "cuda" and gpu.samples.device.type == "cuda"
    assert gpu.a == pytest.approx(cpu.a, rel=1e-10) and gpu.a_interval == pytest.approx(cpu.a_interval, rel=1e-9)
    p = torch.softmax(torch.randn(4, 50, 5, dtype=torch.float64), -1)
    on_gpu = ensemble_uncertainty(p.cuda())
    assert on_gpu.predictive.device.type == "cuda"
    torch.testing.assert_close(on_gpu.mutual_information.cpu(), ensemble_uncertainty(p).mutual_information)
