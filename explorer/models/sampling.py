"""Batched answer sampling: all N samples of several questions in one ``model.generate`` call.

Each sample keeps its text, token ids (through the stop token when one was emitted), and per token
the log-probability of the emitted token and the entropy of the full distribution softmax(z / T)
(``explorer.kernels.entropy``). Sampling is pure temperature sampling (no top-k / top-p), seeded
per batch so that a resumed run draws the same answers for the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explorer.errors import InputError
from explorer.kernels.entropy import log_probs, token_entropy
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
                   seed: int = 0, chat: bool = True) -> list[Sample]:
    """``n_samples`` answers to each prompt in one generate call (prompt-major order)."""
    if not prompts:
        raise InputError("No questions to sample.")
    if not temperature > 0:
        raise InputError(f"Temperature must be > 0, got {temperature}.")
    if n_samples < 1 or max_new_tokens < 1:
        raise InputError("The number of samples and of new tokens must be at least 1.")
    tokenizer = lm.tokenizer
    texts = [lm.format_prompt(p, chat) for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    batch = {k: v.to(lm.device) for k, v in batch.items()}
    stop_ids = sorted(lm._stop_ids())
    with lm.lock, torch.inference_mode():
        torch.manual_seed(int(seed))
        out = lm.model.generate(**batch, do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0,
                                min_p=None, num_return_sequences=int(n_samples), max_new_tokens=int(max_new_tokens),
                                output_logits=True, return_dict_in_generate=True,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids)
    new_ids = out.sequences[:, batch["input_ids"].shape[1]:]
    logits = torch.stack(out.logits, dim=1).float()               # [B*N, steps, V]
    token_lp = log_probs(logits, temperature).gather(-1, new_ids.unsqueeze(-1)).squeeze(-1)
    entropies = token_entropy(logits, temperature)
    return [_sample(i, n_samples, new_ids[i], token_lp[i], entropies[i], stop_ids, tokenizer)
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
                               batch_seed(seed, start), chat)
        samples += [Sample(s.prompt_index + start, s.sample_index, s.text, s.token_ids, s.token_log_probs,
                           s.token_entropies) for s in chunk]
        if progress is not None:
            progress.update(min(start + batch_prompts, len(prompts)), len(prompts),
                            f"sampled {len(samples)} answers")
    return samples
