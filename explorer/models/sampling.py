"""Batched answer sampling: all N samples of several questions in one batched decoding loop.

Each sample keeps its text, token ids (through the stop token when one was emitted), and per token
the log-probability of the emitted token and the entropy of the full distribution softmax(z / T)
(``explorer.kernels.entropy``). Sampling is pure temperature sampling (no top-k / top-p) from a random
generator seeded per batch, owned by the call, so that a resumed run draws the same answers for the
same batch whatever else runs in the process. Prompts are tokenized as the tokenizer does it
(``lm.prompt_ids``), left-padded here (the shared tokenizer is never switched) with each row's own
positions; every prompt's KV cache is computed once and shared by its N samples. Between steps the
model goes to queued jobs (``lm.lock.yield_turn``); only the current step's logits are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explorer.errors import InputError
from explorer.kernels.entropy import log_probs, token_entropy
from explorer.models.libraries import transformers_names
from explorer.progress import Progress


@dataclass
class Sample:
    prompt_index: int
    sample_index: int
    text: str
    token_ids: list[int]
    token_log_probs: list[float]
    token_entropies: list[float]


def batch_seed(seed: int, *keys: int) -> int:
    """A distinct, reproducible seed for one batch of a run."""
    value = int(seed)
    for key in keys:
        value = (value * 1_000_003 + int(key) + 1) % (2 ** 62)
    return value


def sample_answers(lm, prompts: list[str], temperature: float, n_samples: int, max_new_tokens: int,
                   seed: int = 0, chat: bool = True, progress: Progress | None = None) -> list[Sample]:
    """``n_samples`` answers to each prompt in one batched loop (prompt-major order).

    ``progress`` shows the queue position while waiting for the model; cancelling it raises
    :class:`~explorer.progress.Cancelled` (while waiting or between steps).
    """
    if not prompts:
        raise InputError("No questions to sample.")
    if not temperature > 0:
        raise InputError(f"Temperature must be > 0, got {temperature}.")
    if n_samples < 1 or max_new_tokens < 1:
        raise InputError("The number of samples and of new tokens must be at least 1.")
    rows = [lm.prompt_ids(p, chat) for p in prompts]
    lm._check_length(max(len(r) for r in rows) + int(max_new_tokens))
    batch = lm.padded(rows, side="left")
    stop_ids = sorted(lm._stop_ids())
    stops = torch.tensor(stop_ids, dtype=torch.long, device=lm.device)
    generator = torch.Generator(device=lm.device).manual_seed(int(seed))
    cache = transformers_names().DynamicCache(config=lm.model.config)
    tokens, token_lp, entropies = [], [], []
    with lm.lock.hold(progress), torch.inference_mode():
        logits = lm.model(**batch, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        cache.batch_repeat_interleave(int(n_samples))
        logits = logits.repeat_interleave(int(n_samples), dim=0)
        mask = batch["attention_mask"].repeat_interleave(int(n_samples), dim=0)
        position = batch["position_ids"][:, -1:].repeat_interleave(int(n_samples), dim=0)
        finished = torch.zeros(len(logits), dtype=torch.bool, device=lm.device)
        for step in range(int(max_new_tokens)):
            lp = log_probs(logits, temperature)
            token = torch.multinomial(lp.exp(), 1, generator=generator)
            tokens.append(token[:, 0])
            token_lp.append(lp.gather(-1, token)[:, 0])
            entropies.append(token_entropy(logits, temperature))
            finished |= torch.isin(token[:, 0], stops)
            if bool(finished.all()) or step + 1 == max_new_tokens:
                break
            lm.lock.yield_turn(progress)
            mask = torch.cat([mask, mask.new_ones((len(mask), 1))], dim=1)
            position = position + 1
            logits = lm.model(input_ids=token, attention_mask=mask, position_ids=position, cache=cache,
                              use_cache=True).logits[:, -1].float()
    new_ids, lp_all, ent_all = (torch.stack(x, dim=1).cpu() for x in (tokens, token_lp, entropies))
    return [_sample(i, n_samples, new_ids[i], lp_all[i], ent_all[i], stop_ids, lm.tokenizer)
            for i in range(new_ids.shape[0])]


def _sample(row: int, n_samples: int, ids: torch.Tensor, lp: torch.Tensor, ent: torch.Tensor,
            stop_ids: list[int], tokenizer) -> Sample:
    ids_list = ids.tolist()
    length = next((k + 1 for k, t in enumerate(ids_list) if t in stop_ids), len(ids_list))
    kept = ids_list[:length]
    text = tokenizer.decode([t for t in kept if t not in stop_ids], skip_special_tokens=True).strip()
    return Sample(prompt_index=row // n_samples, sample_index=row % n_samples, text=text, token_ids=kept,
                  token_log_probs=lp[:length].tolist(), token_entropies=ent[:length].tolist())


def sample_many(lm, prompts: list[str], temperature: float, n_samples: int, max_new_tokens: int, seed: int = 0,
                batch_prompts: int = 4, chat: bool = True, progress: Progress | None = None) -> list[Sample]:
    """``sample_answers`` over all prompts, ``batch_prompts`` per generate call, with progress."""
    samples: list[Sample] = []
    for start in range(0, len(prompts), batch_prompts):
        chunk = sample_answers(lm, prompts[start:start + batch_prompts], temperature, n_samples, max_new_tokens,
                               batch_seed(seed, start), chat, progress)
        samples += [Sample(s.prompt_index + start, s.sample_index, s.text, s.token_ids, s.token_log_probs,
                           s.token_entropies) for s in chunk]
        if progress is not None:
            progress.update(min(start + batch_prompts, len(prompts)), len(prompts),
                            f"sampled {len(samples)} answers")
    return samples
