"""The lens, deeper: layer by layer, branches, two models on one text, and entropy along reasoning steps.

Entry points (``LanguageModel`` delegates ``logit_lens``, ``branch`` and ``reasoning_entropy`` here):

    logit_lens(lm, trace)                    every layer decoded through the final norm and the head
    branch(lm, trace, position, k, n)        k continuations from the prefix before ``position``
    compare_models(text, model_a, model_b)   both entropies, KL(p_A || p_B), cross-entropy, D, EAD
    reasoning_entropy(lm, question, steps, answer)   the answer's entropy given the first k steps
    split_steps(chain)                       a reasoning chain cut into lines or sentences
    entropy_regions(trace)                   entropy x varentropy quadrants and entropix's states

Each forward pass holds ``lm.lock``; the tokenizer and the model's config are never changed.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pandas as pd
import torch

from explorer.errors import InputError
from explorer.kernels.decoding import LogitsRule, step_statistics
from explorer.kernels.divergence import (
    ENTROPIX_THRESHOLDS, LN2, adaptive_handover, divergence_statistics, entropix_states, entropy_quadrants,
    lens_statistics, to_bits,
)
from explorer.kernels.entropy import token_entropy, token_statistics
from explorer.models.trace import TokenTrace
from explorer.progress import Cancelled, Progress

if TYPE_CHECKING:
    from explorer.models.language_model import LanguageModel

__all__ = ["Branches", "LogitLens", "ModelComparison", "ReasoningEntropy", "branch", "compare_models",
           "entropy_regions", "logit_lens", "reasoning_entropy", "sample_batch", "split_steps"]

#: logits elements decoded at once by the logit lens (layers x positions x vocabulary; 64 MB in float32)
LENS_CHUNK_ELEMENTS = 1 << 24
#: default budget for keeping every layer's logits so that ``LogitLens.at_temperature`` needs no forward pass
KEEP_LOGITS_MB = 256.0
MAX_BRANCHES = 64
#: k x max_new_tokens cap: the branches' raw logits stay within one long generation's (2048 x V floats)
MAX_BRANCH_TOKENS = 2048
MAX_STEPS = 64
#: tokens per packed forward pass of ``reasoning_entropy``; rows that do not fit go to further passes
REASONING_PACK_TOKENS = 4096
EAD_WINDOW = 5
#: our default hand-over threshold (bits of rolling entropy); the paper tunes it per model pair
EAD_THRESHOLD_BITS = 3.0
#: quadrant thresholds shown by default: entropix's medium entropy (bits) and high varentropy (bits^2),
#: the corner of its "resampling in the mist" state
QUADRANT_ENTROPY_BITS = ENTROPIX_THRESHOLDS["medium_entropy"]
QUADRANT_VARENTROPY_BITS2 = ENTROPIX_THRESHOLDS["high_varentropy"]


def _trace_of(lm: LanguageModel, trace) -> TokenTrace:
    """A text is scored first; a trace must come from a model with ``lm``'s vocabulary."""
    if isinstance(trace, (str, bytes)):
        return lm.score(trace)
    if not isinstance(trace, TokenTrace):
        raise InputError(f"Expected a scored or generated text (TokenTrace), not {type(trace).__name__}.")
    if trace.logits.shape[-1] != lm.vocab_size:
        raise InputError(f"This text was scored by a model with {trace.logits.shape[-1]} tokens; "
                         f"{lm.name} has {lm.vocab_size}. Score it with {lm.name} first.")
    return trace


def _full_ids(trace: TokenTrace, device) -> torch.Tensor:
    return torch.cat([trace.context_ids.cpu(), trace.token_ids.cpu()]).to(device)


# ================================================================================== logit lens
@dataclass(frozen=True, eq=False)
class LogitLens:
    """Every layer's next-token distribution at every position of a text: ``[layers, positions]`` tensors.

    Row ``i`` decodes hidden state ``layer_ids[i]`` (0 = the embeddings, l = the output of block l)
    through the final norm and the output head; the last row is the model's own output (block L after
    the final norm), so its ``entropy`` equals the trace's. ``kl_to_final`` is KL(p_layer || p_final)
    per position (nats), ``top_ids``/``top_tokens``/``top_probs`` the most likely token of each cell,
    ``surprisal`` -log p_layer(the text's token). ``logits`` (raw, T = 1) is kept only when it fits
    the budget given to :func:`logit_lens`; then :meth:`at_temperature` re-scores every layer without
    a forward pass, otherwise a new temperature applies to the final layer (the trace) only.
    """

    layers: list[str]
    layer_ids: list[int]
    tokens: list[str]
    token_ids: torch.Tensor
    entropy: torch.Tensor
    kl_to_final: torch.Tensor
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    surprisal: torch.Tensor
    top_tokens: list[list[str]]
    temperature: float = 1.0
    logits: torch.Tensor | None = None
    logits_mb: float = 0.0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.entropy.shape)

    def at_temperature(self, temperature: float) -> LogitLens:
        """Every layer re-scored at ``temperature`` from the kept logits (no forward pass)."""
        if self.logits is None:
            raise InputError(f"The per-layer logits ({self.logits_mb:.0f} MB) were over the memory budget and "
                             "were not kept: the temperature applies to the final layer only. Run the logit "
                             "lens again at this temperature to re-score every layer (one forward pass).")
        statistics = _chunked_lens_statistics(self.logits, self.token_ids, temperature)
        # the top token does not move with T; its probability does
        return replace(self, temperature=float(temperature), entropy=statistics["entropy"],
                       kl_to_final=statistics["kl_to_reference"], top_probs=statistics["top_probs"],
                       surprisal=statistics["surprisal"])

    def column(self, position: int) -> pd.DataFrame:
        """One position across layers: entropy, KL to the final layer, top token and its p."""
        return pd.DataFrame({
            "layer": self.layers, "entropy": self.entropy[:, position].cpu().numpy(),
            "kl_to_final": self.kl_to_final[:, position].cpu().numpy(),
            "top_token": [row[position] for row in self.top_tokens],
            "top_prob": self.top_probs[:, position].cpu().numpy(),
            "surprisal": self.surprisal[:, position].cpu().numpy(),
        })

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, position) cell, for a heatmap with hover."""
        n_layers, n_positions = self.shape
        return pd.DataFrame({
            "layer": [name for name in self.layers for _ in range(n_positions)],
            "layer_id": [i for i in self.layer_ids for _ in range(n_positions)],
            "position": list(range(n_positions)) * n_layers,
            "token": self.tokens * n_layers,
            "entropy": self.entropy.flatten().cpu().numpy(),
            "kl_to_final": self.kl_to_final.flatten().cpu().numpy(),
            "top_token": [token for row in self.top_tokens for token in row],
            "top_prob": self.top_probs.flatten().cpu().numpy(),
            "surprisal": self.surprisal.flatten().cpu().numpy(),
        })


def logit_lens(lm: LanguageModel, trace, temperature: float | None = None, layers=None,
               keep_logits_mb: float = KEEP_LOGITS_MB) -> LogitLens:
    """Decode every layer's hidden state through the final norm and the output head (the logit lens).

    One forward pass with hidden states (the full-vocabulary logits of that pass are not built); then,
    for chunks of positions, all chosen layers are decoded in one matmul and reduced at once to the
    statistics, so memory stays at one chunk (``LENS_CHUNK_ELEMENTS`` logits) however long the text.
    ``temperature`` defaults to the trace's. ``layers`` picks hidden-state indices (0 = embeddings,
    L = final; the final layer is always added: it is the KL reference). The raw per-layer logits are
    kept on the result when layers x positions x vocabulary x 4 bytes <= ``keep_logits_mb`` MB (about
    40 positions of SmolLM2-135M per 256 MB), so that ``LogitLens.at_temperature`` needs no new pass.
    Raises ``InputError`` for a model whose output is not ``head(norm(h))`` (e.g. soft-capped logits).
    """
    trace = _trace_of(lm, trace)
    t = _temperature(trace.temperature if temperature is None else temperature)
    ids = _full_ids(trace, lm.device)
    start, n = len(trace.context_ids) - 1, len(trace)
    with lm.lock, torch.inference_mode():
        out = lm.model(ids[None], output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states
        final = len(hidden) - 1
        chosen = _layer_indices(layers, final)
        final_normed = _final_is_normed(lm, hidden[final][0, -1], out.logits[0, -1])
        stack = torch.stack([hidden[i][0, start:start + n] for i in chosen])  # [layers, n, d]
    del out, hidden
    vocab = lm.vocab_size
    logits_mb = len(chosen) * n * vocab * 4 / 2 ** 20
    with torch.inference_mode():
        kept = torch.empty(len(chosen), n, vocab, device=lm.device) if logits_mb <= keep_logits_mb else None
    token_ids = trace.token_ids.to(lm.device)
    parts = []
    chunk = max(1, LENS_CHUNK_ELEMENTS // (len(chosen) * vocab))
    for s in range(0, n, chunk):
        with lm.lock, torch.inference_mode():
            logits = _decode_layers(lm, stack[:, s:s + chunk], final_normed)
        with torch.inference_mode():
            if kept is not None:
                kept[:, s:s + chunk] = logits
            parts.append(lens_statistics(logits, token_ids=token_ids[s:s + chunk], temperature=t, overwrite=True))
    statistics = {key: torch.cat([part[key] for part in parts], dim=1) for key in parts[0]}
    return LogitLens(
        layers=[_layer_name(i, final) for i in chosen], layer_ids=chosen, tokens=list(trace.tokens),
        token_ids=token_ids, entropy=statistics["entropy"], kl_to_final=statistics["kl_to_reference"],
        top_ids=statistics["top_ids"], top_probs=statistics["top_probs"], surprisal=statistics["surprisal"],
        top_tokens=_decode_grid(lm, statistics["top_ids"]), temperature=t, logits=kept, logits_mb=logits_mb)


def _layer_indices(layers, final: int) -> list[int]:
    if layers is None:
        return list(range(final + 1))
    try:
        chosen = sorted({int(i) for i in layers} | {final})
    except (TypeError, ValueError) as err:
        raise InputError(f"layers must be whole numbers from 0 to {final}.") from err
    if chosen[0] < 0 or chosen[-1] > final:
        raise InputError(f"layers must be whole numbers from 0 (embeddings) to {final} (the final layer).")
    return chosen


def _layer_name(index: int, final: int) -> str:
    return "embeddings" if index == 0 else f"layer {index}" + (" (final)" if index == final else "")


def _final_norm(model) -> torch.nn.Module:
    owners = [getattr(model, "model", None), getattr(model, "transformer", None)]
    if hasattr(model, "get_decoder"):
        owners.insert(0, model.get_decoder())
    for owner in owners:
        for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, torch.nn.Module):
                return module
    raise InputError("The logit lens needs the model's final norm; this architecture does not expose one.")


def _final_is_normed(lm: LanguageModel, last_hidden: torch.Tensor, last_logits: torch.Tensor) -> bool:
    """Whether the last hidden state is reported after the final norm, checked against the model's own
    logits at the last position; neither reading reproducing them is an ``InputError``."""
    head, norm = lm.model.get_output_embeddings(), _final_norm(lm.model)
    tolerance = 1e-3 * (1 + float(last_logits.abs().max()))
    for normed in (True, False):
        decoded = head(last_hidden if normed else norm(last_hidden)).float()
        if float((decoded - last_logits.float()).abs().max()) <= tolerance:
            return normed
    raise InputError(f"{lm.name}'s output is not its head applied to its final norm (soft-capped or scaled "
                     "logits?): the logit lens cannot decode its layers.")


def _decode_layers(lm: LanguageModel, stack: torch.Tensor, final_normed: bool) -> torch.Tensor:
    """head(norm(h)) for every row of ``stack[layers, positions, d]``; the last row (the final layer)
    skips the norm when the model reports it normed already."""
    norm = _final_norm(lm.model)
    if final_normed:
        stack = torch.cat([norm(stack[:-1]), stack[-1:]])
    else:
        stack = norm(stack)
    return lm.model.get_output_embeddings()(stack).float()


def _chunked_lens_statistics(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float):
    chunk = max(1, LENS_CHUNK_ELEMENTS // (logits.shape[0] * logits.shape[-1]))
    with torch.inference_mode():
        parts = [lens_statistics(logits[:, s:s + chunk], token_ids=token_ids[s:s + chunk], temperature=temperature)
                 for s in range(0, logits.shape[1], chunk)]
    return {key: torch.cat([part[key] for part in parts], dim=1) for key in parts[0]}


def _decode_grid(lm: LanguageModel, ids: torch.Tensor) -> list[list[str]]:
    """Token strings of a grid of ids, each distinct id decoded once."""
    unique = ids.unique().cpu()
    names = dict(zip(unique.tolist(), lm.token_strings(unique)))
    return [[names[i] for i in row] for row in ids.cpu().tolist()]


# ================================================================================== branches
@dataclass(frozen=True, eq=False)
class Branches:
    """k continuations sampled from one prefix, beside the text's own continuation.

    ``branches`` are generated traces (as ``LanguageModel.generate`` returns); at the branch point,
    ``alternative_*`` are the most likely tokens with p under the full distribution at the generation
    temperature and under the decoding rule (0 where the rule removes them), and ``original_*`` the
    text's own token there.
    """

    position: int
    prefix_ids: torch.Tensor
    branches: list[TokenTrace]
    original_tokens: list[str]
    original_entropy: torch.Tensor
    original_id: int
    original_prob: float
    original_kept_prob: float
    branch_point_entropy: float
    alternative_ids: torch.Tensor
    alternative_tokens: list[str]
    alternative_probs: torch.Tensor
    alternative_kept_probs: torch.Tensor
    seed: int
    decoding: str

    @property
    def texts(self) -> list[str]:
        return [b.text for b in self.branches]

    def to_frame(self) -> pd.DataFrame:
        """One row per branch: its text, first token with its p at the branch point, mean entropy."""
        probs = torch.softmax(self.branches[0].logits[0].float() / self.branches[0].generation_temperature, -1)
        return pd.DataFrame({
            "branch": range(len(self.branches)), "text": self.texts,
            "first_token": [b.tokens[0] for b in self.branches],
            "first_token_prob": [float(probs[int(b.token_ids[0])]) for b in self.branches],
            "tokens": [len(b) for b in self.branches],
            "mean_entropy": [float(b.full_entropy.mean()) for b in self.branches],
        })


def branch(lm: LanguageModel, trace, position: int, k: int = 8, max_new_tokens: int = 32, seed: int = 0,
           decoding: str | LogitsRule = "none", temperature: float = 1.0, progress: Progress | None = None,
           top: int = 10, **rule_settings) -> Branches:
    """Sample ``k`` continuations of the prefix that ends just before ``position`` (the branch point).

    The prefix is the trace's context and its tokens before ``position``; the text's own token there
    is one alternative. All k branches run in one batched loop (the prefix's key-value cache is built
    once and repeated), each step as ``LanguageModel.generate`` does it: ``rule(raw logits)``, one
    draw per row with one ``torch.Generator`` seeded by ``seed``, stop tokens end a row. With
    ``k = 1`` the branch equals ``lm.generate`` from the same prefix and seed token for token.
    """
    trace = _trace_of(lm, trace)
    position, k = _whole(position, "The branch point"), _whole(k, "k")
    max_new_tokens = _whole(max_new_tokens, "max_new_tokens")
    if not 0 <= position < len(trace):
        raise InputError(f"The branch point {position} is past the end: the text has {len(trace)} tokens "
                         f"(positions 0 to {len(trace) - 1}).")
    if not 1 <= k <= MAX_BRANCHES:
        raise InputError(f"k must be from 1 to {MAX_BRANCHES} branches, got {k}.")
    if not 1 <= max_new_tokens <= MAX_BRANCH_TOKENS // k:
        raise InputError(f"max_new_tokens must be a whole number >= 1 with k x max_new_tokens <= "
                         f"{MAX_BRANCH_TOKENS} (k = {k}).")
    rule = decoding if isinstance(decoding, LogitsRule) else lm._make_rule(decoding, temperature, rule_settings)
    prefix = torch.cat([trace.context_ids.cpu(), trace.token_ids.cpu()[:position]])
    lm._check_length(len(prefix) + max_new_tokens)
    rows, first_kept = sample_batch(lm, prefix, k, max_new_tokens, rule, temperature, seed, progress)
    context = lm.tokenizer.decode(prefix)
    branches = [_generated_trace(lm, raw, stats, ids, prefix, context, rule, decoding, temperature, stopped)
                for raw, stats, ids, stopped in rows]
    first = branches[0].logits[0].float()
    probs, kept_probs = torch.softmax(first / float(temperature), -1), torch.softmax(first_kept, -1)
    alt_probs, alt_ids = probs.topk(min(int(top), len(probs)))
    original = int(trace.token_ids[position])
    return Branches(
        position=position, prefix_ids=prefix, branches=branches, original_tokens=list(trace.tokens[position:]),
        original_entropy=trace.entropy[position:], original_id=original, original_prob=float(probs[original]),
        original_kept_prob=float(kept_probs[original]), branch_point_entropy=float(token_entropy(first, temperature)),
        alternative_ids=alt_ids, alternative_tokens=lm.token_strings(alt_ids.cpu()), alternative_probs=alt_probs,
        alternative_kept_probs=kept_probs[alt_ids], seed=int(seed),
        decoding=getattr(rule, "description", str(decoding)))


def sample_batch(lm: LanguageModel, prefix_ids: torch.Tensor, k: int, max_new_tokens: int, rule: LogitsRule,
                 temperature: float = 1.0, seed: int = 0, progress: Progress | None = None):
    """``k`` rows sampled after one prefix in one batched loop.

    Returns ``(rows, first_kept)``: per row ``(raw logits [n, V], step statistics at ``temperature``,
    token ids [n], stopped)`` with n ending at the row's first stop token (included), and the rule's
    logits at the first step (the same for every row: one prefix, a fresh rule).

    Per step as ``LanguageModel.generate``: ``kept = rule(raw)``, ``torch.multinomial(softmax(kept), 1,
    generator)`` for all rows at once, ``rule.observe``. Finished rows keep running (their draws are
    discarded) so that the batch keeps one shape. A stop (``progress.cancel()``) keeps the steps so far.
    """
    generator = torch.Generator(device=lm.device).manual_seed(int(seed))
    stop_ids = torch.tensor(sorted(lm._stop_ids()), device=lm.device, dtype=torch.long)
    rule.reset()
    raws, stats, tokens, first_kept = [], [], [], None
    done = torch.zeros(k, dtype=torch.bool, device=lm.device)
    lengths = torch.zeros(k, dtype=torch.long, device=lm.device)
    stopped, token = False, None
    with lm.lock, torch.inference_mode():
        out = lm.model(input_ids=prefix_ids.to(lm.device)[None], use_cache=True)
        past, raw = out.cache, out.logits[:, -1, :].float()
        if k > 1:
            if hasattr(past, "batch_repeat_interleave"):
                past.batch_repeat_interleave(k)
            else:  # a cache type that cannot be repeated: run the prefix k times
                past = lm.model(input_ids=prefix_ids.to(lm.device).expand(k, -1), use_cache=True).cache
            raw = raw.expand(k, -1)
        try:
            for step in range(max_new_tokens):
                if step:
                    out = lm.model(input_ids=token, cache=past, use_cache=True)
                    past, raw = out.cache, out.logits[:, -1, :].float()
                kept = rule(raw.clone())
                first_kept = kept[0].clone() if first_kept is None else first_kept
                token = torch.multinomial(torch.softmax(kept, dim=-1), 1, generator=generator)
                rule.observe(token[:, 0], kept)
                raws.append(raw.clone())
                stats.append(step_statistics(raw / float(temperature), kept))
                tokens.append(token[:, 0])
                lengths += (~done).long()
                done |= torch.isin(token[:, 0], stop_ids)
                if bool(done.all()):
                    break
                if progress is not None:
                    progress.update(step + 1, max_new_tokens, f"token {step + 1} of {max_new_tokens}")
        except Cancelled:
            stopped = True
    if not tokens:
        raise InputError("Stopped before the first token was generated.")
    raw_all, ids_all = torch.stack(raws, 1), torch.stack(tokens, 1)
    stats_all = {key: torch.stack([s[key] for s in stats], 1) for key in stats[0]}
    rows = [(raw_all[row, :n], {key: value[row, :n] for key, value in stats_all.items()}, ids_all[row, :n], stopped)
            for row, n in enumerate(lengths.tolist())]
    return rows, first_kept


def _generated_trace(lm, raw, stats, ids, prefix, context, rule, decoding, temperature, stopped) -> TokenTrace:
    """A generated trace with the fields ``LanguageModel.generate`` fills."""
    return TokenTrace(tokens=lm.token_strings(ids.cpu()), token_ids=ids, logits=raw, context_ids=prefix,
                      context=context, kind="generated", decoding=getattr(rule, "description", str(decoding)),
                      generation_temperature=float(temperature), truncated_entropy=stats["entropy_truncated"],
                      n_kept=stats["n_kept"], full_entropy=stats["entropy_full"], stopped=stopped)


def _temperature(value) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    if not (t > 0 and math.isfinite(t)):
        raise InputError(f"The temperature must be a positive number, got {value!r}.")
    return t


def _whole(value, what: str) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise InputError(f"{what} must be a whole number, got {value!r}.") from None


# ================================================================================== two models
@dataclass(frozen=True, eq=False)
class ModelComparison:
    """Two models on the same tokens: per position both entropies, their difference (A - B),
    KL(p_A || p_B) and the cross-entropy H(p_A, p_B) at ``temperature``; the zero-shot detection
    statistic D of the text under each; and the Entropy Adaptive Decoding view of model A (rolling mean
    of its entropy in bits at T = 1, steps above the threshold handed to model B, the larger one)."""

    model_a: str
    model_b: str
    tokens: list[str]
    entropy_a: torch.Tensor
    entropy_b: torch.Tensor
    kl_ab: torch.Tensor
    cross_entropy_ab: torch.Tensor
    detection_a: float
    detection_b: float
    rolling_entropy_bits: torch.Tensor
    handed_over: torch.Tensor
    threshold_bits: float
    window: int
    temperature: float

    @property
    def entropy_difference(self) -> torch.Tensor:
        return self.entropy_a - self.entropy_b

    @property
    def handover_fraction(self) -> float:
        return float(self.handed_over.float().mean())

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "position": range(len(self.tokens)), "token": self.tokens,
            "entropy_a": self.entropy_a.cpu().numpy(), "entropy_b": self.entropy_b.cpu().numpy(),
            "entropy_difference": self.entropy_difference.cpu().numpy(), "kl_ab": self.kl_ab.cpu().numpy(),
            "cross_entropy_ab": self.cross_entropy_ab.cpu().numpy(),
            "rolling_entropy_bits": self.rolling_entropy_bits.cpu().numpy(),
            "handed_over": self.handed_over.cpu().numpy(),
        })


def compare_models(text: str, model_a, model_b, temperature: float = 1.0, window: int = EAD_WINDOW,
                   threshold_bits: float = EAD_THRESHOLD_BITS) -> ModelComparison:
    """Score ``text`` with both models (``LanguageModel`` objects or names/paths, loaded offline-aware by
    ``load_language_model``) and compare them position by position.

    The models must share a tokenizer: the same vocabulary, the same logits width and the same tokens
    for the text (else ``InputError``). D = log-perplexity - mean entropy under each model
    (formulas.md section 1); EAD: rolling mean (``window``) of model A's entropy in bits before
    temperature, steps with it > ``threshold_bits`` go to model B (formulas.md section 2).
    """
    t = _temperature(temperature)
    a, b = _model(model_a), _model(model_b)
    _check_same_tokenizer(a, b, text)
    trace_a, trace_b = a.score(text), b.score(text)
    if not (torch.equal(trace_a.context_ids.cpu(), trace_b.context_ids.cpu())
            and torch.equal(trace_a.token_ids.cpu(), trace_b.token_ids.cpu())):
        raise InputError(f"{a.name} and {b.name} split this text into different tokens: they cannot be "
                         "compared token by token.")
    hot_a, hot_b = trace_a.at_temperature(t), trace_b.at_temperature(t)
    statistics = divergence_statistics(trace_a.logits, trace_b.logits.to(trace_a.logits.device), t)
    rolling, handed = adaptive_handover(trace_a.entropy, float(threshold_bits), window)
    return ModelComparison(
        model_a=a.name, model_b=b.name, tokens=list(trace_a.tokens), entropy_a=statistics["entropy_p"],
        entropy_b=statistics["entropy_q"], kl_ab=statistics["kl"], cross_entropy_ab=statistics["cross_entropy"],
        detection_a=hot_a.summary()["detection_statistic"], detection_b=hot_b.summary()["detection_statistic"],
        rolling_entropy_bits=rolling, handed_over=handed, threshold_bits=float(threshold_bits), window=int(window),
        temperature=t)


def _model(model) -> LanguageModel:
    from explorer.models.language_model import LanguageModel, load_language_model

    return model if isinstance(model, LanguageModel) else load_language_model(model)


def _check_same_tokenizer(a: LanguageModel, b: LanguageModel, text: str) -> None:
    vocab_a, vocab_b = a.tokenizer.get_vocab(), b.tokenizer.get_vocab()
    if vocab_a != vocab_b:
        differ = len(set(vocab_a.items()) ^ set(vocab_b.items()))
        raise InputError(f"{a.name} and {b.name} have different vocabularies ({len(vocab_a)} vs {len(vocab_b)} "
                         f"tokens, {differ} entries differ): choose a model with the same tokenizer.")
    if a.vocab_size != b.vocab_size:
        raise InputError(f"{a.name} predicts {a.vocab_size} token ids and {b.name} {b.vocab_size}: their "
                         "distributions cannot be compared.")
    text = a._check_text(text, "text to compare")
    if a.tokenizer(text)["input_ids"] != b.tokenizer(text)["input_ids"]:
        raise InputError(f"{a.name} and {b.name} tokenize this text differently: choose a model with the "
                         "same tokenizer.")


# ================================================================================== reasoning steps
@dataclass(frozen=True, eq=False)
class ReasoningEntropy:
    """The answer span's entropy given the question and the first k steps, k = 0..K (nats).

    ``token_entropy[k, j]`` is the entropy of the distribution that predicts answer token j;
    ``entropy_mean``/``entropy_total`` average/sum it over the span; ``surprisal_total`` is the
    answer's -log p. ``reduction[k - 1]`` = entropy_mean[k - 1] - entropy_mean[k] is what step k
    removed; ``marked`` holds the steps (0-based) with the largest positive reductions.
    """

    question: str
    steps: list[str]
    answer: str
    answer_tokens: list[str]
    token_entropy: torch.Tensor
    token_surprisal: torch.Tensor
    marked: list[int]

    @property
    def entropy_mean(self) -> torch.Tensor:
        return self.token_entropy.mean(-1)

    @property
    def entropy_total(self) -> torch.Tensor:
        return self.token_entropy.sum(-1)

    @property
    def surprisal_total(self) -> torch.Tensor:
        return self.token_surprisal.sum(-1)

    @property
    def reduction(self) -> torch.Tensor:
        return self.entropy_mean[:-1] - self.entropy_mean[1:]

    def to_frame(self) -> pd.DataFrame:
        """One row per k = 0..K: the last step added, entropy (mean, total), surprisal, marked."""
        return pd.DataFrame({
            "k": range(len(self.steps) + 1), "step": [""] + self.steps,
            "entropy_mean": self.entropy_mean.cpu().numpy(), "entropy_total": self.entropy_total.cpu().numpy(),
            "surprisal_total": self.surprisal_total.cpu().numpy(),
            "reduction": [0.0] + self.reduction.cpu().tolist(),
            "marked": [False] + [i in self.marked for i in range(len(self.steps))],
        })


def split_steps(chain: str, by: str = "lines", answer: str | None = None) -> list[str]:
    """A reasoning chain cut into steps: non-empty ``"lines"``, or ``"sentences"`` (after ., ! or ? and a
    space, and at line breaks). With ``answer``, the chain is cut at its last occurrence first, so that
    no step gives the answer away (``InputError`` when the chain does not contain it)."""
    if not isinstance(chain, str) or not chain.strip():
        raise InputError("The reasoning chain is empty: paste the steps, one per line.")
    if answer is not None:
        answer = _answer_text(answer)
        cut = chain.rfind(answer)
        if cut < 0:
            raise InputError(f"The answer {answer!r} was not found in the reasoning chain.")
        chain = chain[:cut]
    if by not in ("lines", "sentences"):
        raise InputError(f"Split the chain by 'lines' or 'sentences', not {by!r}.")
    pattern = r"\n+" if by == "lines" else r"\n+|(?<=[.!?])\s+"
    steps = [s.strip() for s in re.split(pattern, chain) if s.strip()]
    if not steps:
        raise InputError("The reasoning chain has no steps before the answer.")
    return steps


def reasoning_entropy(lm: LanguageModel, question: str, steps, answer: str, answer_prompt: str = "Answer:",
                      mark: int = 3) -> ReasoningEntropy:
    """Entropy of the answer span given the question plus the first k steps, k = 0..K (formulas.md
    section 1, Measuring Reasoning Utility via Conditional Entropy Reduction).

    Context k is ``question``, then steps 1..k, then ``answer_prompt``, one per line, tokenized as the
    tokenizer does for that text; the answer span is ``" " + answer`` tokenized once, so every k scores
    the same tokens. The K + 1 sequences share their beginnings, so they go through one forward pass
    packed as a tree (:func:`_tree_logits`): the longest sequence once, and of every other only the
    tokens after its common prefix with it, under an attention mask that lets each of those see that
    prefix and itself, with its own position ids. That costs about one pass over the longest
    sequence instead of K + 1 (sequences over ``REASONING_PACK_TOKENS`` go to further passes); only
    the answer span's logits are built. ``steps`` is a list or a chain for :func:`split_steps`.
    """
    question = lm._check_text(question, "question")
    steps = split_steps(steps) if isinstance(steps, str) else [str(s).strip() for s in steps]
    steps = [s for s in steps if s]
    if not steps:
        raise InputError("The reasoning chain is empty: give at least one step.")
    if len(steps) > MAX_STEPS:
        raise InputError(f"The chain has {len(steps)} steps; at most {MAX_STEPS} are scored. Merge some steps.")
    answer = _answer_text(answer)
    answer_ids = lm.encode(" " + answer)
    contexts = [torch.tensor(lm.tokenizer("\n".join([question, *steps[:k], answer_prompt]))["input_ids"])
                for k in range(len(steps) + 1)]
    rows = [torch.cat([c, answer_ids]) for c in contexts]
    lm._check_length(max(len(r) for r in rows))
    logits = _answer_logits(lm, rows, len(answer_ids))  # [K + 1, A, V]
    statistics = token_statistics(logits, answer_ids.to(logits.device).expand(len(rows), -1), with_rank=False)
    entropy, surprisal = statistics["entropy"], statistics["surprisal"]
    drops = entropy.mean(-1)[:-1] - entropy.mean(-1)[1:]
    order = [int(i) for i in torch.argsort(drops, descending=True, stable=True) if float(drops[i]) > 0]
    return ReasoningEntropy(question=question, steps=steps, answer=answer,
                            answer_tokens=lm.token_strings(answer_ids), token_entropy=entropy,
                            token_surprisal=surprisal, marked=sorted(order[:max(0, int(mark))]))


def _answer_text(answer) -> str:
    if not isinstance(answer, str) or not answer.strip():
        raise InputError("The answer is empty: give the final answer whose entropy is measured.")
    return answer.strip()


def _answer_logits(lm: LanguageModel, rows: list[torch.Tensor], n_answer: int) -> torch.Tensor:
    """Logits predicting the last ``n_answer`` tokens of each row: ``[rows, n_answer, V]``.

    Rows are packed longest first: each pack is a trunk (its longest row) and the tails of the rows
    that fit in ``REASONING_PACK_TOKENS`` tokens."""
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
    logits: list[torch.Tensor | None] = [None] * len(rows)
    while order:
        trunk, members = order.pop(0), []
        size = len(rows[trunk])
        while order and size + len(rows[order[0]]) - _common_prefix(rows[order[0]], rows[trunk]) \
                <= REASONING_PACK_TOKENS:
            size += len(rows[order[0]]) - _common_prefix(rows[order[0]], rows[trunk])
            members.append(order.pop(0))
        for row, value in zip([trunk, *members], _tree_logits(lm, rows[trunk], [rows[m] for m in members], n_answer)):
            logits[row] = value
    return torch.stack(logits)


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n


def _tree_logits(lm: LanguageModel, trunk: torch.Tensor, others: list[torch.Tensor], n_answer: int):
    """One forward pass over ``trunk`` followed by each other row's tokens after its common prefix with
    the trunk. A tail token attends to the trunk's first ``shared`` tokens and to its own tail up to
    itself, at position ``shared + i``: exactly what it sees as a row of its own (causal attention).
    Returns each row's (trunk first) logits at the positions that predict its last ``n_answer`` tokens."""
    shared = [_common_prefix(row, trunk) for row in others]
    tails = [row[j:] for row, j in zip(others, shared)]
    size = len(trunk) + sum(len(t) for t in tails)
    allowed = torch.zeros(size, size, dtype=torch.bool)
    allowed[:len(trunk), :len(trunk)] = torch.ones(len(trunk), len(trunk), dtype=torch.bool).tril()
    positions, wanted, offset = [torch.arange(len(trunk))], [], len(trunk)
    wanted.append(torch.arange(len(trunk) - n_answer - 1, len(trunk) - 1))
    for row, j, tail in zip(others, shared, tails):
        m = len(tail)
        allowed[offset:offset + m, :j] = True
        allowed[offset:offset + m, offset:offset + m] = torch.ones(m, m, dtype=torch.bool).tril()
        positions.append(j + torch.arange(m))
        at = torch.arange(len(row) - n_answer - 1, len(row) - 1)      # positions in the row's own frame
        wanted.append(torch.where(at < j, at, offset + at - j))
        offset += m
    dtype = lm.model.dtype
    mask = torch.zeros(size, size, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    ids = torch.cat([trunk, *tails])
    keep = torch.cat(wanted)
    with lm.lock, torch.inference_mode():
        out = lm.model(input_ids=ids[None].to(lm.device), attention_mask=mask[None, None].to(lm.device),
                       position_ids=torch.cat(positions)[None].to(lm.device), logits_to_keep=keep.to(lm.device))
    return out.logits[0].float().split(n_answer)


# ================================================================================== entropy x varentropy
def entropy_regions(trace: TokenTrace, entropy_threshold_bits: float = QUADRANT_ENTROPY_BITS,
                    varentropy_threshold_bits2: float = QUADRANT_VARENTROPY_BITS2) -> pd.DataFrame:
    """Every position's entropy (bits) and varentropy (bits^2) at the trace's temperature, its quadrant
    (:data:`explorer.kernels.divergence.QUADRANTS`) and entropix's sampler state at entropix's defaults."""
    entropy_bits, varentropy_bits2 = to_bits(trace.entropy), trace.varentropy / LN2 ** 2
    return pd.DataFrame({
        "position": range(len(trace)), "token": trace.tokens,
        "entropy_bits": entropy_bits.cpu().numpy(), "varentropy_bits2": varentropy_bits2.cpu().numpy(),
        "quadrant": entropy_quadrants(entropy_bits, varentropy_bits2, entropy_threshold_bits,
                                      varentropy_threshold_bits2).cpu().numpy(),
        "entropix_state": entropix_states(entropy_bits, varentropy_bits2, **ENTROPIX_THRESHOLDS).cpu().numpy(),
    })
