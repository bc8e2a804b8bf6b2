"""Two distributions per position, layer-by-layer lens statistics, and entropy-driven views (pure torch).

Logits ``z`` have any leading batch shape with the vocabulary last; ``-inf`` entries (removed tokens)
are allowed; results are in nats (``to_bits`` converts) on the input's device (formulas.md sections 1-2).

    cross-entropy     H(p, q)  = -sum_v p_v log q_v
    KL divergence     KL(p||q) =  sum_v p_v (log p_v - log q_v)   (0 where p_v = 0; +inf where q_v = 0 < p_v)
    lens statistics   per layer l of a stack: H(p_l), KL(p_l || p_ref), the top token and its p, -log p_l(y)
    quadrants         entropy x varentropy, split at one threshold on each axis (as entropix's chart)
    entropix states   entropix's sampler branches, in its order (bits, bits^2)
    rolling mean      trailing mean over the last ``window`` values (fewer at the start)
    adaptive handover Entropy Adaptive Decoding: rolling mean of entropy in bits > threshold
"""

from __future__ import annotations

import math

import torch

from explorer.kernels.entropy import _check_temperature, _float, _lowest_exponent, _safe_temperature, log_probs

LN2 = math.log(2.0)

#: quadrant codes: bit 0 = high entropy, bit 1 = high varentropy
QUADRANTS = ("low entropy, low varentropy", "high entropy, low varentropy",
             "low entropy, high varentropy", "high entropy, high varentropy")

#: entropix's sampler states (xjdr-alt/entropix sampler.py), checked in this order; the last is "else"
ENTROPIX_STATES = ("flowing (argmax)", "treading carefully (clarify)", "exploring forks",
                   "resampling in the mist", "adaptive sampling")
#: entropix's SamplerConfig thresholds: entropy in bits, varentropy in bits^2
ENTROPIX_THRESHOLDS = {"low_entropy": 0.1, "low_varentropy": 0.1, "medium_entropy": 3.0,
                       "high_entropy": 5.0, "high_varentropy": 5.0}


def to_bits(nats: torch.Tensor) -> torch.Tensor:
    """Entropy or surprisal in bits (divide by ln 2); a varentropy in bits^2 is ``nats2 / LN2 ** 2``."""
    return nats / LN2


def _p_log_q(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """p * log q with 0 where p = 0 (so 0 * -inf = 0, not NaN)."""
    return torch.where(p > 0, p * log_q, torch.zeros_like(p))


def divergence_statistics(logits_p: torch.Tensor, logits_q: torch.Tensor, temperature: float = 1.0
                          ) -> dict[str, torch.Tensor]:
    """Entropy of p and of q, H(p, q) and KL(p || q) per row, p = softmax(z_p / T), q = softmax(z_q / T).

    KL is summed directly as p (log p - log q) (not H(p, q) - H(p), which cancels): it is exactly 0
    for identical logits, >= 0 and +inf where q removes a token that p keeps.
    """
    if logits_p.shape != logits_q.shape:
        raise ValueError(f"logits shapes differ: {tuple(logits_p.shape)} vs {tuple(logits_q.shape)}")
    log_p, log_q = log_probs(logits_p, temperature), log_probs(logits_q, temperature)
    p, q = log_p.exp(), log_q.exp()
    return {
        "entropy_p": (-_p_log_q(p, log_p).sum(-1)).clamp_min(0),
        "entropy_q": (-_p_log_q(q, log_q).sum(-1)).clamp_min(0),
        "cross_entropy": -_p_log_q(p, log_q).sum(-1),
        "kl": _p_log_q(p, log_p - log_q).sum(-1).clamp_min(0),
    }


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) per row (nats)."""
    return divergence_statistics(logits_p, logits_q, temperature)["kl"]


def cross_entropy(logits_p: torch.Tensor, logits_q: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """H(p, q) = -sum_v p_v log q_v per row (nats) = H(p) + KL(p || q)."""
    return divergence_statistics(logits_p, logits_q, temperature)["cross_entropy"]


def lens_statistics(logits: torch.Tensor, reference: int = -1, token_ids: torch.Tensor | None = None,
                    temperature: float = 1.0, overwrite: bool = False) -> dict[str, torch.Tensor]:
    """Statistics of a stack of distributions ``logits[L, ..., V]`` (one row per layer), each against row
    ``reference`` (the final layer in a logit lens).

    Returns, each ``[L, ...]``: ``entropy`` H(p_l), ``kl_to_reference`` KL(p_l || p_ref) (exactly 0 on
    the reference row), ``top_ids`` (the most likely token; the first on ties) and ``top_probs`` (its
    p), and with ``token_ids[...]`` the ``surprisal`` -log p_l(y) of those tokens. The logits must be
    finite. With s = (z - max z) / T clamped at -80, e = exp(s), S = sum e and log r the reference's
    log-probabilities (not clamped):

        H = log S - <e, s> / S,   KL = (<e, s> - <e, log r>) / S - log S,   p_top = 1 / S

    so a layer costs one exp and three reductions over the vocabulary, and no log-softmax. The dot
    products run as short blocked dots (float32 error near 1e-7 relative, where one long dot of
    50k terms gives 1e-5). ``overwrite=True`` lets the kernel reuse ``logits``' memory (saves a copy).
    """
    z = _float(logits)
    t = _check_temperature(temperature)
    log_ref = log_probs(z[reference], t)
    top, top_ids = z.max(-1)
    statistics = {"top_ids": top_ids}
    if token_ids is not None:
        ids = torch.as_tensor(token_ids, device=z.device).long().expand(z.shape[:-1]).unsqueeze(-1)
        chosen = z.gather(-1, ids).squeeze(-1)
    s = z if overwrite or z is not logits else z.clone()   # a converted copy is ours to overwrite
    s.sub_(top.unsqueeze(-1))
    if t != 1.0:
        s.div_(_safe_temperature(t, s.dtype))
    s.clamp_(min=_lowest_exponent(s.dtype))
    e = torch.exp(s)
    total = e.sum(-1)
    log_total = total.log()
    e_dot_s = _row_dot(e, s)
    e_dot_ref = torch.stack([_row_dot(e_l, log_ref) for e_l in e])
    statistics["top_probs"] = total.reciprocal()
    statistics["entropy"] = (log_total - e_dot_s / total).clamp_min(0)
    kl = ((e_dot_s - e_dot_ref) / total - log_total).clamp_min(0)
    kl[reference] = 0.0
    statistics["kl_to_reference"] = kl
    if token_ids is not None:
        statistics["surprisal"] = log_total - (chosen - top) / _safe_temperature(t, s.dtype)
    return statistics


def _row_dot(a: torch.Tensor, b: torch.Tensor, block: int = 256) -> torch.Tensor:
    """sum_v a[..., v] b[..., v] for same-shape tensors, as batched dots of ``block`` terms whose partial
    sums are added pairwise: as fast as one batched matrix product and far more accurate in float32."""
    a, b = a.contiguous(), b.contiguous()
    v = a.shape[-1]
    main = v - v % block
    rows = a.numel() // v
    result = torch.zeros(a.shape[:-1], dtype=a.dtype, device=a.device)
    if main:
        pa, pb = a.reshape(rows, v)[:, :main], b.reshape(rows, v)[:, :main]
        parts = torch.bmm(pa.reshape(-1, 1, block), pb.reshape(-1, block, 1)).view(rows, main // block)
        result += parts.sum(-1).view(a.shape[:-1])
    if main < v:
        result += (a[..., main:] * b[..., main:]).sum(-1)
    return result


def entropy_quadrants(entropy: torch.Tensor, varentropy: torch.Tensor, entropy_threshold: float,
                      varentropy_threshold: float) -> torch.Tensor:
    """Quadrant code per position: 0 low/low, 1 high entropy, 2 high varentropy, 3 both (:data:`QUADRANTS`).

    "High" means strictly above the threshold (a value equal to it is low). Entropy and varentropy
    must be in the thresholds' units (entropix uses bits and bits^2).
    """
    if entropy.shape != varentropy.shape:
        raise ValueError("entropy and varentropy must have the same shape")
    return (entropy > entropy_threshold).long() + 2 * (varentropy > varentropy_threshold).long()


def entropix_states(entropy_bits: torch.Tensor, varentropy_bits2: torch.Tensor, low_entropy: float = 0.1,
                    low_varentropy: float = 0.1, medium_entropy: float = 3.0, high_entropy: float = 5.0,
                    high_varentropy: float = 5.0) -> torch.Tensor:
    """entropix's sampler state (index into :data:`ENTROPIX_STATES`), its branches in its order:

        0  H < low_entropy and V < low_varentropy
        1  H > high_entropy and V < low_varentropy
        2  H < high_entropy and V > high_varentropy
        3  H > medium_entropy and V > high_varentropy
        4  otherwise
    """
    h, v = entropy_bits, varentropy_bits2
    state = torch.full(h.shape, 4, dtype=torch.long, device=h.device)
    branches = [(h < low_entropy) & (v < low_varentropy), (h > high_entropy) & (v < low_varentropy),
                (h < high_entropy) & (v > high_varentropy), (h > medium_entropy) & (v > high_varentropy)]
    for code in reversed(range(4)):  # earlier branches win
        state = torch.where(branches[code], code, state)
    return state


def rolling_mean(values: torch.Tensor, window: int) -> torch.Tensor:
    """Trailing mean over the last dimension: out_i = mean(values[max(0, i - window + 1) : i + 1]).

    The first ``window - 1`` positions average the values seen so far (as pandas'
    ``rolling(window, min_periods=1).mean()``); cumulative sums in float64.
    """
    if int(window) != window or window < 1:
        raise ValueError(f"window must be a whole number >= 1, got {window!r}")
    x = _float(values)
    total = torch.nn.functional.pad(x.double().cumsum(-1), (1, 0))
    n = x.shape[-1]
    ends = torch.arange(1, n + 1, device=x.device)
    starts = (ends - int(window)).clamp_min(0)
    sums = total[..., ends] - total[..., starts]
    return (sums / (ends - starts)).to(x.dtype)


def adaptive_handover(entropy_nats: torch.Tensor, threshold_bits: float, window: int = 5
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy Adaptive Decoding: ``(rolling_bits, handed_over)`` per step.

    rolling_bits is the trailing mean (window 5, the current step included) of the small model's
    entropy in bits (before temperature); a step goes to the larger model where it is > threshold.
    """
    rolling = rolling_mean(to_bits(_float(entropy_nats)), window)
    return rolling, rolling > threshold_bits
