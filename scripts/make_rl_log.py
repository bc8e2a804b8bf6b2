"""Regenerate data/rl_addition_log.csv: a real RL fine-tuning run whose policy entropy collapses.

Task (verifiable answers): the 2,500 prompts (a, b) with a, b in 0..49; an answer is one of the 99
values 0..98 and earns reward 1 when it equals a + b exactly, else 0.

Policy: a small softmax policy over the answers: an MLP from the one-hot tens and units digits of a and
b (40 inputs) through 128 ReLU units to 99 answer logits.

Base model: supervised pretraining on 30% of the prompts against a noisy teacher (a + b shifted by
-2..2 with probabilities .1 .2 .4 .2 .1), 1,500 Adam steps: it knows roughly where each answer lies but
spreads its probability (entropy about 1.9 nats), like a pretrained model before RL.

RL fine-tuning, GRPO-style: each step draws 64 prompts and samples 8 answers per prompt; the advantage
of an answer is (r - group mean) / (group std + 1e-6); the loss is -mean(A log pi(answer)); Adam,
learning rate 0.002, 3,000 steps, no entropy bonus, no KL term.

Logged per step, all measured before that step's update:
    step, entropy (mean over all 2,500 prompts of the policy's exact answer entropy, nats),
    reward (mean reward of the 512 sampled answers), accuracy (greedy answer correct, all 2,500 prompts),
    covariance (Cov(log pi(a), A(a)) over the 512 sampled answers: Cui et al. 2025's covariance term),
    advantage_mean, advantage_std, advantage_abs_mean (over the 512 answers), signal_fraction (share of
    the 64 prompt groups whose rewards differ, the only ones with a non-zero advantage).

Seeded, one torch thread: the same CSV on a second run on the same machine (BLAS may differ elsewhere).
About a minute on one CPU core.

    python scripts/make_rl_log.py [--out data/rl_addition_log.csv]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

MAX_OPERAND = 50
PRETRAIN_FRACTION = 0.3
PRETRAIN_STEPS = 1500
TEACHER_SHIFTS = torch.tensor([-2, -1, 0, 1, 2])
TEACHER_PROBS = torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1])
RL_STEPS = 3000
PROMPTS_PER_STEP = 64
ANSWERS_PER_PROMPT = 8
LEARNING_RATE = 0.002
SEED = 0
OUT = Path(__file__).resolve().parents[1] / "data" / "rl_addition_log.csv"


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot digits of every (a, b) (``2500 x 40``) and the correct answers a + b."""
    a = torch.arange(MAX_OPERAND).repeat_interleave(MAX_OPERAND)
    b = torch.arange(MAX_OPERAND).repeat(MAX_OPERAND)
    digits = [torch.nn.functional.one_hot(v, 10) for v in (a // 10, a % 10, b // 10, b % 10)]
    return torch.cat(digits, 1).float(), a + b


def pretrained_policy(X: torch.Tensor, answers: torch.Tensor, gen: torch.Generator) -> torch.nn.Module:
    """The base model: cross-entropy against the noisy teacher on a seeded 30% of the prompts."""
    policy = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 128), torch.nn.ReLU(),
                                 torch.nn.Linear(128, 2 * MAX_OPERAND - 1))
    seen = torch.randperm(len(X), generator=gen)[:int(PRETRAIN_FRACTION * len(X))]
    optimiser = torch.optim.Adam(policy.parameters(), lr=0.003)
    for _ in range(PRETRAIN_STEPS):
        batch = seen[torch.randint(len(seen), (256,), generator=gen)]
        shift = TEACHER_SHIFTS[torch.multinomial(TEACHER_PROBS, 256, replacement=True, generator=gen)]
        target = (answers[batch] + shift).clamp(0, 2 * MAX_OPERAND - 2)
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(policy(X[batch]), target).backward()
        optimiser.step()
    return policy


def rl_step(policy, optimiser, X, answers, gen) -> dict[str, float]:
    """Measure the policy, then one GRPO-style update; returns the step's log row."""
    with torch.no_grad():
        log_p = torch.log_softmax(policy(X), -1)
        entropy = float(-(log_p.exp() * log_p).sum(-1).mean())
        accuracy = float((log_p.argmax(-1) == answers).double().mean())
    batch = torch.randint(len(X), (PROMPTS_PER_STEP,), generator=gen)
    log_p = torch.log_softmax(policy(X[batch]), -1)
    sampled = torch.multinomial(log_p.exp().detach(), ANSWERS_PER_PROMPT, replacement=True, generator=gen)
    reward = (sampled == answers[batch, None]).float()
    advantage = (reward - reward.mean(1, keepdim=True)) / (reward.std(1, keepdim=True) + 1e-6)
    chosen = log_p.gather(1, sampled)
    lp, adv = chosen.detach().flatten().double(), advantage.flatten().double()
    row = {"entropy": entropy, "reward": float(reward.mean()), "accuracy": accuracy,
           "covariance": float(((lp - lp.mean()) * (adv - adv.mean())).mean()),
           "advantage_mean": float(adv.mean()), "advantage_std": float(adv.std(correction=0)),
           "advantage_abs_mean": float(adv.abs().mean()),
           "signal_fraction": float((reward.std(1) > 0).double().mean())}
    optimiser.zero_grad()
    (-(advantage * chosen).mean()).backward()
    optimiser.step()
    return row


def make_log() -> pd.DataFrame:
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    X, answers = prompts()
    policy = pretrained_policy(X, answers, gen)
    optimiser = torch.optim.Adam(policy.parameters(), lr=LEARNING_RATE)
    rows = [{"step": step, **rl_step(policy, optimiser, X, answers, gen)} for step in range(RL_STEPS)]
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    start = time.perf_counter()
    log = make_log()
    log.to_csv(args.out, index=False, float_format="%.6g")
    first, last = log.iloc[0], log.iloc[-1]
    print(f"{len(log)} steps in {time.perf_counter() - start:.0f} s -> {args.out}: entropy {first.entropy:.3f} -> "
          f"{last.entropy:.3f} nats, reward {first.reward:.3f} -> {last.reward:.3f}, greedy accuracy "
          f"{first.accuracy:.3f} -> {last.accuracy:.3f}")


if __name__ == "__main__":
    main()
