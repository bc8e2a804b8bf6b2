"""Vendi score: ours vs the vendi_score package and vs a bare eigensolver, side by side in one process.

    python bench/bench_vendi.py [--quick] [--device cpu|cuda]   # the run_all cases as a table
    python bench/bench_vendi.py --only exact|crossing|float32|cosine|nystrom   # one part
    python bench/bench_vendi.py --only slider                    # server-side q/t slider moves (Panel)

Cases (``run``): exact RBF Vendi at n = 2,000, 3,000, 5,000 end to end (kernel included for ours) against
``vendi_score.score_K`` given the kernel, and against the fastest bare float64 ``eigvalsh`` (scipy or torch)
of the same matrix (aim: ratio >= 0.83, i.e. ours within 1.2x); where scipy's and torch's eigensolvers
cross (``cpu_solver``: fixed below 2,000 and from 4,500, timed once per size bucket between); a float32 spectrum where its error bound allows (q = 3); cosine Vendi through the
dual ``d x d`` matrix against ``score_dual``; Nystrom against the exact spectrum.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from vendi_score import vendi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/bench_vendi.py` finds bench.common

from bench.common import no_cuda, result, table, timed  # noqa: E402
from explorer.kernels.diversity import (  # noqa: E402
    DISPLAY_RELATIVE_ERROR, cpu_solver, kernel_spectrum, pairwise_kernel, vendi_score,
)

BENCH = "vendi"
SIGMA = 6.0


def rbf_data(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 32)))


def exact_rbf(n: int, device: str) -> list[dict]:
    """Ours end to end (RBF kernel + spectrum + score) against score_K and the bare solvers on K / n."""
    X = rbf_data(n)
    K = (pairwise_kernel(X, X, "rbf", SIGMA) / n).numpy()
    ours_s, ours = timed(lambda: vendi_score(X.to(device), kernel="rbf", sigma=SIGMA), repeats=2, device=device)
    peer_s, peer = timed(lambda: vendi.score_K(K * n))
    scipy_s, _ = timed(lambda: scipy.linalg.eigvalsh(K), repeats=2)    # best of 2, as ours
    torch_s, _ = timed(lambda: torch.linalg.eigvalsh(torch.from_numpy(K)), repeats=2)
    where = "on the GPU" if device != "cpu" else f"cpu_solver: {cpu_solver(n)}"   # (timed by ours' first call)
    rows = [result(BENCH, f"exact RBF Vendi, n={n:,} ({device})", ours_s, "vendi_score.score_K (kernel given)", peer_s,
                   abs(ours - peer), "ours includes the kernel; score_K is given it")]
    fastest = min(("scipy", scipy_s), ("torch", torch_s), key=lambda pair: pair[1])
    rows.append(result(BENCH, f"exact RBF Vendi, n={n:,} ({device}) vs bare eigvalsh", ours_s,
                       f"bare float64 eigvalsh ({fastest[0]}, fastest)", fastest[1], None,
                       f"aim ratio >= 0.83 (ours <= 1.2x bare); bare scipy {scipy_s:.3f} s, torch {torch_s:.3f} s; "
                       f"{where}"))
    if device != "cpu":
        cpu_s, cpu_value = timed(lambda: vendi_score(X, kernel="rbf", sigma=SIGMA))
        rows.append(result(BENCH, f"exact RBF Vendi, n={n:,} ({device}) vs ours on CPU", ours_s, "ours on CPU", cpu_s,
                           abs(ours - cpu_value)))
    return rows


def solver_crossing(sizes: list[int]) -> list[dict]:
    """Bare scipy vs torch eigvalsh (float64) on RBF kernels: where torch starts to win (cpu_solver's rule)."""
    rows = []
    for n in sizes:
        X = rbf_data(n, seed=1)
        K = pairwise_kernel(X, X, "rbf", SIGMA)
        repeats = 3 if n <= 2000 else 1
        torch_s, _ = timed(lambda: torch.linalg.eigvalsh(K), repeats)
        scipy_s, _ = timed(lambda: scipy.linalg.eigvalsh(K.numpy().T, check_finite=False), repeats)
        rows.append(result(BENCH, f"eigensolver crossing, n={n:,}: torch", torch_s, "scipy", scipy_s, None,
                           f"cpu_solver picks {cpu_solver(n)} (ratio > 1: torch is faster)"))
    return rows


def float32_spectrum(n: int, q: float, device: str) -> list[dict]:
    X = rbf_data(n, seed=2)
    K = pairwise_kernel(X, X, "rbf", SIGMA).numpy()
    ours_s, ours = timed(lambda: vendi_score(X.to(device), kernel="rbf", sigma=SIGMA, q=q, precision="auto"),
                         repeats=2, device=device)
    peer_s, peer = timed(lambda: vendi.score_K(K, q=q))
    bound = kernel_spectrum(X, kernel="rbf", sigma=SIGMA, method="exact", precision="float32").vendi_error(q)
    kept = "float32 kept" if bound <= DISPLAY_RELATIVE_ERROR else "float64 (bound too large)"
    return [result(BENCH, f"RBF Vendi q={q:g}, n={n:,}, precision='auto' ({device})", ours_s,
                   "vendi_score.score_K (kernel given)", peer_s, abs(ours - peer),
                   f"{kept}: stated relative error bound {bound:.1e} (display needs <= {DISPLAY_RELATIVE_ERROR:g}); "
                   f"actual {abs(ours / peer - 1):.1e}")]


def cosine_dual(n: int, device: str) -> list[dict]:
    X = torch.from_numpy(np.random.default_rng(1).normal(size=(n, 384)).astype(np.float32))
    ours_s, ours = timed(lambda: vendi_score(X.to(device)), repeats=2, device=device)
    Xn = X.numpy().astype(np.float64)
    peer_s, peer = timed(lambda: vendi.score_dual(Xn))
    return [result(BENCH, f"cosine Vendi, n={n:,} x 384 ({device})", ours_s, "vendi_score.score_dual", peer_s,
                   abs(ours - peer), "both through the 384 x 384 dual matrix")]


def nystrom(n: int, landmarks: int, device: str) -> list[dict]:
    """Nystrom (extrapolated in the landmark count) against our exact spectrum on clustered data with a
    long spectral tail; error = relative error of the order-1 score."""
    gen = np.random.default_rng(2)
    centres = gen.normal(size=(50, 384)) * 0.6
    X = torch.from_numpy((centres[gen.integers(0, 50, n)] + gen.normal(size=(n, 384)) * 0.5).astype(np.float32))
    X = X.to(device)
    exact_s, exact = timed(lambda: kernel_spectrum(X, kernel="rbf", sigma=12.0, method="exact"), device=device)
    approx_s, approx = timed(lambda: kernel_spectrum(X, kernel="rbf", sigma=12.0, method="nystrom",
                                                     landmarks=landmarks), device=device)
    return [result(BENCH, f"Nystrom RBF Vendi, n={n:,} x 384, m={landmarks} ({device})", approx_s,
                   "exact spectrum (ours, float64)", exact_s, abs(approx.vendi() / exact.vendi() - 1),
                   f"error relative; estimated {approx.error:.1%}, guaranteed upper bound "
                   f"{approx.vendi_upper_bound():.2f} vs exact {exact.vendi():.2f}")]


def parts(device: str, quick: bool) -> dict:
    """The cases of ``run`` by name (``--only`` picks one)."""
    return {
        "exact": lambda: [row for n in (2_000, 3_000, 5_000) for row in exact_rbf(n, device)],
        "crossing": lambda: solver_crossing([1_000, 1_500] if quick else [1_000, 1_500, 2_500, 4_000])
        if device == "cpu" else [],
        "float32": lambda: float32_spectrum(3_000, 3.0, device),
        "cosine": lambda: cosine_dual(10_000 if quick else 100_000, device),
        "nystrom": lambda: nystrom(2_000 if quick else 10_000, 500 if quick else 1_000, device),
    }


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    if no_cuda(device):
        return []
    torch.set_grad_enabled(False)
    return [row for part in parts(device, quick).values() for row in part()]


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["slider", *parts("cpu", True)],
                        help="one part; slider: the server-side slider latency (Panel), not in the table")
    args = parser.parse_args()
    if args.only == "slider":
        slider_move_latency()
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if no_cuda(args.device):
        print("no CUDA device")
        return
    torch.set_grad_enabled(False)
    chosen = parts(args.device, args.quick)
    print(table([row for name, part in chosen.items() if args.only in (None, name) for row in part()]))


if __name__ == "__main__":
    main()
