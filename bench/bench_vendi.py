"""Vendi score: ours vs the vendi_score package and vs a bare eigensolver, in one process.

    python bench/bench_vendi.py            # n = 2,000 and 5,000 RBF, cosine 100k, Nystrom 100k
    python bench/bench_vendi.py --quick    # smaller sizes
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import scipy.linalg
import torch
from vendi_score import vendi

from explorer.kernels.diversity import cpu_solver, kernel_spectrum, pairwise_kernel, vendi_score


def timed(fn, repeats=1):
    best, value = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def exact_rbf(n: int, with_python_kernel: bool) -> None:
    X = torch.from_numpy(np.random.default_rng(0).normal(size=(n, 32)))
    sigma = 6.0
    K = pairwise_kernel(X, X, "rbf", sigma).numpy()
    t_ours, ours = timed(lambda: vendi_score(X, kernel="rbf", sigma=sigma), repeats=2)
    t_scipy, _ = timed(lambda: scipy.linalg.eigvalsh(K / n))
    t_torch, _ = timed(lambda: torch.linalg.eigvalsh(torch.from_numpy(K / n)))
    t_score_k, peer = timed(lambda: vendi.score_K(K))
    print(f"RBF exact n={n}: ours {t_ours:.2f} s (end to end, kernel included) | vendi.score_K {t_score_k:.2f} s "
          f"(kernel given) ratio {t_score_k / t_ours:.2f}x | bare scipy eigvalsh {t_scipy:.2f} s, "
          f"torch eigvalsh {t_torch:.2f} s: ours / fastest bare = {t_ours / min(t_scipy, t_torch):.2f} | "
          f"values {ours:.10f} vs {peer:.10f}")
    if with_python_kernel:
        Xn = list(X.numpy())
        k = lambda a, b: math.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))  # noqa: E731
        t_score, peer = timed(lambda: vendi.score(Xn, k))
        print(f"   vendi.score(samples, k) (documented API) {t_score:.1f} s: ours is {t_score / t_ours:.0f}x faster "
              f"| value {peer:.10f}")


def cosine_large(n: int) -> None:
    X = torch.from_numpy(np.random.default_rng(1).normal(size=(n, 384)).astype(np.float32))
    t_ours, ours = timed(lambda: vendi_score(X), repeats=2)
    t_dual, peer = timed(lambda: vendi.score_dual(X.numpy().astype(np.float64)))
    print(f"cosine exact n={n} x 384: ours {t_ours:.2f} s | vendi.score_dual {t_dual:.2f} s "
          f"ratio {t_dual / t_ours:.2f}x | values {ours:.8f} vs {peer:.8f}")


def nystrom_error_and_time(n_exact: int, n_large: int, landmarks: int) -> None:
    gen = np.random.default_rng(2)
    centres = gen.normal(size=(50, 384)) * 0.6
    def sample(n):
        return torch.from_numpy((centres[gen.integers(0, 50, n)] + gen.normal(size=(n, 384)) * 0.5).astype(np.float32))
    X = sample(n_exact)
    sigma = 12.0
    t_exact, exact = timed(lambda: vendi_score(X, kernel="rbf", sigma=sigma))
    t_ny, approx = timed(lambda: kernel_spectrum(X, kernel="rbf", sigma=sigma, method="nystrom", landmarks=landmarks))
    print(f"RBF n={n_exact}: exact {exact:.4f} in {t_exact:.1f} s | Nystrom m={landmarks} {approx.vendi():.4f} in "
          f"{t_ny:.2f} s: error {abs(approx.vendi() - exact) / exact:.2%} (estimated {approx.error:.2%})")
    big = sample(n_large)
    t_big, spec = timed(lambda: kernel_spectrum(big, kernel="rbf", sigma=sigma, method="nystrom", landmarks=landmarks))
    print(f"RBF Nystrom n={n_large} x 384, m={landmarks}: {t_big:.2f} s, Vendi {spec.vendi():.4f}, "
          f"estimated error {spec.error:.2%}")


def slider_move_latency() -> None:
    """A q or t move on cached spectra: analysis reads plus HoloViews -> Bokeh rendering of the plots."""
    import holoviews as hv

    from explorer.analyses.diversity import DiversityAnalysis
    from explorer.data.embeddings import load_digits_set
    from explorer.views.diversity import DiversityExplorer

    view = DiversityExplorer(analysis=DiversityAnalysis(dataset=load_digits_set()))
    view.analysis.compute()
    plots = (view._cards, view._vendi_curve, view._dse_curve, view._group_plot, view._subsample_plot)
    for name, values in (("q", [2.0, 3.0, 1.0, 0.5]), ("t", [2.0, 3.0, 1.5, 1.0])):
        start = time.perf_counter()
        for value in values:
            setattr(view.analysis, name, value)
            for plot in plots:
                out = plot()
                if not hasattr(out, "object"):
                    hv.render(out)
        elapsed = (time.perf_counter() - start) / len(values)
        start = time.perf_counter()
        for value in values:
            setattr(view.analysis, name, value)
            view.analysis.scores()
        reads = (time.perf_counter() - start) / len(values)
        print(f"{name} move on cached spectra (digits n=1797): score reads {reads * 1000:.2f} ms; reads + rebuilding "
              f"the 5 affected plots as Bokeh models {elapsed * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU eigensolver picked by measurement: "
          f"{cpu_solver()}")
    slider_move_latency()
    if args.quick:
        exact_rbf(500, True)
        cosine_large(10_000)
        nystrom_error_and_time(2_000, 10_000, 500)
        return
    exact_rbf(2_000, True)
    exact_rbf(5_000, False)
    cosine_large(100_000)
    nystrom_error_and_time(10_000, 100_000, 1000)


if __name__ == "__main__":
    main()
