"""Decoding rules as composable logits processors (formulas.md section 2).

Each rule maps a batch of logits ``[B, V]`` (already divided by the temperature when chained after
:class:`Temperature`) to logits in which removed tokens are ``-inf``; sampling from
``softmax(rule(z))`` is sampling under the rule. Every rule keeps at least one token (the most
likely; typical keeps the most typical one), like transformers' ``min_tokens_to_keep=1``; ties are
broken as transformers' warpers break them so that the two agree token for token.

    top-k      keep the k largest logits (ties with the k-th are kept)
    top-p      smallest prefix of the sorted p with mass >= top_p
    min-p      keep p_v >= min_p * max p
    typical    sort by |-log p_v - H| ascending, keep the shortest prefix with mass >= typical_p
    epsilon    keep p_v >= epsilon
    eta        keep p_v >= min(epsilon, sqrt(epsilon) exp(-H))
    top-H      longest prefix of the sorted top_n tokens (renormalised) whose partial entropy
               -sum_{i<=k} p_i log p_i <= alpha H(top_n); alpha = 1 keeps all top_n tokens
               (transformers' TopHLogitsWarper, except its round-off at alpha = 1: see TopH)
    mirostat   v2: drop tokens with -log2 p_v > mu; after sampling y, mu <- mu - eta (s_y - tau),
               s_y the surprise (bits) of y under the truncated distribution; mu_0 = 2 tau
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from explorer.kernels.entropy import token_entropy

NEG_INF = -math.inf


def _keep(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits with ``~keep`` set to -inf, always keeping each row's most likely token(s) (ties too)."""
    keep = keep | (logits == logits.amax(-1, keepdim=True))
    return logits.masked_fill(~keep, NEG_INF)


class LogitsRule:
    """Base class: ``rule(logits) -> logits``; ``observe`` and ``reset`` matter for stateful rules."""

    name = "rule"

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, token_ids: torch.Tensor, logits_used: torch.Tensor) -> None:
        """Called after sampling ``token_ids`` from ``softmax(logits_used)``."""

    def reset(self) -> None:
        """Forget any state (a new generation starts)."""

    @property
    def description(self) -> str:
        settings = ", ".join(f"{k}={v:g}" for k, v in vars(self).items() if isinstance(v, (int, float))
                             and not k.startswith("_"))
        return f"{self.name}({settings})" if settings else self.name


class Temperature(LogitsRule):
    name = "temperature"

    def __init__(self, temperature: float = 1.0):
        self.temperature = _positive("temperature", temperature)

    def __call__(self, logits):
        return logits / self.temperature


class TopK(LogitsRule):
    name = "top_k"

    def __init__(self, top_k: int = 50):
        self.top_k = _whole("top_k", top_k)

    def __call__(self, logits):
        k = min(self.top_k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]
        return _keep(logits, logits >= kth)


class TopP(LogitsRule):
    name = "top_p"

    def __init__(self, top_p: float = 0.9):
        self.top_p = _fraction("top_p", top_p)

    def __call__(self, logits):
        ascending, order = logits.sort(dim=-1)
        cumulative = ascending.softmax(-1).cumsum(-1)
        remove_sorted = cumulative <= 1 - self.top_p
        remove_sorted[..., -1] = False                          # the most likely token always stays
        return logits.masked_fill(remove_sorted.scatter(-1, order, remove_sorted), NEG_INF)


class MinP(LogitsRule):
    name = "min_p"

    def __init__(self, min_p: float = 0.1):
        self.min_p = _fraction("min_p", min_p, allow_zero=True)

    def __call__(self, logits):
        p = logits.softmax(-1)
        return _keep(logits, p >= self.min_p * p.amax(-1, keepdim=True))


class Typical(LogitsRule):
    name = "typical"

    def __init__(self, typical_p: float = 0.9):
        self.typical_p = _fraction("typical_p", typical_p)

    def __call__(self, logits):
        log_p = logits.log_softmax(-1)
        p = log_p.exp()
        entropy = -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1, keepdim=True)
        distance = (-log_p - entropy).abs()
        sorted_distance, order = distance.sort(dim=-1)
        cumulative = p.gather(-1, order).cumsum(-1)
        last = (cumulative < self.typical_p).sum(-1, keepdim=True).clamp(max=logits.shape[-1] - 1)
        remove_sorted = sorted_distance > sorted_distance.gather(-1, last)   # never the most typical
        return logits.masked_fill(remove_sorted.scatter(-1, order, remove_sorted), NEG_INF)


class Epsilon(LogitsRule):
    name = "epsilon"

    def __init__(self, epsilon: float = 3e-4):
        self.epsilon = _open_fraction("epsilon", epsilon)

    def __call__(self, logits):
        return _keep(logits, logits.softmax(-1) >= self.epsilon)


class Eta(LogitsRule):
    name = "eta"

    def __init__(self, epsilon: float = 3e-4):
        self.epsilon = _open_fraction("epsilon", epsilon)

    def __call__(self, logits):
        p = logits.softmax(-1)
        eta = torch.minimum(torch.tensor(self.epsilon, dtype=p.dtype, device=p.device),
                            math.sqrt(self.epsilon) * torch.exp(-token_entropy(logits))).unsqueeze(-1)
        return _keep(logits, p >= eta)


class TopH(LogitsRule):
    """Top-H (formulas.md section 2): the longest prefix of the sorted top_n tokens whose partial entropy
    is <= alpha times their total entropy; alpha = 1 keeps every top_n token that can be drawn (a token
    whose renormalised p underflows to 0 is dropped, as transformers drops it)."""

    name = "top_h"

    def __init__(self, alpha: float = 0.4, top_n: int = 100):
        self.alpha = _fraction("alpha", alpha)
        self.top_n = _whole("top_n", top_n)

    def __call__(self, logits):
        n = min(self.top_n, logits.shape[-1])
        top, order = logits.topk(n, dim=-1)
        # p and -p log p in transformers' order of operations (its Categorical normalisation)
        log_p = top - top.logsumexp(-1, keepdim=True)
        p = log_p.softmax(-1)
        terms = torch.where(p > 0, -p * p.log(), torch.zeros_like(p))
        # The budget alpha H is taken from the same running sum as the partial entropies (its last
        # value), made monotone (a GPU scan may round a later prefix below an earlier one), so alpha = 1
        # keeps every token. Deliberate difference: transformers sums H separately (Categorical.entropy),
        # which can land 1 ulp below the last partial sum and drop the least likely of the top_n tokens.
        partial = terms.cumsum(-1).cummax(-1).values
        selected = (partial <= self.alpha * partial[..., -1:]) & (p > 0)   # p = 0 cannot be drawn
        selected[..., 0] = True                                 # the most likely token always stays
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, selected)
        return logits.masked_fill(~keep, NEG_INF)


class Mirostat(LogitsRule):
    """Mirostat v2 with one ``mu`` per batch row (target surprise ``tau`` in bits)."""

    name = "mirostat"

    def __init__(self, tau: float = 3.0, eta: float = 0.1):
        self.tau = _positive("tau", tau)
        self.eta = _positive("eta", eta)
        self._mu: torch.Tensor | None = None

    def reset(self) -> None:
        self._mu = None

    def mu(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        if self._mu is None or self._mu.shape[0] != batch:
            self._mu = torch.full((batch, 1), 2 * self.tau, dtype=like.dtype, device=like.device)
        return self._mu

    def __call__(self, logits):
        surprise = -logits.log_softmax(-1) / math.log(2)
        return _keep(logits, surprise <= self.mu(logits.shape[0], logits))

    def observe(self, token_ids, logits_used):
        surprise = -logits_used.log_softmax(-1).gather(-1, token_ids.view(-1, 1)) / math.log(2)
        self._mu = self.mu(logits_used.shape[0], logits_used) - self.eta * (surprise - self.tau)


class Chain(LogitsRule):
    """Rules applied in order (temperature first, then a truncation rule)."""

    name = "chain"

    def __init__(self, rules: list[LogitsRule]):
        self.rules = list(rules)

    def __call__(self, logits):
        for rule in self.rules:
            logits = rule(logits)
        return logits

    def observe(self, token_ids, logits_used):
        for rule in self.rules:
            rule.observe(token_ids, logits_used)

    def reset(self):
        for rule in self.rules:
            rule.reset()

    @property
    def description(self) -> str:
        return " → ".join(rule.description for rule in self.rules)


# ---------------------------------------------------------------------------- validation
def _number(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def _positive(name, value) -> float:
    number = _number(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def _whole(name, value) -> int:
    number = _number(name, value)
    if number < 1 or number != int(number):
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(number)


def _fraction(name, value, allow_zero: bool = False) -> float:
    number = _number(name, value)
    if not ((0 <= number if allow_zero else 0 < number) and number <= 1):
        raise ValueError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1], got {value!r}")
    return number


def _open_fraction(name, value) -> float:
    number = _number(name, value)
    if not 0 < number < 1:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return number


# ---------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Setting:
    """One parameter of a rule, as a UI shows it."""

    default: float | int
    bounds: tuple[float | None, float | None]
    doc: str
    label: str


@dataclass(frozen=True)
class RuleSpec:
    cls: type[LogitsRule] | None
    params: dict[str, Setting]
    doc: str


RULES: dict[str, RuleSpec] = {
    "none": RuleSpec(None, {}, "Temperature only: sample from the full distribution."),
    "top_k": RuleSpec(TopK, {"top_k": Setting(50, (1, 1000), "Keep the k most likely tokens.", "k")},
                      "Keep the k most likely tokens."),
    "top_p": RuleSpec(TopP, {"top_p": Setting(0.9, (0.01, 1.0), "Nucleus mass to keep.", "top p")},
                      "Nucleus: the smallest set of most likely tokens with mass >= top_p."),
    "min_p": RuleSpec(MinP, {"min_p": Setting(0.1, (0.0, 1.0), "Keep p >= min_p * max p.", "min p")},
                      "Keep tokens at least min_p times as likely as the most likely one."),
    "typical": RuleSpec(Typical, {"typical_p": Setting(0.9, (0.01, 1.0), "Mass of the typical set.", "typical p")},
                        "Locally typical sampling: tokens whose surprisal is closest to the entropy."),
    "epsilon": RuleSpec(Epsilon, {"epsilon": Setting(3e-4, (1e-6, 0.1), "Keep p >= epsilon.", "epsilon")},
                        "Truncate tokens below a fixed probability."),
    "eta": RuleSpec(Eta, {"epsilon": Setting(3e-4, (1e-6, 0.1), "eta = min(eps, sqrt(eps) exp(-H)).", "epsilon")},
                    "Entropy-dependent truncation: keep p >= min(eps, sqrt(eps) exp(-H))."),
    "top_h": RuleSpec(TopH, {"alpha": Setting(0.4, (0.01, 1.0), "Share of the top-n entropy kept.", "alpha"),
                             "top_n": Setting(100, (1, 1000), "Candidates considered.", "top n")},
                      "Top-H: the largest prefix whose partial entropy stays under alpha times the entropy."),
    "mirostat": RuleSpec(Mirostat, {"tau": Setting(3.0, (0.1, 10.0), "Target surprise (bits).", "tau"),
                                    "eta": Setting(0.1, (0.001, 1.0), "Learning rate of mu.", "eta")},
                         "Mirostat v2: keeps the surprise near tau bits by adapting a cut-off mu."),
}


def make_rule(name: str, temperature: float = 1.0, **params) -> Chain:
    """``Temperature(temperature)`` followed by the rule ``name`` of :data:`RULES` with ``params``."""
    if name not in RULES:
        raise ValueError(f"unknown decoding rule {name!r}; choose one of {', '.join(RULES)}")
    spec = RULES[name]
    unknown = set(params) - set(spec.params)
    if unknown:
        raise ValueError(f"decoding rule {name!r} has no setting {', '.join(sorted(unknown))}; "
                         f"its settings: {', '.join(spec.params) or 'none'}")
    rules: list[LogitsRule] = [Temperature(temperature)]
    if spec.cls is not None:
        rules.append(spec.cls(**{key: params.get(key, setting.default) for key, setting in spec.params.items()}))
    return Chain(rules)


def step_statistics(logits_full: torch.Tensor, logits_kept: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per row: entropy of the full distribution, of the renormalised truncated one, and tokens kept."""
    return {
        "entropy_full": token_entropy(logits_full),
        "entropy_truncated": token_entropy(logits_kept),
        "n_kept": torch.isfinite(logits_kept).sum(-1),
    }
