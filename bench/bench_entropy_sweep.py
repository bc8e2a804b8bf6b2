"""entropy_sweep (exact and approx) against the naive per-temperature log_softmax and the peer
torch.distributions.Categorical, and token_statistics_sweep against token_statistics at every
temperature, side by side in one process.

Run: HF_HUB_OFFLINE=1 python bench/bench_entropy_sweep.py [--quick] [--device cpu|cuda] [--threads N]
     [--repeats R] [--source model|synthetic]

Workload of issue 2: 16 temperatures x 512 positions x 49,152 vocabulary (float32). The logits
come from the default model (SmolLM2-135M-Instruct, vocabulary 49,152) scoring 512 tokens of the
repository's own prose; ``--source synthetic`` (and ``--quick``) uses LM-like random logits instead.
Workload of the lens page's precomputed grid: entropy, surprisal and varentropy at 100 temperatures x
256 positions x 49,152. Times are the best of ``--repeats`` interleaved runs; ratios are naive / ours.
Errors are against float64 values computed from the definitions.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/bench_entropy_sweep.py` finds bench.common

from bench.common import interleaved, no_cuda, result, table  # noqa: E402
from explorer.kernels.entropy import (  # noqa: E402
    entropy_sweep, sweep_error_bound, token_statistics, token_statistics_sweep,
)

BENCH = "entropy"
POSITIONS, VOCAB = 512, 49_152
TEMPERATURES = torch.linspace(0.2, 3.0, 16)
GRID_POSITIONS, GRID = 256, torch.linspace(0.05, 3.0, 100)  # the lens page's precomputed grid


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


def statistics_per_temperature(logits, ids, temperatures) -> dict[str, torch.Tensor]:
    """The naive way: token_statistics (one log-softmax) at each temperature."""
    stats = [token_statistics(logits, ids, t, with_rank=False) for t in temperatures.tolist()]
    return {name: torch.stack([s[name] for s in stats]) for name in ("entropy", "surprisal", "varentropy")}


def statistics_reference(logits, ids, temperatures) -> dict[str, torch.Tensor]:
    """Float64 entropy, surprisal and varentropy from the definitions."""
    z = logits.double()
    out = {"entropy": [], "surprisal": [], "varentropy": []}
    for t in temperatures.tolist():
        log_p = torch.log_softmax(z / t, dim=-1)
        p = log_p.exp()
        entropy = -torch.xlogy(p, p).sum(-1)
        out["entropy"].append(entropy)
        out["surprisal"].append(-log_p.gather(-1, ids.unsqueeze(-1)).squeeze(-1))
        out["varentropy"].append((p * torch.where(p > 0, log_p + entropy.unsqueeze(-1), 0.0).square()).sum(-1))
    return {name: torch.stack(values) for name, values in out.items()}


def entropy_cases(logits: torch.Tensor, repeats: int, device: str, source: str) -> list[dict]:
    z = logits.to(device)
    functions = {
        "naive": lambda: naive(z, TEMPERATURES),
        "peer": lambda: categorical(z, TEMPERATURES),
        "exact": lambda: entropy_sweep(z, TEMPERATURES, mode="exact"),
        "approx": lambda: entropy_sweep(z, TEMPERATURES, mode="approx"),
    }
    times, values = interleaved(functions, repeats, device)
    truth = reference(logits, TEMPERATURES)
    error = {name: (value.double().cpu() - truth).abs().max().item() for name, value in values.items()}
    bound = sweep_error_bound(z, TEMPERATURES).max().item()
    size = f"{len(TEMPERATURES)} T x {logits.shape[0]} x {logits.shape[1]:,}, {source} logits ({device})"
    naive_note = f"naive log_softmax per T: error {error['naive']:.1e}"
    return [
        result(BENCH, f"entropy_sweep exact, {size}", times["exact"], "naive log_softmax per T", times["naive"],
               error["exact"], f"error vs float64; {naive_note}"),
        result(BENCH, f"entropy_sweep exact, {size}", times["exact"], "torch.distributions.Categorical per T",
               times["peer"], error["exact"], f"peer error {error['peer']:.1e}"),
        result(BENCH, f"entropy_sweep approx, {size}", times["approx"], "naive log_softmax per T", times["naive"],
               error["approx"], f"top-64 exact + 4,096 bins; stated bound {bound:.1e} nats"),
    ]


def statistics_grid_case(logits: torch.Tensor, repeats: int, device: str, source: str) -> list[dict]:
    z = logits[:GRID_POSITIONS].to(device)
    ids = torch.randint(0, z.shape[1], (z.shape[0],), generator=torch.Generator().manual_seed(0)).to(device)
    functions = {"naive": lambda: statistics_per_temperature(z, ids, GRID),
                 "ours": lambda: token_statistics_sweep(z, ids, GRID)}
    times, values = interleaved(functions, repeats, device)
    every = slice(None, None, 10)
    truth = statistics_reference(logits[:GRID_POSITIONS], ids.cpu(), GRID[every])
    error = max((values["ours"][name][every].double().cpu() - truth[name]).abs().max().item() for name in truth)
    naive_error = max((values["naive"][name][every].double().cpu() - truth[name]).abs().max().item()
                      for name in truth)
    return [result(BENCH, f"token_statistics_sweep (H, surprisal, V), {len(GRID)} T x {z.shape[0]} x {z.shape[1]:,}, "
                          f"{source} logits ({device})", times["ours"], "token_statistics per T", times["naive"], error,
                   f"max error over the three vs float64 at every 10th T; naive {naive_error:.1e}")]


def run(device: str = "cpu", quick: bool = False, source: str | None = None, repeats: int | None = None) -> list[dict]:
    if no_cuda(device):
        return []
    source = source or ("synthetic" if quick else "model")
    repeats = repeats or (1 if quick else 3)
    with torch.no_grad():   # not set_grad_enabled(False): run_all runs the next benchmark in this thread
        logits = model_logits() if source == "model" else synthetic_logits()
        first = logits[:GRID_POSITIONS] if quick else logits  # quick: 256 positions, the same per-position work
        return entropy_cases(first, repeats, device, source) + statistics_grid_case(logits, repeats, device, source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--source", choices=["model", "synthetic"], default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(table(run(args.device, args.quick, args.source, args.repeats or None)))


if __name__ == "__main__":
    main()
