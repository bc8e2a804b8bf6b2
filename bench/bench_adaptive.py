"""Adaptive sampling against a fixed N = 10, side by side in one process, with the real model.

Run: python bench/bench_adaptive.py [--quick] [--device cpu|cuda]

The same Q questions of ``data/questions.csv`` (reference answers), temperatures 0.5 and 1.0, 16
new tokens, no P(True) or Inv-Entropy: one fixed-N run (N = 10) and one adaptive run (rounds of
2, epsilon 0.1 nats over 2 rounds, N_min 4, N_max 10), each timed end to end (sampling and
measures). Reported: answers generated, wall time (ratio = fixed / adaptive, > 1: adaptive is
faster), and per measure the AUROC at T = 1 of both runs with their paired bootstrap difference
(adaptive - fixed, same questions, 1,000 resamples); error = |ΔAUROC| of semantic entropy. Fewer
answers per generate call make each answer dearer, so the time saved is below the answers saved.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/<name>.py` finds bench.common
from bench.common import print_run  # noqa: E402

RULE = dict(adaptive_round=2, adaptive_epsilon=0.1, adaptive_rounds=2, adaptive_min=4)
MEASURES = ("se_discrete", "msp", "mean_token_entropy")


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    """Both runs side by side; ``[]`` when ``device="cuda"`` and CUDA is absent."""
    if device == "cuda" and not torch.cuda.is_available():
        return []
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from explorer.analyses.runs import RunComparison, RunResults
    from explorer.analyses.temperature import TemperatureAnalysis
    from explorer.analyses.uncertainty_measures import MEASURE_LABELS
    from explorer.models.language_model import load_language_model

    n_questions = 8 if quick else 40
    lm = load_language_model(device=device)
    with tempfile.TemporaryDirectory(prefix="bench-adaptive-") as folder:
        db = os.path.join(folder, "runs.duckdb")
        common = dict(max_questions=n_questions, temperatures=[0.5, 1.0], n_samples=10, max_new_tokens=16,
                      batch_questions=4, with_p_true=False, with_inv_entropy=False, db_path=db)
        times, ids = {}, {}
        for name, extra in (("fixed", {}), ("adaptive", dict(adaptive=True, **RULE))):
            started = time.perf_counter()
            ids[name] = TemperatureAnalysis(**common, **extra).run(lm=lm)
            times[name] = time.perf_counter() - started
        adaptive, fixed = RunResults(db, ids["adaptive"]).compute(), RunResults(db, ids["fixed"]).compute()
        comparison = RunComparison(adaptive, fixed).compute()
        answers = {name: r.answers_summary()["answers"] for name, r in (("adaptive", adaptive), ("fixed", fixed))}
        parts, se_difference = [], None
        for m in MEASURES:
            diff = comparison.paired_difference(m, 1.0)
            a, f = (r.evaluation(1.0).loc[MEASURE_LABELS[m], "AUROC"] for r in (adaptive, fixed))
            parts.append(f"{m}: AUROC {a:.3f} vs {f:.3f}, Δ {diff['estimate']:+.3f} [{diff['low']:+.3f}, "
                         f"{diff['high']:+.3f}]")
            se_difference = abs(diff["estimate"]) if m == "se_discrete" else se_difference
        wrong = int(fixed.evaluation(1.0)["wrong"].max())
    return [{"bench": "adaptive",
             "case": f"adaptive vs fixed N=10, {n_questions} questions x 2 T (sampling + measures)",
             "ours_s": times["adaptive"], "baseline": "fixed N=10", "baseline_s": times["fixed"],
             "ratio": times["fixed"] / times["adaptive"], "error": se_difference,
             "note": (f"{device}; answers {answers['adaptive']} vs {answers['fixed']} "
                      f"({1 - answers['adaptive'] / answers['fixed']:.0%} saved); at T=1 ({wrong} of {n_questions} "
                      f"wrong, fixed run): " + "; ".join(parts) + "; error: |ΔAUROC| of semantic entropy")}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print_run(lambda: run(args.device, args.quick), args.device)


if __name__ == "__main__":
    main()
