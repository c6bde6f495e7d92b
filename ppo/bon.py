"""Best-of-n fine-tuning's update (phases 5 and 6 of `ppo/train.py`'s scaffold): rejection
sampling fine-tuning, or expert iteration (AlpacaFarm, Dubois et al. 2023, arXiv:2305.14387;
RAFT, Dong et al. 2023, arXiv:2304.06767).

The scaffold samples `bon_n` responses to each prompt and scores them. Per prompt the response
with the highest shaped reward is kept, if it beats the mean of the prompt's other responses by
at least `bon_margin` standard deviations of the step's rewards (`core.bon_select`); the update
is `ppo_epochs` passes of a supervised step (the mean token NLL of the kept responses given
their prompts, `core.sft_loss`) on the LoRA policy, in shuffled mini-batches of
`mini_batch_size` kept responses. No critic, no advantages, no ratio: the policy only learns
to say again the best of what it said.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import core
from .train import CriticFreeUpdate, Reference, Rollout, StepContext, minibatch_update


class BestOfNUpdate(CriticFreeUpdate):
    """Best-of-n fine-tuning: n responses per prompt, a supervised step on each prompt's best."""

    name = "bon"
    samples_field = "bon_n"

    @staticmethod
    def critic_origin(critic) -> str:
        return "none (supervised on the best of n)"

    def step(
        self,
        ctx: StepContext,
        step: int,
        batch: Rollout,
        ref: Reference,
        rewards: Tensor,
        scores: Tensor,
    ) -> dict[str, Tensor]:
        """Phases 5 and 6 on one rollout batch of B = prompts x n responses (`scores` (B,) are
        in `rewards` already).

        The selection ranks by the shaped reward `rewards.sum(-1)` = score - kl_coef * KL (+ RTO
        token rewards), not by the score alone: it is what every optimiser of the scaffold
        maximises, so a sample that buys its score by drifting far from the reference (where
        the reward model is least trustworthy) loses to a closer one, and the adaptive KL
        coefficient bounds best-of-n's drift as it bounds PPO's and RLOO's.
        """
        config, n, device = self.config, self.samples_per_prompt, ctx.device
        B = batch.response.shape[0]

        # ---- 5. selection: each prompt's best, when it clears the margin ------------------------
        with torch.no_grad():
            seq_rewards = rewards.sum(-1)  # (B,) score - kl_coef * KL (+ RTO token rewards)
            kept = core.bon_select(seq_rewards, n, config.bon_margin).cpu()  # (K,)
            n_kept = kept.shape[0]
            # every process must run as many mini-batches (DDP syncs in each backward): pad
            # this one's kept rows to the largest count with masked-out copies of row 0
            most = n_kept
            if ctx.accelerator.num_processes > 1:
                counts = ctx.accelerator.gather(torch.tensor([n_kept], device=device))
                most = int(counts.max())
            real = torch.arange(most) < n_kept  # (G,)
            rows = torch.cat([kept, torch.zeros(most - n_kept, dtype=torch.long)])  # (G,)

        # ---- 6. update: supervised steps on the kept responses ---------------------------------
        def loss_fn(mb: Tensor, new_logprobs: Tensor, mask: Tensor):
            loss, stats = core.sft_loss(new_logprobs, mask)
            with torch.no_grad():  # how far the steps moved the policy on these tokens
                diff = new_logprobs.detach() - ref.logprobs[mb]  # (b, T)
                stats["policy/approxkl"] = 0.5 * core.masked_mean(diff**2, mask)
            return loss, stats

        stats, epochs_run = minibatch_update(ctx, step, batch, ref, rows[:, None], loss_fn, real)
        zero = torch.zeros((), device=device)
        for name in ("policy/sft_loss", "policy/approxkl"):  # no mini-batch anywhere: no step
            stats.setdefault(name, zero)
        if config.entropy_coef > 0:
            stats.setdefault("policy/entropy", zero)
        with torch.no_grad():
            stats.update(
                {
                    "policy/kept_fraction": torch.tensor(n_kept / (B // n)),
                    "policy/kept_reward": seq_rewards[kept.to(device)].mean() if n_kept else zero,
                    "policy/rewards_std": seq_rewards.std() if B > 1 else zero,
                    "policy/epochs": torch.tensor(float(epochs_run)),
                }
            )
        return stats
