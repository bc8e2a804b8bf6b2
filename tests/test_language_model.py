"""The real default model: load, score, generate, and check every trace against a direct forward pass."""

from __future__ import annotations

import pytest
import torch

from explorer.errors import InputError
from explorer.kernels.entropy import token_entropy

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def lm():
    from explorer.models.language_model import load_language_model

    return load_language_model()


def direct_logits(lm, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model(ids[None].to(lm.device)).logits[0].double()


def test_default_model_is_shared_and_has_a_chat_template(lm):
    from explorer.models.language_model import load_language_model

    assert load_language_model() is lm
    assert lm.has_chat_template and lm.vocab_size == 49152
    assert "<|im_start|>user" in lm.format_prompt("Hi") and lm.format_prompt("Hi", chat=False) == "Hi"


def test_score_matches_a_direct_forward_pass(lm):
    trace = lm.score("The cat sat on the mat because it was tired.")
    ids = torch.cat([trace.context_ids, trace.token_ids.cpu()])
    logits = direct_logits(lm, ids)[len(trace.context_ids) - 1:-1]
    log_p = torch.log_softmax(logits, -1)
    expected_entropy = -(log_p.exp() * log_p).sum(-1)
    expected_surprisal = -log_p.gather(-1, trace.token_ids.cpu()[:, None])[:, 0]
    assert "".join(trace.tokens) == "The cat sat on the mat because it was tired."
    torch.testing.assert_close(trace.entropy.double(), expected_entropy, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(trace.surprisal.double(), expected_surprisal, atol=1e-4, rtol=1e-4)
    assert int(trace.rank.min()) >= 1
    # Re-scoring at another temperature uses the cached logits and equals the direct computation.
    hot = trace.at_temperature(2.0)
    torch.testing.assert_close(hot.entropy.double(), token_entropy(logits / 2.0), atol=1e-4, rtol=1e-4)
    assert bool((hot.entropy > trace.entropy).all())


def test_score_with_a_prompt_scores_only_the_text(lm):
    trace = lm.score(" Paris.", prompt="The capital of France is", chat=False)
    assert trace.text == " Paris." and trace.context == "The capital of France is"
    assert float(trace.surprisal[0]) < 3.0  # " Paris" is a likely continuation


def test_generate_records_each_step_and_matches_a_direct_forward_pass(lm):
    trace = lm.generate("Name a colour.", max_new_tokens=6, decoding="top_k", temperature=0.8, seed=3, top_k=5)
    assert 1 <= len(trace) <= 6 and trace.kind == "generated"
    ids = torch.cat([trace.context_ids, trace.token_ids.cpu()])
    logits = direct_logits(lm, ids)[len(trace.context_ids) - 1:-1]
    torch.testing.assert_close(trace.logits.double(), logits, atol=2e-3, rtol=1e-3)
    assert bool((trace.rank <= 5).all()), "top-k 5 sampled a token outside the top 5"
    assert bool((trace.n_kept == 5).all())
    torch.testing.assert_close(trace.full_entropy.double(), token_entropy(logits / 0.8), atol=1e-3, rtol=1e-3)
    assert bool((trace.truncated_entropy <= trace.full_entropy + 1e-5).all())
    again = lm.generate("Name a colour.", max_new_tokens=6, decoding="top_k", temperature=0.8, seed=3, top_k=5)
    assert again.token_ids.tolist() == trace.token_ids.tolist(), "same seed, different tokens"


def test_generation_can_be_stopped_and_keeps_the_tokens_so_far(lm):
    from explorer.progress import Progress

    progress = Progress()
    original = progress.update

    def stop_after_three(done, total=1.0, text=None):
        if done >= 3:
            progress.cancel()
        original(done, total, text)

    progress.update = stop_after_three
    trace = lm.generate("Count to twenty:", max_new_tokens=40, progress=progress)
    assert trace.stopped and len(trace) == 3


def test_attention_entropy_has_one_value_per_layer_head_and_token(lm):
    trace = lm.score("Attention is all you need.")
    entropy = lm.attention_entropy(trace)
    config = lm.model.config
    assert entropy.shape == (config.num_hidden_layers, config.num_attention_heads, len(trace))
    assert bool(torch.isfinite(entropy).all()) and float(entropy.min()) >= 0


@pytest.mark.parametrize("call, message", [
    (lambda lm: lm.score("   "), "empty"),
    (lambda lm: lm.score(b"\xff\xfe bad bytes"), "UTF-8"),
    (lambda lm: lm.score("word " * 3000), "tokens long"),
    (lambda lm: lm.generate("Hi", max_new_tokens=0), "max_new_tokens"),
    (lambda lm: lm.generate("Hi", temperature=0.0), "temperature"),
    (lambda lm: lm.generate("Hi", temperature=float("nan")), "temperature"),
    (lambda lm: lm.generate("Hi", decoding="top_p", top_p=float("nan")), "top_p"),
    (lambda lm: lm.generate("Hi", decoding="no-such-rule"), "no-such-rule"),
])
def test_bad_input_gives_one_clear_error(lm, call, message):
    with pytest.raises(InputError, match=message):
        call(lm)


def test_unknown_model_offline_fails_with_a_clear_message(monkeypatch):
    from explorer.models.language_model import load_language_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="no-such-org/no-such-model"):
        load_language_model("no-such-org/no-such-model")
