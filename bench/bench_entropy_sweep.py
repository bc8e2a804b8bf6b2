"""entropy_sweep (exact and approx) against the naive per-temperature log_softmax and the peer
torch.distributions.Categorical, side by side in one process.

Run: HF_HUB_OFFLINE=1 python bench/bench_entropy_sweep.py [--threads N] [--repeats R] [--source model|synthetic]

Workload of issue 2: 16 temperatures x 512 positions x 49,152 vocabulary (float32, CPU). The logits
come from the default model (SmolLM2-135M-Instruct, vocabulary 49,152) scoring 512 tokens of the
repository's own prose; ``--source synthetic`` uses LM-like random logits instead. Times are the best
of ``--repeats`` interleaved runs; ratios are naive / ours. Errors are against the float64 entropy
computed from the definition.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from explorer.kernels.entropy import entropy_sweep, sweep_error_bound

ROOT = Path(__file__).resolve().parents[1]
POSITIONS, VOCAB = 512, 49_152
TEMPERATURES = torch.linspace(0.2, 3.0, 16)


def naive(logits: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """What the issue measures against: a full-vocabulary log_softmax per temperature."""
    out = []
    for t in temperatures.tolist():
        log_p = torch.log_softmax(logits / t, dim=-1)
        out.append(-(log_p.exp() * log_p).sum(-1))
    return torch.stack(out)


def categorical(logits: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """The peer: torch.distributions.Categorical(logits=z / T).entropy() per temperature."""
    return torch.stack([torch.distributions.Categorical(logits=logits / t).entropy() for t in temperatures.tolist()])


def reference(logits: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """Float64 entropy straight from the definition (0 log 0 = 0)."""
    z = logits.double()
    out = []
    for t in temperatures.tolist():
        p = torch.softmax(z / t, dim=-1)
        out.append(-torch.xlogy(p, p).sum(-1))
    return torch.stack(out)


def model_logits() -> torch.Tensor:
    from explorer.models.language_model import load_language_model

    model = load_language_model()
    text = " ".join((ROOT / name).read_text(encoding="utf-8") for name in ("README.md", "DEVELOPERS.md"))
    ids = model.tokenizer(text, return_tensors="pt").input_ids[:, :POSITIONS].to(model.device)
    while ids.shape[1] < POSITIONS:
        ids = torch.cat([ids, ids], dim=1)[:, :POSITIONS]
    with torch.inference_mode():
        return model.model(input_ids=ids).logits[0].float().cpu()


def synthetic_logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(POSITIONS, VOCAB, generator=g) * 2.5 - 5
    logits -= torch.rand(POSITIONS, VOCAB, generator=g) ** 4 * 25
    logits.scatter_(1, torch.randint(0, VOCAB, (POSITIONS, 8), generator=g),
                    torch.rand(POSITIONS, 8, generator=g) * 15 + 5)
    return logits


def best_times(functions: dict, repeats: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    times = {name: float("inf") for name in functions}
    results = {}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name] = min(times[name], time.perf_counter() - start)
    return times, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--source", choices=["model", "synthetic"], default="model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logits = model_logits() if args.source == "model" else synthetic_logits()
    print(f"logits {tuple(logits.shape)} from {args.source}; {len(TEMPERATURES)} temperatures "
          f"{TEMPERATURES[0]:.1f}..{TEMPERATURES[-1]:.1f}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    functions = {
        "naive log_softmax": lambda: naive(logits, TEMPERATURES),
        "peer Categorical": lambda: categorical(logits, TEMPERATURES),
        "ours exact": lambda: entropy_sweep(logits, TEMPERATURES, mode="exact"),
        "ours approx": lambda: entropy_sweep(logits, TEMPERATURES, mode="approx"),
    }
    times, results = best_times(functions, args.repeats)
    truth = reference(logits, TEMPERATURES)
    bound = sweep_error_bound(logits, TEMPERATURES).max().item()
    print(f"{'method':20s} {'time s':>8s} {'naive/this':>11s} {'peer/this':>10s} {'max err nats':>13s}")
    for name, seconds in times.items():
        error = (results[name].double() - truth).abs().max().item()
        print(f"{name:20s} {seconds:8.3f} {times['naive log_softmax'] / seconds:11.1f} "
              f"{times['peer Categorical'] / seconds:10.1f} {error:13.2e}")
    print(f"approx error bound (sweep_error_bound, max over rows and temperatures): {bound:.2e} nats")


if __name__ == "__main__":
    main()
