"""PPO's update (phases 5 and 6 of `ppo/train.py`'s scaffold): decoupled GAE on the shaped
token rewards, then `ppo_epochs` passes over shuffled mini-batches of the clipped policy and
value losses (CleanRL / TRL names: `lastgaelam` in `core.gae`, `pg_losses2`, `vf_clipfrac`,
`approxkl`), with PPO-ptx, the entropy bonus, VC-PPO value pretraining and the approx-KL early
stop of the epochs.

References: Schulman et al. 2017 (PPO); Ziegler et al. 2019; Ouyang et al. 2022 (PPO-ptx);
Zheng et al. 2023 (PPO-max); Yuan et al. 2025 (VC-PPO).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from rankloop.lm.device import autocast

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


class PPOUpdate:
    """PPO with a critic: one response per prompt, each token an action."""

    name = "ppo"
    uses_critic = True
    samples_per_prompt = 1

    def __init__(self, config: PPOConfig, tokenizer):
        self.config = config
        self.tokenizer = tokenizer
        self.ptx_texts = load_ptx_texts(config.ptx_dataset) if config.ptx_coef > 0 else []

    @staticmethod
    def check(config: PPOConfig) -> None:
        """Every PPOConfig that validates runs PPO."""

    @property
    def frozen_policy_steps(self) -> int:
        """VC-PPO: steps that train only the critic before the policy moves."""
        return self.config.value_pretrain_steps

    @staticmethod
    def critic_origin(critic) -> str:
        return critic.origin if critic is not None else "value head on the policy"

    def step(
        self,
        ctx: StepContext,
        step: int,
        batch: Rollout,
        ref: Reference,
        rewards: Tensor,
        scores: Tensor,
    ) -> dict[str, Tensor]:
        """Phases 5 and 6 on one rollout batch; returns their stats (0-dim tensors). `scores`
        (B,) are in `rewards` already (at the last token)."""
        config, device = self.config, ctx.device
        B = batch.response.shape[0]
        pretraining_critic = step < config.value_pretrain_steps  # VC-PPO: policy frozen

        # ---- 5. advantages -------------------------------------------------------------------
        with torch.no_grad():
            advantages, returns = core.decoupled_gae(
                ref.values, rewards, batch.mask, config.gamma, config.lam_actor, config.lam_critic
            )  # (B, T) each
            if config.whiten_advantages and batch.mask.sum() > 1:
                advantages = core.masked_whiten(advantages, batch.mask)  # (B, T)

        # ---- 6. update -----------------------------------------------------------------------
        stats_sum: dict[str, Tensor] = {}
        n_mb = epochs_run = 0
        shuffle = torch.Generator().manual_seed(step_seed(config.seed, step, ctx.rank, "shuffle"))
        for epoch in range(config.ppo_epochs):
            perm = torch.randperm(B, generator=shuffle)
            epoch_kl = []
            for mb_start in range(0, B, config.mini_batch_size):
                mb = perm[mb_start : mb_start + config.mini_batch_size].to(device)
                ptx = None
                if config.ptx_coef > 0 and not pretraining_critic:
                    ptx = ptx_batch(
                        self.tokenizer, self.ptx_texts, config, step, epoch, mb_start, device
                    )
                with autocast(device, ctx.bf16):
                    loss, mb_stats = minibatch_loss(
                        ctx.model,
                        batch,
                        ref,
                        advantages,
                        returns,
                        mb,
                        config,
                        train_policy=not pretraining_critic,
                        ptx=ptx,
                    )
                ctx.accelerator.backward(loss)
                optimizer_step(
                    ctx.accelerator,
                    ctx.raw_actor,
                    ctx.raw_critic,
                    ctx.optimizer,
                    config,
                    train_policy=not pretraining_critic,
                )
                for k, v in mb_stats.items():
                    stats_sum[k] = stats_sum.get(k, 0.0) + v.float()
                if "policy/approxkl" in mb_stats:
                    epoch_kl.append(mb_stats["policy/approxkl"])
                n_mb += 1
            epochs_run += 1
            if (
                config.target_approxkl > 0
                and epoch_kl
                and float(torch.stack(epoch_kl).mean()) > config.target_approxkl
            ):
                break  # the policy moved far enough from the rollout policy for this batch

        stats = {k: v / n_mb for k, v in stats_sum.items()}
        stats.update(ppo_stats(batch, ref, advantages, returns, epochs_run))
        return stats


def minibatch_loss(
    model,
    batch: Rollout,
    ref: Reference,
    advantages: Tensor,
    returns: Tensor,
    mb: Tensor,
    config: PPOConfig,
    *,
    train_policy: bool,
    ptx: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Phase 6, one mini-batch (rows `mb` of the rollout): the summed loss and its stats.

        loss = policy_loss + entropy_coef * (-entropy) + ptx_coef * lm_loss
               + vf_coef * value_loss

    (`core.policy_loss`, `core.value_loss`, `core.lm_loss`). With `train_policy` False (VC-PPO
    value pretraining) only the value loss. `ptx`: (ids, attention mask) of PPO-ptx texts.
    `model`: the prepared `ActorCritic` (one forward for logits and values).
    """
    mb_mask = batch.mask[mb]  # (b, T)
    loss = torch.zeros((), device=batch.input_ids.device)
    stats: dict[str, Tensor] = {}
    logits, new_values = forward_minibatch(model, batch, ref, mb, policy=train_policy)
    if train_policy:
        new_logprobs, logits = _sequence_logprobs(
            logits[:, :-1], batch.response[mb], config.temperature,
            keep_logits=config.entropy_coef > 0,
        )  # fmt: skip
    if train_policy:
        pg_loss, pg_stats = core.policy_loss(
            new_logprobs, ref.logprobs[mb], advantages[mb], mb_mask, config.cliprange
        )
        loss = loss + pg_loss
        stats.update(pg_stats)
        if config.entropy_coef > 0:
            ent = core.masked_mean(core.entropy_from_logits(logits), mb_mask)
            loss = loss - config.entropy_coef * ent
            stats["policy/entropy"] = ent.detach()
        if ptx is not None:
            ptx_logits, _ = model(*ptx, value=False)
            ptx_loss, ptx_stats = core.lm_loss(
                ptx_logits[:, :-1].float(), ptx[0][:, 1:], ptx[1][:, 1:]
            )
            loss = loss + config.ptx_coef * ptx_loss
            stats.update(ptx_stats)
    new_values = new_values[:, :-1].float()  # (b, T)
    vf_loss, vf_stats = core.value_loss(
        new_values, ref.values[mb], returns[mb], mb_mask, config.cliprange_value or None
    )
    loss = loss + config.vf_coef * vf_loss
    stats.update(vf_stats)
    return loss, stats


def ppo_stats(batch: Rollout, ref: Reference, advantages, returns, epochs_run: int):
    """Phase 7, PPO's part: the critic's fit and the advantages (docs/ppo.md, "Metrics")."""
    with torch.no_grad():
        mask = batch.mask
        return {
            "val/var_explained": var_explained(ref.values, returns, mask),
            "val/mean": core.masked_mean(ref.values, mask),
            "policy/advantages_mean": core.masked_mean(advantages, mask),
            "policy/advantages_std": core.masked_var(advantages, mask).sqrt()
            if mask.sum() > 1
            else torch.zeros(()),
            "policy/epochs": torch.tensor(float(epochs_run)),
        }


def ptx_batch(
    tokenizer, texts: list[str], config: PPOConfig, step: int, epoch: int, mb_start: int, device
) -> tuple[Tensor, Tensor]:
    """PPO-ptx (InstructGPT): a deterministic slice of the text dataset, tokenised."""
    n = config.ptx_batch_size
    start = ((step * config.ppo_epochs + epoch) * 1000 + mb_start) * n
    chunk = [texts[(start + j) % len(texts)] for j in range(n)]
    enc = tokenizer(
        chunk,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=256,
        padding_side="right",
    )
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def var_explained(values, returns, mask) -> torch.Tensor:
    """Explained variance of the critic; 0 where the returns do not vary (all scores equal),
    where the ratio is undefined or dominated by rounding."""
    if core.masked_var(returns, mask, unbiased=False) < 1e-8:
        return torch.zeros(())
    return core.explained_variance(values, returns, mask)


def load_ptx_texts(path: str) -> list[str]:
    """Texts for the PPO-ptx loss: a .txt file (one per line), .jsonl ('text' field), or a
    datasets folder / file with a 'text' column."""
    import datasets

    p = Path(path)
    if p.is_dir():
        ds = datasets.load_from_disk(str(p))
    elif p.suffix in (".jsonl", ".json"):
        ds = datasets.load_dataset("json", data_files=str(p), split="train")
    elif p.suffix == ".parquet":
        ds = datasets.load_dataset("parquet", data_files=str(p), split="train")
    else:
        ds = datasets.load_dataset("text", data_files=str(p), split="train")
    if "text" not in ds.column_names:
        raise ValueError(f"ptx dataset {path}: no 'text' column (found {ds.column_names})")
    texts = [t for t in ds["text"] if t and t.strip()]
    if not texts:
        raise ValueError(f"ptx dataset {path} holds no text")
    return texts
