"""Vendi / RKE / Renyi / effective rank / DSE / DSMI: hand cases, the vendi_score package, invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vendi_score import vendi

from explorer.kernels import diversity
from explorer.kernels.diversity import (
    DISPLAY_RELATIVE_ERROR,
    Spectrum,
    _normalised,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    kernel_spectrum,
    median_bandwidth,
    nystrom_spectrum,
    pairwise_kernel,
    vendi_score,
    vendi_vs_sample_size,
    water_filled,
)


def blobs(n=60, d=8, seed=0):
    gen = np.random.default_rng(seed)
    return torch.from_numpy(gen.normal(size=(n, d)))


# ------------------------------------------------------------------------------------ hand cases
def test_identical_samples_score_one_and_orthogonal_score_n():
    same = torch.ones(7, 3)
    assert vendi_score(same) == pytest.approx(1.0)
    assert vendi_score(same, q=math.inf) == pytest.approx(1.0)
    eye = torch.eye(5)
    for q in (0.0, 0.5, 1.0, 2.0, math.inf):
        assert vendi_score(eye, q=q) == pytest.approx(5.0)


def test_two_clusters_by_hand():
    # K = blockdiag(J_2, 1): eigenvalues of K/3 are 2/3, 1/3.
    K = torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]])
    p = np.array([2 / 3, 1 / 3])
    assert vendi_score(K=K) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert vendi_score(K=K, q=2) == pytest.approx(1 / (p**2).sum())
    assert vendi_score(K=K, q=math.inf) == pytest.approx(1.5)
    assert vendi_score(K=K, q=0) == pytest.approx(2.0)
    spec = kernel_spectrum(K=K)
    assert spec.renyi_bits(2) == pytest.approx(math.log2(1 / (p**2).sum()))
    assert spec.rke() == pytest.approx(1 / (p**2).sum())


def test_effective_rank_of_linear_kernel_is_roy_vetterli_of_x():
    X = blobs(40, 6)
    s = torch.linalg.svdvals(X)
    p = s / s.sum()
    expected = float(torch.exp(-(p * p.log()).sum()))
    assert kernel_spectrum(X, kernel="linear").effective_rank() == pytest.approx(expected, rel=1e-10)


def test_weights_match_the_package():
    X = blobs(30, 5)
    K = pairwise_kernel(X, X, "cosine")
    p = torch.rand(30, dtype=torch.float64)
    p = p / p.sum()
    ours = vendi_score(X, q=1, weights=p)
    assert ours == pytest.approx(vendi.score_K(K.numpy(), p=p.numpy()), rel=1e-8)
    assert vendi_score(K=K, weights=p) == pytest.approx(ours, rel=1e-8)


# ------------------------------------------------------------------------------- the peer package
@pytest.mark.parametrize("q", [1.0, 2.0, 0.5, 3.0])
def test_cosine_equals_vendi_score_package(q):
    # Each comparison on a full-rank matrix: with q < 1 the ~1e-16 eigenvalues of a rank-deficient
    # matrix add ~1e-8 each (lambda^q), and that noise depends on the LAPACK routine, not on the measure.
    X = blobs(80, 12, seed=1)  # n > d: the dual d x d matrix is full rank
    Xn = X.numpy()
    assert vendi_score(X, q=q) == pytest.approx(vendi.score_dual(Xn, q=q), rel=1e-8)
    Xn = blobs(40, 64, seed=1).numpy()  # n < d: the n x n kernel matrix is full rank
    K = Xn @ Xn.T / np.outer(np.linalg.norm(Xn, axis=1), np.linalg.norm(Xn, axis=1))
    assert vendi_score(K=torch.from_numpy(K), q=q) == pytest.approx(vendi.score_K(K, q=q), rel=1e-8)


@pytest.mark.parametrize("q", [1.0, 2.0])
def test_rbf_equals_vendi_score_package_documented_api(q):
    X = blobs(50, 4, seed=2)
    sigma = 1.7
    k = lambda a, b: math.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))  # noqa: E731
    expected = vendi.score(list(X.numpy()), k, q=q)
    assert vendi_score(X, kernel="rbf", sigma=sigma, q=q) == pytest.approx(expected, rel=1e-8)


def test_package_bugs_are_corrected():
    """vendi_score 0.0.3: q = inf gives NaN (0**inf, then -inf/-inf); score_X ignores q."""
    X = blobs(40, 6, seed=3)
    Xn = X.numpy()
    with np.errstate(all="ignore"):
        assert math.isnan(vendi.score_dual(Xn, q=math.inf))
    unit = Xn / np.linalg.norm(Xn, axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(unit @ unit.T / 40)
    assert vendi_score(X, q=math.inf) == pytest.approx(1 / lam.max(), rel=1e-10)
    assert vendi.score_X(Xn, q=2) == pytest.approx(vendi.score_X(Xn, q=1))  # the bug
    assert vendi_score(X, q=2) == pytest.approx(vendi.score_dual(Xn, q=2), rel=1e-8)
    assert vendi_score(X, q=2) < vendi_score(X, q=1)


def test_order2_shortcut_equals_eigen_path():
    X = blobs(70, 9, seed=4)
    for kernel in ("cosine", "linear", "rbf", "polynomial"):
        spec = kernel_spectrum(X, kernel=kernel, sigma=2.0, method="exact")
        assert vendi_score(X, q=2, kernel=kernel, sigma=2.0) == pytest.approx(spec.vendi(2), rel=1e-9)


def test_callable_kernel_and_median_bandwidth():
    X = blobs(30, 3, seed=5)
    sigma = median_bandwidth(X)
    rbf = lambda A, B: pairwise_kernel(A, B, "rbf", sigma)  # noqa: E731
    assert vendi_score(X, kernel=rbf) == pytest.approx(vendi_score(X, kernel="rbf"), rel=1e-10)
    d = torch.cdist(X, X)
    assert sigma == pytest.approx(float(d[torch.triu(torch.ones(30, 30), 1) > 0].median()))


def test_nystrom_is_close_and_says_so():
    X = blobs(600, 3, seed=6)
    exact = vendi_score(X, kernel="rbf", sigma=1.5)
    approx = kernel_spectrum(X, kernel="rbf", sigma=1.5, method="nystrom", landmarks=300)
    assert not approx.exact and approx.method.startswith("nystrom")
    assert approx.vendi() == pytest.approx(exact, rel=0.03)
    assert 0 <= approx.error < 0.2


def test_water_filling_by_hand():
    # missing mass 2 lifts the two zero slots to 1: [3, 1, 1, 1] / 6
    assert water_filled(torch.tensor([3.0, 1.0]), 4, 6.0).tolist() == pytest.approx([3 / 6, 1 / 6, 1 / 6, 1 / 6])
    # missing mass 4 also lifts the 1: tau = (4 + 1) / 3
    tau = 5 / 3
    assert water_filled(torch.tensor([3.0, 1.0]), 4, 8.0).tolist() == pytest.approx([3 / 8] + [tau / 8] * 3)
    # nothing missing: the spectrum itself
    assert water_filled(torch.tensor([2.0, 2.0]), 2, 4.0).tolist() == pytest.approx([0.5, 0.5])


def bulk_clusters(n, seed=3):
    """Clusters in 64 dimensions with isotropic noise: an RBF spectrum with a long, slowly decaying tail
    (the hard case for low-rank approximations)."""
    gen = np.random.default_rng(seed)
    centres = gen.normal(size=(10, 64)) * 0.6
    return torch.from_numpy(centres[gen.integers(0, 10, n)] + gen.normal(size=(n, 64)) * 0.5)


def test_nystrom_extrapolation_beats_the_flat_tail_and_the_bound_holds():
    X = bulk_clusters(1500)
    exact = kernel_spectrum(X, kernel="rbf", sigma=4.0, method="exact")
    approx = nystrom_spectrum(X, "rbf", 4.0, landmarks=300, seed=0)
    flat_tail = Spectrum(approx.eigenvalues, approx.n)  # the largest level alone, missing trace spread flat
    for q in (0.5, 1.0, 2.0):
        assert abs(approx.vendi(q) / exact.vendi(q) - 1) < 0.5 * abs(flat_tail.vendi(q) / exact.vendi(q) - 1) + 1e-3
    assert abs(approx.vendi() / exact.vendi() - 1) < 0.1
    for q in (0.0, 0.5, 1.0, 2.0, 3.0, math.inf):  # a guarantee, not an estimate
        assert approx.vendi_upper_bound(q) >= exact.vendi(q) * (1 - 1e-9)
        assert approx.vendi(q) <= approx.vendi_upper_bound(q) * (1 + 1e-12)
    assert approx.error == approx.vendi_error(1.0) > 0


def test_nested_levels_equal_separate_nystrom_approximations():
    X = bulk_clusters(400, seed=4)
    approx = nystrom_spectrum(X, "rbf", 4.0, landmarks=80, seed=2)
    chosen = torch.randperm(400, generator=torch.Generator().manual_seed(2))[:80]
    for k, values in zip(approx.levels, approx.level_eigenvalues):
        K_nm = pairwise_kernel(X, X[chosen[:k]], "rbf", 4.0)
        W = K_nm[chosen[:k]]
        W = W + 1e-6 * torch.eye(k, dtype=W.dtype)
        direct = torch.linalg.eigvals(torch.linalg.solve(W, K_nm.T @ K_nm)).real.sort(descending=True).values
        ours = values.sort(descending=True).values
        assert ours[:10].tolist() == pytest.approx(direct[:10].tolist(), rel=1e-4)
        assert float(ours.sum()) == pytest.approx(float(direct.sum()), rel=1e-4)


@settings(max_examples=15, deadline=None)
@given(st.integers(40, 120), st.integers(0, 10_000), st.sampled_from([0.5, 1.0, 2.0, math.inf]))
def test_nystrom_upper_bound_is_a_bound(n, seed, q):
    X = blobs(n, 6, seed=seed)
    weights = torch.from_numpy(np.random.default_rng(seed).dirichlet(np.ones(n)))
    for w in (None, weights):
        exact = kernel_spectrum(X, kernel="rbf", sigma=2.0, weights=w, method="exact")
        approx = nystrom_spectrum(X, "rbf", 2.0, landmarks=n // 4, seed=seed, weights=w)
        assert approx.vendi_upper_bound(q) >= exact.vendi(q) * (1 - 1e-6)


def test_subsample_curve_grows_and_is_seeded():
    X = blobs(100, 10, seed=7)
    curve = vendi_vs_sample_size(X, [10, 50, 100], repeats=3, seed=1)
    assert curve.shape == (3, 2)
    assert curve[0, 0] < curve[1, 0] < curve[2, 0]
    assert curve[2, 1] == pytest.approx(0.0, abs=1e-9)  # the whole set every time
    assert torch.equal(curve, vendi_vs_sample_size(X, [10, 50, 100], repeats=3, seed=1))


# --------------------------------------------------------------------------------- invariants
matrices = st.integers(2, 25).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, 8), st.integers(0, 10_000)))


@settings(max_examples=40, deadline=None)
@given(matrices)
def test_vendi_invariants(shape):
    n, d, seed = shape
    X = blobs(n, d, seed)
    scores = [vendi_score(X, q=q) for q in (0.0, 0.5, 1.0, 2.0, 5.0, math.inf)]
    assert all(1 - 1e-9 <= s <= n + 1e-9 for s in scores)
    assert all(a >= b - 1e-9 for a, b in zip(scores, scores[1:]))  # non-increasing in q
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    assert vendi_score(X[perm], kernel="rbf", sigma=1.0) == pytest.approx(vendi_score(X, kernel="rbf", sigma=1.0))


@settings(max_examples=30, deadline=None)
@given(matrices, st.floats(0.1, 20.0), st.floats(0.5, 4.0))
def test_dse_in_range(shape, sigma, t):
    n, d, seed = shape
    value = diffusion_spectral_entropy(blobs(n, d, seed), sigma, t)
    assert -1e-9 <= value <= math.log2(n) + 1e-9


# ------------------------------------------------------------------------------------ DSE / DSMI
def dse_numpy(X: np.ndarray, sigma: float, t: float) -> float:
    """The formula written out in float64 numpy, the non-symmetric P = D^-1 G way."""
    sq = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    G = np.exp(-sq / (2 * sigma**2))
    P = G / G.sum(1, keepdims=True)
    lam = np.abs(np.linalg.eigvals(P).real) ** t
    mu = lam / lam.sum()
    mu = mu[mu > 0]
    return float(-(mu * np.log2(mu)).sum())


@pytest.mark.parametrize("sigma,t", [(0.5, 1), (2.0, 1), (2.0, 3), (10.0, 1)])
def test_dse_matches_numpy(sigma, t):
    X = blobs(50, 4, seed=8)
    assert diffusion_spectral_entropy(X, sigma, t) == pytest.approx(dse_numpy(X.numpy(), sigma, t), rel=1e-7, abs=1e-9)


def test_dse_extremes():
    X = blobs(30, 50, seed=9) * 100
    assert diffusion_spectral_entropy(X, 1.0) == pytest.approx(math.log2(30), rel=1e-6)  # G ~ I
    assert diffusion_spectral_entropy(torch.zeros(30, 3) + 1e-3 * blobs(30, 3), 100.0) < 0.01


def test_dsmi_matches_numpy_and_rewards_labels():
    gen = np.random.default_rng(10)
    centres = gen.normal(size=(3, 5)) * 6
    labels = np.repeat(np.arange(3), 20)
    X = centres[labels] + gen.normal(size=(60, 5))
    Xt = torch.from_numpy(X)
    ours = diffusion_spectral_mutual_information(Xt, labels, sigma=2.0, repeats=4, seed=3)
    # direct: same seeded subsets drawn the same way
    torch_gen = torch.Generator().manual_seed(3)
    expected = 0.0
    for c in range(3):
        members = np.flatnonzero(labels == c)
        rand = [dse_numpy(X[torch.randperm(60, generator=torch_gen)[:20].numpy()], 2.0, 1) for _ in range(4)]
        expected += 20 / 60 * (np.mean(rand) - dse_numpy(X[members], 2.0, 1))
    assert ours == pytest.approx(expected, rel=1e-7)
    assert ours > 0.5
    shuffled = diffusion_spectral_mutual_information(Xt, gen.permutation(labels), sigma=2.0, repeats=4)
    assert abs(shuffled) < ours / 3


def test_spectrum_entropy_orders():
    spec = Spectrum(torch.tensor([0.5, 0.25, 0.25, 0.0], dtype=torch.float64), 4)
    assert spec.entropy(1) == pytest.approx(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)))
    assert spec.vendi(0) == pytest.approx(3.0)  # zero eigenvalue dropped
    assert spec.vendi(math.inf) == pytest.approx(2.0)


def test_bad_arguments():
    with pytest.raises(ValueError):
        vendi_score()
    with pytest.raises(ValueError):
        vendi_score(torch.eye(3), q=-1)
    with pytest.raises(ValueError):
        vendi_score(torch.eye(3), kernel="nope")
    with pytest.raises(ValueError):
        diffusion_spectral_mutual_information(torch.eye(3), [0, 1], sigma=1.0)


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 2.0, 3.0, math.inf])
def test_flat_tail_entropy_without_the_n_vector_equals_the_vector(q):
    from explorer.kernels.diversity import _flat_tail_entropy, _with_flat_tail

    top = torch.tensor([40.0, 7.0, 3.0, 0.5, 0.0])
    for n, trace in ((500, 100.0), (500, 50.5), (5, 50.5)):  # a tail, no missing trace, no room for a tail
        expected = Spectrum(_with_flat_tail(top, n, trace), n).entropy(q)
        assert _flat_tail_entropy(top, n, trace, q) == pytest.approx(expected, rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------ round-off of zero eigenvalues
def rank_deficient_cosine(n=40, d=30, rank=6, seed=0):
    """Rows in a rank-6 subspace, and the non-zero eigenvalues of the cosine kernel / n from a 6 x 6
    float64 problem (the other n - 6 are exactly 0)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    B = torch.randn(rank, d, generator=gen, dtype=torch.float64)
    X = A @ B
    Q, R = torch.linalg.qr(B.T)  # X = A R^T Q^T, Q orthonormal columns
    C = A @ R.T / X.norm(dim=1, keepdim=True)  # unit rows of X = C Q^T
    return X, torch.linalg.eigvalsh(C.T @ C) / n


def duplicated_rbf(copies=5, distinct=12, sigma=1.0, seed=1):
    """``distinct`` points each repeated ``copies`` times, and the non-zero eigenvalues of the RBF kernel / n:
    K = P K_12 P^T has those of diag(c)^1/2 K_12 diag(c)^1/2 (the rest exactly 0)."""
    Z = torch.randn(distinct, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    X = Z[torch.arange(copies * distinct) % distinct]
    K12 = pairwise_kernel(Z, Z, "rbf", sigma)
    return X, torch.linalg.eigvalsh(copies * K12) / (copies * distinct)


def vendi_from_exact_nonzero(values, q):
    values = values[values > 0]
    if q == 1:
        return math.exp(float(-(values * values.log()).sum()))
    return math.exp(math.log(float((values ** q).sum())) / (1 - q))


def test_order_zero_counts_the_rank_not_round_off():
    X, _ = rank_deficient_cosine()
    assert vendi_score(X, q=0) == 6                                     # dual 30 x 30 path (was 19)
    assert vendi_score(K=pairwise_kernel(X, X, "cosine"), q=0) == 6     # 40 x 40 kernel (was 24)
    assert vendi_score(X[:, :25].repeat(1, 4)[:20], q=0) <= 6           # n < d: the n x n path
    R, _ = duplicated_rbf()
    assert vendi_score(R, kernel="rbf", sigma=1.0, q=0) == 12           # was 36 here, 14 in the issue
    weights = torch.rand(60, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert vendi_score(R, kernel="rbf", sigma=1.0, q=0, weights=weights / weights.sum()) == 12


@pytest.mark.parametrize("q", [0.25, 0.5, 1.0, 3.0])
def test_rank_deficient_scores_equal_the_exact_zero_reference(q):
    X, exact = rank_deficient_cosine()
    assert vendi_score(X, q=q) == pytest.approx(vendi_from_exact_nonzero(exact, q), rel=1e-12)
    assert vendi_score(K=pairwise_kernel(X, X, "cosine"), q=q) == pytest.approx(
        vendi_from_exact_nonzero(exact, q), rel=1e-12)
    R, exact = duplicated_rbf()
    assert vendi_score(R, kernel="rbf", sigma=1.0, q=q) == pytest.approx(vendi_from_exact_nonzero(exact, q),
                                                                         rel=1e-12)


def test_effective_rank_of_rank_deficient_data_equals_the_exact_zero_reference():
    X, _ = rank_deficient_cosine()
    s = torch.linalg.svdvals(X)[:6]  # the other singular values are exactly 0
    p = s / s.sum()
    expected = math.exp(float(-(p * p.log()).sum()))
    for spectrum in (kernel_spectrum(X, kernel="linear"), kernel_spectrum(K=X @ X.T, kernel="linear")):
        assert spectrum.effective_rank() == pytest.approx(expected, rel=1e-12)  # was off by ~1e-7


def test_dse_of_duplicated_points_drops_round_off_eigenvalues():
    """Diffusion eigenvalues of 12 points repeated 5 times: the non-zero ones are those of
    C^1/2 D^-1/2 G D^-1/2 C^1/2 on the distinct points (C the counts, D = diag(G C 1))."""
    Z = torch.randn(12, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    X = Z[torch.arange(60) % 12]
    G = pairwise_kernel(Z, Z, "rbf", 1.5)
    degree = G.sum(1) * 5
    values = torch.linalg.eigvalsh(5 * G / torch.outer(degree.sqrt(), degree.sqrt()))
    for t in (0.5, 1.0, 2.0):
        mu = values.abs() ** t / (values.abs() ** t).sum()
        expected = float(-(mu * mu.log2()).sum())
        assert diffusion_spectral_entropy(X, 1.5, t) == pytest.approx(expected, rel=1e-12)  # t=0.5: was 1e-6 off


def test_round_off_tolerance_keeps_real_small_eigenvalues():
    values = torch.tensor([1.0, 1e-9, 1e-12, 3e-15, 1e-15, -2e-15], dtype=torch.float64)
    spectrum = Spectrum(_normalised(values, n=6), 6)  # tolerance 6 eps = 1.3e-15
    assert spectrum.eigenvalues.tolist() == pytest.approx([1, 1e-9, 1e-12, 3e-15, 0, 0], rel=1e-8, abs=0)
    assert spectrum.vendi(0) == 4


# ------------------------------------------------------------------------ float32 spectra
@pytest.mark.parametrize("n, sigma", [(150, 1.0), (400, 3.0)])
def test_float32_spectrum_error_is_within_its_bound(n, sigma):
    X = blobs(n, 6, seed=n)
    exact = kernel_spectrum(X, kernel="rbf", sigma=sigma, method="exact")
    single = kernel_spectrum(X, kernel="rbf", sigma=sigma, method="exact", precision="float32")
    assert single.eigenvalue_error > 0 and exact.vendi_error(1.0) == 0.0
    for q in (0.5, 1.0, 1.5, 3.0, math.inf):
        bound = single.vendi_error(q)
        assert abs(single.vendi(q) / exact.vendi(q) - 1) <= bound, q
        assert bound < 0.05
    assert math.isinf(single.vendi_error(0.0))  # a count cannot be certified


def test_auto_precision_uses_float32_only_below_the_display_precision():
    X = blobs(300, 6, seed=4)
    for q in (1.5, 3.0, math.inf):
        single = kernel_spectrum(X, kernel="rbf", sigma=2.0, method="exact", precision="float32")
        auto = vendi_score(X, kernel="rbf", sigma=2.0, q=q, precision="auto")
        exact = vendi_score(X, kernel="rbf", sigma=2.0, q=q)
        expected = single.vendi(q) if single.vendi_error(q) <= DISPLAY_RELATIVE_ERROR else exact
        assert auto == expected
        assert auto == pytest.approx(exact, rel=DISPLAY_RELATIVE_ERROR)
    assert vendi_score(X, kernel="rbf", sigma=2.0, q=1.0, precision="auto") == vendi_score(X, kernel="rbf", sigma=2.0)
    with pytest.raises(ValueError, match="precision"):
        vendi_score(X, precision="float16")


# ------------------------------------------------------------------------ eigensolver choice
def test_solver_choice_is_fixed_per_size_so_results_repeat_bit_for_bit(monkeypatch):
    assert diversity.cpu_solver(diversity.SCIPY_UP_TO) == "scipy"
    assert diversity.cpu_solver(diversity.TORCH_FROM) == "torch"
    X = blobs(150, 5, seed=8)
    first = kernel_spectrum(X, kernel="rbf", sigma=2.0).eigenvalues
    assert all(torch.equal(kernel_spectrum(X, kernel="rbf", sigma=2.0).eigenvalues, first) for _ in range(3))
    # between the two, the first matrix of a size bucket is timed with both solvers, once per process
    monkeypatch.setattr(diversity, "_TIMED_SOLVERS", {})
    n = diversity.SCIPY_UP_TO + 100
    assert diversity.cpu_solver(n) is None
    K = pairwise_kernel(blobs(n, 5, seed=9), blobs(n, 5, seed=9), "rbf", 2.0)
    before = K.clone()
    timed = diversity.symmetric_eigenvalues(K)
    chosen = diversity.cpu_solver(n)
    assert chosen in ("scipy", "torch") and diversity.cpu_solver(n + 20) == chosen   # same bucket
    assert torch.equal(K, before)
    assert torch.equal(diversity.symmetric_eigenvalues(K), timed)   # the chosen solver's values, every time
    assert torch.equal(timed, diversity._cpu_eigenvalues(K.clone(), chosen, overwrite=False))


@pytest.mark.parametrize("solver", ["scipy", "torch"])
def test_both_solvers_give_the_spectrum_and_leave_the_input_alone(monkeypatch, solver):
    monkeypatch.setattr(diversity, "cpu_solver", lambda n: solver)
    X = blobs(120, 5, seed=6)
    K = pairwise_kernel(X, X, "rbf", 2.0)
    before = K.clone()
    expected = np.linalg.eigvalsh(K.numpy())
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
        values = diversity.symmetric_eigenvalues(K, dtype)
        assert values.dtype == torch.float64 and np.allclose(values.numpy(), expected, atol=tolerance)
        assert torch.equal(K, before)
    scratch = K.clone()
    assert np.allclose(diversity.symmetric_eigenvalues(scratch, overwrite=True).numpy(), expected, atol=1e-12)
