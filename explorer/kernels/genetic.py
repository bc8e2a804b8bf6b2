"""Genetic-algorithm operators over integer gene vectors (GAAP perturbations of Inv-Entropy).

A candidate is a vector ``g`` of ``G`` genes, gene ``k`` in ``{0, ..., n_options[k] - 1}`` (for
GAAP: 0 keeps keyword ``k``, ``j >= 1`` puts its ``j``-th WordNet substitute in its place). Every
random operator takes a seeded ``torch.Generator``, so a run is reproducible.
"""

from __future__ import annotations

import torch


def roulette_select(fitness: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``k`` indices drawn with replacement, index ``i`` with probability ``f_i / sum_j f_j``.

    ``fitness``: [P] non-negative, finite, positive sum. Returns int64 [k].
    """
    f = torch.as_tensor(fitness, dtype=torch.float64)
    if f.dim() != 1 or f.numel() == 0:
        raise ValueError(f"fitness must be a non-empty vector, got shape {tuple(f.shape)}")
    if not bool(torch.isfinite(f).all()) or bool((f < 0).any()) or float(f.sum()) <= 0:
        raise ValueError("fitness must be finite, non-negative and not all zero")
    return torch.multinomial(f / f.sum(), int(k), replacement=True, generator=generator)


def one_point_crossover(a: torch.Tensor, b: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Children of parent pairs cut at ``points``: ``c1 = a[:p] + b[p:]``, ``c2 = b[:p] + a[p:]``.

    ``a``, ``b``: [M, G] genes; ``points``: [M] cut positions in ``0..G`` (0 or G copy the parents).
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"parents must both be [M, G], got {tuple(a.shape)} and {tuple(b.shape)}")
    first = torch.arange(a.shape[1], device=a.device)[None, :] < torch.as_tensor(points, device=a.device)[:, None]
    return torch.where(first, a, b), torch.where(first, b, a)


def random_crossover(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One-point crossover with each pair's cut drawn uniformly from ``1..G-1`` (``0`` when ``G == 1``)."""
    m, g = a.shape
    points = torch.randint(1, g, (m,), generator=generator) if g > 1 else torch.zeros(m, dtype=torch.long)
    return one_point_crossover(a, b, points)


def mutate(genes: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``genes`` with the entries where ``mask`` is true replaced by ``values`` (all [M, G])."""
    return torch.where(mask, values, genes)


def random_mutation(genes: torch.Tensor, n_options: torch.Tensor, rate: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Each gene, with probability ``rate``, re-drawn uniformly from ``0..n_options[k]-1``.

    ``genes``: [M, G] int64; ``n_options``: [G] positive counts.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"mutation rate must be in [0, 1], got {rate}")
    n = torch.as_tensor(n_options, dtype=torch.long)
    mask = torch.rand(genes.shape, generator=generator) < rate
    values = (torch.rand(genes.shape, generator=generator, dtype=torch.float64) * n[None, :]).long()
    return mutate(genes, mask, torch.minimum(values, n[None, :] - 1))
