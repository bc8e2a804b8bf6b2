"""TokenTrace without a model: the summary in float64 and the block-wise statistics of long texts."""

from __future__ import annotations

import math

import pytest
import torch

from explorer.kernels.entropy import token_rank, token_statistics
from explorer.models.trace import STATISTICS_ROWS, TokenTrace


def random_trace(n: int, vocab: int = 97, seed: int = 0, scale: float = 3.0) -> TokenTrace:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g) * scale
    ids = torch.randint(vocab, (n,), generator=g)
    return TokenTrace(tokens=[f"t{i}" for i in range(n)], token_ids=ids, logits=logits,
                      context_ids=torch.tensor([0]))


def test_summary_means_and_perplexity_are_float64():
    trace = random_trace(40, scale=6.0)
    summary = trace.summary()
    log_ppl = float(trace.surprisal.double().mean())
    assert summary["log_perplexity"] == log_ppl
    assert summary["perplexity"] == math.exp(log_ppl)  # float32 exp is off in the 7th digit
    assert summary["mean_entropy"] == float(trace.entropy.double().mean())
    assert summary["detection_statistic"] == pytest.approx(log_ppl - summary["mean_entropy"], abs=1e-12)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    trace = TokenTrace(tokens=["a", "b", "c"], token_ids=torch.tensor([1, 2, 3]), logits=torch.zeros(3, 50_257),
                       context_ids=torch.tensor([0]))
    assert trace.summary()["perplexity"] == pytest.approx(50_257, rel=1e-6)
    assert trace.summary()["rank_top10"] == 3  # every token ties for rank 1


@pytest.mark.parametrize("n", [1, STATISTICS_ROWS, STATISTICS_ROWS + 1, 2 * STATISTICS_ROWS + 37])
def test_block_wise_statistics_equal_one_pass_over_all_rows(n):
    trace = random_trace(n, seed=n).at_temperature(0.7)
    whole = token_statistics(trace.logits, trace.token_ids, temperature=0.7)
    for name in ("entropy", "surprisal", "varentropy"):
        torch.testing.assert_close(getattr(trace, name), whole[name], atol=1e-6, rtol=1e-6)
    assert torch.equal(trace.rank, whole["rank"])
    assert torch.equal(trace.rank, token_rank(trace.logits, trace.token_ids))
