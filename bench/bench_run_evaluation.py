"""The evaluation panel's tables for a stored run, side by side with the loop a user would write.

Run: python bench/bench_run_evaluation.py [--quick] [--device cpu|cuda]

A synthetic stored run (DuckDB) of 1,000 questions x 20 measures at one temperature (the 16 measures
the app knows and 4 more registered for this benchmark; continuous uncertainties, 60 % right).
Ours: what the page's evaluation job computes, ``RunResults.evaluation(T)`` (AUROC, PR-AUC, PRR,
AURC, E-AURC with 1,000-resample bootstrap intervals, ECE and Brier) and ``tsu_intervals()``, then
the curves it draws (ROC, PR, risk-coverage of 3 measures, one reliability diagram). Baseline:
per measure and resample, scikit-learn's ``roc_auc_score`` and ``average_precision_score`` and
numpy rejection curves (``bench_evaluation.loop_table``), run on a subset of the resamples and
scaled to 1,000 ("extrapolated"). Error: the largest difference of the point estimates against
scikit-learn / numpy on the data. Aim (issue 15): under 2 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn import metrics as skm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evaluation import loop_table, numpy_aurc, numpy_prr, synthetic_measures  # noqa: E402

from explorer.analyses.runs import RunResults  # noqa: E402
from explorer.analyses.uncertainty_measures import MEASURE_LABELS  # noqa: E402
from explorer.data.store import ResultsStore  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/<name>.py` finds bench.common
from bench.common import print_run  # noqa: E402

N_QUESTIONS, N_MEASURES, N_RESAMPLES = 1000, 20, 1000
EXTRA = {f"bench_measure_{i}": f"Benchmark measure {i}" for i in range(N_MEASURES - len(MEASURE_LABELS))}


def stored_run(db: str) -> tuple[str, np.ndarray, np.ndarray]:
    MEASURE_LABELS.update(EXTRA)                     # 20 measures: 4 beyond the app's 16, for this process only
    names = list(MEASURE_LABELS)[:N_MEASURES]
    U, correct = synthetic_measures(N_QUESTIONS, N_MEASURES)
    U = U.abs()                                      # P(True) and MSP are -log p >= 0
    rows = [pd.DataFrame({"question_index": np.arange(N_QUESTIONS), "temperature": t, "measure": m,
                          "value": U[i].numpy() + 0.1 * k}) for k, t in enumerate((0.5, 1.0)) for i, m in enumerate(names)]
    rows += [pd.DataFrame({"question_index": np.arange(N_QUESTIONS), "temperature": t, "measure": "correct",
                           "value": correct.numpy()}) for t in (0.5, 1.0)]
    store = ResultsStore(db)
    try:
        questions = pd.DataFrame({"question": [f"Q{i}?" for i in range(N_QUESTIONS)], "answers": [["a"]] * N_QUESTIONS})
        run_id = store.create_run("synthetic", {"temperatures": [0.5, 1.0], "n_samples": 10}, questions)
        store.replace_measures(run_id, pd.concat(rows, ignore_index=True))
    finally:
        store.close()
    order = [names.index(m) for m in MEASURE_LABELS if m in names]      # RunResults lists measures in label order
    return run_id, (U.numpy() + 0.1)[order], correct.numpy()


def run(device: str = "cpu", quick: bool = False, repeats: int | None = None) -> list[dict]:
    """One case; ``[]`` for ``device="cuda"`` (the tables are float64 CPU work on a stored run)."""
    if device == "cuda":
        return []
    repeats = repeats or (2 if quick else 3)
    subset = 10 if quick else 50
    with tempfile.TemporaryDirectory(prefix="bench-run-evaluation-") as folder:
        db = os.path.join(folder, "runs.duckdb")
        run_id, U, correct = stored_run(db)
        results = RunResults(db, run_id, n_resamples=N_RESAMPLES).compute()
        chosen = tuple(results.measure_names[:3])

        def panel():
            results.forget(lambda key: key[0] == "tables")         # keep the run read, recompute every table
            table = results.evaluation(1.0)
            results.tsu_intervals()
            results.roc_curves(1.0, chosen), results.pr_curves(1.0, chosen), results.risk_coverage_curves(1.0, chosen)
            results.reliability(1.0, "p_true")
            return table
        panel()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            table = panel()
            times.append(time.perf_counter() - started)
    ours_s = min(times)
    from explorer.kernels.evaluation import bootstrap_weights

    counts = bootstrap_weights(N_QUESTIONS, N_RESAMPLES).numpy()[:subset]
    started = time.perf_counter()
    loop_table(U, correct, counts)
    for weights in counts:                                          # and PR-AUC, per measure and resample
        picks = np.repeat(np.arange(N_QUESTIONS), weights.astype(int))
        for u in U:
            skm.average_precision_score(1 - correct[picks], u[picks])
    loop_s = (time.perf_counter() - started) * N_RESAMPLES / subset
    error = max(max(abs(a - skm.roc_auc_score(1 - correct, u)), abs(p - numpy_prr(u, correct)),
                    abs(r - numpy_aurc(u, 1 - correct)[0]), abs(ap - skm.average_precision_score(1 - correct, u)))
                for u, a, p, r, ap in zip(U, table["AUROC"], table["PRR"], table["AURC"], table["PR-AUC"]))
    return [{"bench": "run_evaluation",
             "case": f"evaluation panel tables, {N_QUESTIONS} questions x {N_MEASURES} measures x {N_RESAMPLES} "
                     "resamples (5 statistics with intervals, ECE, Brier, TSU intervals, curves)",
             "ours_s": ours_s, "baseline": f"sklearn + numpy per measure and resample (extrapolated from {subset})",
             "baseline_s": loop_s, "ratio": loop_s / ours_s, "error": float(error),
             "note": f"cpu, {torch.get_num_threads()} torch threads; aim < 2 s"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print_run(lambda: run(args.device, args.quick), args.device)


if __name__ == "__main__":
    main()
