"""Batched sampling throughput (answers per second) vs one generate call per answer.

Run: HF_HUB_OFFLINE=1 python bench/bench_sampling.py [questions] [N] [new_tokens] [--quick] [--device cpu|cuda]
Both sides draw the same number of answers with the same model, temperature and token budget in one
process; ratio = one-by-one seconds / batched seconds for the same number of answers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/bench_sampling.py` finds bench.*

from bench.common import no_cuda, result, table, timed  # noqa: E402
from explorer.data.questions import load_questions  # noqa: E402
from explorer.models.language_model import load_language_model  # noqa: E402
from explorer.models.sampling import sample_answers  # noqa: E402

BENCH = "sampling"


def run(device: str = "cpu", quick: bool = False, n_questions: int | None = None, n_samples: int | None = None,
        new_tokens: int | None = None) -> list[dict]:
    if no_cuda(device):
        return []
    n_questions, n_samples = n_questions or (2 if quick else 4), n_samples or (4 if quick else 10)
    new_tokens = new_tokens or (8 if quick else 16)
    lm = load_language_model(device=None if device == "cpu" else device)
    questions = load_questions()["question"].head(n_questions).tolist()
    sample_answers(lm, questions[:1], 1.0, 2, 4)                       # warm-up
    batched_s, batched = timed(lambda: sample_answers(lm, questions, 1.0, n_samples, new_tokens, seed=0))
    single_s, single = timed(lambda: [sample_answers(lm, [q], 1.0, 1, new_tokens, seed=k)
                                      for q in questions for k in range(n_samples)])
    rate = len(batched) / batched_s
    return [result(BENCH, f"{n_questions} questions x N={n_samples}, {new_tokens} new tokens, T=1 ({lm.device})",
                   batched_s, "one generate call per answer", single_s * len(batched) / len(single), None,
                   f"batched {rate:.2f} answers/s vs one by one {len(single) / single_s:.2f} answers/s")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("questions", type=int, nargs="?", default=None)
    parser.add_argument("samples", type=int, nargs="?", default=None, help="N answers per question")
    parser.add_argument("tokens", type=int, nargs="?", default=None, help="new tokens per answer")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(table(run(args.device, args.quick, args.questions, args.samples, args.tokens)))


if __name__ == "__main__":
    main()
