"""RLOO's update (phases 5 and 6 of `ppo/train.py`'s scaffold): REINFORCE with a
leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
Optimization for Learning from Human Feedback in LLMs", arXiv:2402.14740).

The scaffold samples `rloo_k` responses to each prompt. The whole response is one action; its
reward is the sequence's shaped reward, `score - kl_coef * sum_t KL_t` (the KL to the reference
is in the reward, as in the paper and TRL's RLOOTrainer; docs/ppo.md says why), and its
advantage is that reward minus the mean reward of the prompt's other k - 1 responses
(`core.rloo_advantages`). No critic, no value head, no GAE: the policy is the only trained
module. The update takes `ppo_epochs` passes over shuffled mini-batches of the sequence-level
clipped loss (`core.rloo_policy_loss`); with one epoch and one mini-batch it is REINFORCE.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rankloop.lm.device import autocast
from rankloop.settings import ConfigError

from . import core
from .config import PPOConfig
from .train import (
    Reference,
    Rollout,
    StepContext,
    _sequence_logprobs,
    forward_minibatch,
    optimizer_step,
    step_seed,
)


class RLOOUpdate:
    """RLOO: k responses per prompt, the others' mean reward as each one's baseline."""

    name = "rloo"
    uses_critic = False
    frozen_policy_steps = 0

    def __init__(self, config: PPOConfig, tokenizer):
        self.config = config
        self.samples_per_prompt = config.rloo_k

    @staticmethod
    def check(config: PPOConfig) -> None:
        """PPO's critic-only levers mean nothing without a critic: refuse them."""
        for name in ("value_pretrain_steps", "ptx_coef"):
            if getattr(config, name):
                raise ConfigError(
                    f"[ppo] {name} = {getattr(config, name)!r}: PPO only; set it to 0 to "
                    f"train with rloo"
                )

    @staticmethod
    def critic_origin(critic) -> str:
        return "none (leave-one-out baseline)"

    def step(
        self,
        ctx: StepContext,
        step: int,
        batch: Rollout,
        ref: Reference,
        rewards: Tensor,
        scores: Tensor,
    ) -> dict[str, Tensor]:
        """Phases 5 and 6 on one rollout batch of B = prompts x k responses (`scores` (B,)
        are in `rewards` already)."""
        config, device, k = self.config, ctx.device, self.samples_per_prompt
        B = batch.response.shape[0]

        # ---- 5. advantages: the leave-one-out baseline -----------------------------------------
        with torch.no_grad():
            seq_rewards = rewards.sum(-1)  # (B,) score - kl_coef * KL (+ RTO token rewards)
            advantages = core.rloo_advantages(seq_rewards, k)  # (B,) each prompt's sum to 0
            baseline = seq_rewards - advantages  # (B,) the other k - 1 responses' mean
            if config.whiten_advantages and B > 1:
                # a rescale only (their mean is 0 already): the step size does not depend on
                # the reward's scale, so PPO's learning rate carries over
                ones = torch.ones_like(advantages, dtype=torch.bool)
                advantages = core.masked_whiten(advantages, ones, shift_mean=False)  # (B,)

        # ---- 6. update ---------------------------------------------------------------------------
        stats_sum: dict[str, Tensor] = {}
        n_mb = epochs_run = 0
        shuffle = torch.Generator().manual_seed(step_seed(config.seed, step, ctx.rank, "shuffle"))
        n_prompts = B // k
        for _epoch in range(config.ppo_epochs):
            perm = torch.randperm(n_prompts, generator=shuffle)
            epoch_kl = []
            # a mini-batch is mini_batch_size prompts with their k responses each
            for mb_start in range(0, n_prompts, config.mini_batch_size):
                chosen = perm[mb_start : mb_start + config.mini_batch_size]  # (p,)
                mb = (chosen[:, None] * k + torch.arange(k)).reshape(-1).to(device)  # (p * k,)
                with autocast(device, ctx.bf16):
                    logits, _ = forward_minibatch(ctx.model, batch, ref, mb, value=False)
                    new_logprobs, logits = _sequence_logprobs(
                        logits[:, :-1], batch.response[mb], config.temperature
                    )  # (b, T)
                    loss, mb_stats = core.rloo_policy_loss(
                        new_logprobs,
                        ref.logprobs[mb],
                        advantages[mb],
                        batch.mask[mb],
                        config.cliprange,
                    )
                    if config.entropy_coef > 0:
                        ent = core.masked_mean(core.entropy_from_logits(logits), batch.mask[mb])
                        loss = loss - config.entropy_coef * ent
                        mb_stats["policy/entropy"] = ent.detach()
                ctx.accelerator.backward(loss)
                optimizer_step(
                    ctx.accelerator, ctx.raw_actor, None, ctx.optimizer, config, train_policy=True
                )
                for name, v in mb_stats.items():
                    stats_sum[name] = stats_sum.get(name, 0.0) + v.float()
                epoch_kl.append(mb_stats["policy/approxkl"])
                n_mb += 1
            epochs_run += 1
            if config.target_approxkl > 0 and float(torch.stack(epoch_kl).mean()) > (
                config.target_approxkl
            ):
                break

        stats = {name: v / n_mb for name, v in stats_sum.items()}
        with torch.no_grad():
            stats.update(
                {
                    "policy/advantages_mean": advantages.mean(),
                    "policy/advantages_std": advantages.std() if B > 1 else torch.zeros(()),
                    "policy/epochs": torch.tensor(float(epochs_run)),
                    "policy/baseline_mean": baseline.mean(),
                }
            )
        return stats
