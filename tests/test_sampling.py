"""Batched sampling with the real default model: shapes, seeding, and the recorded log-probabilities
and entropies against a teacher-forced forward pass."""

import pytest
import torch

from explorer.errors import InputError
from explorer.kernels.entropy import log_probs, token_entropy
from explorer.models.sampling import batch_seed, sample_answers

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def lm():
    import os
    os.environ["HF_HUB_OFFLINE"] = "1"
    from explorer.models.language_model import load_language_model
    return load_language_model()


def test_batched_samples_are_recorded_exactly(lm):
    prompts = ["What is the capital of Italy?", "Name a colour."]
    samples = sample_answers(lm, prompts, temperature=0.8, n_samples=2, max_new_tokens=5, seed=3)
    assert [(s.prompt_index, s.sample_index) for s in samples] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [s.text for s in samples] == [s.text for s in sample_answers(lm, prompts, 0.8, 2, 5, seed=3)]
    first = samples[2]
    context = lm.tokenizer(lm.format_prompt(prompts[1]), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    ids = torch.cat([context, torch.tensor(first.token_ids)]).unsqueeze(0)
    with torch.inference_mode():
        logits = lm.model(input_ids=ids).logits[0, len(context) - 1:-1].float()
    expected_lp = log_probs(logits, 0.8).gather(-1, torch.tensor(first.token_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(first.token_log_probs, dtype=torch.float64), expected_lp.double(), atol=2e-3)
    assert torch.allclose(torch.tensor(first.token_entropies, dtype=torch.float64), token_entropy(logits, 0.8).double(), atol=2e-3)
    assert all(1 <= len(s.token_ids) <= 5 and len(s.token_ids) == len(s.token_entropies) for s in samples)


def test_bad_arguments(lm):
    with pytest.raises(InputError):
        sample_answers(lm, [], 1.0, 2, 4)
    with pytest.raises(InputError):
        sample_answers(lm, ["Q?"], 0.0, 2, 4)


def test_batch_seeds_differ():
    assert len({batch_seed(0, t, q) for t in range(4) for q in range(0, 40, 4)}) == 40
    assert batch_seed(1, 2, 3) == batch_seed(1, 2, 3)
