"""Adaptive sampling: stop drawing answers to a question once its semantic entropy has settled.

The rule (pure function of the meaning classes seen so far; no model):

- Answers are drawn in rounds of ``round_size`` (the last round is cut so that no more than
  ``n_max`` answers are drawn). After round t, n_t answers are in hand and SE_t is the discrete
  semantic entropy of their classes, -sum_c (n_c / n_t) log(n_c / n_t) (formulas.md section 3),
  from the greedy clustering of all n_t answers (greedy clustering never moves an earlier answer
  when a later one arrives, so the class ids of one sequence serve every round).
- The question stops after the first round t (counting from 1) with
  t > patience, n_t >= n_min, and max_{t - patience <= s <= t} SE_s - min_{same s} SE_s < epsilon,
  i.e. the estimate moved by less than ``epsilon`` nats over the last ``patience`` rounds;
  and in any case once n_t = n_max.

Motivation (issue #15): Bayesian semantic entropy (Ciosek, Felicioni & Ghiassian 2025,
"Hallucination detection on a budget: efficient Bayesian estimation of semantic entropy") reports
the same AUROC with about half the samples by sampling until the meaning-class distribution is
pinned down; this is a plain, transparent stopping rule in that spirit, not their Bayesian
estimator.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class AdaptiveStop(NamedTuple):
    n_used: Tensor      # [...] answers drawn when the rule stopped (or all given, if it has not)
    stop_round: Tensor  # [...] 0-based index of the round after which it stopped (or the last given)
    settled: Tensor     # [...] True when the estimate settled before n_max
    done: Tensor        # [...] True when no further answers are needed (settled or n_max reached)
    estimates: Tensor   # [..., T] SE after each round; NaN after the stop (those rounds are not drawn)


def round_class_counts(cluster_ids: Tensor, round_size: int, n_max: int | None = None) -> Tensor:
    """[T, C] class counts of each round's answers from the class id of every answer, in the order
    they were drawn (at most ``n_max`` answers; the last round may be shorter)."""
    ids = torch.as_tensor(cluster_ids).long().flatten()
    if round_size < 1:
        raise ValueError(f"round_size must be >= 1, got {round_size}")
    if ids.numel() == 0 or bool((ids < 0).any()):
        raise ValueError("cluster_ids must be a non-empty sequence of class ids >= 0")
    ids = ids[:n_max] if n_max is not None else ids
    rounds = torch.arange(ids.numel(), device=ids.device) // round_size
    counts = torch.zeros(int(rounds[-1]) + 1, int(ids.max()) + 1, dtype=torch.long, device=ids.device)
    return counts.index_put_((rounds, ids), torch.ones_like(ids), accumulate=True)


def class_count_entropy(counts: Tensor) -> Tensor:
    """-sum_c (n_c / n) log(n_c / n) over the last dimension of class counts (nats; 0 log 0 = 0).
    Equals ``uncertainty.semantic_entropy_discrete`` of the ids behind the counts."""
    counts = counts.to(torch.float64)
    share = counts / counts.sum(-1, keepdim=True)
    return 0.0 - torch.where(share > 0, share * share.log(), 0.0).sum(-1)     # 0.0 -: no -0.0


def adaptive_stop(round_counts: Tensor, epsilon: float = 0.1, patience: int = 2, n_min: int = 4,
                  n_max: int = 10) -> AdaptiveStop:
    """Apply the stopping rule of this module to the rounds drawn so far.

    ``round_counts`` [..., T, C]: class counts of each round's answers (see
    :func:`round_class_counts`); batched over questions when their rounds are padded to one T and
    C (a round of zeros after a question's last round is not allowed: pass each question's own
    rounds). Used online, call it after every round: ``done`` says whether to stop; replayed on a
    fixed-N run, it gives how many answers the rule would have used.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if patience < 1 or not 1 <= n_min <= n_max:
        raise ValueError(f"need patience >= 1 and 1 <= n_min <= n_max, got {patience}, {n_min}, {n_max}")
    counts = torch.as_tensor(round_counts)
    if counts.dim() < 2 or counts.shape[-2] == 0 or bool((counts < 0).any()):
        raise ValueError(f"round_counts must be [..., rounds, classes] of counts >= 0, got {tuple(counts.shape)}")
    drawn = counts.sum(-1).cumsum(-1)                                   # n_t, [..., T]
    if bool((counts.sum(-1) == 0).any()):
        raise ValueError("every round must hold at least one answer")
    if bool(((drawn > n_max) & (drawn - counts.sum(-1) < n_max)).any()):
        raise ValueError(f"a round crosses n_max = {n_max}: the last round must stop at n_max answers")
    se = class_count_entropy(counts.cumsum(-2))                        # SE_t, [..., T]
    T = se.shape[-1]
    steady = torch.zeros_like(drawn, dtype=torch.bool)
    if T > patience:
        window = se.unfold(-1, patience + 1, 1)                         # rounds t - patience .. t
        moved = window.amax(-1) - window.amin(-1)
        steady[..., patience:] = moved < epsilon
    settled_at = steady & (drawn >= n_min) & (drawn < n_max)
    stop_at = settled_at | (drawn >= n_max)
    done = stop_at.any(-1)
    stop_round = torch.where(done, stop_at.to(torch.int8).argmax(-1), T - 1)
    n_used = drawn.gather(-1, stop_round.unsqueeze(-1)).squeeze(-1)
    settled = settled_at.gather(-1, stop_round.unsqueeze(-1)).squeeze(-1)
    after = torch.arange(T, device=se.device) > stop_round.unsqueeze(-1)
    return AdaptiveStop(n_used, stop_round, settled, done, torch.where(after, torch.nan, se))
