"""The adaptive sampling stopping rule on scripted sequences of meaning classes."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.kernels import adaptive as A
from explorer.kernels.uncertainty import semantic_entropy_discrete


def _stop(ids, round_size=2, **rule):
    return A.adaptive_stop(A.round_class_counts(torch.tensor(ids), round_size, rule.get("n_max")), **rule)


def test_one_meaning_settles_as_soon_as_the_window_is_full():
    stop = _stop([0] * 10, epsilon=0.1, patience=2, n_min=4, n_max=10)
    # SE = 0 after rounds 1, 2, 3; the window of patience + 1 = 3 estimates is full after round 3
    assert int(stop.n_used) == 6 and int(stop.stop_round) == 2
    assert bool(stop.settled) and bool(stop.done)
    assert stop.estimates[:3].tolist() == [0.0, 0.0, 0.0] and stop.estimates[3:].isnan().all()


def test_never_settles_stops_at_n_max():
    stop = _stop(list(range(10)), epsilon=0.1, patience=2, n_min=4, n_max=10)
    assert int(stop.n_used) == 10 and not bool(stop.settled) and bool(stop.done)
    assert stop.estimates.tolist() == pytest.approx([math.log(n) for n in (2, 4, 6, 8, 10)])


def test_n_min_is_respected_and_the_estimate_must_stop_moving():
    ids = [0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0]
    # without n_min the rule stops after round 2 (SE 0, 0)
    assert int(_stop(ids, epsilon=0.1, patience=1, n_min=2, n_max=12).n_used) == 4
    stop = _stop(ids, epsilon=0.1, patience=1, n_min=6, n_max=12)

    def se(*counts):
        n = sum(counts)
        return -sum(c / n * math.log(c / n) for c in counts)
    expected = [0.0, 0.0, se(4, 1, 1), se(6, 1, 1), se(8, 1, 1)]
    # moves: 0.868 (round 3), 0.132 (round 4), 0.097 < 0.1 (round 5): stops with 10 answers
    assert stop.estimates[:5].tolist() == pytest.approx(expected)
    assert int(stop.n_used) == 10 and bool(stop.settled)
    assert stop.estimates[5:].isnan().all()


def test_two_meanings_in_equal_shares_settle():
    stop = _stop([0, 1, 0, 1, 0, 1], epsilon=0.05, patience=1, n_min=2, n_max=20)
    assert int(stop.n_used) == 4
    assert stop.estimates[:2].tolist() == pytest.approx([math.log(2), math.log(2)])


def test_last_round_is_cut_at_n_max():
    counts = A.round_class_counts(torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]), 3, n_max=10)
    assert counts.sum(-1).tolist() == [3, 3, 3, 1]
    stop = A.adaptive_stop(counts, epsilon=0.01, patience=1, n_min=1, n_max=10)
    assert int(stop.n_used) == 10 and not bool(stop.settled)


def test_online_use_agrees_with_the_replay():
    ids = [0, 0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
    rule = dict(epsilon=0.15, patience=2, n_min=4, n_max=16)
    full = _stop(ids, **rule)
    assert int(full.stop_round) == 6 and bool(full.settled)       # SE 0.64, 0.57, 0.51 in rounds 5-7
    for t in range(1, 9):
        prefix = _stop(ids[:2 * t], **rule)
        assert bool(prefix.done) == (t > int(full.stop_round))
        if not prefix.done:
            assert int(prefix.n_used) == 2 * t
        else:
            assert int(prefix.n_used) == int(full.n_used)


def test_batched_questions_equal_one_at_a_time():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 3, (6, 12), generator=g).cummax(1).values     # stops after 4, 6 or 8 answers
    per_question = [A.round_class_counts(row, 2) for row in ids]
    classes = max(c.shape[-1] for c in per_question)
    batch = torch.stack([torch.nn.functional.pad(c, (0, classes - c.shape[-1])) for c in per_question])
    rule = dict(epsilon=0.1, patience=1, n_min=4, n_max=12)
    together = A.adaptive_stop(batch, **rule)
    assert together.n_used.tolist() == [8, 8, 6, 4, 4, 8]
    for i, counts in enumerate(per_question):
        alone = A.adaptive_stop(counts, **rule)
        assert int(together.n_used[i]) == int(alone.n_used)
        assert torch.allclose(together.estimates[i], alone.estimates, equal_nan=True)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=20), st.integers(1, 4))
def test_trace_is_semantic_entropy_of_each_prefix(ids, round_size):
    stop = A.adaptive_stop(A.round_class_counts(torch.tensor(ids), round_size), epsilon=1e-9, patience=50,
                           n_min=1, n_max=100)
    assert not bool(stop.done) and int(stop.n_used) == len(ids)
    for t, value in enumerate(stop.estimates.tolist()):
        prefix = torch.tensor(ids[:min((t + 1) * round_size, len(ids))])
        assert value == pytest.approx(float(semantic_entropy_discrete(prefix)), abs=1e-12)


def test_bad_settings_are_refused():
    counts = A.round_class_counts(torch.tensor([0, 1, 0]), 2)
    with pytest.raises(ValueError, match="epsilon"):
        A.adaptive_stop(counts, epsilon=0)
    with pytest.raises(ValueError, match="n_min"):
        A.adaptive_stop(counts, n_min=5, n_max=4)
    with pytest.raises(ValueError, match="crosses n_max"):
        A.adaptive_stop(A.round_class_counts(torch.tensor([0] * 6), 4), n_min=1, n_max=5)
    with pytest.raises(ValueError, match="at least one answer"):
        A.adaptive_stop(torch.tensor([[1, 1], [0, 0]]), n_min=1)
    with pytest.raises(ValueError, match="class ids"):
        A.round_class_counts(torch.tensor([0, -1]), 2)
