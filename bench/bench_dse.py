"""Diffusion spectral entropy: ours vs the dse-dsmi package on the same data and sigma, in one process.

    python bench/bench_dse.py [--n 5000]
"""

from __future__ import annotations

import argparse
import time

import dse_dsmi
import numpy as np
import torch

from explorer.kernels.diversity import diffusion_eigenvalues, diffusion_spectral_entropy, dse_from_eigenvalues


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--sigma", type=float, default=10.0)
    args = parser.parse_args()
    X = np.random.default_rng(0).normal(size=(args.n, 64)) * 2.0
    start = time.perf_counter()
    ours = diffusion_spectral_entropy(torch.from_numpy(X), args.sigma, t=1)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    peer = dse_dsmi.diffusion_spectral_entropy(X, gaussian_kernel_sigma=args.sigma, t=1, max_N=None)
    t_peer = time.perf_counter() - start
    print(f"DSE n={args.n} x 64, sigma={args.sigma}: ours {ours:.9f} bits in {t_ours:.2f} s | dse-dsmi {peer:.9f} "
          f"bits in {t_peer:.2f} s | |diff| {abs(ours - peer):.1e} | peer/ours time {t_peer / t_ours:.2f}x")
    eig = diffusion_eigenvalues(torch.from_numpy(X[:2000]), args.sigma)
    start = time.perf_counter()
    for t in np.linspace(0.5, 5, 100):
        dse_from_eigenvalues(eig, float(t))
    print(f"DSE at a new t from cached eigenvalues (n=2000): {(time.perf_counter() - start) * 10:.3f} ms per t")


if __name__ == "__main__":
    main()
