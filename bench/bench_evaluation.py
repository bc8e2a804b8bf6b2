"""Evaluation kernels side by side in one process: the bootstrap evaluation table, single measures, curves.

Run: python bench/bench_evaluation.py [--quick] [--device cpu|cuda] [--repeats R]

Cases (synthetic data, seeded; ratio = baseline / ours, > 1: ours is faster):
- the evaluation table of issue 15: 1,000 questions x 20 measures, 1,000 bootstrap resamples, with
  AUROC, PRR, AURC and E-AURC intervals (``evaluation_table``), against the loop a user would write:
  per measure and resample, scikit-learn's ``roc_auc_score`` plus numpy rejection curves
  (LM-Polygraph's PRR, Geifman's AURC). The loop runs a subset of the resamples (50; 10 with
  --quick) on the same resampled questions and its time is scaled to 1,000 (labelled
  "extrapolated"); error = the largest difference of the replicates on that subset. The measures
  are continuous (no ties), where the loop's argsort and our tie-averaged curves agree exactly.
- one measure on 100,000 answers: AUROC, average precision and the ROC curve against
  scikit-learn; PRR against the numpy rejection curves; equal-mass ECE against numpy
  (sort + array_split).
- the adaptive stopping rule replayed on 1,000 questions x 10 answers (rounds of 2) in one batched
  call, against a per-question Python loop of the same rule.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from sklearn import metrics as skm

from explorer.kernels import adaptive as A
from explorer.kernels import evaluation as E

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/<name>.py` finds bench.common
from bench.common import print_run  # noqa: E402


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeats: int, device: str = "cpu") -> float:
    fn()                                   # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return min(times)


def synthetic_measures(n_questions: int, n_measures: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous uncertainties (measure m separates wrong answers by a shift 2m / M) and 0/1 correctness."""
    g = torch.Generator().manual_seed(seed)
    correct = (torch.rand(n_questions, generator=g) < 0.6).double()
    shift = torch.linspace(0, 2, n_measures, dtype=torch.float64).unsqueeze(1)
    U = torch.randn(n_measures, n_questions, generator=g, dtype=torch.float64) + shift * (1 - correct)
    return U, correct


# ---------------------------------------------------------------- numpy / sklearn baselines ----

def rejection_auc(values_in_keep_order: np.ndarray) -> float:
    return float(np.mean(np.cumsum(values_in_keep_order) / np.arange(1, len(values_in_keep_order) + 1)))


def numpy_prr(u: np.ndarray, q: np.ndarray) -> float:
    ours, oracle, random = rejection_auc(q[np.argsort(u)]), rejection_auc(np.sort(q)[::-1]), q.mean()
    return (ours - random) / (oracle - random)


def numpy_aurc(u: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    aurc = rejection_auc(loss[np.argsort(u)])
    return aurc, aurc - rejection_auc(np.sort(loss))


def loop_table(U: np.ndarray, correct: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[r, 4, M] AUROC, PRR, AURC, E-AURC per resample and measure, one call at a time."""
    out = np.empty((len(counts), 4, len(U)))
    for r, weights in enumerate(counts):
        picks = np.repeat(np.arange(len(correct)), weights.astype(int))
        ok = correct[picks]
        for m, u in enumerate(U):
            uu = u[picks]
            out[r, 0, m] = skm.roc_auc_score(1 - ok, uu)
            out[r, 1, m] = numpy_prr(uu, ok)
            out[r, 2:, m] = numpy_aurc(uu, 1 - ok)
    return out


def numpy_ece(p: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    order = np.argsort(p, kind="stable")
    n = len(p)
    bins = np.arange(n) * n_bins // n
    total = 0.0
    for b in range(n_bins):
        rows = order[bins == b]
        total += len(rows) / n * abs(correct[rows].mean() - p[rows].mean())
    return total


def loop_adaptive(ids: np.ndarray, round_size: int, epsilon: float, patience: int, n_min: int, n_max: int) -> list[int]:
    """The stopping rule, question by question, round by round, with a Counter."""
    used = []
    for row in ids:
        trace, n = [], 0
        while True:
            n = min(n + round_size, n_max)
            shares = [c / n for c in Counter(row[:n].tolist()).values()]
            trace.append(-sum(s * math.log(s) for s in shares))
            window = trace[-(patience + 1):]
            if n >= n_max or (len(trace) > patience and n >= n_min and max(window) - min(window) < epsilon):
                used.append(n)
                break
    return used


# ---------------------------------------------------------------- cases -------------------------

def table_case(device: str, quick: bool, repeats: int) -> list[dict]:
    n_questions, n_measures, n_resamples = 1000, 20, 1000
    subset = 10 if quick else 50
    U, correct = synthetic_measures(n_questions, n_measures)
    Ud, cd = U.to(device), correct.to(device)
    ours_s = best_time(lambda: E.evaluation_table(Ud, cd, n_resamples=n_resamples), repeats, device)
    table = E.evaluation_table(Ud, cd, n_resamples=n_resamples)
    counts = E.bootstrap_weights(n_questions, n_resamples).numpy()[:subset]
    started = time.perf_counter()
    loop = loop_table(U.numpy(), correct.numpy(), counts)
    loop_s = (time.perf_counter() - started) * n_resamples / subset
    ours = torch.stack([table[name].replicates[:subset] for name in E.TABLE_STATISTICS], 1).cpu().numpy()
    return [{"bench": "evaluation",
             "case": f"evaluation table, {n_questions} questions x {n_measures} measures x {n_resamples} resamples "
                     f"(AUROC, PRR, AURC, E-AURC CIs)",
             "ours_s": ours_s, "baseline": f"sklearn roc_auc_score + numpy curves per measure and resample "
                                           f"(extrapolated from {subset} resamples)",
             "baseline_s": loop_s, "ratio": loop_s / ours_s, "error": float(np.abs(ours - loop).max()),
             "note": f"{device}; aim < 2 s; error: replicates on the {subset} shared resamples"}]


def single_cases(device: str, quick: bool, repeats: int) -> list[dict]:
    n = 20_000 if quick else 100_000
    g = torch.Generator().manual_seed(1)
    wrong = (torch.rand(n, generator=g) < 0.35).double()
    u = torch.randn(n, generator=g, dtype=torch.float64) + wrong
    conf = torch.sigmoid(-u)
    un, wn, cn = u.numpy(), wrong.numpy(), conf.numpy()
    ud, wd, cd = u.to(device), wrong.to(device), conf.to(device)
    rows = []

    def case(name, ours, baseline_name, baseline, error):
        ours_s, base_s = best_time(ours, repeats, device), best_time(baseline, repeats)
        rows.append({"bench": "evaluation", "case": f"{name}, n={n:,}", "ours_s": ours_s, "baseline": baseline_name,
                     "baseline_s": base_s, "ratio": base_s / ours_s, "error": error, "note": device})

    case("AUROC", lambda: E.auroc(ud, wd), "sklearn roc_auc_score", lambda: skm.roc_auc_score(wn, un),
         abs(float(E.auroc(ud, wd)) - skm.roc_auc_score(wn, un)))
    case("average precision", lambda: E.average_precision(ud, wd), "sklearn average_precision_score",
         lambda: skm.average_precision_score(wn, un),
         abs(float(E.average_precision(ud, wd)) - skm.average_precision_score(wn, un)))
    ours_curve, peer_curve = E.roc_curve(ud, wd), skm.roc_curve(wn, un)
    case("ROC curve", lambda: E.roc_curve(ud, wd), "sklearn roc_curve", lambda: skm.roc_curve(wn, un),
         max(float(np.abs(a.cpu().numpy() - b).max()) for a, b in zip(ours_curve[:2], peer_curve[:2])))
    case("PRR", lambda: E.prr(ud, 1 - wd), "numpy rejection curves (LM-Polygraph's PRR)",
         lambda: numpy_prr(un, 1 - wn), abs(float(E.prr(ud, 1 - wd)) - numpy_prr(un, 1 - wn)))
    case("ECE, 15 equal-mass bins", lambda: E.expected_calibration_error(cd, 1 - wd, 15), "numpy sort + bins",
         lambda: numpy_ece(cn, 1 - wn, 15),
         abs(float(E.expected_calibration_error(cd, 1 - wd, 15).ece) - numpy_ece(cn, 1 - wn, 15)))
    return rows


def adaptive_case(device: str, quick: bool, repeats: int) -> list[dict]:
    n_questions, n_answers, round_size = 1000, 10, 2
    rule = dict(epsilon=0.1, patience=2, n_min=4, n_max=n_answers)
    g = torch.Generator().manual_seed(2)
    spread = torch.randint(1, 5, (n_questions, 1), generator=g)                 # 1-4 meanings per question
    ids = (torch.rand(n_questions, n_answers, generator=g) ** 2 * spread).long()
    ids = torch.stack([torch.unique(row, return_inverse=True)[1] for row in ids])
    counts = torch.nn.functional.one_hot(ids, n_answers).view(n_questions, -1, round_size, n_answers).sum(2)
    counts_d = counts.to(device)
    ours_s = best_time(lambda: A.adaptive_stop(counts_d, **rule), repeats, device)
    loop_s = best_time(lambda: loop_adaptive(ids.numpy(), round_size, **rule), max(1, repeats // 2))
    ours = A.adaptive_stop(counts_d, **rule).n_used.cpu()
    loop = torch.tensor(loop_adaptive(ids.numpy(), round_size, **rule))
    saved = 1 - float(ours.double().mean()) / n_answers
    return [{"bench": "evaluation", "case": f"adaptive stopping replay, {n_questions} questions x {n_answers} answers",
             "ours_s": ours_s, "baseline": "per-question Python loop", "baseline_s": loop_s,
             "ratio": loop_s / ours_s, "error": float((ours - loop).abs().max()),
             "note": f"{device}; error: answers used; {saved:.0%} of the answers saved on this synthetic set"}]


def run(device: str = "cpu", quick: bool = False, repeats: int | None = None) -> list[dict]:
    """All cases side by side; ``[]`` when ``device="cuda"`` and CUDA is absent."""
    if device == "cuda" and not torch.cuda.is_available():
        return []
    repeats = repeats or (2 if quick else 3)
    return table_case(device, quick, repeats) + single_cases(device, quick, repeats) + adaptive_case(device, quick,
                                                                                                    repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    print_run(lambda: run(args.device, args.quick, args.repeats), args.device)


if __name__ == "__main__":
    main()
