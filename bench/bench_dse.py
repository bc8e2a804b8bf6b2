"""Diffusion spectral entropy: ours vs the dse-dsmi package on the same data and sigma, in one process.

    python bench/bench_dse.py [--quick] [--n 5000] [--sigma 10] [--device cpu|cuda]

Cases: DSE of n x 64 Gaussian data (ours: a float64 symmetric eigensolve of D^-1/2 G D^-1/2; the
package: its own diffusion matrix and eigensolver), error = |ours - package| in bits; a new diffusion
time t on cached eigenvalues against recomputing DSE from the data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import dse_dsmi
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/bench_dse.py` finds bench.common

from bench.common import no_cuda, result, table, timed  # noqa: E402
from explorer.kernels.diversity import (  # noqa: E402
    diffusion_eigenvalues, diffusion_spectral_entropy, dse_from_eigenvalues,
)

BENCH = "dse"


def run(device: str = "cpu", quick: bool = False, n: int | None = None, sigma: float = 10.0) -> list[dict]:
    if no_cuda(device):
        return []
    n = n or (2_000 if quick else 5_000)
    X = np.random.default_rng(0).normal(size=(n, 64)) * 2.0
    Xt = torch.from_numpy(X).to(device)
    ours_s, ours = timed(lambda: diffusion_spectral_entropy(Xt, sigma, t=1), device=device)
    peer_s, peer = timed(lambda: dse_dsmi.diffusion_spectral_entropy(X, gaussian_kernel_sigma=sigma, t=1, max_N=None))
    rows = [result(BENCH, f"DSE, n={n:,} x 64, sigma={sigma:g} ({device})", ours_s, "dse-dsmi 1.1", peer_s,
                   abs(ours - peer), f"bits: ours {ours:.9f}, package {peer:.9f}")]
    eigenvalues = diffusion_eigenvalues(Xt, sigma)
    ts = np.linspace(0.5, 5, 100)
    per_t, _ = timed(lambda: [dse_from_eigenvalues(eigenvalues, float(t)) for t in ts], device=device)
    rows.append(result(BENCH, f"DSE at a new t on cached eigenvalues, n={n:,} ({device})", per_t / len(ts),
                       "DSE recomputed from the data (ours)", ours_s,
                       abs(dse_from_eigenvalues(eigenvalues, 1.0) - ours), "the page's t slider"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--sigma", type=float, default=10.0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(table(run(args.device, args.quick, args.n, args.sigma)))


if __name__ == "__main__":
    main()
