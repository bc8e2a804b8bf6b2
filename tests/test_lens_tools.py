"""The deeper lens on the real default model: logit lens against a per-layer float64 computation,
branches against ``generate`` and teacher forcing, two models against a direct float64 KL, reasoning
steps against separate forward passes, and one clear ``InputError`` per bad input."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from explorer.errors import InputError
from explorer.kernels.divergence import QUADRANTS, entropy_quadrants
from explorer.models import lens_tools
from explorer.models.lens_tools import compare_models, entropy_regions, split_steps

pytestmark = pytest.mark.model

TEXT = "The cat sat on the mat because it was tired."


@pytest.fixture(scope="module")
def lm():
    from explorer.models.language_model import load_language_model

    return load_language_model()


@pytest.fixture(scope="module")
def trace(lm):
    return lm.score(TEXT)


def full_ids(trace) -> torch.Tensor:
    return torch.cat([trace.context_ids.cpu(), trace.token_ids.cpu()])


def float64_distributions(logits: torch.Tensor):
    log_p = torch.log_softmax(logits.double(), -1)
    return log_p, log_p.exp()


# ------------------------------------------------------------------ logit lens
@pytest.fixture(scope="module")
def lens(lm, trace):
    return lm.logit_lens(trace)


def test_logit_lens_matches_a_direct_per_layer_float64_computation(lm, trace, lens):
    ids = full_ids(trace)
    start, n = len(trace.context_ids) - 1, len(trace)
    with torch.inference_mode():
        out = lm.model(ids[None], output_hidden_states=True)
        hidden = [h[0, start:start + n].double() for h in out.hidden_states]
        norm, head = lm.model.model.norm, lm.model.lm_head
        weight, eps = head.weight.double(), norm.variance_epsilon
        gain = norm.weight.double()

        def decode(h):  # RMSNorm then the head, all in float64
            return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * gain) @ weight.T

        layer_logits = [decode(h) for h in hidden[:-1]] + [hidden[-1] @ weight.T]
        own = out.logits[0, start:start + n].double()
    torch.testing.assert_close(layer_logits[-1], own, atol=2e-4, rtol=1e-5)   # the last layer is the model's own
    final_log_p, _ = float64_distributions(layer_logits[-1])
    assert lens.shape == (lm.model.config.num_hidden_layers + 1, n)
    assert lens.layers[0] == "embeddings" and lens.layers[-1].endswith("(final)")
    for row, logits in enumerate(layer_logits):
        log_p, p = float64_distributions(logits)
        torch.testing.assert_close(lens.entropy[row].double(), -(p * log_p).sum(-1), atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(lens.kl_to_final[row].double(), (p * (log_p - final_log_p)).sum(-1),
                                   atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(lens.top_probs[row].double(), p.max(-1).values, atol=1e-4, rtol=1e-4)
        surprisal = -log_p.gather(-1, trace.token_ids.cpu()[:, None])[:, 0]
        torch.testing.assert_close(lens.surprisal[row].double(), surprisal, atol=2e-4, rtol=1e-4)
        agree = lens.top_ids[row].cpu() == logits.argmax(-1)
        assert agree.float().mean() >= 0.9     # float32 vs float64 may swap near-ties only
    torch.testing.assert_close(lens.entropy[-1], trace.entropy, atol=1e-4, rtol=1e-4)
    assert torch.equal(lens.kl_to_final[-1], torch.zeros(n))
    assert lens.top_tokens[-1] == lm.token_strings(lens.top_ids[-1])


def test_logit_lens_chunks_layers_and_frames_agree(lm, trace, lens, monkeypatch):
    monkeypatch.setattr(lens_tools, "LENS_CHUNK_ELEMENTS", 1)   # one position per chunk
    small = lm.logit_lens(trace, layers=[0, 5, 12])
    assert small.layer_ids == [0, 5, 12, 30] and small.layers[1] == "layer 5"
    for row, layer in enumerate(small.layer_ids):
        torch.testing.assert_close(small.entropy[row], lens.entropy[layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(small.kl_to_final[row], lens.kl_to_final[layer], atol=1e-5, rtol=1e-5)
    frame = lens.to_frame()
    assert len(frame) == lens.entropy.numel() and set(frame["layer"]) == set(lens.layers)
    column = lens.column(3)
    assert list(column["layer"]) == lens.layers and column["kl_to_final"].iloc[-1] == 0.0
    with pytest.raises(InputError):
        lm.logit_lens(trace, layers=[31])


def test_logit_lens_at_another_temperature_uses_kept_logits_or_says_why_not(lm, trace, lens):
    assert lens.logits is not None
    hot = lens.at_temperature(2.0)
    fresh = lm.logit_lens(trace, temperature=2.0, keep_logits_mb=0)
    assert fresh.logits is None and fresh.temperature == 2.0
    for key in ("entropy", "kl_to_final", "top_probs", "surprisal"):
        torch.testing.assert_close(getattr(hot, key), getattr(fresh, key), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fresh.entropy[-1], trace.at_temperature(2.0).entropy, atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="final layer only"):
        fresh.at_temperature(1.0)


def test_logit_lens_refuses_a_model_whose_output_is_not_head_of_norm(lm, trace):
    with torch.inference_mode():
        out = lm.model(full_ids(trace)[None], output_hidden_states=True, logits_to_keep=1)
        last_hidden, last_logits = out.hidden_states[-1][0, -1], out.logits[0, -1]
        assert lens_tools._final_is_normed(lm, last_hidden, last_logits) is True
        with pytest.raises(InputError, match="cannot decode"):
            lens_tools._final_is_normed(lm, last_hidden, last_logits * 30.0)   # e.g. scaled logits


# ------------------------------------------------------------------ branches
@pytest.mark.parametrize("decoding, settings", [("top_k", {"top_k": 5}), ("mirostat", {"tau": 3.0})])
def test_one_branch_equals_generate_from_the_same_prefix_and_seed(lm, decoding, settings):
    generated = lm.generate("Name a colour.", max_new_tokens=6, decoding=decoding, temperature=0.8, seed=3,
                            **settings)
    result = lm.branch(generated, position=0, k=1, max_new_tokens=6, seed=3, decoding=decoding, temperature=0.8,
                       **settings)
    branch = result.branches[0]
    assert branch.token_ids.tolist() == generated.token_ids.tolist()
    assert torch.equal(branch.context_ids, generated.context_ids)
    torch.testing.assert_close(branch.logits, generated.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(branch.full_entropy, generated.full_entropy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(branch.truncated_entropy, generated.truncated_entropy, atol=1e-5, rtol=1e-5)
    assert branch.n_kept.tolist() == generated.n_kept.tolist() and branch.decoding == generated.decoding


def test_branches_are_reproducible_and_continue_the_right_prefix(lm, trace):
    position = 4
    first = lm.branch(trace, position, k=3, max_new_tokens=4, seed=11, decoding="top_p", top_p=0.95)
    again = lm.branch(trace, position, k=3, max_new_tokens=4, seed=11, decoding="top_p", top_p=0.95)
    other = lm.branch(trace, position, k=3, max_new_tokens=4, seed=12, decoding="top_p", top_p=0.95)
    assert first.texts == again.texts and first.texts != other.texts
    assert len(first.branches) == 3 and first.original_tokens == trace.tokens[position:]
    prefix = torch.cat([trace.context_ids.cpu(), trace.token_ids.cpu()[:position]])
    assert torch.equal(first.prefix_ids, prefix)
    probs = torch.softmax(trace.logits[position].double(), -1)
    assert first.original_prob == pytest.approx(float(probs[trace.token_ids[position]]), abs=1e-5)
    assert first.alternative_probs[0].item() == pytest.approx(float(probs.max()), abs=1e-5)
    assert first.alternative_kept_probs.sum().item() <= 1 + 1e-6
    for branch in first.branches:
        # the first step sees the same distribution as the scored text at the branch point
        torch.testing.assert_close(branch.logits[0], trace.logits[position], atol=2e-4, rtol=1e-4)
        # every step equals a teacher-forced pass over prefix + branch (the repeated cache is right)
        ids = torch.cat([prefix, branch.token_ids.cpu()])
        with torch.inference_mode():
            forced = lm.model(ids[None]).logits[0, len(prefix) - 1:-1]
        torch.testing.assert_close(branch.logits, forced, atol=5e-4, rtol=1e-4)
    assert list(first.to_frame().columns[:3]) == ["branch", "text", "first_token"]


def test_branch_bad_input_gives_one_clear_message_each(lm, trace):
    with pytest.raises(InputError, match="past the end"):
        lm.branch(trace, len(trace), k=2, max_new_tokens=3)
    with pytest.raises(InputError, match="past the end"):
        lm.branch(trace, -1, k=2, max_new_tokens=3)
    for k in (0, 65):
        with pytest.raises(InputError, match="k must be from 1 to 64"):
            lm.branch(trace, 1, k=k, max_new_tokens=3)
    with pytest.raises(InputError, match="whole number"):
        lm.branch(trace, 1.5, k=2, max_new_tokens=3)
    with pytest.raises(InputError, match="max_new_tokens"):
        lm.branch(trace, 1, k=64, max_new_tokens=64)
    with pytest.raises(InputError, match="Bad decoding settings"):
        lm.branch(trace, 1, k=2, max_new_tokens=3, decoding="top_k", top_k=0)


# ------------------------------------------------------------------ two models
def tiny_llama(path, tokenizer, vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny(lm, tmp_path_factory):
    from explorer.models.language_model import load_language_model

    return load_language_model(tiny_llama(tmp_path_factory.mktemp("tiny"), lm.tokenizer, lm.vocab_size))


def test_two_models_against_a_direct_float64_computation(lm, tiny):
    comparison = compare_models(TEXT, lm, tiny)
    trace_a, trace_b = lm.score(TEXT), tiny.score(TEXT)
    log_a, p_a = float64_distributions(trace_a.logits)
    log_b, p_b = float64_distributions(trace_b.logits)
    # float32 log-softmax of SmolLM2's logits is good to about 1e-5 per token, hence 1e-4 on sums
    entropy_a, entropy_b = -(p_a * log_a).sum(-1), -(p_b * log_b).sum(-1)
    torch.testing.assert_close(comparison.entropy_a.double(), entropy_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(comparison.entropy_b.double(), entropy_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(comparison.entropy_difference.double(), entropy_a - entropy_b, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(comparison.kl_ab.double(), (p_a * (log_a - log_b)).sum(-1), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(comparison.cross_entropy_ab.double(), -(p_a * log_b).sum(-1), atol=2e-4, rtol=1e-4)
    for model_trace, d in ((trace_a, comparison.detection_a), (trace_b, comparison.detection_b)):
        log_p, p = float64_distributions(model_trace.logits)
        surprisal = -log_p.gather(-1, model_trace.token_ids.cpu()[:, None])[:, 0]
        assert d == pytest.approx(float(surprisal.mean() + (p * log_p).sum(-1).mean()), abs=1e-4)
    # Entropy Adaptive Decoding: rolling mean (window 5) of model A's entropy in bits
    bits = pd.Series((entropy_a / math.log(2)).numpy()).rolling(5, min_periods=1).mean()
    torch.testing.assert_close(comparison.rolling_entropy_bits.double(), torch.tensor(bits.to_numpy()),
                               atol=1e-5, rtol=1e-5)
    assert comparison.handed_over.tolist() == (bits > comparison.threshold_bits).tolist()
    assert comparison.handover_fraction == pytest.approx(float((bits > comparison.threshold_bits).mean()))
    assert len(comparison.to_frame()) == len(trace_a)


def test_a_model_against_itself_has_zero_kl(lm):
    comparison = compare_models(TEXT, lm, lm, temperature=0.7)
    assert torch.equal(comparison.kl_ab, torch.zeros_like(comparison.kl_ab))
    assert torch.equal(comparison.entropy_difference, torch.zeros_like(comparison.kl_ab))
    torch.testing.assert_close(comparison.cross_entropy_ab, comparison.entropy_a)
    assert comparison.detection_a == comparison.detection_b


def test_two_models_bad_input(lm, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")   # as on a machine without the Hub

    tokenizer = AutoTokenizer.from_pretrained(lm.model.name_or_path)
    tokenizer.add_tokens(["<an-extra-token>"])
    other = tiny_llama(tmp_path / "other", tokenizer, lm.vocab_size + 1)
    with pytest.raises(InputError, match="different vocabularies"):
        compare_models(TEXT, lm, other)
    with pytest.raises(InputError, match="not in the local Hugging Face cache"):
        compare_models(TEXT, lm, "no-such-org/no-such-model")


# ------------------------------------------------------------------ reasoning steps
QUESTION = "What is 3 + 4 * 2?"
STEPS = ["Multiplication comes first: 4 * 2 = 8.", "Then add: 3 + 8 = 11.", "So the result is 11."]


def test_reasoning_entropy_equals_separate_forward_passes(lm):
    result = lm.reasoning_entropy(QUESTION, STEPS, "11")
    answer_ids = lm.encode(" 11")
    assert result.token_entropy.shape == (len(STEPS) + 1, len(answer_ids))
    for k in range(len(STEPS) + 1):
        context = lm.tokenizer("\n".join([QUESTION, *STEPS[:k], "Answer:"]))["input_ids"]
        ids = torch.tensor(context + answer_ids.tolist())
        with torch.inference_mode():
            logits = lm.model(ids[None]).logits[0, len(context) - 1:-1]
        log_p, p = float64_distributions(logits)
        torch.testing.assert_close(result.token_entropy[k].double(), -(p * log_p).sum(-1), atol=2e-4, rtol=1e-4)
        surprisal = -log_p.gather(-1, answer_ids[:, None])[:, 0]
        torch.testing.assert_close(result.token_surprisal[k].double(), surprisal, atol=2e-4, rtol=1e-4)
    drops = result.entropy_mean[:-1] - result.entropy_mean[1:]
    assert torch.equal(result.reduction, drops)
    expected = sorted(int(i) for i in torch.argsort(drops, descending=True)[:3] if drops[i] > 0)
    assert result.marked == expected
    frame = result.to_frame()
    assert list(frame["k"]) == [0, 1, 2, 3] and frame["step"].iloc[1] == STEPS[0]
    torch.testing.assert_close(result.entropy_total, result.token_entropy.sum(-1))


def test_reasoning_entropy_in_several_passes_equals_one(lm, monkeypatch):
    one = lm.reasoning_entropy(QUESTION, STEPS, "11", mark=1)
    monkeypatch.setattr(lens_tools, "REASONING_PACK_TOKENS", 1)   # one row per pass
    many = lm.reasoning_entropy(QUESTION, "\n".join(STEPS), "11", mark=1)
    torch.testing.assert_close(one.token_entropy, many.token_entropy, atol=1e-4, rtol=1e-4)
    assert len(one.marked) <= 1


def test_tree_packed_pass_equals_separate_passes_for_any_overlap(lm):
    a, b, c, d = (lm.encode(t) for t in ("The cat sat", " on the mat", " under a tree", "Dogs bark loudly"))
    trunk = torch.cat([a, b])
    others = [a, torch.cat([a, c]), d, trunk.clone()]   # a prefix of the trunk, a fork, nothing shared, equal
    packed = lens_tools._tree_logits(lm, trunk, others, n_answer=2)
    for row, logits in zip([trunk, *others], packed):
        with torch.inference_mode():
            expected = lm.model(row[None]).logits[0, -3:-1]
        torch.testing.assert_close(logits, expected, atol=2e-4, rtol=1e-4)


def test_split_steps_and_reasoning_bad_input(lm):
    chain = "First, 4 * 2 = 8. Then 3 + 8 = 11!\n\nSo the answer is 11."
    assert split_steps(chain) == ["First, 4 * 2 = 8. Then 3 + 8 = 11!", "So the answer is 11."]
    assert split_steps(chain, by="sentences") == ["First, 4 * 2 = 8.", "Then 3 + 8 = 11!", "So the answer is 11."]
    assert split_steps(chain, answer="11") == ["First, 4 * 2 = 8. Then 3 + 8 = 11!", "So the answer is"]
    with pytest.raises(InputError, match="not found"):
        split_steps(chain, answer="12")
    for empty in ("", "  \n "):
        with pytest.raises(InputError, match="chain is empty"):
            split_steps(empty)
    with pytest.raises(InputError, match="chain is empty"):
        lm.reasoning_entropy(QUESTION, ["", "  "], "11")
    with pytest.raises(InputError, match="answer is empty"):
        lm.reasoning_entropy(QUESTION, STEPS, "  ")
    with pytest.raises(InputError, match="at most 64"):
        lm.reasoning_entropy(QUESTION, ["step."] * 65, "11")


# ------------------------------------------------------------------ entropy x varentropy
def test_entropy_regions_use_bits_and_the_quadrant_kernel(trace):
    frame = entropy_regions(trace, entropy_threshold_bits=2.0, varentropy_threshold_bits2=4.0)
    bits = trace.entropy / math.log(2)
    torch.testing.assert_close(torch.tensor(frame["entropy_bits"].to_numpy()), bits)
    torch.testing.assert_close(torch.tensor(frame["varentropy_bits2"].to_numpy()), trace.varentropy / math.log(2) ** 2)
    codes = entropy_quadrants(bits, trace.varentropy / math.log(2) ** 2, 2.0, 4.0)
    assert frame["quadrant"].tolist() == codes.tolist() and set(frame["quadrant"]) <= set(range(len(QUADRANTS)))


def test_bad_temperatures_and_texts_are_input_errors(lm, trace, tiny):
    for bad in (0, -1.0, float("nan"), "hot"):
        with pytest.raises(InputError, match="temperature"):
            lm.logit_lens(trace, temperature=bad)
        with pytest.raises(InputError, match="temperature"):
            compare_models(TEXT, lm, tiny, temperature=bad)
    with pytest.raises(InputError, match="empty"):
        compare_models("   ", lm, tiny)
    with pytest.raises(InputError, match="TokenTrace"):
        lm.logit_lens(42)
