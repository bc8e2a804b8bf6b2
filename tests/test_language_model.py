"""The real default model: load, score, generate, and check every trace against a direct forward pass."""

from __future__ import annotations

import math

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


def plain_pass(lm, text: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """``model(**tokenizer(text))`` as a user would write it: the encoding, float64 logits and HF's loss."""
    encoding = lm.tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        out = lm.model(**encoding, labels=encoding["input_ids"])
    return encoding, out.logits[0].double(), out.loss.double()


def test_score_without_a_prompt_equals_a_plain_forward_pass(lm):
    text = "The river froze overnight, and the town woke to silence."
    trace = lm.score(text)
    encoding, logits, loss = plain_pass(lm, text)
    ids = encoding["input_ids"][0]
    assert lm.tokenizer.bos_token == "<|im_start|>" and int(ids[0]) != lm.tokenizer.bos_token_id
    # SmolLM2's tokenizer adds no BOS: the first token is context only, every other token is scored.
    assert trace.context_ids.tolist() == ids[:1].tolist() and trace.token_ids.tolist() == ids[1:].tolist()
    assert trace.context + trace.text == text
    log_p = torch.log_softmax(logits[:-1].double(), -1)
    nll = -log_p.gather(-1, ids[1:, None])[:, 0]
    torch.testing.assert_close(trace.surprisal.double(), nll, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trace.entropy.double(), -(log_p.exp() * log_p).sum(-1), atol=1e-5, rtol=1e-5)
    assert float(trace.entropy[0]) == pytest.approx(3.86, abs=0.01)  # 7.43 after a prepended <|im_start|>
    summary = trace.summary()
    assert summary["log_perplexity"] == pytest.approx(float(nll.mean()), rel=1e-6)
    assert summary["perplexity"] == pytest.approx(math.exp(float(nll.mean())), rel=1e-5)
    # the model's own loss is a float32 log-softmax: off by up to ~2e-5 on CPUs without AVX-512
    assert summary["log_perplexity"] == pytest.approx(float(loss), rel=1e-4)


def test_score_matches_a_direct_forward_pass(lm):
    trace = lm.score("The cat sat on the mat because it was tired.")
    ids = torch.cat([trace.context_ids, trace.token_ids.cpu()])
    logits = direct_logits(lm, ids)[len(trace.context_ids) - 1:-1]
    log_p = torch.log_softmax(logits, -1)
    expected_entropy = -(log_p.exp() * log_p).sum(-1)
    expected_surprisal = -log_p.gather(-1, trace.token_ids.cpu()[:, None])[:, 0]
    assert trace.context + "".join(trace.tokens) == "The cat sat on the mat because it was tired."
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


def test_attention_entropy_equals_eager_attention_weights(lm):
    """The blockwise pass against transformers' eager attention on a private copy of the model."""
    import copy

    from explorer.kernels.attention import attention_entropy

    trace = lm.score("Entropy of attention rows, layer by layer, head by head.")
    eager = copy.deepcopy(lm.model)
    eager.set_attn_implementation("eager")
    ids = torch.cat([trace.context_ids, trace.token_ids.cpu()])[None]
    with torch.inference_mode():
        weights = torch.stack([a[0] for a in eager(ids, output_attentions=True).attentions])
    for normalise in (False, True):
        expected = attention_entropy(weights, normalise=normalise)[:, :, len(trace.context_ids):]
        torch.testing.assert_close(lm.attention_entropy(trace, normalise=normalise), expected, atol=2e-4, rtol=1e-4)
    assert lm.model.config._attn_implementation == "explorer_sdpa"  # the shared model was never switched


def test_next_token_logits_equal_each_prompt_alone(lm):
    prompts = ["The capital of France is", "Hi", lm.format_prompt("Name a colour.")]
    batched = lm.next_token_logits(prompts, batch_size=3)
    for k, prompt in enumerate(prompts):
        alone = direct_logits(lm, lm.encode(prompt))[-1]
        torch.testing.assert_close(batched[k].double(), alone, atol=2e-4, rtol=1e-4)
    assert lm.tokenizer.padding_side == "right"


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_hidden_states_pool_each_text_as_a_plain_forward_pass(lm, pooling):
    texts = ["A short one.", "A somewhat longer sentence about rivers and towns in winter.", "Third"]
    states = lm.hidden_states(texts, batch_size=2, pooling=pooling)
    assert states.shape == (lm.model.config.num_hidden_layers + 1, 3, lm.model.config.hidden_size)
    for k, text in enumerate(texts):
        with torch.inference_mode():
            alone = lm.model(**lm.tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states
        expected = torch.stack([h[0].mean(0) if pooling == "mean" else h[0, -1] for h in alone])
        torch.testing.assert_close(states[:, k], expected, atol=1e-4, rtol=1e-4)
    cut = lm.hidden_states(texts[1:2], max_length=4, pooling="last")
    with torch.inference_mode():
        four = lm.model(lm.tokenizer(texts[1], return_tensors="pt")["input_ids"][:, :4], output_hidden_states=True)
    torch.testing.assert_close(cut[:, 0], torch.stack([h[0, -1] for h in four.hidden_states]), atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="pooling"):
        lm.hidden_states(texts, pooling="max")


def test_generate_score_and_sampling_raise_no_warnings(lm):
    """No deprecated arguments: transformers' FutureWarnings and its once-only log warnings stay silent."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    from explorer.models.sampling import sample_answers

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    hf_logging.warning_once.cache_clear()  # a warning shown earlier in this process must show again
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trace = lm.generate("Name a fruit.", max_new_tokens=4, seed=1)
            lm.score("A plain sentence to score.")
            lm.score(" Paris.", prompt="The capital of France is")
            lm.attention_entropy(trace)
            lm.next_token_logits(["One", "Two words"])
            sample_answers(lm, ["Name a colour."], 1.0, 2, 3, seed=0)
    finally:
        logger.removeHandler(handler)
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in records] == []


def test_fast_tokenizer_backend_is_never_switched(lm):
    """Batches are padded here, so the tokenizer's backend never gets a padding or truncation setting."""
    backend = lm.tokenizer.backend_tokenizer
    lm.next_token_logits(["One", "Two words here"])
    lm.hidden_states(["One", "Two words here"], max_length=2)
    assert backend.padding is None and backend.truncation is None and lm.tokenizer.padding_side == "right"


# ----------------------------------------------------------------- a Llama-style tokenizer that adds a BOS
WORDS = "the cat sat on a mat and dog ran to river froze town woke in winter".split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random 2-layer Llama (grouped-query attention) with a word-level tokenizer that adds ``<s>``
    in front of every text, as Llama's ``add_bos_token=True`` does; built locally, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from explorer.models.language_model import LanguageModel

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>", add_bos_token=True)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return LanguageModel.from_source(str(directory), "tiny-llama", torch.device("cpu"))


def test_tiny_tokenizer_adds_a_bos(tiny):
    encoding = tiny.tokenizer("the cat sat")
    assert encoding["input_ids"][0] == tiny.tokenizer.bos_token_id == 1 and len(encoding["input_ids"]) == 4
    added, own = tiny.tokenize("the cat sat")
    assert added.tolist() == [1] and len(own) == 3
    added, own = tiny.tokenize("<s> the cat")  # a text that writes its own BOS gets no second one
    assert added.tolist() == [] and own.tolist()[0] == 1


def test_tiny_score_conditions_the_first_word_on_the_bos(tiny):
    text = "the cat sat on a mat and the dog ran to the river"
    trace = tiny.score(text)
    encoding, logits, loss = plain_pass(tiny, text)
    ids = encoding["input_ids"][0]
    assert trace.context_ids.tolist() == [1] and trace.token_ids.tolist() == ids[1:].tolist()
    assert len(trace) == len(text.split())  # the first word is scored
    log_p = torch.log_softmax(logits[:-1], -1)
    nll = -log_p.gather(-1, ids[1:, None])[:, 0]
    torch.testing.assert_close(trace.surprisal.double(), nll, atol=1e-5, rtol=1e-5)
    summary = trace.summary()
    assert summary["log_perplexity"] == pytest.approx(float(loss), rel=1e-5)
    assert summary["perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-5)


def test_tiny_prompt_and_generation_contexts_start_with_the_bos(tiny):
    trace = tiny.score("the river", prompt="the town woke in winter", chat=False)
    assert trace.context_ids.tolist() == tiny.tokenizer("the town woke in winter")["input_ids"]
    generated = tiny.generate("the dog ran", max_new_tokens=3, chat=False, seed=0)
    assert generated.context_ids.tolist() == tiny.tokenizer("the dog ran")["input_ids"]
    logits = tiny.next_token_logits(["the dog ran", "a cat"])
    with torch.inference_mode():
        alone = tiny.model(**tiny.tokenizer("a cat", return_tensors="pt")).logits[0, -1]
    torch.testing.assert_close(logits[1], alone, atol=1e-5, rtol=1e-5)


def test_tiny_attention_is_sdpa_bit_for_bit_and_its_entropy_is_eager(tiny, tmp_path):
    """The registered attention implementation changes nothing for ordinary calls."""
    from transformers import AutoModelForCausalLM

    from explorer.kernels.attention import attention_entropy

    tiny.model.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    eager = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.tensor([tiny.tokenizer("the cat sat on a mat and the dog ran")["input_ids"]])
    with torch.inference_mode():
        assert torch.equal(tiny.model(ids).logits, plain(ids).logits)
        weights = torch.stack([a[0] for a in eager(ids, output_attentions=True).attentions])
    trace = tiny.score("the cat sat on a mat and the dog ran")
    torch.testing.assert_close(tiny.attention_entropy(trace), attention_entropy(weights)[:, :, 1:],
                               atol=1e-5, rtol=1e-5)
