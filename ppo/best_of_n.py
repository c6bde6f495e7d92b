"""Best-of-n at inference: sample n responses per prompt from a policy and keep the one the
reward scores highest, with no training at all (AlpacaFarm, Dubois et al. 2023, found it within
a few points of PPO). It is the measured reference of the policy stage: what the round's reward
model gets from the start policy for n times the sampling; a trained optimiser that does not
beat it is not worth its time (issue 22).

Sampling is the scaffold's own (`train.rollout`: `temperature`, `max_new_tokens`, KV cache, the
adapter merged), in rollouts of `batch_size` prompts x n, and the score is the one the scaffold
optimises (`reward_fn`'s, less `missing_eos_penalty` for a response cut at max_new_tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rankloop.data.records import Prompt
from rankloop.lm.device import pick_device, use_bf16, weights_dtype
from rankloop.lm.loading import load_tokenizer
from rankloop.lm.sampling import encode_chats

from .actor_critic import load_policy
from .config import PPOConfig
from .reward_fns import missing_eos_penalty
from .train import rollout, step_seed


def best_of_n(
    policy: str, prompts: Sequence[Prompt], reward_fn: Callable, n: int, *args, **kwargs
) -> list[tuple[str, float]]:
    """Per prompt, the best of `n` sampled responses of `policy` (a checkpoint or a LoRA
    adapter folder) and its score: `[(text, score)]` in the order of `prompts`. Ties keep the
    first sampled. The rest are `scored_samples`'s: `config` gives the sampling settings
    (`temperature`, `max_new_tokens`, `missing_eos_penalty`, `batch_size` prompts per rollout,
    `bf16`; default `PPOConfig()`); the same `seed` draws the same samples."""
    out = []
    for samples in scored_samples(policy, prompts, reward_fn, n, *args, **kwargs):
        best = max(range(n), key=lambda k: (samples[k][1], -k))  # the first of the ties
        out.append(samples[best])
    return out


def scored_samples(
    policy: str,
    prompts: Sequence[Prompt],
    reward_fn: Callable,
    n: int,
    config: PPOConfig | None = None,
    seed: int = 0,
    device: str = "auto",
) -> list[list[tuple[str, float]]]:
    """Per prompt, all `n` sampled responses and their scores, in sampling order: what best-of-n
    chooses from, and the like-for-like baseline of its choice (the same sampling, unchosen)."""
    config = config or PPOConfig()
    config.validate()
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    device = pick_device(device)
    bf16 = use_bf16(config.bf16, device)
    tokenizer = load_tokenizer(policy, padding_side="left")
    lm = load_policy(
        policy,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=0.0,
        dtype=weights_dtype(bf16),
        top_layers=config.lora_layers,
    ).to(device)  # a fresh adapter on a plain checkpoint is zero: the checkpoint itself
    query_ids = encode_chats(tokenizer, [p.as_chat() for p in prompts])
    out: list[list[tuple[str, float]]] = []
    for i, start in enumerate(range(0, len(prompts), config.batch_size)):
        part = range(start, min(start + config.batch_size, len(prompts)))
        rows = [j for j in part for _ in range(n)]  # a prompt's n samples side by side
        batch = rollout(
            lm,
            tokenizer,
            [query_ids[j] for j in rows],
            config,
            device,
            bf16,
            step_seed(seed, i, 0, "best-of-n"),
        )
        raw = reward_fn([prompts[j] for j in rows], batch.texts).to(torch.float32).cpu()
        scores = missing_eos_penalty(raw, batch.finished.cpu(), config.missing_eos_penalty)
        for p in range(len(part)):
            out.append([(batch.texts[p * n + k], float(scores[p * n + k])) for k in range(n)])
    return out
