"""Conformal sets at scale: ours vs MAPIE 1.6 SplitConformalClassifier (prefit) on the same softmax.

    python bench/bench_conformal.py [--quick] [--rows 50000] [--classes 1000] [--device cpu|cuda]

Synthetic softmax outputs (rows x classes, float64), half calibration, half test. For LAC, APS
(randomised) and RAPS (with the paper's tuning on 20% of the calibration rows), times "calibrate + sets"
for both libraries (ratio = MAPIE / ours; aim >= 5x for APS and RAPS at 50,000 x 1,000). Error: LAC, the
share of (row, label) cells where the sets differ (MAPIE admits scores up to qhat + 1e-8; the labels it
adds beyond ours are checked to lie within that); APS/RAPS, the difference in test coverage (both draw
their own U, so the randomised sets differ cell by cell by design). Then a new alpha on cached sorted
scores (order-statistic lookup + recount) against recomputing the sets from the probabilities.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/bench_conformal.py` finds bench.*

from bench.common import no_cuda, result, table, timed  # noqa: E402
from bench.peers import mapie_split_sets  # noqa: E402
from explorer.kernels import conformal as cp  # noqa: E402

warnings.filterwarnings("ignore")
BENCH = "conformal"
ALPHA = 0.1


def synthetic(rows: int, classes: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(rows, classes, generator=generator, dtype=torch.float64)
    probs = torch.softmax(logits, dim=1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return probs, labels


def mapie_sets(probs: np.ndarray, labels: np.ndarray, n_cal: int, alpha: float, score: str):
    include = "randomized" if score in ("aps", "raps") else True
    return mapie_split_sets(probs, labels, n_cal, alpha, score, include_last_label=include)[0]


def our_sets(probs, labels, n_cal: int, alpha: float, method: str, generator):
    cal, test = probs[:n_cal], probs[n_cal:]
    u = torch.rand(len(probs), generator=generator, dtype=probs.dtype).to(probs.device) if method != "lac" else None
    lam, k_reg = 0.0, 0
    if method == "raps":
        tune = n_cal // 5
        lam, k_reg = cp.tune_raps(cal[:tune], labels[:tune], alpha, u=u[:tune])
        cal, u_cal, labels_cal = cal[tune:], u[tune:n_cal], labels[tune:n_cal]
    else:
        u_cal, labels_cal = (None if u is None else u[:n_cal]), labels[:n_cal]
    qhat = cp.calibrate(cal, labels_cal, alpha, method, u=u_cal, lam=lam, k_reg=k_reg)
    return cp.prediction_sets(test, qhat, method, u=None if u is None else u[n_cal:], lam=lam, k_reg=k_reg)


def lac_difference(ours, theirs, test_probs, cal_probs, cal_labels, alpha) -> tuple[float, str]:
    """LAC: MAPIE's sets contain ours; any extra label lies within MAPIE's 1e-8 tolerance above qhat."""
    assert np.all(theirs | ~ours), "a label in our LAC set is missing from MAPIE's"
    extra = theirs & ~ours
    qhat = float(cp.calibrate(cal_probs, cal_labels, alpha, "lac"))
    excess = (1 - test_probs[extra]) - qhat
    assert np.all((excess > 0) & (excess <= 1e-8)), "MAPIE added a label beyond its tolerance"
    return float(extra.mean()), (f"identical sets except {int(extra.sum())} cells MAPIE adds within its qhat + 1e-8 "
                                 f"tolerance (max excess {excess.max() if extra.any() else 0:.1e})")


def coverage(sets: np.ndarray, labels: np.ndarray) -> float:
    return float(sets[np.arange(len(labels)), labels].mean())


def sets_vs_mapie(probs, labels, device: str) -> list[dict]:
    n_cal = len(labels) // 2
    probs_np, labels_np = probs.numpy(), labels.numpy()
    test_labels = labels_np[n_cal:]
    on_device, labels_on_device = probs.to(device), labels.to(device)
    small_p, small_y = synthetic(400, 10, seed=1)
    rows = []
    for method in ("lac", "aps", "raps"):
        mapie_sets(small_p.numpy(), small_y.numpy(), 200, ALPHA, method)  # warm-up: imports, first calls
        our_sets(small_p.to(device), small_y.to(device), 200, ALPHA, method, torch.Generator())
        ours_s, ours = timed(lambda: our_sets(on_device, labels_on_device, n_cal, ALPHA, method,
                                              torch.Generator().manual_seed(0)), repeats=2, device=device)
        mapie_s, theirs = timed(lambda: mapie_sets(probs_np, labels_np, n_cal, ALPHA, method))
        ours = ours.cpu().numpy()
        sizes = f"mean size ours {ours.sum(1).mean():.2f}, MAPIE {theirs.sum(1).mean():.2f}"
        if method == "lac":
            error, note = lac_difference(ours, theirs, probs_np[n_cal:], probs[:n_cal], labels[:n_cal], ALPHA)
        else:
            error = abs(coverage(ours, test_labels) - coverage(theirs, test_labels))
            note = (f"coverage ours {coverage(ours, test_labels):.4f}, MAPIE {coverage(theirs, test_labels):.4f} "
                    f"(target {1 - ALPHA:g}); aim ratio >= 5")
        case = f"{method.upper()} calibrate + sets, {len(labels):,} x {probs.shape[1]:,} ({device})"
        rows.append(result(BENCH, case, ours_s, "MAPIE 1.6 SplitConformalClassifier", mapie_s, error, f"{note}; {sizes}"))
        if device != "cpu":  # the same code on the CPU
            cpu_s, on_cpu = timed(lambda: our_sets(probs, labels, n_cal, ALPHA, method, torch.Generator().manual_seed(0)))
            rows.append(result(BENCH, case, ours_s, "ours on CPU", cpu_s, float((on_cpu.numpy() != ours).mean()),
                               "error: share of cells whose membership differs"))
    return rows


def new_alpha(probs, labels, device: str) -> list[dict]:
    """A move of alpha on cached sorted scores against recomputing the sets from the probabilities."""
    n_cal = len(labels) // 2
    probs, labels = probs.to(device), labels.to(device)
    rows = []
    for method in ("lac", "aps"):
        u = None if method == "lac" else torch.rand(len(labels), generator=torch.Generator().manual_seed(1),
                                                    dtype=probs.dtype).to(device)
        ranked = cp.rank_scores(probs, method, u=u)
        true = cp.ranked_true_scores(ranked, labels)
        ranked_test, sorted_cal, true_test = ranked.scores[n_cal:], true[:n_cal].sort().values, true[n_cal:]
        num_classes = probs.shape[1]

        def lookup(alpha):
            qhat = cp.order_statistic(sorted_cal, alpha)
            return cp.set_sizes_from_ranked(ranked_test, qhat, method), cp.admitted(true_test, qhat, method,
                                                                                   num_classes)

        alphas = np.linspace(0.01, 0.3, 10)
        lookup_s = np.median([timed(lambda: lookup(float(a)), repeats=3, device=device)[0] for a in alphas])
        direct_s, direct = timed(lambda: our_sets(probs, labels, n_cal, 0.3, method, torch.Generator().manual_seed(0))
                                 if method == "lac" else cp.prediction_sets(
                                     probs[n_cal:], cp.order_statistic(sorted_cal, 0.3), method, u=u[n_cal:]),
                                 device=device)
        sizes, _ = lookup(0.3)
        error = float((sizes.cpu() != direct.sum(1).cpu()).double().mean())
        rows.append(result(BENCH, f"{method.upper()} new alpha on cached sorted scores ({device})", float(lookup_s),
                           "sets recomputed from the probabilities (ours)", direct_s, error,
                           "median over 10 alphas; error = share of rows whose set size differs"))
    return rows


def run(device: str = "cpu", quick: bool = False, rows: int = 50_000, classes: int = 1_000) -> list[dict]:
    if no_cuda(device):
        return []
    with torch.no_grad():   # not set_grad_enabled(False): run_all runs the next benchmark in this thread
        probs, labels = synthetic(rows, classes)
        return sets_vs_mapie(probs, labels, device) + new_alpha(probs, labels, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=1_000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}")
    print(table(run(args.device, args.quick, args.rows, args.classes)))


if __name__ == "__main__":
    main()
