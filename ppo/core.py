"""PPO math for RLHF as pure functions of tensors.

Everything here is a pure function of its tensor arguments (plus two tiny
KL-coefficient controllers that hold one float each). No module, optimizer or
model state is touched, so each function can be tested against a hand-computed
number and diffed against the reference implementations it follows:

* OpenAI lm-human-preferences (Ziegler et al. 2019) -- reward shaping, whitening.
* CleanRL / TRL -- GAE loop (`lastgaelam`), clipped losses (`pg_losses`,
  `pg_losses2`, `vf_losses1`, `vf_losses2`), stats names.
* Ahmadian et al. 2024 (RLOO) / TRL's RLOOTrainer -- the leave-one-out
  baseline and the sequence-level clipped loss (`rloo_advantages`,
  `rloo_policy_loss`).
* Dubois et al. 2023 (AlpacaFarm) / Dong et al. 2023 (RAFT) -- best-of-n
  selection with a margin rule and the supervised loss on the kept samples
  (`bon_select`, `sft_loss`).
* Xiong et al. 2024 (online iterative DPO) / Rafailov et al. 2023 (DPO) --
  the best-versus-worst pairs of each prompt's samples (`best_worst_pairs`)
  and the DPO loss (`dpo_loss`).

Conventions
-----------
* ``B`` batch (sequences), ``T`` response length, ``V`` vocabulary.
* ``mask`` is a bool or float tensor ``(B, T)``: 1 for real response tokens,
  0 for padding. Padding is on the right, so a sequence's real tokens are
  ``0 .. len-1``. (``gae`` and ``compute_rewards`` also give the right answer
  for left padding: ``gae`` lets nothing flow across a 0 in the mask.)
* Padded positions may hold anything (garbage, ``inf``, ``nan``): every function
  selects with ``torch.where`` instead of multiplying by the mask, so padding can
  change neither the values nor the gradients of the results.
* Losses return ``(loss, stats)``; ``stats`` maps fixed names to detached
  0-dim tensors (no ``.item()`` here: syncing is the caller's choice).
* Nothing is detached implicitly except the stats. Rollout quantities
  (``gae``, ``compute_rewards``, ``masked_whiten`` of advantages) are meant to be
  computed under ``torch.no_grad()`` by the caller, as in every reference.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "KL_ESTIMATORS",
    "EarlyStopping",
    "FixedKLController",
    "KLConstraintController",
    "best_worst_pairs",
    "bon_select",
    "compute_rewards",
    "decoupled_gae",
    "dpo_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "kl_penalty",
    "lm_loss",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "normalize_scores",
    "policy_loss",
    "rloo_advantages",
    "rloo_policy_loss",
    "rto_token_rewards",
    "sampled_logprobs",
    "sft_loss",
    "value_loss",
]

KL_ESTIMATORS = ("k1", "k2", "k3")


# --------------------------------------------------------------------------- #
# masking helpers
# --------------------------------------------------------------------------- #
def _where_mask(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` at real tokens, 0 at padding.

    ``torch.where`` rather than ``x * mask``: ``nan * 0 = nan`` and the backward
    of a product leaks ``inf`` from padded positions, ``where`` does neither.
    """
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Weighted mean of ``x`` over the positions where ``mask`` is nonzero.

        mean = sum_i m_i x_i / sum_i m_i

    ``dim=None`` reduces everything to a 0-dim tensor; otherwise reduces ``dim``.
    An all-zero mask (over the reduced positions) gives 0, not ``nan``: an empty
    batch then contributes no gradient instead of poisoning the weights.
    Source: lm-human-preferences ``utils.py``; TRL ``core.masked_mean``.
    """
    m = mask.to(x.dtype)  # bool -> float; float masks act as weights
    num = _where_mask(x * m, mask).sum() if dim is None else _where_mask(x * m, mask).sum(dim)
    den = m.sum() if dim is None else m.sum(dim)
    # den == 0 only where num == 0 too; 0 / 1 = 0
    return num / torch.where(den == 0, torch.ones_like(den), den)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the masked positions (0-dim).

        var = masked_mean((x - masked_mean(x))^2) * n / (n - 1)   (unbiased)

    with ``n = sum(mask)`` (Bessel's correction). Raises ``ValueError`` when the
    mask selects nothing (or a single element with ``unbiased=True``): the
    variance is undefined and whitening with it would emit ``nan``/``inf``.
    Source: TRL ``core.masked_var``.
    """
    mean = masked_mean(x, mask)
    centered = x - mean  # (B, T)
    var = masked_mean(centered**2, mask)
    n = mask.to(x.dtype).sum()
    if n == 0:  # one host sync; this runs once per rollout batch, not per token
        raise ValueError("masked_var: the mask selects no element")
    if unbiased:
        if n <= 1:
            raise ValueError("masked_var: unbiased variance needs at least 2 masked elements")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Whiten ``x`` with the statistics of its masked positions.

        x' = (x - mean) / sqrt(var + 1e-8)          (shift_mean=True)
        x' = (x - mean) / sqrt(var + 1e-8) + mean   (shift_mean=False)

    mean, var = ``masked_mean``, unbiased ``masked_var``. Used on advantages
    (``shift_mean=True``) -- lm-human-preferences ``whiten`` / TRL
    ``masked_whiten``. ``shift_mean=False`` keeps the mean and only rescales,
    which lm-human-preferences uses for rewards. Padded positions of the result
    are 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)  # (B, T)
    if not shift_mean:
        whitened = whitened + mean
    return _where_mask(whitened, mask)


# --------------------------------------------------------------------------- #
# log-probabilities and entropy
# --------------------------------------------------------------------------- #
def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability of each label under ``softmax(logits)``.

        logp_t = logits_t[y_t] - logsumexp_v(logits_t[v])

    ``logits`` (B, T, V) and ``labels`` (B, T) must be already aligned: the
    logits at position t score the token ``labels[:, t]`` (the caller does the
    next-token shift). ``labels`` must hold valid ids everywhere, padding
    included (use the pad id, not -100).

    Memory: a full ``log_softmax`` materialises another (B, T, V) tensor (for
    V=150k that is GBs). For fp32/fp64 we gather the label logits and subtract
    a row-by-row ``logsumexp`` (peak extra memory (T, V) instead of (B, T, V)).
    ``logsumexp`` is not accurate enough in bf16/fp16, so there we run
    ``log_softmax`` one row at a time instead. Same idea as TRL's
    ``selective_log_softmax``.
    """
    if logits.dtype in (torch.float32, torch.float64):
        selected = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])  # (B, T)
        return selected - lse  # (B, T)
    out = []
    for row_logits, row_labels in zip(logits, labels):  # (T, V), (T,)
        row_logp = F.log_softmax(row_logits, dim=-1)  # (T, V)
        out.append(row_logp.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1))  # (T,)
    return torch.stack(out)  # (B, T)


class _SampledLogprobs(torch.autograd.Function):
    """`logprobs_from_logits(logits.float() / temperature, labels)`, the same numbers forward
    and backward, one batch row at a time in both: autograd's graph of that expression keeps
    the fp32 copy of the logits and builds two fp32 (B, T, V) gradients; this keeps only the
    logits as they came (bf16 under autocast) and one row's fp32 work at a time."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
        out = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)  # (B, T)
        for b in range(logits.shape[0]):
            x = logits[b].float()  # (T, V)
            if temperature != 1.0:
                x = x / temperature
            selected = torch.gather(x, -1, labels[b].unsqueeze(-1)).squeeze(-1)  # (T,)
            out[b] = selected - torch.logsumexp(x, dim=-1)
        ctx.save_for_backward(logits, labels)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, labels = ctx.saved_tensors
        t = ctx.temperature
        grad_logits = torch.empty_like(logits)  # (B, T, V) in the logits' dtype
        for b in range(logits.shape[0]):
            x = logits[b].float()  # (T, V)
            if t != 1.0:
                x = x / t
            g = grad[b].float().unsqueeze(-1)  # (T, 1)
            # d/dx (x[y] - logsumexp(x)) = onehot(y) - softmax(x), in autograd's own order
            gx = (-g) * (x - torch.logsumexp(x, dim=-1, keepdim=True)).exp()  # (T, V)
            gx.scatter_add_(-1, labels[b].unsqueeze(-1), g)
            if t != 1.0:
                gx = gx / t
            grad_logits[b] = gx
        return grad_logits, None, None


def sampled_logprobs(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probabilities of the sampled tokens `labels` (B, T) under `logits` (B, T, V) /
    `temperature`, in fp32: what the optimisers train on. The values and gradients of
    `logprobs_from_logits(logits.float() / temperature, labels)`, with the update's memory for
    the vocabulary cut from about five fp32 (B, T, V) tensors to the logits and their gradient
    (docs/benchmarks.md, RLOO against TRL)."""
    return _SampledLogprobs.apply(logits, labels, float(temperature))


def logprobs_and_entropy(
    logits: Tensor, labels: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """`sampled_logprobs(logits, labels, temperature)` and the entropy of
    softmax(logits / temperature) at every position, (B, T) each in fp32, without gradients:
    one batch row's fp32 logits at a time and one logsumexp for both (the log-probs are the
    same numbers; the entropy is `entropy_from_logits`'s up to rounding,

        H_t = lse_t - sum_v exp(z_t,v - lse_t) * z_t,v

    ). The reference pass's: no (B, T, V) fp32 copy, two passes over the vocabulary fewer."""
    logp = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)  # (B, T)
    entropy = torch.empty_like(logp)
    with torch.no_grad():
        for b in range(logits.shape[0]):
            x = logits[b].float()  # (T, V)
            if temperature != 1.0:
                x = x / temperature
            lse = torch.logsumexp(x, dim=-1)  # (T,)
            logp[b] = torch.gather(x, -1, labels[b].unsqueeze(-1)).squeeze(-1) - lse
            p = (x - lse.unsqueeze(-1)).exp_()  # (T, V)
            # p * z is 0 * -inf = nan for logits masked to -inf (top-k); its limit is 0
            p_z = torch.where(p == 0, torch.zeros_like(x), p.mul_(x))
            entropy[b] = lse - p_z.sum(-1)
    return logp, entropy


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` at every position.

        H_t = logsumexp(z_t) - sum_v softmax(z_t)_v * z_t,v

    (= -sum p log p, rewritten so no ``log(0)`` appears). (B, T, V) -> (B, T),
    computed one batch row at a time for the same memory reason as
    ``logprobs_from_logits``.
    """
    out = []
    for row in logits:  # (T, V)
        p = torch.softmax(row, dim=-1)  # (T, V)
        # p * z is 0 * -inf = nan for logits masked to -inf (top-k); its limit is 0
        p_z = torch.where(p == 0, torch.zeros_like(row), p * row)  # (T, V)
        out.append(torch.logsumexp(row, dim=-1) - p_z.sum(-1))  # (T,)
    return torch.stack(out)  # (B, T)


# --------------------------------------------------------------------------- #
# KL penalty and reward shaping
# --------------------------------------------------------------------------- #
def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimator of KL(pi || pi_ref) from the sampled token.

    With ``log r = ref_logprobs - logprobs`` (r = pi_ref / pi on the token that
    pi sampled), Schulman, "Approximating KL Divergence" (2020):

        k1 = -log r                     unbiased, can be negative, high variance
        k2 = (log r)^2 / 2              biased, >= 0, low variance
        k3 = (r - 1) - log r            unbiased, >= 0, low variance

    Elementwise; shape in == shape out. ``k3`` uses ``expm1`` for precision near
    r = 1. Unknown ``estimator`` raises ``ValueError``.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")
    log_r = ref_logprobs - logprobs  # (B, T)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    return torch.expm1(log_r) - log_r  # k3


def _last_token_onehot(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T) one-hot of each row's last real token; all-zero row if none."""
    m = mask.bool()  # (B, T)
    T = m.shape[-1]
    pos = torch.arange(T, device=m.device).expand_as(m)  # (B, T)
    # index of the last True; rows without any True get -1 and match nothing
    last = torch.where(m, pos, torch.full_like(pos, -1)).max(dim=-1).values  # (B,)
    return (pos == last.unsqueeze(-1)).to(dtype)  # (B, T)


def compute_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    kl_coef: float | Tensor,
    estimator: str = "k1",
    token_rewards: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Shaped per-token rewards for PPO on a language model.

        kl_t        = kl_penalty(logprobs_t, ref_logprobs_t, estimator)
        non_score_t = -kl_coef * kl_t
        reward_t    = non_score_t + token_rewards_t + [t == last real token] * score

    The reward model's sentence-level ``score`` (B,) is paid once, at each
    sequence's last real token; every token pays the KL penalty to the reference
    policy. Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
    Preferences"), Ouyang et al. 2022 (InstructGPT). ``token_rewards`` (B, T)
    adds dense rewards, e.g. ``rto_token_rewards``.

    Returns ``(rewards, non_score_reward, kl)``, each (B, T) and 0 at padding.
    A row with an empty mask receives no score.
    """
    kl = _where_mask(kl_penalty(logprobs, ref_logprobs, estimator), mask)  # (B, T)
    non_score_reward = -kl_coef * kl  # (B, T)
    rewards = non_score_reward
    if token_rewards is not None:
        rewards = rewards + _where_mask(token_rewards, mask)  # (B, T)
    last = _last_token_onehot(mask, rewards.dtype)  # (B, T)
    rewards = rewards + last * scores.to(rewards.dtype).unsqueeze(-1)  # (B, T)
    return rewards, non_score_reward, kl


# --------------------------------------------------------------------------- #
# advantages
# --------------------------------------------------------------------------- #
def gae(
    values: Tensor, rewards: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, arXiv:1506.02438).

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}     (= sum_l (gamma lam)^l delta_{t+l})
        R_t     = A_t + V_t                           (value target)

    computed by the reversed loop over T with ``lastgaelam`` (CleanRL / TRL).
    Each row is one episode that ends after its last real token: V and A beyond
    it count as 0, so the final real token has ``delta = r - V``. Padded
    positions reset ``lastgaelam`` to 0, so no value or advantage crosses a 0 in
    the mask (left padding gives the same numbers as right padding). lam=1 gives
    A_t = (discounted return-to-go) - V_t; lam=0 gives the one-step TD error.

    values, rewards, mask (B, T) -> advantages (B, T), returns (B, T); both 0 at
    padding. Call under ``torch.no_grad()`` (targets must not carry gradient).
    """
    m = mask.bool()  # (B, T)
    values = _where_mask(values, m)  # (B, T) V beyond the episode end is 0
    rewards = _where_mask(rewards, m)  # (B, T)
    T = values.shape[-1]
    zero = torch.zeros_like(values[:, 0])  # (B,)
    lastgaelam = zero  # (B,)
    advantages_reversed = []
    for t in reversed(range(T)):
        nextvalues = values[:, t + 1] if t < T - 1 else zero  # (B,)
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]  # (B,)
        lastgaelam = delta + gamma * lam * lastgaelam  # (B,)
        # padding resets the recursion: the episode ends at the last real token
        lastgaelam = torch.where(m[:, t], lastgaelam, zero)  # (B,)
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, T)
    returns = advantages + values  # (B, T)
    return advantages, returns


def decoupled_gae(
    values: Tensor,
    rewards: Tensor,
    mask: Tensor,
    gamma: float,
    lam_actor: float,
    lam_critic: float,
) -> tuple[Tensor, Tensor]:
    """GAE with separate lambdas for the policy and the value targets.

        advantages = gae(..., lam=lam_actor).advantages
        returns    = gae(..., lam=lam_critic).returns

    VC-PPO (Yuan et al. 2025, "What's Behind PPO's Collapse in Long-CoT?
    Value Optimization Holds the Secret"): ``lam_critic=1.0`` makes the value
    targets Monte-Carlo returns (no bias from a poorly initialised critic over
    long sequences), while ``lam_actor`` around 0.95 keeps advantage variance
    low. Shapes as ``gae``.
    """
    advantages, _ = gae(values, rewards, mask, gamma, lam_actor)  # (B, T)
    _, returns = gae(values, rewards, mask, gamma, lam_critic)  # (B, T)
    return advantages, returns


# --------------------------------------------------------------------------- #
# losses
# --------------------------------------------------------------------------- #
def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cliprange: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate objective (Schulman et al. 2017, arXiv:1707.06347).

        ratio      = exp(logprobs - old_logprobs)
        pg_losses  = -A * ratio
        pg_losses2 = -A * clamp(ratio, 1 - c, 1 + c)
        loss       = masked_mean(max(pg_losses, pg_losses2))

    Stats (detached, 0-dim):
      policy/loss      the loss
      policy/clipfrac  masked_mean(pg_losses2 > pg_losses): share of tokens whose
                       gradient is cut by the clip (``pg_clipfrac``)
      policy/approxkl  0.5 * masked_mean((logprobs - old_logprobs)^2), the k2
                       estimate of KL(old || new) (``approxkl``)
      policy/ratio_mean masked mean of ratio
    """
    m = mask.bool()
    # sanitize padding first so garbage there cannot reach exp() or the backward
    logratio = _where_mask(logprobs - old_logprobs, m)  # (B, T)
    advantages = _where_mask(advantages, m)  # (B, T)
    ratio = torch.exp(logratio)  # (B, T)
    pg_losses = -advantages * ratio  # (B, T)
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)  # (B, T)
    pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), m)  # ()
    with torch.no_grad():
        pg_clipfrac = masked_mean((pg_losses2 > pg_losses).to(logratio.dtype), m)  # ()
        approxkl = 0.5 * masked_mean(logratio**2, m)  # ()
        stats = {
            "policy/loss": pg_loss.detach(),
            "policy/clipfrac": pg_clipfrac,
            "policy/approxkl": approxkl,
            "policy/ratio_mean": masked_mean(ratio, m),
        }
    return pg_loss, stats


def rloo_advantages(rewards: Tensor, k: int) -> Tensor:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024, arXiv:2402.14740, eq. 7).

        A_i = R_i - 1/(k-1) * sum_{j != i} R_j  =  k/(k-1) * (R_i - mean_j R_j)

    ``rewards`` (N,) holds the sequence rewards of N / k prompts, the k samples of each prompt
    next to each other (rows ``p*k .. p*k+k-1``). Each sample's baseline is the mean reward of
    the other k - 1 samples of its prompt, so it does not depend on the sample itself and the
    gradient stays unbiased; the advantages of one prompt sum to 0. Returns (N,).
    """
    if k < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got k = {k}")
    if rewards.dim() != 1 or rewards.shape[0] % k:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} are not groups of k = {k}")
    r = rewards.view(-1, k)  # (P, k)
    baseline = (r.sum(-1, keepdim=True) - r) / (k - 1)  # (P, k) mean of the others
    return (r - baseline).reshape(-1)  # (N,)


def rloo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cliprange: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """RLOO's loss: the whole response is one action (Ahmadian et al. 2024, sec. 3.2),
    optimised with the clipped surrogate of TRL's RLOOTrainer (REINFORCE when the update is
    on-policy: one pass, one mini-batch, ratio = 1).

        log_ratio  = sum_t mask * (logprobs - old_logprobs)        (per sequence)
        ratio      = exp(log_ratio)
        pg_losses  = -A * ratio
        pg_losses2 = -A * clamp(ratio, 1 - c, 1 + c)
        loss       = mean_i max(pg_losses, pg_losses2)

    ``logprobs``, ``old_logprobs``, ``mask`` (B, T); ``advantages`` (B,) one per sequence.
    With ratio = 1 the gradient is -mean_i A_i * grad sum_t log pi(y_it). Stats as
    ``policy_loss`` but per sequence: policy/loss, policy/clipfrac, policy/approxkl
    (0.5 * mean log_ratio^2), policy/ratio_mean.
    """
    m = mask.bool()
    logratio = _where_mask(logprobs - old_logprobs, m).sum(-1)  # (B,)
    ratio = torch.exp(logratio)  # (B,)
    pg_losses = -advantages * ratio  # (B,)
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)  # (B,)
    pg_loss = torch.max(pg_losses, pg_losses2).mean()  # ()
    with torch.no_grad():
        stats = {
            "policy/loss": pg_loss.detach(),
            "policy/clipfrac": (pg_losses2 > pg_losses).to(logratio.dtype).mean(),
            "policy/approxkl": 0.5 * (logratio**2).mean(),
            "policy/ratio_mean": ratio.mean(),
        }
    return pg_loss, stats


def bon_select(rewards: Tensor, k: int, margin: float) -> Tensor:
    """Best-of-n selection with a margin rule (rejection sampling, AlpacaFarm / RAFT).

        best_p   = max_j R_pj,    gap_p = best_p - 1/(k-1) * sum_{j != argmax} R_pj
        keep p   iff  gap_p > 0  and  gap_p >= margin * std(R)

    ``rewards`` (N,) holds N / k prompts' k samples side by side, as ``rloo_advantages``;
    std is the sample standard deviation of all N rewards (0 when N = 1). A prompt whose
    samples all score alike (gap 0) teaches nothing and is never kept, whatever the margin;
    ties for the best keep the first. Returns the kept samples' row indices (K,), ascending.
    """
    if k < 2:
        raise ValueError(f"best-of-n needs at least 2 samples per prompt, got n = {k}")
    if rewards.dim() != 1 or rewards.shape[0] % k:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} are not groups of n = {k}")
    r = rewards.view(-1, k)  # (P, k)
    best, arg = r.max(-1)  # (P,) each
    gap = best - (r.sum(-1) - best) / (k - 1)  # (P,) best minus the others' mean
    scale = rewards.std() if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
    keep = (gap > 0) & (gap >= margin * scale)  # (P,)
    rows = torch.arange(r.shape[0], device=rewards.device) * k + arg  # (P,)
    return rows[keep]  # (K,)


def sft_loss(logprobs: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Supervised fine-tuning loss on sampled responses: the mean token NLL,

        loss = -sum_{i,t} mask_it * logprobs_it / sum_{i,t} mask_it

    ``logprobs`` (B, T) of the response tokens given their prompts (prompt tokens are not
    in it), ``mask`` (B, T). Each token weighs the same, so a long kept response counts more
    than a short one, as in ordinary SFT. An all-zero mask gives 0. Stats: policy/sft_loss.
    """
    loss = -masked_mean(logprobs, mask)  # ()
    return loss, {"policy/sft_loss": loss.detach()}


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    cliprange_value: float | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss (PPO2 baselines; Ziegler et al. 2019; TRL).

        vpredclipped = old_values + clamp(values - old_values, -c, c)
        vf_losses1   = (values - returns)^2
        vf_losses2   = (vpredclipped - returns)^2
        loss         = 0.5 * masked_mean(max(vf_losses1, vf_losses2))

    ``cliprange_value=None`` disables clipping (loss = 0.5 * masked MSE).

    Stats (detached, 0-dim):
      val/loss      the loss
      val/clipfrac  masked_mean(vf_losses2 > vf_losses1) (``vf_clipfrac``)
      val/vpred     masked mean of the new value predictions
      val/error     masked_mean(vf_losses1), the unclipped squared error
      val/returns   masked mean of the targets
    """
    m = mask.bool()
    values = _where_mask(values, m)  # (B, T)
    old_values = _where_mask(old_values, m)  # (B, T)
    returns = _where_mask(returns, m)  # (B, T)
    if cliprange_value is None:
        vpredclipped = values
    else:
        vpredclipped = old_values + torch.clamp(
            values - old_values, -cliprange_value, cliprange_value
        )  # (B, T)
    vf_losses1 = (values - returns) ** 2  # (B, T)
    vf_losses2 = (vpredclipped - returns) ** 2  # (B, T)
    vf_loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), m)  # ()
    with torch.no_grad():
        vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).to(values.dtype), m)  # ()
        stats = {
            "val/loss": vf_loss.detach(),
            "val/clipfrac": vf_clipfrac,
            "val/vpred": masked_mean(values, m),
            "val/error": masked_mean(vf_losses1, m),
            "val/returns": masked_mean(returns, m),
        }
    return vf_loss, stats


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """Share of the variance of the returns that the critic explains (0-dim).

        ev = 1 - Var[returns - values] / Var[returns]     (masked)

    1 = perfect, 0 = no better than predicting the mean, < 0 = worse.
    ``nan`` when Var[returns] = 0 (undefined), as in CleanRL / SB3.
    """
    m = mask.bool()
    values = _where_mask(values, m)  # (B, T)
    returns = _where_mask(returns, m)  # (B, T)
    var_y = masked_var(returns, m, unbiased=False)  # ()
    var_res = masked_var(returns - values, m, unbiased=False)  # ()
    return torch.where(var_y == 0, torch.full_like(var_y, math.nan), 1 - var_res / var_y)


# --------------------------------------------------------------------------- #
# reward-side helpers
# --------------------------------------------------------------------------- #
def normalize_scores(
    scores: Tensor, mean: float | Tensor, std: float | Tensor, clip: float | None
) -> Tensor:
    """Normalize and clip reward-model scores (PPO-max, Zheng et al. 2023,
    "Secrets of RLHF in Large Language Models Part I: PPO").

        s' = clamp((s - mean) / std, -clip, clip)

    ``mean``/``std`` are fixed or running statistics of past scores supplied by
    the caller; ``clip=None`` skips the clamp. Shape in == shape out.
    """
    if isinstance(std, (int, float)) and std <= 0:
        raise ValueError(f"normalize_scores: std must be > 0, got {std}")
    normalized = (scores - mean) / std  # (B,)
    if clip is not None:
        normalized = torch.clamp(normalized, -clip, clip)
    return normalized


def rto_token_rewards(
    dpo_logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, beta: float
) -> Tensor:
    """Dense token rewards from a DPO model (RTO, Zhong et al. 2024, "DPO Meets
    PPO: Reinforced Token Optimization for RLHF").

        r_t = beta * (log pi_dpo(a_t | s_t) - log pi_ref(a_t | s_t))

    (B, T) -> (B, T), 0 at padding. Pass as ``token_rewards`` to
    ``compute_rewards`` (which adds the KL penalty and the sentence score).
    """
    return _where_mask(beta * (dpo_logprobs - ref_logprobs), mask)  # (B, T)


def best_worst_pairs(
    scores: Tensor, k: int, margin: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Online DPO's pairs (Xiong et al. 2024, arXiv:2312.11456, RLHFlow): of each prompt's k
    scored samples, the best is chosen and the worst rejected,

        chosen_p = argmax_j s_pj,  rejected_p = argmin_j s_pj,  gap_p = max_j s_pj - min_j s_pj
        kept_p   = gap_p >= margin and gap_p > 0

    A prompt whose samples score alike teaches nothing but the reward's noise, so its pair
    is dropped (all-equal scores: never kept, even at margin 0). ``scores`` (N,) holds N / k
    prompts' samples side by side (rows ``p*k .. p*k+k-1``), as ``rloo_advantages``. Ties
    go to the first sample. Returns the flat row indices ``chosen`` (P,) and ``rejected``
    (P,), ``gap`` (P,) and ``kept`` (P,) bool.
    """
    if k < 2:
        raise ValueError(f"a DPO pair needs at least 2 samples per prompt, got k = {k}")
    if scores.dim() != 1 or scores.shape[0] % k:
        raise ValueError(f"scores of shape {tuple(scores.shape)} are not groups of k = {k}")
    s = scores.view(-1, k)  # (P, k)
    first = torch.arange(s.shape[0], device=scores.device) * k  # (P,) each prompt's first row
    gap = s.max(-1).values - s.min(-1).values  # (P,)
    kept = (gap > 0) & (gap >= margin)  # (P,)
    return first + s.argmax(-1), first + s.argmin(-1), gap, kept


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Direct Preference Optimization loss (Rafailov et al. 2023).

        z    = beta * [(pi_c - ref_c) - (pi_r - ref_r)]
        loss = mean( -(1 - eps) * log sigma(z) - eps * log sigma(-z) )

    Inputs are summed sequence log-probs, each (B,). ``eps = label_smoothing``
    is conservative DPO (cDPO, Mitchell 2023): the preference label is assumed
    flipped with probability eps; eps=0 is plain DPO.

    Stats (detached, 0-dim):
      dpo/loss           the loss
      dpo/chosen_reward  mean of beta * (pi_c - ref_c), the implicit reward
      dpo/rejected_reward mean of beta * (pi_r - ref_r)
      dpo/margin         mean of chosen_reward - rejected_reward
      dpo/accuracy       share of pairs with chosen_reward > rejected_reward
    """
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)  # (B,)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)  # (B,)
    z = chosen_rewards - rejected_rewards  # (B,)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    loss = losses.mean()  # ()
    with torch.no_grad():
        stats = {
            "dpo/loss": loss.detach(),
            "dpo/chosen_reward": chosen_rewards.mean(),
            "dpo/rejected_reward": rejected_rewards.mean(),
            "dpo/margin": z.mean(),
            "dpo/accuracy": (chosen_rewards > rejected_rewards).to(z.dtype).mean(),
        }
    return loss, stats


def lm_loss(logits: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Masked next-token NLL for the PPO-ptx pretraining mix (InstructGPT,
    Ouyang et al. 2022: objective += gamma * E_pretrain[log pi(x)]).

        loss = masked_mean(-log softmax(logits_t)[labels_t])

    The caller passes ALREADY SHIFTED tensors: ``logits[:, t]`` predicts
    ``labels[:, t]`` (i.e. ``logits = out.logits[:, :-1]``,
    ``labels = input_ids[:, 1:]``, ``mask = attention_mask[:, 1:]``).
    Labels at masked positions may be anything (-100 included).

    Stats (detached, 0-dim):
      ptx/loss    the loss (nats per token)
      ptx/tokens  number of tokens averaged over
    """
    m = mask.bool()  # (B, T)
    safe_labels = torch.where(m, labels, torch.zeros_like(labels))  # (B, T) -100 -> 0
    nll = -logprobs_from_logits(logits, safe_labels)  # (B, T)
    loss = masked_mean(nll, m)  # ()
    stats = {"ptx/loss": loss.detach(), "ptx/tokens": m.sum().detach()}
    return loss, stats


# --------------------------------------------------------------------------- #
# KL coefficient controllers
# --------------------------------------------------------------------------- #
class FixedKLController:
    """Constant KL coefficient; ``update`` is a no-op. Same interface as
    ``KLConstraintController`` so the training loop need not branch."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float | Tensor, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class KLConstraintController:
    """KL coefficient that holds the KL to the reference near ``target``: the Lagrange
    multiplier of the constraint KL <= target, by dual ascent, floored at the initial value.

        value = max(kl_coef, value + (current_kl - target) * n_steps / horizon)

    RLHF as constrained optimisation, max E[r] s.t. KL <= target (Moskovitz et al. 2023,
    "Confronting Reward Model Overoptimization with Constrained RLHF"; dual ascent on the
    multiplier as in Stooke et al. 2020). The step grows with the violation, so a KL far above
    the target raises the penalty within a few steps. Ziegler et al. (2019)'s multiplicative
    controller (value *= 1 + clip(kl / target - 1, +-0.2) * n / horizon) moves at most 20%
    per horizon: on a reward that pays for drift it let the KL reach 10 nats while its
    coefficient went from 0.1 to 0.34 in 10 steps (docs/ppo.md, "Bounding the drift"). The floor
    keeps at least the fixed penalty ``kl_coef``. ``n_steps``: samples since the last update;
    ``current_kl``: mean KL per sequence (nats).

    The target counts from the start policy: the first update's KL (the first rollout, the
    policy the run starts from) is added to it. PPO of round R starts from round R-1's policy,
    often already ``target`` from the reference; counted from the reference, its coefficient
    would rise at once and hold it where it started (docs/ppo.md, "Bounding the drift").
    """

    def __init__(self, kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target}, {horizon}")
        self.kl_coef = float(kl_coef)
        self.value = float(kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)
        self.started = False

    def update(self, current_kl: float | Tensor, n_steps: int) -> None:
        current_kl = float(current_kl)  # accepts a 0-dim tensor
        if not self.started:  # the first rollout's KL is the start policy's
            self.started = True
            self.target += max(0.0, current_kl)
        step = (current_kl - self.target) * n_steps / self.horizon
        self.value = max(self.kl_coef, self.value + step)

    def state_dict(self) -> dict[str, Any]:
        # Python floats round-trip exactly (also through JSON/torch.save)
        return {
            "value": self.value,
            "kl_coef": self.kl_coef,
            "target": self.target,
            "horizon": self.horizon,
            "started": self.started,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.kl_coef = float(state.get("kl_coef", self.kl_coef))
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])
        self.started = bool(state.get("started", True))  # older states: past their first step


# --------------------------------------------------------------------------- #
# early stopping
# --------------------------------------------------------------------------- #
class EarlyStopping:
    """Stop when a held-out score has fallen for sure; say which evaluated policy to keep.

        best     = the highest score so far (its step, its standard error)
        fell     = score < best - drop * sqrt(se_best**2 + se**2)
        stop     = patience > 0  and  the last `patience` evaluations all fell
        kept     = 'guarded': the last policy, unless its evaluation fell, then the best;
                   'best': the best; 'last': the last

    With a ``kl_budget`` > 0 and each evaluation's KL to the reference given, an evaluation
    whose KL rose more than ``kl_budget`` past the first one's stops the run at once, and the
    policies past the budget are out of the running: the rule above picks among the rest
    (``last_step`` is then the last evaluated step within the budget).

    ``se`` is the standard error of the evaluation's mean score, so ``drop`` counts standard
    errors of the difference of two evaluations and needs no tuning to the reward's scale.
    Why not "stop when it stops rising, keep the best" (the rule before issue 22): the best of
    several noisy evaluations is a lucky one (with 7 evaluations of one policy, the maximum
    sits 1.35 standard errors above the mean), so that rule kept early steps and stopped runs
    that were still gaining (`bench/stopping_rules.py`). A fall of `drop` = 2 standard errors
    of the difference is a decision the evaluation's own noise supports: a run is stopped, or
    sent back to its best, only when its held-out score has fallen for sure.
    """

    def __init__(self, patience: int, drop: float, kl_budget: float = 0.0):
        if patience < 0 or drop < 0 or kl_budget < 0:
            raise ValueError(
                f"patience, drop and kl_budget must be >= 0, got {patience}, {drop}, {kl_budget}"
            )
        self.patience = int(patience)
        self.drop = float(drop)
        self.kl_budget = float(kl_budget)
        self.best: float | None = None
        self.best_se = 0.0
        self.best_step: int | None = None
        self.falls = 0  # evaluations in a row that fell below the best
        self.last_fell = False
        self.kl_start: float | None = None  # the first evaluation's KL to the reference
        self.last_step: int | None = None  # the last evaluated step within the KL budget
        self.over_budget = False

    def update(self, score: float, se: float, step: int, kl: float | None = None) -> bool:
        """Record the evaluation of the policy after ``step`` steps (``kl``: its KL to the
        reference); True if it is the new best."""
        score, se = float(score), float(se)
        if kl is not None:
            if self.kl_start is None:
                self.kl_start = float(kl)
            elif self.kl_budget > 0 and float(kl) - self.kl_start > self.kl_budget:
                self.over_budget = True
                return False
        self.last_step = int(step)
        if self.best is None or score > self.best:
            self.best, self.best_se, self.best_step = score, se, int(step)
            self.falls, self.last_fell = 0, False
            return True
        self.last_fell = score < self.best - self.drop * math.hypot(self.best_se, se)
        self.falls = self.falls + 1 if self.last_fell else 0
        return False

    @property
    def should_stop(self) -> bool:
        return self.over_budget or (self.patience > 0 and self.falls >= self.patience)

    def kept_step(self, last_step: int, keep: str = "guarded") -> int:
        """The step whose policy to save, of a run whose last evaluated step is `last_step`."""
        if self.over_budget:
            last_step = self.last_step
        if self.best_step is None or keep == "last":
            return int(last_step)
        if keep == "best" or self.last_fell:
            return self.best_step
        return int(last_step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_se": self.best_se,
            "best_step": self.best_step,
            "falls": self.falls,
            "last_fell": self.last_fell,
            "kl_start": self.kl_start,
            "last_step": self.last_step,
            "over_budget": self.over_budget,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        if "falls" not in state:
            raise ValueError(
                "this checkpoint was written by an older rankloop (its early stopping counted "
                "evaluations without a rise): start the run again without --resume"
            )
        self.best_se = float(state["best_se"])
        self.falls, self.last_fell = int(state["falls"]), bool(state["last_fell"])
        # checkpoints from before the KL budget lack these: train_policy fills kl_start in
        self.kl_start = state.get("kl_start")
        self.last_step = state.get("last_step", self.best_step)
        self.over_budget = bool(state.get("over_budget", False))
