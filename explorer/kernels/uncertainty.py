"""Sequence-level uncertainty from N sampled answers (formulas.md section 3). Higher = more uncertain.

Pure torch; results on the input's device; nats. Shapes: ``N`` answers of one question (leading
batch dimensions allowed where a docstring says so), ``L`` token positions padded with a mask.

Sources: MSP, token entropy, MC sequence entropy and perplexity (Malinin & Gales 2021); semantic
entropy (Kuhn et al. 2023; Farquhar et al. 2024); EigV / Degree / Eccentricity (Lin et al. 2023);
lexical similarity (ROUGE-L, Fomicheva et al. 2020); kernel language entropy (Nikitin et al. 2024);
P(True) (Kadavath et al. 2022); Inv-Entropy and TSU (Song et al. 2025, "Inv-Entropy").
Evaluating a measure against correctness (AUROC, PRR, curves, bootstrap) is in
:mod:`explorer.kernels.evaluation`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

#: eigenvalue cut-off of the Laplacian for the eccentricity embedding (Lin et al.)
ECCENTRICITY_CUTOFF = 0.9


def _masked(values: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    values = values if values.is_floating_point() else values.float()
    if mask is None:
        mask = torch.ones_like(values, dtype=torch.bool)
    mask = mask.to(device=values.device, dtype=torch.bool)
    return torch.where(mask, values, torch.zeros_like(values)), mask


# ---------------------------------------------------------------- token-based -----------------

def sequence_log_prob(token_log_probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """log p(y | x) = sum_i log p(y_i | y_<i, x) over unmasked positions; shape ``[...]`` from ``[..., L]``."""
    values, _ = _masked(token_log_probs, mask)
    return values.sum(-1)


def maximum_sequence_probability(token_log_probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSP = -sum_i log p(y_i | y_<i, x) of the (greedy / most probable) answer, ``[..., L] -> [...]``."""
    return -sequence_log_prob(token_log_probs, mask)


def mean_token_entropy(token_entropies: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean_i H_i over unmasked positions, ``[..., L] -> [...]`` (0 for an empty answer)."""
    values, mask = _masked(token_entropies, mask)
    return values.sum(-1) / mask.sum(-1).clamp(min=1)


def perplexity(token_log_probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """exp(-(1/L) sum_i log p(y_i | y_<i, x)), ``[..., L] -> [...]`` (1 for an empty answer)."""
    values, mask = _masked(token_log_probs, mask)
    return torch.exp(-values.sum(-1) / mask.sum(-1).clamp(min=1))


def mc_sequence_entropy(sequence_log_probs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Monte-Carlo sequence entropy -mean_j log p(y^(j) | x) over the last dimension (N answers).

    With ``lengths`` it is the length-normalised variant -mean_j log p(y^(j) | x) / len_j.
    """
    values = sequence_log_probs if sequence_log_probs.is_floating_point() else sequence_log_probs.float()
    if lengths is not None:
        values = values / lengths.to(values).clamp(min=1)
    return -values.mean(-1)


# ---------------------------------------------------------------- semantic sets ---------------

def semantic_clusters(equivalence: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """Greedy meaning classes of N answers: answer j joins the first class whose first member is
    equivalent to it, else opens a new class (Kuhn et al. reference clustering).

    ``equivalence``: N x N boolean matrix (entry [a, b]: a and b mean the same), or a similarity
    matrix with ``threshold`` (equivalent when similarity >= threshold). Returns class ids [N]
    (long, numbered in order of first appearance).
    """
    if equivalence.dim() != 2 or equivalence.shape[0] != equivalence.shape[1]:
        raise ValueError(f"equivalence must be a square N x N matrix, got shape {tuple(equivalence.shape)}")
    same = equivalence >= threshold if threshold is not None else equivalence.to(torch.bool)
    same = same.cpu().tolist()
    leaders: list[int] = []
    ids = []
    for j in range(len(same)):
        cls = next((c for c, lead in enumerate(leaders) if same[lead][j] and same[j][lead]), None)
        if cls is None:
            leaders.append(j)
            cls = len(leaders) - 1
        ids.append(cls)
    return torch.tensor(ids, dtype=torch.long, device=equivalence.device)


def number_of_semantic_sets(cluster_ids: torch.Tensor) -> int:
    """Number of distinct meaning classes."""
    return int(torch.unique(cluster_ids).numel())


def semantic_entropy_discrete(cluster_ids: torch.Tensor) -> torch.Tensor:
    """SE = -sum_c (n_c / N) log(n_c / N) from the class id of each answer."""
    counts = torch.bincount(cluster_ids.long()).to(torch.float64)
    share = counts[counts > 0] / cluster_ids.numel()
    return -(share * share.log()).sum()


def semantic_entropy_weighted(cluster_ids: torch.Tensor, sequence_log_probs: torch.Tensor) -> torch.Tensor:
    """Probability-weighted SE: log p(c) = logsumexp_{j in c} log p(y_j) - logsumexp_j log p(y_j);
    SE = -sum_c p(c) log p(c)."""
    log_p = sequence_log_probs.to(torch.float64)
    ids = cluster_ids.long().to(log_p.device)
    n_classes = int(ids.max()) + 1
    member = ids.unsqueeze(0) == torch.arange(n_classes, device=log_p.device).unsqueeze(1)
    per_class = torch.where(member, log_p.unsqueeze(0), torch.full_like(member, float("-inf"), dtype=log_p.dtype))
    log_pc = per_class.logsumexp(-1) - log_p.logsumexp(-1)
    log_pc = log_pc[torch.isfinite(log_pc)]
    return -(log_pc.exp() * log_pc).sum()


# ---------------------------------------------------------------- graph measures -------------

def normalized_laplacian(similarity: torch.Tensor) -> torch.Tensor:
    """L = I - D^-1/2 W D^-1/2 with D = diag(W 1) for symmetric W ``[..., m, m]``."""
    w = similarity.to(torch.float64) if not similarity.is_floating_point() else similarity
    w = (w + w.transpose(-1, -2)) / 2
    inv_sqrt = w.sum(-1).clamp(min=torch.finfo(w.dtype).tiny).rsqrt()
    eye = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
    return eye - inv_sqrt.unsqueeze(-1) * w * inv_sqrt.unsqueeze(-2)


def eigv(similarity: torch.Tensor) -> torch.Tensor:
    """EigV = sum_k max(0, 1 - lambda_k(L)), ``[..., m, m] -> [...]``."""
    lam = torch.linalg.eigvalsh(normalized_laplacian(similarity))
    return (1 - lam).clamp(min=0).sum(-1)


def degree(similarity: torch.Tensor) -> torch.Tensor:
    """Degree = trace(m I - D) / m^2 = (m^2 - sum_ij W_ij) / m^2, ``[..., m, m] -> [...]``."""
    m = similarity.shape[-1]
    w = similarity if similarity.is_floating_point() else similarity.double()
    return (m * m - w.sum((-1, -2))) / (m * m)


def eccentricity(similarity: torch.Tensor, cutoff: float = ECCENTRICITY_CUTOFF) -> torch.Tensor:
    """Rows v_j of the eigenvectors of L with eigenvalue < cutoff; U = || (||v_j - mean v||)_j ||_2."""
    lam, vec = torch.linalg.eigh(normalized_laplacian(similarity))
    vec = vec * (lam < cutoff).unsqueeze(-2).to(vec)
    centred = vec - vec.mean(-2, keepdim=True)
    return torch.linalg.vector_norm(torch.linalg.vector_norm(centred, dim=-1), dim=-1)


def kernel_language_entropy(similarity: torch.Tensor, t: float = 0.3) -> torch.Tensor:
    """KLE: K = expm(-t L) with the normalised Laplacian L of W, scaled to unit diagonal and divided
    by m; von Neumann entropy -sum lambda log lambda of K (0 log 0 = 0). ``[..., m, m] -> [...]``."""
    heat = torch.linalg.matrix_exp(-t * normalized_laplacian(similarity))
    diag = heat.diagonal(dim1=-2, dim2=-1).rsqrt()
    density = diag.unsqueeze(-1) * heat * diag.unsqueeze(-2) / similarity.shape[-1]
    lam = torch.linalg.eigvalsh(density).clamp(min=0)
    return -torch.where(lam > 0, lam * lam.log(), torch.zeros_like(lam)).sum(-1)


# ---------------------------------------------------------------- lexical --------------------

def rouge_tokens(text: str) -> list[str]:
    """ROUGE tokenisation: lower case, every non-alphanumeric character a separator."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_f1(a: str, b: str) -> float:
    """ROUGE-L F1 = 2 P R / (P + R) with P = LCS/|b|, R = LCS/|a| on ROUGE tokens (0 if either is empty)."""
    ta, tb = rouge_tokens(a), rouge_tokens(b)
    lcs = _lcs_length(ta, tb) if ta and tb else 0
    return 0.0 if lcs == 0 else 2 * lcs / (len(ta) + len(tb))


def rouge_l_matrix(answers: Sequence[str]) -> torch.Tensor:
    """Symmetric N x N float64 matrix of pairwise ROUGE-L F1 (diagonal 1 for non-empty answers)."""
    n = len(answers)
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i, n):
            out[i, j] = out[j, i] = rouge_l_f1(answers[i], answers[j])
    return out


def lexical_similarity(answers: Sequence[str]) -> float:
    """Minus the mean pairwise (i < j) ROUGE-L F1 of the answers (needs N >= 2)."""
    if len(answers) < 2:
        raise ValueError("lexical similarity needs at least two answers")
    f1 = rouge_l_matrix(answers)
    upper = torch.triu_indices(len(answers), len(answers), offset=1)
    return -float(f1[upper[0], upper[1]].mean())


# ---------------------------------------------------------------- P(True), Inv-Entropy ------------

def p_true_uncertainty(next_token_log_probs: torch.Tensor, true_token_id: int) -> torch.Tensor:
    """P(True): -log p("True") (or of the option letter) from next-token log-probs ``[..., V]``."""
    return -next_token_log_probs[..., true_token_id]


def cosine_to_similarity(cosine: torch.Tensor, mapping: str = "paper") -> torch.Tensor:
    """Map cosine similarity to [0, 1]: "paper" (1 + cos) / 2 (Inv-Entropy paper), "abs" |cos| (its code)."""
    if mapping == "paper":
        return (1 + cosine) / 2
    if mapping == "abs":
        return cosine.abs()
    raise ValueError(f"mapping must be 'paper' or 'abs', got {mapping!r}")


def inv_entropy(sim_x: torch.Tensor, sim_y: torch.Tensor) -> torch.Tensor:
    """Inv-Entropy from the (n+1) x (n+1) similarity matrices of the inputs (S_x) and answers (S_y).

    P_x, P_y = row normalisations; P(X = x_i | Y = y_j) = (P_y P_x)[j, i]; d_i = (P_y P_x)[i, i];
    Inv-Entropy = -sum_i d_i log d_i. Batched over leading dimensions.
    """
    if sim_x.shape != sim_y.shape or sim_x.shape[-1] != sim_x.shape[-2]:
        raise ValueError(f"sim_x and sim_y must be square and of one shape, got {tuple(sim_x.shape)} "
                         f"and {tuple(sim_y.shape)}")
    dtype = torch.promote_types(torch.promote_types(sim_x.dtype, sim_y.dtype), torch.float32)
    px = sim_x.to(dtype) / sim_x.to(dtype).sum(-1, keepdim=True)
    py = sim_y.to(dtype) / sim_y.to(dtype).sum(-1, keepdim=True)
    d = (py @ px).diagonal(dim1=-2, dim2=-1)
    return -torch.where(d > 0, d * d.log(), torch.zeros_like(d)).sum(-1)


# ---------------------------------------------------------------- TSU -------------------------

def tsu(U: torch.Tensor, strict: bool = True, columns: Sequence[int] | None = None) -> float:
    """Temperature Sensitivity of Uncertainty: 100 * share of rows of U (questions x temperatures,
    ascending T) with U(x, T_1) < U(x, T_2) < ... (strict: ties fail; otherwise <=).

    ``columns`` picks a pair or sub-chain of temperatures (indices, ascending). Rows holding NaN fail.
    """
    if U.dim() != 2 or U.shape[0] == 0:
        raise ValueError(f"U must be a non-empty questions x temperatures matrix, got shape {tuple(U.shape)}")
    chain = U if columns is None else U[:, list(columns)]
    if chain.shape[1] < 2:
        raise ValueError("TSU needs at least two temperatures")
    steps = chain[:, 1:] - chain[:, :-1]
    rising = steps > 0 if strict else steps >= 0
    return 100.0 * float(rising.all(-1).double().mean())
