"""Decoding rules: equal to transformers' own warpers on the same logits, Mirostat v2 against a direct
implementation of its formula, the registry and parameter validation, and per-step statistics."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation import logits_process as hf

from explorer.kernels.decoding import (
    RULES, Chain, Epsilon, Eta, Mirostat, MinP, Temperature, TopH, TopK, TopP, Typical, make_rule,
    step_statistics,
)
from explorer.kernels.entropy import token_entropy

INF = math.inf


def random_logits(seed: int, batch: int = 6, vocab: int = 300, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def adversarial_logits() -> torch.Tensor:
    """Ties (at the top and inside), removed tokens, huge values, a flat and a one-hot row."""
    vocab = 64
    base = random_logits(99, batch=6, vocab=vocab)
    base[0, :10] = 5.0                            # ten-way tie at the top
    base[1, ::2] = -INF                           # half the vocabulary removed
    base[2] *= 1e4                                # huge logits
    base[3] = 0.0                                 # flat
    base[4] = -INF
    base[4, 7] = 1.0                              # a single surviving token
    base[5] = torch.round(base[5])                # many ties everywhere
    return base


CASES = [random_logits(seed) for seed in range(4)] + [adversarial_logits()]

PAIRS = [
    (TopK(1), hf.TopKLogitsWarper(1)),
    (TopK(5), hf.TopKLogitsWarper(5)),
    (TopK(50), hf.TopKLogitsWarper(50)),
    (TopP(0.3), hf.TopPLogitsWarper(0.3)),
    (TopP(0.9), hf.TopPLogitsWarper(0.9)),
    (TopP(1.0), hf.TopPLogitsWarper(1.0)),
    (MinP(0.05), hf.MinPLogitsWarper(0.05)),
    (MinP(0.5), hf.MinPLogitsWarper(0.5)),
    (Typical(0.2), hf.TypicalLogitsWarper(0.2)),
    (Typical(0.9), hf.TypicalLogitsWarper(0.9)),
    (Epsilon(3e-4), hf.EpsilonLogitsWarper(3e-4)),
    (Epsilon(0.02), hf.EpsilonLogitsWarper(0.02)),
    (Eta(3e-4), hf.EtaLogitsWarper(3e-4)),
    (Eta(0.05), hf.EtaLogitsWarper(0.05)),
    (TopH(0.4), hf.TopHLogitsWarper(0.4)),
    (TopH(0.1), hf.TopHLogitsWarper(0.1)),
    (TopH(0.9), hf.TopHLogitsWarper(0.9)),
]


def kept(logits: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(logits)


@pytest.mark.parametrize("ours, theirs", PAIRS, ids=lambda x: getattr(x, "description", None) or type(x).__name__)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_rule_equals_transformers_warper(ours, theirs, case):
    logits = CASES[case]
    expected = theirs(torch.zeros(logits.shape[0], 1, dtype=torch.long), logits.clone())
    result = ours(logits.clone())
    assert torch.equal(kept(result), kept(expected))
    assert torch.equal(result[kept(result)], logits[kept(result)])   # survivors keep their logits


def test_top_h_at_alpha_one_keeps_every_top_n_token_where_transformers_rounds_one_away():
    """formulas.md section 2: alpha = 1 keeps all top_n tokens. transformers sums H apart from the
    partial sums and, in about 4 rows of 10, its total lands 1 ulp below the last partial sum: it drops
    the least likely token. Ours differs from it only there."""
    for dtype in (torch.float32, torch.float64):
        logits = (torch.randn(200, 500, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
        ours = kept(TopH(1.0)(logits))
        theirs = kept(hf.TopHLogitsWarper(1.0)(None, logits.clone()))
        assert ours.sum(-1).tolist() == [100] * 200
        assert torch.equal(ours, kept(TopK(100)(logits)))
        dropped = ours & ~theirs
        assert not (theirs & ~ours).any() and dropped.sum(-1).max() == 1 and dropped.any()
        smallest_kept = torch.where(ours, logits, torch.inf).amin(-1)
        assert torch.equal(logits[dropped], smallest_kept[dropped.any(-1)])  # only the least likely one


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_chain_with_temperature_equals_transformers(temperature):
    logits = random_logits(5)
    theirs = hf.LogitsProcessorList([hf.TemperatureLogitsWarper(temperature), hf.TopPLogitsWarper(0.8)])
    expected = theirs(torch.zeros(logits.shape[0], 1, dtype=torch.long), logits.clone())
    result = make_rule("top_p", temperature=temperature, top_p=0.8)(logits.clone())
    assert torch.equal(kept(result), kept(expected))
    torch.testing.assert_close(result[kept(result)], expected[kept(expected)])


def test_hand_computed_cases():
    # p = (0.5, 0.25, 0.125, 0.125)
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))
    assert kept(TopK(2)(logits)).tolist() == [[True, True, False, False]]
    assert kept(TopP(0.6)(logits)).tolist() == [[True, True, False, False]]      # 0.5 < 0.6 <= 0.75
    assert kept(TopP(0.5)(logits)).tolist() == [[True, False, False, False]]
    assert kept(MinP(0.5)(logits)).tolist() == [[True, True, False, False]]      # p >= 0.25
    assert kept(Epsilon(0.2)(logits)).tolist() == [[True, True, False, False]]
    # H = 1.75 bits = 1.213 nats; eta = min(0.2, sqrt(0.2) exp(-1.213)) = 0.133 -> keep p >= 0.133
    assert kept(Eta(0.2)(logits)).tolist() == [[True, True, False, False]]
    # typical: |-log p - H| = (0.52, 0.17, 0.87, 0.87) nats: order 1, 0, ...; mass 0.25 then 0.75
    assert kept(Typical(0.5)(logits)).tolist() == [[True, True, False, False]]
    assert kept(Typical(0.2)(logits)).tolist() == [[False, True, False, False]]
    # top-H: terms -p log p = (0.347, 0.347, 0.260, 0.260), H = 1.213; alpha 0.5 -> budget 0.607
    assert kept(TopH(0.5)(logits)).tolist() == [[True, False, False, False]]
    assert kept(TopH(0.6)(logits)).tolist() == [[True, True, False, False]]


def mirostat_reference(logits: torch.Tensor, tau: float, eta: float, seed: int, steps: int):
    """Mirostat v2 written directly from the formula, one row, plain Python lists."""
    generator = torch.Generator().manual_seed(seed)
    mu, tokens, mus = 2 * tau, [], []
    for step in range(steps):
        p = torch.softmax(logits[step].double(), -1).tolist()
        allowed = [v for v, pv in enumerate(p) if pv > 0 and -math.log2(pv) <= mu]
        if not allowed:
            allowed = [max(range(len(p)), key=lambda v: p[v])]
        mass = sum(p[v] for v in allowed)
        truncated = torch.zeros(len(p), dtype=torch.float64)
        for v in allowed:
            truncated[v] = p[v] / mass
        token = int(torch.multinomial(truncated, 1, generator=generator))
        mu = mu - eta * (-math.log2(truncated[token].item()) - tau)
        tokens.append(token)
        mus.append(mu)
    return tokens, mus


def test_mirostat_follows_its_formula():
    steps, tau, eta = 25, 2.0, 0.3
    logits = random_logits(11, batch=steps, vocab=40, scale=2.0).double()
    expected_tokens, expected_mus = mirostat_reference(logits, tau, eta, seed=3, steps=steps)
    rule, generator, tokens = Mirostat(tau, eta), torch.Generator().manual_seed(3), []
    for step in range(steps):
        used = rule(logits[step:step + 1])
        token = torch.multinomial(torch.softmax(used, -1)[0], 1, generator=generator)
        rule.observe(token, used)
        tokens.append(int(token))
        assert rule.mu(1, used).item() == pytest.approx(expected_mus[step], abs=1e-9)
    assert tokens == expected_tokens


def test_mirostat_keeps_one_mu_per_row_and_resets():
    rule = Mirostat(tau=3.0, eta=0.5)
    logits = random_logits(2, batch=2, vocab=30)
    used = rule(logits)
    rule.observe(torch.tensor([int(used[0].argmax()), int(used[1].argmin().clamp(min=0))]), used)
    mu = rule.mu(2, used).flatten()
    surprise = -used.log_softmax(-1) / math.log(2)
    expected = 6.0 - 0.5 * (surprise[torch.arange(2), [int(used[0].argmax()), int(used[1].argmin())]] - 3.0)
    torch.testing.assert_close(mu, expected)
    rule.reset()
    assert rule.mu(2, used).flatten().tolist() == [6.0, 6.0]


def test_mirostat_tight_target_keeps_the_top_token():
    rule = Mirostat(tau=0.01, eta=0.1)
    logits = random_logits(4, batch=3, vocab=50)
    out = rule(logits)
    assert kept(out).sum(-1).tolist() == [1, 1, 1]
    assert torch.equal(out.argmax(-1), logits.argmax(-1))


def test_make_rule_builds_temperature_then_rule():
    chain = make_rule("top_k", temperature=0.5, top_k=3)
    assert isinstance(chain, Chain) and isinstance(chain.rules[0], Temperature)
    logits = random_logits(1, batch=2, vocab=20)
    out = chain(logits)
    torch.testing.assert_close(out[kept(out)], (logits / 0.5)[kept(out)])
    assert kept(out).sum(-1).tolist() == [3, 3]
    only_temperature = make_rule("none", temperature=2.0)
    torch.testing.assert_close(only_temperature(logits), logits / 2.0)
    assert "top_k" in chain.description and "temperature" in chain.description


def test_registry_defaults_build_every_rule():
    logits = random_logits(8, batch=3, vocab=200)
    for name, spec in RULES.items():
        chain = make_rule(name, temperature=0.8)
        out = chain(logits)
        assert out.shape == logits.shape and (kept(out).sum(-1) >= 1).all(), name
        for setting in spec.params.values():
            low, high = setting.bounds
            assert low <= setting.default <= high and setting.doc


@pytest.mark.parametrize("name, params", [
    ("top_k", {"top_k": 0}), ("top_k", {"top_k": 2.5}), ("top_p", {"top_p": 0}), ("top_p", {"top_p": 1.5}),
    ("min_p", {"min_p": -0.1}), ("typical", {"typical_p": float("nan")}), ("epsilon", {"epsilon": 1.0}),
    ("eta", {"epsilon": 0}), ("top_h", {"alpha": 0}), ("top_h", {"top_n": 0}),
    ("mirostat", {"tau": -1}), ("mirostat", {"eta": float("inf")}), ("top_k", {"top_p": 0.5}),
    ("nucleus", {}), ("top_k", {"top_k": "many"}),
])
def test_bad_parameters_raise_clear_value_errors(name, params):
    with pytest.raises(ValueError, match=r"\w+"):
        make_rule(name, **params)


@pytest.mark.parametrize("temperature", [0, -1, float("nan"), float("inf")])
def test_bad_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        make_rule("top_p", temperature=temperature)


def test_step_statistics_hand_computed():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))
    stats = step_statistics(logits, TopK(2)(logits))
    full = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 2 * 0.125 * math.log(0.125))
    truncated = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert stats["entropy_full"].item() == pytest.approx(full, abs=1e-6)
    assert stats["entropy_truncated"].item() == pytest.approx(truncated, abs=1e-6)
    assert stats["n_kept"].tolist() == [2]


logit_rows = st.lists(st.floats(-30, 30, allow_nan=False), min_size=2, max_size=40)


@settings(max_examples=60, deadline=None)
@given(row=logit_rows, name=st.sampled_from(sorted(RULES)), temperature=st.floats(0.05, 5.0))
def test_every_rule_keeps_a_nonempty_subset_and_never_raises_entropy_above_full(row, name, temperature):
    logits = torch.tensor([row])
    chain = make_rule(name, temperature=temperature)
    scaled = logits / temperature
    out = chain(logits)
    survivors = kept(out)
    assert survivors.any()
    torch.testing.assert_close(out[survivors], scaled[survivors])
    stats = step_statistics(scaled, out)
    assert stats["n_kept"].item() == survivors.sum().item()
    assert 0 <= stats["entropy_truncated"].item() <= math.log(survivors.sum().item()) + 1e-5


@settings(max_examples=40, deadline=None)
@given(row=logit_rows, k=st.integers(1, 50), p=st.floats(0.01, 1.0))
def test_top_k_and_top_p_keep_the_most_likely_tokens(row, k, p):
    logits = torch.tensor([row])
    for out in (TopK(k)(logits), TopP(p)(logits)):
        survivors = logits[kept(out)]
        removed = logits[~kept(out)]
        if removed.numel():
            assert survivors.min() >= removed.max()


@settings(max_examples=40, deadline=None)
@given(row=logit_rows, p=st.floats(0.01, 1.0))
def test_top_p_keeps_enough_mass(row, p):
    logits = torch.tensor([row], dtype=torch.float64)
    out = TopP(p)(logits)
    assert torch.softmax(logits, -1)[kept(out)].sum() >= p - 1e-9


@settings(max_examples=60, deadline=None)
@given(row=st.lists(st.floats(-40, 40, allow_nan=False), min_size=2, max_size=150), top_n=st.integers(1, 120),
       alphas=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=4), double=st.booleans())
def test_top_h_keeps_all_top_n_at_alpha_one_and_grows_with_alpha(row, top_n, alphas, double):
    logits = torch.tensor([row], dtype=torch.float64 if double else torch.float32)
    n = min(top_n, len(row))
    candidates = logits >= logits.topk(n).values[:, -1:]     # the top_n (and ties with the last)
    full = kept(TopH(1.0, top_n)(logits))
    drawable = torch.softmax(logits.topk(n).values - logits.topk(n).values.logsumexp(-1, keepdim=True), -1) > 0
    assert full.sum() == drawable.sum()               # every top_n token that can be drawn at all
    assert not (full & ~candidates).any()
    previous = None
    for alpha in sorted(alphas) + [1.0]:
        current = kept(TopH(alpha, top_n)(logits))
        assert current.any()
        if previous is not None:
            assert not (previous & ~current).any()    # nested: a larger alpha keeps a superset
        previous = current


def test_rules_are_batched_row_by_row():
    logits = random_logits(21, batch=5, vocab=80)
    for rule in (TopK(7), TopP(0.7), MinP(0.2), Typical(0.6), Epsilon(0.01), Eta(0.01), TopH(0.3)):
        together = rule(logits)
        one_by_one = torch.cat([rule(logits[i:i + 1]) for i in range(len(logits))])
        assert torch.equal(kept(together), kept(one_by_one)), rule.description
    entropy = token_entropy(logits)
    assert step_statistics(logits, logits)["entropy_full"].allclose(entropy)
