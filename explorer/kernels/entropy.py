"""Token-level measures of next-token distributions p = softmax(z / T) (formulas.md section 1).

All functions take logits ``z`` of any leading batch shape with the vocabulary last, accept ``-inf``
entries (tokens a rule removed), stay finite for huge logits and tiny temperatures, compute in at
least float32 (float64 input stays float64) and return results on the input's device. Nats.

    entropy      H = -sum_v p_v log p_v                     (0 log 0 = 0)
    surprisal    s = -log p_y
    varentropy   V = sum_v p_v (log p_v + H)^2             (variance of the surprisal)
    rank         r = 1 + #{v : z_v > z_y}                   (temperature-invariant)

A temperature sweep needs no new forward pass: ``entropy_sweep`` re-uses the logits, using
H(T) = log Z(T) - E_p[z'] / T with z' = z - max z and Z(T) = sum_v exp(z'_v / T);
``token_statistics_sweep`` adds the surprisal of given tokens and the varentropy from the same pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: rows processed together by the sweeps so that one chunk of logits stays in the CPU cache
SWEEP_CHUNK_ELEMENTS = 1 << 18
LN2 = math.log(2)
LOG2E = 1 / LN2


def _float(logits: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(logits) or logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError("logits must be a tensor whose last dimension (the vocabulary) is not empty")
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be positive and finite, got {temperature!r}")
    return t


def _shifted(logits: torch.Tensor) -> torch.Tensor:
    """z - max z per row (<= 0, -inf kept); rows that are all -inf stay -inf."""
    z = _float(logits)
    top = z.amax(-1, keepdim=True)
    return z - torch.where(torch.isfinite(top), top, torch.zeros_like(top))


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(z / T) along the last dimension, same shape as ``logits``: s - logsumexp(s) with
    s = (z - max z) / T. Not ``torch.log_softmax``: on CPUs without AVX-512 its float32 normaliser is
    off by up to 2e-5 over a 49,152-token vocabulary (so is every entropy built on it), where
    ``logsumexp`` stays within 3e-7 and is faster (82 against 239 ms for 512 x 49,152)."""
    z = _shifted(logits)
    t = _safe_temperature(_check_temperature(temperature), z.dtype)
    s = z / t
    return s - torch.logsumexp(s, dim=-1, keepdim=True)


def _clamped(log_p: torch.Tensor) -> torch.Tensor:
    """log p clamped at exp(-80) (float32; exp(-700) in float64): such tokens change H by < V * 1e-33,
    ``-inf`` (0 log 0) needs no special case and ``exp`` stays out of its slow denormal range."""
    return log_p.clamp_min(_lowest_exponent(log_p.dtype))


def _entropy_from_log_probs(log_p: torch.Tensor) -> torch.Tensor:
    log_p = _clamped(log_p)
    return (-(log_p.exp() * log_p).sum(-1)).clamp_min(0)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Shannon entropy H = -sum p log p of softmax(z / T), shape ``logits.shape[:-1]``."""
    return _entropy_from_log_probs(log_probs(logits, temperature))


def surprisal(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """s = -log p_y for the token ids ``y`` (shape ``logits.shape[:-1]``)."""
    return -log_probs(logits, temperature).gather(-1, _ids(logits, token_ids)).squeeze(-1)


def varentropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """V = sum p (log p + H)^2, the variance of the surprisal under p."""
    log_p = log_probs(logits, temperature)
    return _varentropy(log_p, _entropy_from_log_probs(log_p))


def _varentropy(log_p: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    log_p = _clamped(log_p)
    return (log_p.exp() * (log_p + entropy.unsqueeze(-1)).square()).sum(-1)


def _ids(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    ids = torch.as_tensor(token_ids, device=logits.device).long()
    if ids.shape != logits.shape[:-1]:
        raise ValueError(f"token_ids shape {tuple(ids.shape)} must equal the logits' leading shape "
                         f"{tuple(logits.shape[:-1])}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= logits.shape[-1]):
        raise ValueError(f"token ids must lie in [0, {logits.shape[-1]})")
    return ids.unsqueeze(-1)


def token_rank(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Rank of each token: 1 + #{v : z_v > z_y} (1 = the most likely token; ties share the best rank)."""
    z = _float(logits)
    chosen = z.gather(-1, _ids(z, token_ids))
    return 1 + (z > chosen).sum(-1)


def token_statistics(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0,
                     with_rank: bool = True) -> dict[str, torch.Tensor]:
    """Entropy, surprisal, varentropy (and rank) of ``token_ids`` from one log-softmax.

    p and the clamped log p are computed once and shared by the entropy and the varentropy. The rank
    does not depend on the temperature: callers that re-score the same logits at many temperatures
    pass ``with_rank=False`` and compute it once with :func:`token_rank`.
    """
    ids = _ids(logits, token_ids)
    log_p = log_probs(logits, temperature)
    surprisal_y = -log_p.gather(-1, ids).squeeze(-1)
    log_p = _clamped(log_p)
    p = log_p.exp()
    entropy = (-(p * log_p).sum(-1)).clamp_min(0)
    statistics = {
        "entropy": entropy,
        "surprisal": surprisal_y,
        "varentropy": (p * log_p.add_(entropy.unsqueeze(-1)).square_()).sum(-1),
    }
    if with_rank:
        statistics["rank"] = token_rank(logits, token_ids)
    return statistics


def top_alternatives(logits: torch.Tensor, k: int = 10, temperature: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most likely tokens per position: ``(probs[..., k], ids[..., k])``, most likely first."""
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    z = _shifted(logits)
    t = _safe_temperature(_check_temperature(temperature), z.dtype)
    # p_v = exp(z_v/T - logsumexp(z/T)); the top values need only the normaliser, not a full softmax.
    values, ids = z.topk(min(int(k), z.shape[-1]), dim=-1)
    return torch.exp(values / t - torch.logsumexp(z / t, dim=-1, keepdim=True)), ids


def _temperatures(temperatures) -> torch.Tensor:
    ts = torch.as_tensor(temperatures, dtype=torch.float64).flatten()
    if ts.numel() == 0 or not bool(torch.isfinite(ts).all() and (ts > 0).all()):
        raise ValueError(f"temperatures must be a non-empty list of positive finite numbers, got {temperatures!r}")
    return ts


def entropy_sweep(logits: torch.Tensor, temperatures: Sequence[float] | torch.Tensor, mode: str = "exact",
                  bins: int = 4096, top_m: int = 64) -> torch.Tensor:
    """Entropy at every temperature: ``Tensor[len(temperatures), *logits.shape[:-1]]`` (nats).

    Both modes use H(T) = log S - sum_v e_v s_v / S with s_v = (z_v - max z) / T, e_v = exp(s_v),
    S = sum_v e_v (shift-invariant, so it never overflows).

    ``mode="exact"``: rows are processed in cache-sized chunks; per temperature one scaled copy,
        one exp, one sum and one dot per logit (the naive way needs a log-softmax, an exp, a product
        and a sum). ``s`` is clamped at ``-80`` (``-700`` in float64): a token there has weight below
        1.8e-35 relative to the top token, so the clamp changes H by less than V * 1e-33 and keeps
        ``exp`` out of its slow denormal range; ``-inf`` logits are handled the same way.
    ``mode="approx"``: each row is compressed once into its ``top_m`` largest logits (kept exactly) and
        ``bins`` equal-width bins of width w spanning the remaining finite logits (count and mean of
        each bin); every temperature then costs O(top_m + bins) per row instead of O(V). The error is
        at most :func:`sweep_error_bound` (derived there; of order (w / T)^2 times the binned mass).
    Rows whose logits are all ``-inf`` give NaN. ``temperatures`` must be positive and finite.
    """
    ts = _temperatures(temperatures)
    if mode not in ("exact", "approx"):
        raise ValueError(f"mode must be 'exact' or 'approx', got {mode!r}")
    z = _float(logits)
    rows = z.reshape(-1, z.shape[-1])
    if mode == "approx" and _compressible(rows, bins, top_m):
        entropy, _ = _sweep_compressed(_compress(rows, bins, top_m), ts)
    else:
        entropy = _sweep_exact(rows, ts)["entropy"]
    return entropy.reshape(len(ts), *z.shape[:-1])


def token_statistics_sweep(logits: torch.Tensor, token_ids: torch.Tensor,
                           temperatures: Sequence[float] | torch.Tensor) -> dict[str, torch.Tensor]:
    """Entropy, surprisal of ``token_ids`` and varentropy at every temperature of a grid, from one pass
    over the logits: ``{"entropy", "surprisal", "varentropy"}``, each ``[len(temperatures),
    *logits.shape[:-1]]`` (nats), equal to :func:`token_statistics` at each T up to round-off (formulas in
    :func:`_sweep_exact`). Precompute a grid once after scoring and a temperature move is a lookup."""
    ts = _temperatures(temperatures)
    z = _float(logits)
    ids = _ids(z, token_ids)
    stats = _sweep_exact(z.reshape(-1, z.shape[-1]), ts, ids.reshape(-1, 1), varentropy=True)
    return {name: value.reshape(len(ts), *z.shape[:-1]) for name, value in stats.items()}


def _lowest_exponent(dtype: torch.dtype) -> float:
    """Exponents below this are clamped: exp(-80) (float32) and exp(-700) (float64) are still normal."""
    return -700.0 if dtype == torch.float64 else -80.0


def _safe_temperature(t: float, dtype: torch.dtype) -> float:
    """T clipped to the dtype's normal range so that z / T never gives 0 / 0 or inf / inf."""
    info = torch.finfo(dtype)
    return min(max(t, info.tiny), info.max)


def _chunk_rows(rows: torch.Tensor) -> int:
    return max(1, SWEEP_CHUNK_ELEMENTS // rows.shape[1]) if rows.device.type == "cpu" else rows.shape[0]


def _sweep_exact(rows: torch.Tensor, ts: torch.Tensor, picked: torch.Tensor | None = None,
                 varentropy: bool = False) -> dict[str, torch.Tensor]:
    """Entropy (with ``picked`` ids their surprisal, and the varentropy) of every row at every temperature.

    Per cache-sized chunk of rows and temperature, in base 2 (``exp2`` is 2.5x faster than ``exp``
    here): ``b_v = (z_v - max z) log2(e) / T`` clamped at the dtype's lowest exponent (see
    :func:`_clamped`), ``e_v = 2^b_v``, ``S = sum e_v``, ``m = ln2 sum e_v b_v / S`` (= E_p[s] for
    ``s = (z - max z) / T``):
        H = ln S - m,   -log p_y = ln S - s_y,   V = ln2^2 sum e_v b_v^2 / S - m^2   (the variance of s).
    V as a difference of moments loses about ``eps E[s^2] / V`` relatively (below 1e-5 for real
    language-model logits in float32; tested against float64)."""
    names = ["entropy"] + (["surprisal"] if picked is not None else []) + (["varentropy"] if varentropy else [])
    out = {name: torch.empty(len(ts), rows.shape[0], dtype=rows.dtype, device=rows.device) for name in names}
    low = _lowest_exponent(rows.dtype) * LOG2E
    chunk = _chunk_rows(rows)
    for start in range(0, rows.shape[0], chunk):
        part = slice(start, start + chunk)
        z = _shifted(rows[part])
        chosen = None if picked is None else z.gather(-1, picked[part]).squeeze(-1)
        b, e = torch.empty_like(z), torch.empty_like(z)
        for i, t in enumerate(ts.tolist()):
            t = _safe_temperature(t, z.dtype)
            torch.mul(z, LOG2E / t, out=b).clamp_min_(low)
            torch.exp2(b, out=e)
            total = e.sum(-1)
            log_total = total.log()
            weighted = e.mul_(b)  # e_v b_v, in place
            mean = weighted.sum(-1) * (LN2 / total)
            out["entropy"][i, part] = log_total - mean
            if chosen is not None:
                out["surprisal"][i, part] = log_total - chosen / t  # s_y unclamped, as in token_statistics
            if varentropy:
                out["varentropy"][i, part] = torch.linalg.vecdot(weighted, b) * (LN2 * LN2 / total) - mean.square()
    out["entropy"].clamp_min_(0)
    if varentropy:
        out["varentropy"].clamp_min_(0)
    return out


def _compressible(rows: torch.Tensor, bins: int, top_m: int) -> bool:
    if int(bins) < 1 or int(top_m) < 1:
        raise ValueError(f"bins and top_m must be >= 1, got bins={bins!r}, top_m={top_m!r}")
    return rows.shape[-1] > top_m + bins


def _compress(rows: torch.Tensor, bins: int, top_m: int) -> dict[str, torch.Tensor]:
    """Per row: the ``top_m`` largest shifted logits, and the count and mean of the other finite ones
    in ``bins`` equal bins of width ``width`` spanning [min finite z, m-th largest z].

    ``-inf`` and top-m tokens go to an extra bin that is dropped. One ``bincount`` per chunk of rows.
    """
    n, vocab = rows.shape
    tops = torch.empty(n, top_m, dtype=rows.dtype, device=rows.device)
    counts = torch.empty(n, bins, dtype=rows.dtype, device=rows.device)
    means = torch.empty_like(counts)
    widths = torch.empty(n, 1, dtype=rows.dtype, device=rows.device)
    removed = bool(rows.amin() == -math.inf)
    chunk = _chunk_rows(rows)
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        z = rows[part]
        top, top_idx = z.topk(top_m, dim=-1)
        peak = top[:, :1]
        finite = torch.isfinite(z) if removed else None
        lowest = (torch.where(finite, z, peak) if removed else z).amin(-1, keepdim=True)
        width = ((top[:, -1:] - lowest) / bins).clamp_min(torch.finfo(z.dtype).tiny)
        index_dtype = torch.int32 if z.shape[0] * (bins + 1) < 2**31 else torch.int64
        index = torch.addcmul(-lowest / width, z, 1 / width).clamp_(0, bins - 1).to(index_dtype)
        if removed:
            index.masked_fill_(~finite, bins)
        index.scatter_(1, top_idx, bins)
        index += torch.arange(0, z.shape[0] * (bins + 1), bins + 1, device=z.device, dtype=index_dtype
                              ).unsqueeze(-1)
        flat = index.flatten().long()
        size = z.shape[0] * (bins + 1)
        count = torch.bincount(flat, minlength=size).reshape(-1, bins + 1)[:, :bins].to(z.dtype)
        total = torch.bincount(flat, weights=z.flatten(), minlength=size).reshape(-1, bins + 1)[:, :bins]
        counts[part] = count
        means[part] = total.to(z.dtype) / count.clamp_min(1) - peak   # -inf only in the dropped bin
        tops[part] = top - peak
        widths[part] = width
    return {"tops": tops, "counts": counts, "means": means, "widths": widths}


def _sweep_compressed(compressed: dict[str, torch.Tensor], ts: torch.Tensor, with_bound: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Entropy of the compressed rows at every temperature, and the error bound of each value."""
    tops, counts, means, widths = (compressed[k] for k in ("tops", "counts", "means", "widths"))
    values = torch.cat([tops.nan_to_num(neginf=0.0), means], dim=-1)            # shifted logits, <= 0
    log_weights = torch.cat([torch.where(torch.isfinite(tops), 0.0, -math.inf).to(tops.dtype),
                             torch.where(counts > 0, counts.log(), -math.inf)], dim=-1)
    is_bin = torch.arange(values.shape[-1], device=values.device) >= tops.shape[-1]
    low = _lowest_exponent(values.dtype)
    entropy = torch.empty(len(ts), values.shape[0], dtype=values.dtype, device=values.device)
    bound = torch.empty_like(entropy) if with_bound else None
    for i, t in enumerate(ts.tolist()):
        t = _safe_temperature(t, values.dtype)
        s = torch.div(values, t).clamp_min_(low)                                # log weight of one token
        e = torch.exp((log_weights + s).clamp_min_(low))                        # weight of each class
        total = e.sum(-1, keepdim=True)
        log_total = total.log()
        entropy[i] = (log_total - torch.linalg.vecdot(e, s).unsqueeze(-1) / total).squeeze(-1)
        if with_bound:
            share = e / total                                                   # class masses of p~
            surprise = share * (log_total - s)                                  # p~ (-log p~ per token)
            bound[i] = _error_bound(share, surprise, is_bin, widths.squeeze(-1) / t)
    return entropy.clamp_min_(0), bound


def _error_bound(share, surprise, is_bin, scaled_width) -> torch.Tensor:
    """The bound of :func:`sweep_error_bound` from the approximate class masses of one temperature."""
    binned = torch.where(is_bin, share, 0.0).sum(-1)
    a_bin = torch.where(is_bin, surprise, 0.0).sum(-1)
    a_top = torch.where(is_bin, 0.0, surprise).sum(-1)
    eta = scaled_width.square() / 8
    d = torch.expm1(eta)
    kappa = torch.log1p(binned * d)
    within = binned * torch.exp(eta) * torch.expm1(scaled_width).square()
    return kappa * a_top + d * a_bin + (1 - binned) * kappa.square() + binned * d.square() + within


def sweep_error_bound(logits: torch.Tensor, temperatures, bins: int = 4096, top_m: int = 64) -> torch.Tensor:
    """A bound on ``|entropy_sweep(mode="approx") - exact entropy|`` per temperature and row (nats).

    Derivation. Let b = 1/T and w the bin width of the row. Group the tokens into classes: each
    top-m token alone, and each bin. The approximation p~ gives every token of bin c the weight
    exp(b m_c) (m_c the bin mean) instead of exp(b z_v). By the chain rule of entropy,
    H(p) = H(P) + sum_c P_c H_c with P the class masses and H_c the entropy inside class c.
      1. Hoeffding's lemma (z_v - m_c has mean 0 and range w): a bin's true weight is within a factor
         [1, e^eta] of the approximate one, eta = b^2 w^2 / 8; so Z / Z~ is in [1, 1 + q d] with
         q the binned mass under p~, d = e^eta - 1, kappa = log(1 + q d), and each class mass ratio
         P_c / P~_c lies in [e^-kappa, e^eta] (in [e^-kappa, 1] for a top token).
      2. H(P) - H(P~) = -sum (P - P~) log P~ - KL(P || P~); with the ratios above, and
         KL <= chi^2, this and the bins' log n_c terms are at most
         kappa A_top + d A_bin + (1 - q) kappa^2 + q d^2, where A_top, A_bin are the top tokens' and
         the bins' parts of H(p~) = -sum_v p~_v log p~_v.
      3. Inside a bin the true probabilities differ from uniform by a factor within e^(+-b w), so
         log n_c - H_c <= chi^2 <= (e^(b w) - 1)^2, weighted by the true binned mass <= q e^eta.
    The sum of these terms is returned; it is second order in b w and vanishes with the binned mass.
    Floating-point rounding (about 1e-6 relative in float32) comes on top.
    """
    ts = _temperatures(temperatures)
    z = _float(logits)
    rows = z.reshape(-1, z.shape[-1])
    if not _compressible(rows, bins, top_m):
        return torch.zeros(len(ts), *z.shape[:-1], dtype=z.dtype, device=z.device)
    _, bound = _sweep_compressed(_compress(rows, bins, top_m), ts, with_bound=True)
    return bound.reshape(len(ts), *z.shape[:-1])
