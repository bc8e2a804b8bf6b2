"""The deeper lens, side by side in one process: logit lens, batched branches, batched reasoning steps.

Run: HF_HUB_OFFLINE=1 python bench/bench_lens.py [--quick] [--device cpu|cuda] [--repeats R]

Cases (default model SmolLM2-135M-Instruct, text = the repository's own README):
- logit lens on 256 tokens (64 with --quick) against one plain forward pass with hidden states (the
  aim is at most 3x its cost) and against a naive lens that builds every layer's full logits at once
  and reduces them with log_softmax; errors against that naive version; peak memory of each (CUDA:
  ``max_memory_allocated``; CPU: the resident set's high-water mark above its level before the call).
- k = 8 branches of 32 tokens (8 with --quick): one batched call against 8 sequential one-branch
  calls (stop tokens disabled on both sides so that every branch has the same length).
- reasoning steps, K = 10: our one tree-packed pass against K + 1 separate forward passes and against
  one left-padded batch of the K + 1 contexts; error = the largest difference of the answer-token
  entropies.
Times are the best of ``--repeats`` interleaved runs; ratio = baseline / ours (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from explorer.kernels.divergence import lens_statistics
from explorer.models import lens_tools

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/<name>.py` finds bench.common
from bench.common import print_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "A shop sells pencils at 3 for 45 cents. How much do 10 pencils cost?"
STEPS = ["One pencil costs 45 / 3 = 15 cents.", "Ten pencils cost 10 times as much.", "10 * 15 = 150 cents.",
         "150 cents is 1.50 dollars.", "Check: 3 pencils cost 45 cents, so 9 cost 135 cents.",
         "One more pencil adds 15 cents: 135 + 15 = 150.", "Both ways give 150 cents.",
         "There is no discount for buying 10.", "So the cost is 150 cents.", "In dollars that is $1.50."]
ANSWER = "$1.50"


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def peak_memory_mb(fn, device: torch.device) -> tuple[float, object]:
    """``(MB, fn())``: the peak memory a call adds: CUDA's allocator peak, or on CPU the resident set's high-water mark
    (Linux VmHWM, reset through /proc/self/clear_refs after returning free heap memory with
    malloc_trim) above the resident set before the call. NaN where Linux does not allow the reset."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2 ** 20, result
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return float("nan"), fn()
    before = _status_kb("VmRSS")
    result = fn()
    return max(0, _status_kb("VmHWM") - before) / 1024, result


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":"))


def readme_trace(lm, tokens: int):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    ids = lm.encode(text)[:tokens + 1]
    trace = lm.score(lm.tokenizer.decode(ids))
    return trace if len(trace) <= tokens else lm.score(lm.tokenizer.decode(ids[:tokens]))


# ------------------------------------------------------------------ logit lens
def plain_forward(lm, trace) -> None:
    ids = torch.cat([trace.context_ids.cpu(), trace.token_ids.cpu()]).to(lm.device)
    with lm.lock, torch.inference_mode():
        lm.model(ids[None], output_hidden_states=True)
    _sync(lm.device)


def naive_lens(lm, trace) -> dict[str, torch.Tensor]:
    """Every layer's full logits at once ([layers, positions, V]), then log_softmax statistics."""
    ids = torch.cat([trace.context_ids.cpu(), trace.token_ids.cpu()]).to(lm.device)
    start, n = len(trace.context_ids) - 1, len(trace)
    with lm.lock, torch.inference_mode():
        out = lm.model(ids[None], output_hidden_states=True)
        norm, head = lens_tools._final_norm(lm.model), lm.model.get_output_embeddings()
        hidden = out.hidden_states
        logits = torch.stack([head(norm(h[0, start:start + n])) for h in hidden[:-1]]
                             + [out.logits[0, start:start + n]]).float()
        log_p = torch.log_softmax(logits, -1)
        p = log_p.exp()
        result = {"entropy": -(p * log_p).sum(-1), "kl_to_final": (p * (log_p - log_p[-1])).sum(-1)}
    _sync(lm.device)
    return result


def float64_lens(lm, trace) -> dict[str, torch.Tensor]:
    """The reference: each layer's logits (as the model computes them) reduced in float64, one layer at a time."""
    ids = torch.cat([trace.context_ids.cpu(), trace.token_ids.cpu()]).to(lm.device)
    start, n = len(trace.context_ids) - 1, len(trace)
    with lm.lock, torch.inference_mode():
        out = lm.model(ids[None], output_hidden_states=True)
        norm, head = lens_tools._final_norm(lm.model), lm.model.get_output_embeddings()
        layers = [head(norm(h[0, start:start + n])) for h in out.hidden_states[:-1]] + [out.logits[0, start:start + n]]
        final = torch.log_softmax(layers[-1].double(), -1)
        entropy, kl = [], []
        for logits in layers:
            log_p = torch.log_softmax(logits.double(), -1)
            entropy.append(-(log_p.exp() * log_p).sum(-1))
            kl.append((log_p.exp() * (log_p - final)).sum(-1))
    return {"entropy": torch.stack(entropy), "kl_to_final": torch.stack(kl)}


def max_error(result, reference) -> float:
    values = result if isinstance(result, dict) else {"entropy": result.entropy, "kl_to_final": result.kl_to_final}
    return max(float((values[key].double() - reference[key]).abs().max()) for key in ("entropy", "kl_to_final"))


def lens_cases(lm, tokens: int, repeats: int) -> list[dict]:
    trace = readme_trace(lm, tokens)

    def ours():
        lens = lens_tools.logit_lens(lm, trace, keep_logits_mb=0)
        _sync(lm.device)
        return lens

    def every_fourth():
        lens_tools.logit_lens(lm, trace, layers=range(0, lm.model.config.num_hidden_layers + 1, 4), keep_logits_mb=0)
        _sync(lm.device)

    plain_forward(lm, trace)  # warm-up
    memory, results = {}, {}
    for name, fn in (("forward", lambda: plain_forward(lm, trace)), ("ours", ours),
                     ("naive", lambda: naive_lens(lm, trace))):  # also the warm-up
        memory[name], results[name] = peak_memory_mb(fn, lm.device)
    reference = float64_lens(lm, trace)
    error, naive_error = max_error(results["ours"], reference), max_error(results["naive"], reference)
    ours_s = forward_s = naive_s = fourth_s = float("inf")
    for _ in range(repeats):  # interleaved so that machine noise hits all of them
        forward_s = min(forward_s, best_time(lambda: plain_forward(lm, trace), 1))
        ours_s = min(ours_s, best_time(ours, 1))
        naive_s = min(naive_s, best_time(lambda: naive_lens(lm, trace), 1))
        fourth_s = min(fourth_s, best_time(every_fourth, 1))
    layers = results["ours"].shape[0]
    case = f"logit lens, {layers} layers x {len(trace)} tokens"
    head_share = head_flop_share(lm)
    return [
        {"bench": "lens", "case": case, "ours_s": ours_s, "baseline": "one forward pass with hidden states",
         "baseline_s": forward_s, "ratio": forward_s / ours_s, "error": error,
         "note": f"lens = {ours_s / forward_s:.1f}x a forward pass (aim <= 3x; the {layers} output-head "
                 f"products alone are {1 + (layers - 1) * head_share:.1f}x its FLOPs); peak memory: ours "
                 f"{memory['ours']:.0f} MB, forward {memory['forward']:.0f} MB; error vs float64 per layer"},
        {"bench": "lens", "case": f"logit lens, every 4th layer x {len(trace)} tokens", "ours_s": fourth_s,
         "baseline": "one forward pass with hidden states", "baseline_s": forward_s, "ratio": forward_s / fourth_s,
         "error": None, "note": f"lens = {fourth_s / forward_s:.1f}x a forward pass"},
        {"bench": "lens", "case": case, "ours_s": ours_s, "baseline": "naive: every layer's full logits at once",
         "baseline_s": naive_s, "ratio": naive_s / ours_s, "error": error,
         "note": f"peak memory: ours {memory['ours']:.0f} MB, naive {memory['naive']:.0f} MB; error vs float64: "
                 f"ours {error:.1e}, naive {naive_error:.1e}"},
    ]


def head_flop_share(lm) -> float:
    """The output head's share of a forward pass's multiply-adds per token (attention scores left out)."""
    head = lm.model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for name, p in lm.model.named_parameters() if p.dim() == 2 and "embed" not in name
               and not name.startswith("lm_head"))
    return head / (head + body)


# ------------------------------------------------------------------ branches
@contextmanager
def no_stop_tokens(lm):
    """Both sides produce exactly max_new_tokens tokens."""
    stop_ids = lm._stop_ids
    lm._stop_ids = lambda: set()
    try:
        yield
    finally:
        lm._stop_ids = stop_ids


def branch_cases(lm, k: int, tokens: int, repeats: int) -> list[dict]:
    trace = readme_trace(lm, 48)
    position = 40

    def batched():
        lm.branch(trace, position, k=k, max_new_tokens=tokens, seed=0, decoding="top_p", top_p=0.95)
        _sync(lm.device)

    def sequential():
        for seed in range(k):
            lm.branch(trace, position, k=1, max_new_tokens=tokens, seed=seed, decoding="top_p", top_p=0.95)
        _sync(lm.device)

    with no_stop_tokens(lm):
        batched()  # warm-up
        ours_s = baseline_s = float("inf")
        for _ in range(repeats):
            ours_s = min(ours_s, best_time(batched, 1))
            baseline_s = min(baseline_s, best_time(sequential, 1))
    return [{"bench": "lens", "case": f"branches, k = {k} x {tokens} tokens", "ours_s": ours_s,
             "baseline": f"{k} sequential one-branch calls", "baseline_s": baseline_s, "ratio": baseline_s / ours_s,
             "error": None, "note": "different random draws by design (one generator per call); top-p 0.95"}]


# ------------------------------------------------------------------ reasoning steps
def reasoning_rows(lm, steps: list[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
    answer_ids = lm.encode(" " + ANSWER)
    contexts = [lm.tokenizer("\n".join([QUESTION, *steps[:k], "Answer:"]))["input_ids"] for k in range(len(steps) + 1)]
    return [torch.tensor(c + answer_ids.tolist()) for c in contexts], answer_ids


def separate_passes(lm, steps: list[str]) -> torch.Tensor:
    """K + 1 plain forward passes, one per context."""
    rows, answer_ids = reasoning_rows(lm, steps)
    entropies = []
    for ids in rows:
        with lm.lock, torch.inference_mode():
            logits = lm.model(ids[None].to(lm.device)).logits[0, -len(answer_ids) - 1:-1].float()
        entropies.append(lens_statistics(logits[None])["entropy"][0])
    _sync(lm.device)
    return torch.stack(entropies)


def padded_batch(lm, steps: list[str]) -> torch.Tensor:
    """All K + 1 contexts in one left-padded batch (position ids from each row's first real token)."""
    rows, answer_ids = reasoning_rows(lm, steps)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), lm.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with lm.lock, torch.inference_mode():
        logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                          position_ids=positions.to(lm.device), logits_to_keep=len(answer_ids) + 1).logits
    entropy = lens_statistics(logits[:, :-1].float()[None])["entropy"][0]
    _sync(lm.device)
    return entropy


def reasoning_cases(lm, repeats: int) -> list[dict]:
    def ours():
        result = lm.reasoning_entropy(QUESTION, STEPS, ANSWER)
        _sync(lm.device)
        return result

    ours(), separate_passes(lm, STEPS)  # warm-up
    ours_s = separate_s = padded_s = float("inf")
    for _ in range(repeats):
        ours_s = min(ours_s, best_time(ours, 1))
        separate_s = min(separate_s, best_time(lambda: separate_passes(lm, STEPS), 1))
        padded_s = min(padded_s, best_time(lambda: padded_batch(lm, STEPS), 1))
    result, separate, padded = ours().token_entropy, separate_passes(lm, STEPS), padded_batch(lm, STEPS)
    case = f"reasoning steps, K = {len(STEPS)}"
    note = "one tree-packed pass (shared prefixes once); error: answer-token entropies (nats)"
    return [{"bench": "lens", "case": case, "ours_s": ours_s, "baseline": f"{len(STEPS) + 1} separate forward passes",
             "baseline_s": separate_s, "ratio": separate_s / ours_s,
             "error": float((result - separate).abs().max()), "note": note},
            {"bench": "lens", "case": case, "ours_s": ours_s, "baseline": "one left-padded batch",
             "baseline_s": padded_s, "ratio": padded_s / ours_s, "error": float((result - padded).abs().max()),
             "note": note}]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(device: str = "cpu", quick: bool = False, repeats: int | None = None) -> list[dict]:
    """All cases side by side; ``[]`` when ``device="cuda"`` and CUDA is absent."""
    if device == "cuda" and not torch.cuda.is_available():
        return []
    from explorer.models.language_model import load_language_model

    lm = load_language_model(device=device)
    repeats = repeats or (1 if quick else 3)
    return (lens_cases(lm, 64 if quick else 256, repeats)
            + branch_cases(lm, 8, 8 if quick else 32, repeats)
            + reasoning_cases(lm, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    print_run(lambda: run(args.device, args.quick, args.repeats), args.device)


if __name__ == "__main__":
    main()
