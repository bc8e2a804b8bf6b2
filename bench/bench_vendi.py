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

from explorer.kernels.diversity import Spectrum, cpu_solver, kernel_spectrum, pairwise_kernel, vendi_score


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


def nystrom_error_and_time(n_exact: int, n_large: int, landmarks: int, seeds: int = 4) -> None:
    """Approximate RBF Vendi: error against the exact value at n_exact (several landmark seeds, next to
    the plain flat-tail Nystrom estimate it replaces), then the time at n_large."""
    gen = np.random.default_rng(2)
    centres = gen.normal(size=(50, 384)) * 0.6
    def sample(n):
        return torch.from_numpy((centres[gen.integers(0, 50, n)] + gen.normal(size=(n, 384)) * 0.5).astype(np.float32))
    X = sample(n_exact)
    sigma = 12.0
    t_exact, exact = timed(lambda: kernel_spectrum(X, kernel="rbf", sigma=sigma, method="exact"))
    print(f"RBF n={n_exact} x 384 (50 clusters + isotropic noise: a long spectral tail): exact Vendi "
          f"{exact.vendi():.2f} in {t_exact:.1f} s")
    for seed in range(seeds):
        t_ny, approx = timed(lambda: kernel_spectrum(X, kernel="rbf", sigma=sigma, method="nystrom",
                                                     landmarks=landmarks, seed=seed))
        flat = Spectrum(approx.eigenvalues, approx.n).vendi()
        print(f"   landmarks seed {seed}, m={landmarks}: extrapolated {approx.vendi():.2f} "
              f"(error {approx.vendi() / exact.vendi() - 1:+.2%}, estimated {approx.error:.2%}) in {t_ny:.2f} s | "
              f"plain Nystrom + flat tail {flat:.2f} ({flat / exact.vendi() - 1:+.2%}) | guaranteed upper bound "
              f"{approx.vendi_upper_bound():.2f} | q=2: {approx.vendi(2):.3f} vs {exact.vendi(2):.3f}")
    big = sample(n_large)
    for seed in range(2):
        t_big, spec = timed(lambda: kernel_spectrum(big, kernel="rbf", sigma=sigma, method="nystrom",
                                                    landmarks=landmarks, seed=seed))
        print(f"RBF Nystrom n={n_large} x 384, m={landmarks}, seed {seed}: {t_big:.2f} s, Vendi {spec.vendi():.2f} "
              f"(estimated error {spec.error:.2%}, upper bound {spec.vendi_upper_bound():.2f})")


def slider_move_latency(moves: int = 16) -> None:
    """A q or t move on cached spectra, server side, as the served app handles it: the diversity page
    (digits, n = 1,797) inside the app's template on a Bokeh document; the slider's new value arrives
    as the browser's event does (``_process_events``) and the clock stops when the page has updated
    its Bokeh models (cards, q marker, subsample and group bars, t marker) for the patch message.
    The whole browser round trip and redraw: ``bench/bench_diversity_slider.py``."""
    import statistics

    import panel as pn
    from bokeh.document import Document
    from panel.io.state import set_curdoc

    from explorer.analyses.diversity import Q_VALUES, DiversityAnalysis
    from explorer.data.embeddings import load_digits_set
    from explorer.views.diversity import DiversityExplorer

    view = DiversityExplorer(analysis=DiversityAnalysis(dataset=load_digits_set()))
    view.analysis.compute()
    view.results += 1  # the end of the background job: sources filled
    doc = Document()
    with set_curdoc(doc):
        template = pn.template.FastListTemplate(main=[view])
        template.server_doc(doc)
        widgets = {css: next(w for w in template.main[0].select(kind) if css in w.css_classes)
                   for css, kind in (("dv-q", pn.widgets.DiscreteSlider), ("dv-t", pn.widgets.FloatSlider))}
        q_steps = [Q_VALUES.index(q) for q in (1.5, 2.0, 3.0, 5.0, 3.0, 2.0, 1.5, 1.0)]
        t_steps = [1.25, 1.5, 1.75, 2.0, 1.75, 1.5, 1.25, 1.0]
        for name, steps, target in (("q", q_steps, widgets["dv-q"]._slider), ("t", t_steps, widgets["dv-t"])):
            times = []
            for step in (steps * moves)[:moves]:
                start = time.perf_counter()
                target._process_events({"value": step, "value_throttled": step})
                times.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            view.analysis.scores()
            reads = (time.perf_counter() - start) * 1e3
            print(f"{name} move on cached spectra (digits n=1797), widget event -> Bokeh models updated, server "
                  f"side, {moves} moves: p50 {statistics.median(times):.1f} ms, max {max(times):.1f} ms "
                  f"(score reads alone {reads:.2f} ms; browser round trip: bench/bench_diversity_slider.py)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["slider", "exact", "cosine", "nystrom"], help="run one part")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU eigensolver picked by measurement: "
          f"{cpu_solver()}")
    quick = args.quick
    parts = {
        "slider": slider_move_latency,
        "exact": lambda: exact_rbf(500, True) if quick else (exact_rbf(2_000, True), exact_rbf(5_000, False)),
        "cosine": lambda: cosine_large(10_000 if quick else 100_000),
        "nystrom": lambda: nystrom_error_and_time(2_000, 10_000, 500, seeds=2) if quick
        else nystrom_error_and_time(10_000, 100_000, 1000, seeds=6),
    }
    for name, run in parts.items():
        if args.only in (None, name):
            run()


if __name__ == "__main__":
    main()
