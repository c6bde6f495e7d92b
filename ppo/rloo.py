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

from . import core
from .train import CriticFreeUpdate, Reference, Rollout, StepContext, minibatch_update


class RLOOUpdate(CriticFreeUpdate):
    """RLOO: k responses per prompt, the others' mean reward as each one's baseline."""

    name = "rloo"
    samples_field = "rloo_k"

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
        config, k = self.config, self.samples_per_prompt
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

        # ---- 6. update: a mini-batch is mini_batch_size prompts with their k responses each ----
        def loss_fn(mb: Tensor, new_logprobs: Tensor, mask: Tensor):
            return core.rloo_policy_loss(
                new_logprobs, ref.logprobs[mb], advantages[mb], mask, config.cliprange
            )

        groups = torch.arange(B).view(-1, k)  # (prompts, k) a prompt's rows
        stats, epochs_run = minibatch_update(ctx, step, batch, ref, groups, loss_fn)
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
