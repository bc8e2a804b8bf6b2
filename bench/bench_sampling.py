"""Batched sampling throughput (answers per second) vs one generate call per answer.

Run: HF_HUB_OFFLINE=1 python bench/bench_sampling.py [questions] [N] [new_tokens]
Both sides draw the same number of answers with the same model, temperature and token budget in one
process; the ratio is batched / one-by-one answers per second.
"""

from __future__ import annotations

import sys
import time

from explorer.data.questions import load_questions
from explorer.models.language_model import load_language_model
from explorer.models.sampling import sample_answers


def main(n_questions: int = 4, n_samples: int = 10, new_tokens: int = 16) -> None:
    lm = load_language_model()
    questions = load_questions()["question"].head(n_questions).tolist()
    sample_answers(lm, questions[:1], 1.0, 2, 4)                       # warm-up
    start = time.perf_counter()
    batched = sample_answers(lm, questions, 1.0, n_samples, new_tokens, seed=0)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    single = [sample_answers(lm, [q], 1.0, 1, new_tokens, seed=k) for q in questions for k in range(n_samples)]
    single_s = time.perf_counter() - start
    n = len(batched)
    print(f"{n_questions} questions x N={n_samples}, {new_tokens} new tokens, T=1.0, {lm.name} on {lm.device}")
    print(f"batched (one generate call):  {n / batched_s:8.2f} answers/s  ({batched_s:.1f} s)")
    print(f"one call per answer:          {len(single) / single_s:8.2f} answers/s  ({single_s:.1f} s)")
    print(f"ratio batched / one-by-one:   {(n / batched_s) / (len(single) / single_s):8.2f}x")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
