"""A sweep's sampling on a Dask LocalCluster (2 worker processes, one thread each) against the
single-process sweep, side by side in one process, on the same batches (same questions, seeds).

Run: python bench/bench_sweep.py [--quick] [--device cpu|cuda]

Cases (ratio = baseline / ours, > 1: ours is faster):
- sampling throughput: the answer batches of Q questions x 2 temperatures (N answers, 16 new
  tokens, 2 questions per batch) on ``local:2`` with the workers warm (model loaded), against the
  same batches in this process with torch's default threads, and with one thread (a worker's
  arithmetic: the answers are then bit-for-bit equal, error = 0);
- scheduler overhead per batch: a batch's stored rows sent to a worker and back (40 in flight),
  against the mean time to sample one batch here;
- start-up: a LocalCluster of 2 workers, each loading the model (the plugin), against loading
  the model in this process (cached).
On a 2-core machine expect little gain: two one-thread workers use the same two cores as one
two-thread process. With a GPU per worker (``--device cuda`` on a multi-GPU machine: worker i uses
cuda:i), each batch runs on its own device and the throughput grows with the number of GPUs
until the client's writes (~ms per batch) or the scheduler's overhead per batch dominate.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from explorer.analyses.temperature import Batch, sample_batch
from explorer.data.questions import DEFAULT_QUESTIONS, load_questions
from explorer.models.sampling import batch_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/<name>.py` finds bench.common
from bench.common import print_run  # noqa: E402

TEMPERATURES = (0.7, 1.2)


def plan(n_questions: int, n_samples: int, per_batch: int = 2, tokens: int = 16) -> list[Batch]:
    questions = load_questions(DEFAULT_QUESTIONS)["question"].tolist()[:n_questions]
    return [Batch(f"answer-t{ti}-q{start}", "answer", t,
                  tuple((i, 0, questions[i]) for i in range(start, min(start + per_batch, n_questions))),
                  n_samples, batch_seed(0, ti, start), tokens)
            for ti, t in enumerate(TEMPERATURES) for start in range(0, n_questions, per_batch)]


def sample_here(batches: list[Batch], lm, threads: int | None = None) -> tuple[float, dict]:
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        rows = {b.key: sample_batch(b, lm) for b in batches}
        return time.perf_counter() - started, rows
    finally:
        torch.set_num_threads(before)


def max_log_prob_difference(a: dict, b: dict) -> float:
    """Largest |difference| of the recorded token log-probabilities (inf when a token differs)."""
    worst = 0.0
    for key, frame in a.items():
        for x_ids, y_ids, x, y in zip(frame["token_ids"], b[key]["token_ids"], frame["token_log_probs"],
                                      b[key]["token_log_probs"]):
            if list(x_ids) != list(y_ids):
                return float("inf")
            worst = max(worst, float(np.abs(np.asarray(x) - np.asarray(y)).max(initial=0.0)))
    return worst


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    """Every case side by side; ``[]`` when ``device="cuda"`` and CUDA is absent."""
    if device == "cuda" and not torch.cuda.is_available():
        return []
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from explorer.analyses.distributed import sweep_client
    from explorer.models.language_model import load_language_model

    n_questions, n_samples = (4, 4) if quick else (12, 6)
    batches = plan(n_questions, n_samples)
    answers = len(batches) * 2 * n_samples
    started = time.perf_counter()
    lm = load_language_model(device=device)
    load_here_s = time.perf_counter() - started
    single_s, single = sample_here(batches, lm)
    one_thread_s, one_thread = sample_here(batches, lm, threads=1)

    started = time.perf_counter()
    with sweep_client(cluster="local:2") as executor:
        startup_s = time.perf_counter() - started
        found = {}
        started = time.perf_counter()
        executor.execute(batches, lambda batch, rows: found.__setitem__(batch.key, rows))
        dask_s = time.perf_counter() - started
        payload = next(iter(found.values()))
        started = time.perf_counter()
        echoes = [executor.client.submit(copy.copy, payload, pure=False) for _ in range(40)]
        executor.client.gather(echoes)
        overhead_s = (time.perf_counter() - started) / 40
        workers = executor.workers()

    name = f"{n_questions} questions x {len(TEMPERATURES)} T x N={n_samples} ({len(batches)} batches, {answers} answers)"
    threads = torch.get_num_threads()
    return [
        {"bench": "sweep", "case": f"sampling on local:2 (warm), {name}", "ours_s": dask_s,
         "baseline": f"single process, {threads} torch threads", "baseline_s": single_s, "ratio": single_s / dask_s,
         "error": max_log_prob_difference(found, single),
         "note": f"{device}; {workers} workers x 1 thread; {answers / dask_s:.2f} vs {answers / single_s:.2f} answers/s; "
                 "error: max |log-prob| difference (inf: a token differs; thread counts differ)"},
        {"bench": "sweep", "case": f"sampling on local:2 (warm), {name}", "ours_s": dask_s,
         "baseline": "single process, 1 torch thread", "baseline_s": one_thread_s, "ratio": one_thread_s / dask_s,
         "error": max_log_prob_difference(found, one_thread),
         "note": f"{device}; same arithmetic as a worker: error 0 expected (bit-for-bit equal answers)"},
        {"bench": "sweep", "case": "scheduler overhead per batch (a batch's rows to a worker and back, 40 in flight)",
         "ours_s": overhead_s, "baseline": "sampling one batch here, 1 thread (mean)",
         "baseline_s": one_thread_s / len(batches), "ratio": one_thread_s / len(batches) / overhead_s, "error": None,
         "note": f"{len(payload)} rows per batch; ratio: how many times the overhead fits in one batch's sampling"},
        {"bench": "sweep", "case": "start-up: LocalCluster of 2 workers, each loading the model", "ours_s": startup_s,
         "baseline": "loading the model in this process (cached on disk)", "baseline_s": load_here_s,
         "ratio": load_here_s / startup_s, "error": None,
         "note": "paid once per run with --cluster local:N (a running --scheduler keeps its workers' models)"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print_run(lambda: run(args.device, args.quick), args.device)


if __name__ == "__main__":
    main()
