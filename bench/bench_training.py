"""Training dynamics: the entropy-law fit with 1,000 bootstrap resamples (ours, vectorised) against a loop of
numpy lstsq and of scipy curve_fit on the same resamples; DSE / DSMI per epoch of the bundled digits run
against the dse-dsmi package at the same sigma. Side by side in one process.

    python bench/bench_training.py [--quick] [--device cuda] [--threads 1]

On a loaded 2-core machine torch's second intra-op thread can make these small kernels 10-40x slower
(spin-waiting for a core); ``--threads 1`` shows the kernels without that contention.
"""

from __future__ import annotations

import argparse
import os
import time

import dse_dsmi
import numpy as np
import scipy.optimize
import torch

from explorer.data.training_logs import load_bundled_rl_log
from explorer.data.training_runs import DigitsTraining, load_digits_runs
from explorer.kernels.diversity import diffusion_spectral_entropy, diffusion_spectral_mutual_information
from explorer.kernels.training import fit_entropy_law

BOOTSTRAP = 1000
DSE_SIGMA = 10.0  # the DSE paper's default, as the peer's


def _timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def _case(case, ours_s, baseline, baseline_s, error, note="") -> dict:
    return {"bench": "training", "case": case, "ours_s": ours_s, "baseline": baseline, "baseline_s": baseline_s,
            "ratio": baseline_s / ours_s, "error": error, "note": note}


def _lstsq_loop(H: np.ndarray, R: np.ndarray, index: np.ndarray) -> np.ndarray:
    x = np.exp(H)
    return np.array([np.linalg.lstsq(np.stack([-x[i], np.ones(len(i))], 1), R[i], rcond=None)[0] for i in index])


def _curve_fit_loop(H: np.ndarray, R: np.ndarray, index: np.ndarray) -> np.ndarray:
    law = lambda h, a, b: -a * np.exp(h) + b
    return np.array([scipy.optimize.curve_fit(law, H[i], R[i], p0=(0.1, 1.0))[0] for i in index])


def law_cases(H: np.ndarray, R: np.ndarray, label: str, device: str, quick: bool) -> list[dict]:
    """Ours on ``device`` against both loops on the CPU, over the same seeded resamples."""
    H_t, R_t = torch.from_numpy(H).to(device), torch.from_numpy(R).to(device)
    fit_entropy_law(H_t, R_t, bootstrap=10)  # warm-up (CUDA context, first-call dispatch)
    fit, ours_s = _timed(lambda: fit_entropy_law(H_t, R_t, bootstrap=BOOTSTRAP, seed=0))
    if device == "cuda":
        torch.cuda.synchronize()
    draw = lambda: torch.randint(len(H), (BOOTSTRAP, len(H)), generator=torch.Generator().manual_seed(0)).numpy()
    index, draw_s = _timed(draw)  # the same resamples as ours; their drawing is timed on both sides
    ours = fit.samples.cpu().numpy()
    cases = []
    loops = [("numpy lstsq loop", _lstsq_loop, BOOTSTRAP)]
    loops.append(("scipy curve_fit loop", _curve_fit_loop, 100 if quick else BOOTSTRAP))
    for baseline, loop, count in loops:
        direct, baseline_s = _timed(lambda: loop(H, R, index[:count]))  # noqa: B023
        baseline_s = baseline_s * BOOTSTRAP / count + draw_s
        error = float(np.abs(direct - ours[:count]).max())
        note = f"{count} resamples timed, scaled to {BOOTSTRAP}" if count < BOOTSTRAP else ""
        cases.append(_case(f"entropy-law fit + {BOOTSTRAP} bootstrap resamples, {label} (n={len(H)})",
                           ours_s, baseline, baseline_s, error, note))
    return cases


def dse_cases(device: str, quick: bool) -> list[dict]:
    """DSE and DSMI with the labels per epoch of the bundled true-label run's second hidden layer."""
    setup = DigitsTraining(epochs=4) if quick else DigitsTraining()
    run = load_digits_runs(setup)["true labels"]
    stack, labels = run.layers["hidden 2"], run.labels
    epochs = range(0, len(run.epochs), 1 if quick else 5)
    on_device = stack.double().to(device)
    diffusion_spectral_entropy(on_device[0], DSE_SIGMA)  # warm-up (solver choice, CUDA context)
    ours_dse, ours_dse_s = _timed(lambda: [diffusion_spectral_entropy(on_device[e], DSE_SIGMA) for e in epochs])
    peer_dse, peer_dse_s = _timed(lambda: [dse_dsmi.diffusion_spectral_entropy(
        stack[e].double().numpy(), gaussian_kernel_sigma=DSE_SIGMA, t=1, max_N=None) for e in epochs])
    ours_mi, ours_mi_s = _timed(lambda: [diffusion_spectral_mutual_information(on_device[e], labels, DSE_SIGMA)
                                         for e in epochs])
    peer_mi, peer_mi_s = _timed(lambda: [dse_dsmi.diffusion_spectral_mutual_information(
        stack[e].double().numpy(), labels, reference_discrete=True, gaussian_kernel_sigma=DSE_SIGMA, t=1)[0]
        for e in epochs])
    size = f"{len(epochs)} epochs of {stack.shape[1]} x {stack.shape[2]}"
    mi_gap = float(np.abs(np.array(ours_mi) - np.array(peer_mi)).max())
    dse_gap = float(np.abs(np.array(ours_dse) - np.array(peer_dse)).max())
    return [_case(f"DSE per epoch, bundled digits run, hidden 2 ({size}), sigma={DSE_SIGMA:g}",
                  ours_dse_s / len(epochs), "dse-dsmi", peer_dse_s / len(epochs), dse_gap, "seconds per epoch"),
            _case(f"DSMI with labels per epoch, bundled digits run, hidden 2 ({size}), sigma={DSE_SIGMA:g}",
                  ours_mi_s / len(epochs), "dse-dsmi", peer_mi_s / len(epochs), None,
                  f"seconds per epoch; values differ by up to {mi_gap:.3f} bits: each draws its own random subsets")]


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    if device == "cuda" and not torch.cuda.is_available():
        return []
    rng = np.random.default_rng(0)
    H = np.sort(rng.uniform(0.05, 2.0, 300))[::-1].copy()
    R = -0.2 * np.exp(H) + 1.0 + 0.03 * rng.normal(size=H.size)
    log = load_bundled_rl_log().frame
    cases = law_cases(H, R, "synthetic", device, quick)
    cases += law_cases(log["entropy"].to_numpy(), log["reward"].to_numpy(), "bundled RL log", device, quick)
    return cases + dse_cases(device, quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = run(args.device, args.quick)
    for case in cases:
        error = "-" if case["error"] is None else f"{case['error']:.1e}"
        print(f"{case['case']}: ours {case['ours_s'] * 1e3:.1f} ms | {case['baseline']} "
              f"{case['baseline_s'] * 1e3:.1f} ms | ratio {case['ratio']:.1f}x | max diff {error}"
              + (f" | {case['note']}" if case["note"] else ""))
    print(f"device={args.device}, torch threads={torch.get_num_threads()}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
