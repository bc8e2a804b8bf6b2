"""Generation with per-step statistics vs a plain ``model.generate``, and load time of the default model.

    python bench/bench_generation.py [--quick] [--tokens 64] [--repeats 5] [--skip-load] [--device cpu|cuda]

Both generate the same number of new tokens after the same chat prompt with the same top-p rule
(transformers' own ``top_p``/``temperature`` in ``generate``; ours records raw logits, full and
truncated entropy and the surviving-token count at every step). EOS is disabled on both sides so that
each call produces exactly ``--tokens`` tokens. Load times: the first conversion of the bundled GGUF
file (in a fresh cache directory) and a cached load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/bench_generation.py` finds bench.*

from bench.common import no_cuda, result, table  # noqa: E402
from explorer.models.language_model import LanguageModel, load_language_model  # noqa: E402

BENCH = "generation"

PROMPT = "Write a short story about a lighthouse keeper."


def load_times() -> tuple[float, float]:
    """Seconds to convert + load the default model in a fresh cache, then to load it from that cache."""
    code = ("import time; t=time.perf_counter(); from explorer.models.language_model import load_language_model; "
            "load_language_model(); print(time.perf_counter()-t)")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "ENTROPY_EXPLORER_CACHE": cache, "HF_HUB_OFFLINE": "1"}
        runs = [float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                     check=True).stdout.strip().splitlines()[-1]) for _ in range(2)]
    return runs[0], runs[1]


def plain_generate(lm: LanguageModel, tokens: int, seed: int) -> None:
    ids = lm.encode(lm.format_prompt(PROMPT))[None].to(lm.device)
    torch.manual_seed(seed)
    with torch.inference_mode():
        lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                          do_sample=True, top_p=0.9, top_k=0, temperature=1.0, pad_token_id=lm.tokenizer.eos_token_id)


def ours(lm: LanguageModel, tokens: int, seed: int) -> None:
    stop_ids = lm._stop_ids
    lm._stop_ids = lambda: set()  # same length as the plain call
    try:
        trace = lm.generate(PROMPT, max_new_tokens=tokens, decoding="top_p", temperature=1.0, seed=seed, top_p=0.9)
    finally:
        lm._stop_ids = stop_ids
    assert len(trace) == tokens


def timed(fn, repeats: int) -> list[float]:
    times = []
    for seed in range(repeats):
        started = time.perf_counter()
        fn(seed)
        times.append(time.perf_counter() - started)
    return times


def run(device: str = "cpu", quick: bool = False, tokens: int | None = None, repeats: int | None = None,
        load: bool | None = None) -> list[dict]:
    if no_cuda(device):
        return []
    tokens, repeats = tokens or (16 if quick else 64), repeats or (2 if quick else 5)
    rows = []
    if load if load is not None else not quick:
        first, cached = load_times()
        rows.append(result(BENCH, "default model load, cached (fresh process)", cached,
                           "first load (GGUF converted to safetensors)", first))
    lm = load_language_model(device=None if device == "cpu" else device)
    ours(lm, 4, 0), plain_generate(lm, 4, 0)  # warm-up
    plain, mine = [], []
    for _ in range(repeats):  # interleaved so that machine noise hits both
        plain += timed(lambda s: plain_generate(lm, tokens, s), 1)
        mine += timed(lambda s: ours(lm, tokens, s), 1)
    p, m = statistics.median(plain), statistics.median(mine)
    rows.append(result(BENCH, f"generation with per-step statistics, {tokens} tokens, top-p 0.9 ({lm.device})", m,
                       "transformers model.generate", p, None,
                       f"median of {repeats}; overhead {100 * (m / p - 1):+.1f}% (aim < 10%)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(table(run(args.device, args.quick, args.tokens, args.repeats, False if args.skip_load else None)))


if __name__ == "__main__":
    main()
