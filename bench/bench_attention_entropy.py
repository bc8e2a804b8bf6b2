"""Attention entropy of every layer and head: block-wise rows (ours) against the full attention
matrices of transformers' eager attention (``output_attentions=True``, the way it was done before),
side by side in one process: time, peak memory and the largest difference.

Run: HF_HUB_OFFLINE=1 python bench/bench_attention_entropy.py [--tokens 256,1024] [--quick] [--device cuda]

Two workloads:
- kernel: one layer of SmolLM2's shape (9 query heads, 3 key/value heads, head size 64) at n tokens,
  :func:`explorer.kernels.attention_rows.attention_with_entropy` against eager softmax(QK^T) + entropy;
- model: ``LanguageModel.attention_entropy`` of an n-token text against an eager copy of the same
  weights with ``output_attentions=True`` stacked and passed to the entropy kernel.
Peak memory is Linux's resettable peak RSS (VmHWM) on the CPU and the allocator's peak on CUDA, above
the memory in use before the call. Ratios are baseline / ours (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import time

import torch

from explorer.kernels.attention import attention_entropy
from explorer.kernels.attention_rows import attention_with_entropy

BENCH = "attention_entropy"
TEXT = "The river froze overnight, and the town woke to silence. Nobody had expected winter so soon. "


def load_line() -> str:
    one, five, _ = os.getloadavg()
    return (f"load average {one:.2f} / {five:.2f} (1 / 5 min), {os.cpu_count()} cores, "
            f"torch threads {torch.get_num_threads()}")


def _rss(field: str) -> int:
    return int(re.search(field + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def measured(fn, device: str):
    """(result, seconds, peak bytes above the memory in use at the start)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
    elif os.access("/proc/self/clear_refs", os.W_OK):
        open("/proc/self/clear_refs", "w").write("5")
        start_bytes = _rss("VmRSS")
    else:
        start_bytes = None
    started = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - start_bytes
    else:
        peak = None if start_bytes is None else _rss("VmHWM") - start_bytes
    return result, seconds, peak


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2 ** 20:.0f} MiB"


def kernel_case(n: int, device: str) -> dict:
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, h, n, 64, generator=g).to(device) for h in (9, 3, 3))

    def eager():
        keys, values = k.repeat_interleave(3, 1), v.repeat_interleave(3, 1)
        scores = (q @ keys.transpose(2, 3)) * 0.125
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool, device=device).triu(1), float("-inf"))
        probs = torch.softmax(scores, -1, dtype=torch.float32)
        return probs @ values, attention_entropy(probs)

    eager(), attention_with_entropy(q, k, v)  # warm-up
    (out_b, ent_b), base_s, base_peak = measured(eager, device)
    (out_o, ent_o), ours_s, ours_peak = measured(lambda: attention_with_entropy(q, k, v), device)
    error = max(float((out_o - out_b).abs().max()), float((ent_o - ent_b).abs().max()))
    return {"bench": BENCH, "case": f"one layer (9 heads, GQA 3), n={n}, {device}", "ours_s": ours_s,
            "baseline": "eager full softmax(QK^T) + entropy", "baseline_s": base_s, "ratio": base_s / ours_s,
            "error": error, "note": f"peak {mib(ours_peak)} vs {mib(base_peak)}"}


def model_case(n: int, device: str) -> dict:
    from explorer.models.language_model import load_language_model

    lm = load_language_model(device=device)
    ids = lm.encode(TEXT * (1 + n // 15))[:n]
    trace = lm.score(lm.tokenizer.decode(ids))
    eager_model = copy.deepcopy(lm.model)
    eager_model.set_attn_implementation("eager")
    full_ids = torch.cat([trace.context_ids.cpu(), trace.token_ids.cpu()]).to(lm.device)[None]

    def eager():
        with torch.inference_mode():
            attentions = eager_model(full_ids, use_cache=False, output_attentions=True).attentions
        stacked = torch.stack([a[0] for a in attentions]).float()
        return attention_entropy(stacked)[:, :, len(trace.context_ids):]

    lm.attention_entropy(lm.score("Warm up once.")) if n > 64 else None
    ours, ours_s, ours_peak = measured(lambda: lm.attention_entropy(trace), device)
    base, base_s, base_peak = measured(eager, device)
    return {"bench": BENCH, "case": f"SmolLM2 attention entropy, 30 layers x 9 heads, n={len(full_ids[0])}, {device}",
            "ours_s": ours_s, "baseline": "eager output_attentions (all matrices)", "baseline_s": base_s,
            "ratio": base_s / ours_s, "error": float((ours - base).abs().max()),
            "note": f"peak {mib(ours_peak)} vs {mib(base_peak)}"}


def run(device: str = "cpu", quick: bool = False, tokens: list[int] | None = None) -> list[dict]:
    """Every case side by side; ``device="cuda"`` runs both sides on the GPU ([] without CUDA)."""
    if device == "cuda" and not torch.cuda.is_available():
        return []
    tokens = tokens or ([256, 1024] if quick else [256, 1024, 2048])
    rows = [kernel_case(n, device) for n in tokens]
    rows += [model_case(n, device) for n in tokens if n <= (256 if quick else 1024)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default=None, help="comma-separated lengths (default 256,1024,2048)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"start: {load_line()}")
    tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else None
    for row in run(args.device, args.quick, tokens):
        print(f"{row['case']:<62} ours {row['ours_s']:7.3f} s | {row['baseline']} {row['baseline_s']:7.3f} s "
              f"| ratio {row['ratio']:5.2f}x | max diff {row['error']:.1e} | {row['note']}")
    print(f"end: {load_line()}")


if __name__ == "__main__":
    main()
