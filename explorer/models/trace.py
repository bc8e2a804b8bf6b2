"""A scored or generated text with its cached logits: every token-level measure at any temperature.

A :class:`TokenTrace` keeps the raw logits of each position, so ``trace.at_temperature(T)`` re-scores
the same tokens at another temperature without a new forward pass (formulas.md section 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property

import pandas as pd
import torch

from explorer.kernels.entropy import entropy_sweep, token_rank, token_statistics, token_statistics_sweep

RANK_BUCKETS = (10, 100, 1000)  # GLTR's buckets: top-10, top-100, top-1000, beyond
STATISTICS_ROWS = 256  # positions per block of the token statistics: a few [256, V] temporaries at a time


def rank_bucket(rank: torch.Tensor) -> torch.Tensor:
    """0 for rank <= 10, 1 for <= 100, 2 for <= 1000, 3 beyond (GLTR)."""
    edges = torch.tensor(RANK_BUCKETS, device=rank.device)
    return torch.bucketize(rank, edges, right=False)


@dataclass(frozen=True, eq=False)
class TokenTrace:
    """Tokens of a text and the logits that predicted each of them.

    Measures (nats) are computed on first use at ``temperature`` and cached: ``entropy``,
    ``surprisal``, ``varentropy``, ``rank`` (1 = the most likely token), ``top_probs``/``top_ids``.
    For generated text, ``full_entropy``/``truncated_entropy``/``n_kept`` record the decoding rule's
    effect at each step (at the generation temperature).
    """

    tokens: list[str]
    token_ids: torch.Tensor
    logits: torch.Tensor
    context_ids: torch.Tensor
    context: str = ""
    kind: str = "scored"
    temperature: float = 1.0
    decoding: str = ""
    generation_temperature: float | None = None
    full_entropy: torch.Tensor | None = None
    truncated_entropy: torch.Tensor | None = None
    n_kept: torch.Tensor | None = None
    stopped: bool = False
    top_k: int = field(default=10, repr=False)
    #: temperature-invariant results (rank, top-k ids and logits) shared by every ``at_temperature`` copy
    shared: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def at_temperature(self, temperature: float) -> "TokenTrace":
        """The same tokens re-scored at ``temperature`` from the cached logits (no forward pass)."""
        if not (temperature > 0 and temperature < float("inf")):
            raise ValueError(f"temperature must be positive and finite, got {temperature}")
        return replace(self, temperature=float(temperature))

    def at_temperatures(self, temperatures) -> list["TokenTrace"]:
        """The trace re-scored at every temperature of a grid, its measures computed in one pass over the
        logits (:func:`~explorer.kernels.entropy.token_statistics_sweep`)."""
        sweep = token_statistics_sweep(self.logits, self.token_ids, [float(t) for t in temperatures])
        traces = []
        for i, t in enumerate(temperatures):
            scored = self.at_temperature(t)
            scored.__dict__["_statistics"] = {name: values[i] for name, values in sweep.items()}  # its cached value
            traces.append(scored)
        return traces

    @cached_property
    def _statistics(self) -> dict[str, torch.Tensor]:
        """Entropy, surprisal and varentropy, a block of positions at a time (bounded temporaries)."""
        blocks = [token_statistics(logits, ids, temperature=self.temperature, with_rank=False)
                  for logits, ids in self._row_blocks()]
        return {name: torch.cat([block[name] for block in blocks]) for name in blocks[0]}

    def _row_blocks(self):
        """(logits, token ids) of :data:`STATISTICS_ROWS` positions at a time: the kernels' [rows, V]
        temporaries stay a few blocks in size however long the text."""
        for start in range(0, max(len(self.logits), 1), STATISTICS_ROWS):
            yield self.logits[start:start + STATISTICS_ROWS], self.token_ids[start:start + STATISTICS_ROWS]

    @property
    def entropy(self) -> torch.Tensor:
        return self._statistics["entropy"]

    @property
    def surprisal(self) -> torch.Tensor:
        return self._statistics["surprisal"]

    @property
    def varentropy(self) -> torch.Tensor:
        return self._statistics["varentropy"]

    @property
    def rank(self) -> torch.Tensor:
        """1 + #{v : z_v > z_y}: the same at every temperature, so computed once per text."""
        if "rank" not in self.shared:
            self.shared["rank"] = torch.cat([token_rank(logits, ids) for logits, ids in self._row_blocks()])
        return self.shared["rank"]

    @cached_property
    def _top(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k probabilities at this temperature from the cached top-k logits (ids do not move with T).

        log Z(T) = (z_y - z_max) / T + s_y, so p_v = exp((z_v - z_max) / T - log Z(T)) needs no new
        pass over the vocabulary once the surprisal s_y is known.
        """
        if "top" not in self.shared:
            values, ids = self.logits.float().topk(min(self.top_k, self.logits.shape[-1]), dim=-1)
            chosen = self.logits.float().gather(-1, self.token_ids.long().unsqueeze(-1)).squeeze(-1)
            self.shared["top"] = (values - values[:, :1], ids, chosen - values[:, 0])
        shifted_top, ids, shifted_chosen = self.shared["top"]
        log_z = shifted_chosen / self.temperature + self.surprisal
        return torch.exp(shifted_top / self.temperature - log_z.unsqueeze(-1)), ids

    @property
    def top_probs(self) -> torch.Tensor:
        return self._top[0]

    @property
    def top_ids(self) -> torch.Tensor:
        return self._top[1]

    def entropy_at(self, temperatures) -> torch.Tensor:
        """Entropy of every position at each temperature: ``Tensor[len(temperatures), len(self)]``."""
        return entropy_sweep(self.logits, torch.as_tensor(temperatures, dtype=torch.float32))

    def summary(self) -> dict[str, float]:
        """Mean entropy, log-perplexity, perplexity, the zero-shot detection statistic D and rank buckets.

        D = mean surprisal - mean entropy (Zero-Shot Statistical Tests for LLM-Generated Text Detection).
        Means and exp are taken in float64.
        """
        log_ppl = float(self.surprisal.double().mean())
        mean_entropy = float(self.entropy.double().mean())
        buckets = torch.bincount(rank_bucket(self.rank), minlength=len(RANK_BUCKETS) + 1).tolist()
        return {
            "tokens": len(self), "temperature": self.temperature, "mean_entropy": mean_entropy,
            "log_perplexity": log_ppl, "perplexity": math.exp(log_ppl),
            "detection_statistic": log_ppl - mean_entropy, "mean_varentropy": float(self.varentropy.mean()),
            **{f"rank_{label}": n for label, n in zip(("top10", "top100", "top1000", "beyond"), buckets)},
        }

    def to_frame(self, decode=None) -> pd.DataFrame:
        """One row per token: position, token, id, measures, rank bucket, top alternatives.

        ``decode`` (id -> str) names the alternatives; without it they are listed by id.
        """
        decode = decode or (lambda i: f"#{i}")
        alternatives = [
            "; ".join(f"{decode(int(i))!r}:{float(p):.3f}" for p, i in zip(probs, ids))
            for probs, ids in zip(self.top_probs.cpu(), self.top_ids.cpu())
        ]
        frame = pd.DataFrame({
            "position": range(len(self)), "token": self.tokens, "token_id": self.token_ids.cpu().tolist(),
            "entropy": self.entropy.cpu().numpy(), "surprisal": self.surprisal.cpu().numpy(),
            "varentropy": self.varentropy.cpu().numpy(), "rank": self.rank.cpu().numpy(),
            "rank_bucket": rank_bucket(self.rank).cpu().numpy(), "top_alternatives": alternatives,
        })
        if self.truncated_entropy is not None:
            frame["full_entropy_at_generation"] = self.full_entropy.cpu().numpy()
            frame["truncated_entropy"] = self.truncated_entropy.cpu().numpy()
            frame["tokens_kept"] = self.n_kept.cpu().numpy()
        frame.attrs.update(temperature=self.temperature, kind=self.kind, decoding=self.decoding)
        return frame
