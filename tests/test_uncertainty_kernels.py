"""Hand-computed cases, peers and properties for explorer.kernels.uncertainty."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.kernels import uncertainty as U


def test_token_based_measures_by_hand():
    lp = torch.tensor([[-0.5, -1.0, -2.0], [-0.1, -0.2, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert torch.allclose(U.maximum_sequence_probability(lp, mask), torch.tensor([3.5, 0.3]))
    assert torch.allclose(U.perplexity(lp, mask), torch.tensor([math.exp(3.5 / 3), math.exp(0.15)]))
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 6.0, 100.0]])
    assert torch.allclose(U.mean_token_entropy(ent, mask), torch.tensor([2.0, 5.0]))
    seq = torch.tensor([-2.0, -4.0])
    assert U.mc_sequence_entropy(seq).item() == pytest.approx(3.0)
    assert U.mc_sequence_entropy(seq, torch.tensor([2, 1])).item() == pytest.approx((1 + 4) / 2)


def test_greedy_clusters_known_classes():
    # answers: "Paris", "paris", "London", "Paris, France", "Rome"
    paris = {0, 1, 3}
    eq = torch.tensor([[(i in paris and j in paris) or i == j for j in range(5)] for i in range(5)])
    ids = U.semantic_clusters(eq)
    assert ids.tolist() == [0, 0, 1, 0, 2]
    assert U.number_of_semantic_sets(ids) == 3
    expected = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2))
    assert U.semantic_entropy_discrete(ids).item() == pytest.approx(expected)


def test_greedy_clusters_compare_with_first_member_only():
    # 1 ~ 0 and 2 ~ 1 but 2 !~ 0: greedy compares with the class's first member, so 2 opens a class
    sim = torch.tensor([[1.0, 0.9, 0.2], [0.9, 1.0, 0.9], [0.2, 0.9, 1.0]])
    assert U.semantic_clusters(sim, threshold=0.8).tolist() == [0, 0, 1]


def test_weighted_semantic_entropy_by_hand():
    log_p = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    ids = torch.tensor([0, 0, 1, 1])
    expected = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert U.semantic_entropy_weighted(ids, log_p).item() == pytest.approx(expected)
    assert U.semantic_entropy_weighted(torch.zeros(4, dtype=torch.long), log_p).item() == pytest.approx(0.0)


W_TWO_COMPONENTS = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_graph_measures_on_3x3_by_hand():
    # L has eigenvalues {0, 0, 1}: EigV = 2 (the number of components)
    assert U.eigv(W_TWO_COMPONENTS).item() == pytest.approx(2.0)
    assert U.degree(W_TWO_COMPONENTS).item() == pytest.approx(4 / 9)
    # rows of the null-space basis: (1/sqrt2, 0), (1/sqrt2, 0), (0, 1): distances^2 1/6, 1/6, 2/3
    assert U.eccentricity(W_TWO_COMPONENTS).item() == pytest.approx(1.0)
    full = torch.ones(3, 3, dtype=torch.float64)
    assert U.eigv(full).item() == pytest.approx(1.0)
    assert U.degree(full).item() == pytest.approx(0.0)
    assert U.eccentricity(full).item() == pytest.approx(0.0, abs=1e-12)


def test_kle_on_3x3_by_hand():
    e = math.exp(-0.3)
    r = (1 - e) / (1 + e)
    lam = [(1 + r) / 3, (1 - r) / 3, 1 / 3]
    expected = -sum(x * math.log(x) for x in lam)
    assert U.kernel_language_entropy(W_TWO_COMPONENTS).item() == pytest.approx(expected)
    assert U.kernel_language_entropy(torch.eye(3, dtype=torch.float64)).item() == pytest.approx(math.log(3))


def test_inv_entropy_on_3x3_by_hand():
    eye = torch.eye(3, dtype=torch.float64)
    assert U.inv_entropy(eye, eye).item() == pytest.approx(0.0)
    assert U.inv_entropy(torch.ones(3, 3), eye).item() == pytest.approx(math.log(3))
    sx = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 1.0]], dtype=torch.float64)
    expected = -(2 * (2 / 3) * math.log(2 / 3) + 0.5 * math.log(0.5))
    assert U.inv_entropy(sx, eye).item() == pytest.approx(expected)
    # P_y P_x with P_y = P_x: diagonal of P_x^2
    px = sx / sx.sum(1, keepdim=True)
    d = (px @ px).diagonal()
    assert U.inv_entropy(sx, sx).item() == pytest.approx(float(-(d * d.log()).sum()))
    with pytest.raises(ValueError):
        U.inv_entropy(eye, torch.eye(2))


def test_cosine_mappings():
    cos = torch.tensor([-1.0, 0.0, 0.5])
    assert U.cosine_to_similarity(cos).tolist() == [0.0, 0.5, 0.75]
    assert U.cosine_to_similarity(cos, "abs").tolist() == [1.0, 0.0, 0.5]


def test_tsu_handmade_with_ties():
    u = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 2.0], [3.0, 2.0, 1.0], [0.1, 0.5, 0.4]])
    assert U.tsu(u) == pytest.approx(25.0)
    assert U.tsu(u, strict=False) == pytest.approx(50.0)
    assert U.tsu(u, columns=[0, 2]) == pytest.approx(75.0)
    assert U.tsu(u, columns=[0, 1]) == pytest.approx(50.0)
    assert U.tsu(u, columns=[1, 2]) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        U.tsu(u, columns=[0])


def test_rouge_l_by_hand():
    assert U.rouge_l_f1("The cat sat on the mat.", "the cat on the mat") == pytest.approx(10 / 11)
    assert U.rouge_l_f1("Paris", "London") == 0.0
    assert U.rouge_l_f1("", "x") == 0.0
    # pairs: 1, 0, 0 -> mean 1/3
    assert U.lexical_similarity(["a b", "a b", "c"]) == pytest.approx(-1 / 3)


def test_p_true_uncertainty():
    lp = torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    assert torch.allclose(U.p_true_uncertainty(lp, 1), torch.tensor([-math.log(0.75), math.log(2)]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=30))
def test_semantic_entropy_bounds(ids):
    ids = torch.tensor(ids)
    se = U.semantic_entropy_discrete(ids).item()
    assert -1e-12 <= se <= math.log(U.number_of_semantic_sets(ids)) + 1e-9
    # uniform probabilities: the weighted form equals the discrete one
    assert U.semantic_entropy_weighted(ids, torch.zeros(len(ids))).item() == pytest.approx(se, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 7), st.integers(0, 10_000))
def test_similarity_measures_properties(m, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(m, 4, generator=g, dtype=torch.float64), dim=1)
    w = U.cosine_to_similarity(x @ x.T)
    assert 0.0 <= U.degree(w).item() <= 1.0
    assert 0.0 <= U.eigv(w).item() <= m + 1e-9
    assert 0.0 <= U.kernel_language_entropy(w).item() <= math.log(m) + 1e-9
    sy = U.cosine_to_similarity(torch.eye(m, dtype=torch.float64))
    inv = U.inv_entropy(w, sy).item()
    assert math.isfinite(inv) and inv >= 0
    # permuting the answers and inputs together leaves every measure unchanged
    p = torch.randperm(m, generator=g)
    assert U.eigv(w[p][:, p]).item() == pytest.approx(U.eigv(w).item())
    assert U.eccentricity(w[p][:, p]).item() == pytest.approx(U.eccentricity(w).item(), abs=1e-6)
    assert U.inv_entropy(w[p][:, p], sy).item() == pytest.approx(inv)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(-5, 5), min_size=3, max_size=3), min_size=1, max_size=20))
def test_tsu_properties(rows):
    u = torch.tensor(rows)
    strict, loose = U.tsu(u), U.tsu(u, strict=False)
    assert 0.0 <= strict <= loose <= 100.0
    assert U.tsu(u, columns=[0, 2]) >= strict          # the chain implies its end points
    assert U.tsu(-u.flip(1)) == pytest.approx(strict)  # reversing order and sign keeps rising rows
