"""Reward-model losses: pure functions of reward tensors.

Every loss takes the scalar rewards the reward model gave to responses (never the model itself)
and returns ``(loss, stats)``:

* ``loss`` is a 0-dim tensor that carries the gradient;
* ``stats`` is a dict of *detached* 0-dim float tensors with fixed names (``"reward/loss"``,
  ``"reward/accuracy"``, ...), ready to be logged. A statistic that is undefined for a batch
  (say, accuracy over non-tie rows in a batch of ties only) is NaN, never missing, so the
  set of keys of a loss never changes.

Per-row ``weight`` (shape ``(N,)``, non-negative, positive sum) makes a loss the weighted mean
``sum(w * l) / sum(w)``. Giving each of the pairs expanded from one K-wise ranking the weight
``1 / n_pairs`` makes one ranking count as one comparison (InstructGPT, Ouyang et al. 2022).

All log-probabilities are computed with ``logsigmoid`` / ``logsumexp`` / ``expm1``; nothing
here takes ``log(sigmoid(x))``. See docs/reward-losses.md for when to use which loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "bradley_terry_loss",
    "centering_loss",
    "davidson_log_probs",
    "davidson_loss",
    "plackett_luce_loss",
    "rao_kupper_log_probs",
    "rao_kupper_loss",
]

Stats = dict[str, torch.Tensor]

_LOG2 = math.log(2.0)
# Below this log(eps), log(sinh(eps)) is taken as log(eps) (see _log_sinh).
_SMALL_LOG_EPS = -12.0


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _check_rows(name: str, x: torch.Tensor, n: int) -> None:
    if x.dim() != 1 or x.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(x.shape)}")


def _check_pair(r_a: torch.Tensor, r_b: torch.Tensor) -> int:
    if r_a.dim() != 1 or r_a.shape != r_b.shape:
        raise ValueError(
            f"rewards must be two 1-D tensors of the same shape (N,), "
            f"got {tuple(r_a.shape)} and {tuple(r_b.shape)}"
        )
    if r_a.shape[0] == 0:
        raise ValueError("empty batch: at least one row is needed")
    return r_a.shape[0]


def _weights(weight: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    """Per-row weights as a float tensor (N,); ones when `weight` is None."""
    if weight is None:
        return torch.ones(n, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(weight, dtype=like.dtype, device=like.device)
    _check_rows("weight", w, n)
    if bool((w < 0).any()) or not bool(w.sum() > 0):
        raise ValueError("weights must be non-negative with a positive sum")
    return w


def _wmean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum(w x) / sum(w); NaN when sum(w) == 0 (used for stats over a subset of rows)."""
    return (w * x).sum() / w.sum()


def _masked_wmean(x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Weighted mean of `x` over rows where `mask`; NaN when no such row has weight."""
    wm = torch.where(mask, w, torch.zeros_like(w))
    xm = torch.where(mask, x, torch.zeros_like(x))  # keeps NaN/inf of masked-out rows out
    return (wm * xm).sum() / wm.sum()


def _as_bool(tie: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(tie, device=device).to(torch.bool)
    _check_rows("tie", t, n)
    return t


def _log_sinh(log_eps: torch.Tensor) -> torch.Tensor:
    """log(sinh(eps)) for eps = exp(log_eps) > 0, finite for any finite `log_eps`.

    log sinh(eps) = eps + log(1 - exp(-2 eps)) - log 2, with 1 - exp(-2 eps) taken as
    -expm1(-2 eps) (exact for small eps). Once eps is tiny (log_eps < -12, eps < 6.2e-6),
    log sinh(eps) = log_eps + eps^2/6 + ... is taken as log_eps itself, so a learnable log_eps
    drifting to -200 (where exp(log_eps) underflows to 0) keeps finite values and gradients.
    """
    small = log_eps < _SMALL_LOG_EPS
    # branch for ordinary eps; the clamp keeps the unused branch finite (no inf * 0 = NaN grads)
    eps_big = torch.exp(log_eps.clamp(min=_SMALL_LOG_EPS))
    big = eps_big + torch.log(-torch.expm1(-2.0 * eps_big)) - _LOG2
    # branch for tiny eps: log(sinh eps) = log(eps) + eps^2/6 + ...  (eps < 6.2e-6 here)
    tiny = log_eps.clamp(max=_SMALL_LOG_EPS)
    return torch.where(small, tiny, big)


def _tie_model_loss(r_a, r_b, tie, log_param, weight, log_probs, param_name: str):
    """The negative log-likelihood and stats shared by `rao_kupper_loss` and `davidson_loss`:
    `log_probs(r_a, r_b, log_param)` gives (log P(a > b), log P(b > a), log P(tie))."""
    n = _check_pair(r_a, r_b)
    w = _weights(weight, n, r_a)  # (N,)
    t = _as_bool(tie, n, r_a.device)  # (N,)
    log_p_a, _, log_p_tie = log_probs(r_a, r_b, log_param)  # (N,) each
    nll = -torch.where(t, log_p_tie, log_p_a)  # (N,)
    loss = _wmean(nll, w)  # ()
    with torch.no_grad():
        diff = (r_a - r_b).detach()  # (N,)
        p_tie = log_p_tie.detach().exp()  # (N,)
        stats = {
            "reward/loss": loss.detach(),
            "reward/accuracy": _masked_wmean((diff > 0).to(diff.dtype), w, ~t),
            "reward/margin": _masked_wmean(diff, w, ~t),
            "reward/tie_prob": _wmean(p_tie, w),
            "reward/tie_prob_on_ties": _masked_wmean(p_tie, w, t),
            param_name: torch.as_tensor(log_param, dtype=r_a.dtype, device=r_a.device)
            .detach()
            .exp(),
        }
    return loss, stats


# --------------------------------------------------------------------------------------------
# Bradley-Terry
# --------------------------------------------------------------------------------------------


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Pairwise Bradley-Terry loss, optionally with a margin and per-pair weights.

    Per pair:  l = -log sigma(r_c - r_r - m) = softplus(-(r_c - r_r - m)),
    loss = sum_i w_i l_i / sum_i w_i  (w = 1 when `weight` is None: the plain mean).

    Sources: Bradley & Terry (1952), "Rank analysis of incomplete block designs"; the margin
    m(r) is Llama 2's (Touvron et al. 2023, eq. 2): a larger m for a stronger stated preference
    asks the model to separate that pair by more. With weights 1/C(K,2) for the C(K,2) pairs of
    one K-wise ranking (all in the same batch) this is InstructGPT's loss (Ouyang et al. 2022,
    eq. 1): one ranking counts as one comparison, however large K is.

    Args:
        r_chosen: (N,) rewards of the preferred responses.
        r_rejected: (N,) rewards of the dispreferred responses.
        margin: None, a float, or (N,) margins m >= 0 (in reward units).
        weight: None or (N,) non-negative per-pair weights with a positive sum.

    Returns:
        (loss, stats) with stats "reward/loss", "reward/accuracy" (weighted fraction of pairs
        with r_c > r_r, strictly) and "reward/margin" (weighted mean of r_c - r_r; this is the
        *achieved* reward gap, not the target margin m).
    """
    n = _check_pair(r_chosen, r_rejected)
    w = _weights(weight, n, r_chosen)  # (N,)
    diff = r_chosen - r_rejected  # (N,)
    logits = diff  # (N,)
    if margin is not None:
        m = torch.as_tensor(margin, dtype=diff.dtype, device=diff.device)
        if m.dim() > 0:
            _check_rows("margin", m, n)
        logits = diff - m  # (N,)
    nll = -F.logsigmoid(logits)  # (N,)
    loss = _wmean(nll, w)  # ()
    with torch.no_grad():
        stats = {
            "reward/loss": loss.detach(),
            "reward/accuracy": _wmean((diff > 0).to(diff.dtype), w),
            "reward/margin": _wmean(diff.detach(), w),
        }
    return loss, stats


# --------------------------------------------------------------------------------------------
# Rao-Kupper
# --------------------------------------------------------------------------------------------


def rao_kupper_log_probs(
    r_a: torch.Tensor, r_b: torch.Tensor, log_eps: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rao-Kupper (1967) log-probabilities (log P(a > b), log P(b > a), log P(tie)), each (N,).

    With x = r_a - r_b and eps = exp(log_eps):
        P(a > b) = sigma(x - eps),   P(b > a) = sigma(-x - eps),
        P(tie)   = 1 - sigma(x - eps) - sigma(-x - eps) = sigma(x + eps) - sigma(x - eps)
                 = sinh(eps) / (cosh(x) + cosh(eps)).
    The last form gives the stable
        log P(tie) = log sinh(eps) + log 2 - logsumexp(x, -x, eps, -eps),
    which is symmetric in x, never subtracts two nearly equal probabilities, and stays
    finite (about -|x| + log(2 sinh eps)) for large |x|.
    """
    log_eps = torch.as_tensor(log_eps, dtype=r_a.dtype, device=r_a.device)
    eps = torch.exp(log_eps)  # ()
    x = r_a - r_b  # (N,)
    log_p_a = F.logsigmoid(x - eps)  # (N,)
    log_p_b = F.logsigmoid(-x - eps)  # (N,)
    e = eps.expand_as(x)  # (N,)
    lse = torch.logsumexp(torch.stack([x, -x, e, -e], dim=-1), dim=-1)  # (N,)
    log_p_tie = _log_sinh(log_eps) + _LOG2 - lse  # (N,)
    return log_p_a, log_p_b, log_p_tie


def rao_kupper_loss(
    r_a: torch.Tensor,
    r_b: torch.Tensor,
    tie: torch.Tensor,
    log_eps: torch.Tensor | float,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Negative log-likelihood of pairwise outcomes with ties under Rao & Kupper (1967).

    Source: P. V. Rao & L. L. Kupper (1967), "Ties in paired-comparison experiments: a
    generalization of the Bradley-Terry model", JASA 62:194-204. With theta = exp(eps) their
    P(i > j) = pi_i / (pi_i + theta pi_j) is sigma(r_i - r_j - eps) for r = log pi: the
    Bradley-Terry model with a dead zone of half-width eps in which a tie is likely.

        P(a > b) = sigma(x - eps), P(tie) = 1 - sigma(x - eps) - sigma(-x - eps), x = r_a - r_b,
        loss = -sum_i w_i log P(observed_i) / sum_i w_i.

    eps = exp(log_eps) > 0; pass a learnable scalar parameter as `log_eps` to fit it. eps -> 0
    gives Bradley-Terry for the wins (and probability 0 for a tie).

    Args:
        r_a: (N,) rewards; for a non-tie row, the winner's.
        r_b: (N,) rewards; for a non-tie row, the loser's.
        tie: (N,) bool, True where the row was judged a tie (the order then does not matter).
        log_eps: 0-dim tensor (or float), log of the tie threshold eps.
        weight: None or (N,) non-negative row weights with a positive sum.

    Returns:
        (loss, stats) with stats "reward/loss", "reward/accuracy" (weighted, non-tie rows,
        r_a > r_b; NaN if none), "reward/margin" (weighted mean r_a - r_b over non-tie rows;
        NaN if none), "reward/tie_prob" (weighted mean predicted P(tie) over all rows),
        "reward/tie_prob_on_ties" (same over tie rows; NaN if none) and "reward/epsilon".
    """
    return _tie_model_loss(r_a, r_b, tie, log_eps, weight, rao_kupper_log_probs, "reward/epsilon")


# --------------------------------------------------------------------------------------------
# Davidson
# --------------------------------------------------------------------------------------------


def davidson_log_probs(
    r_a: torch.Tensor, r_b: torch.Tensor, log_nu: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Davidson (1970) log-probabilities (log P(a > b), log P(b > a), log P(tie)), each (N,).

        P(a > b) : P(b > a) : P(tie) = e^{r_a} : e^{r_b} : nu e^{(r_a + r_b)/2},
    normalised with logsumexp. Dividing through by e^{(r_a + r_b)/2} gives the equivalent
    logits (x/2, -x/2, log nu) with x = r_a - r_b, which is what is computed (only the reward
    difference matters, as for Bradley-Terry).
    """
    log_nu = torch.as_tensor(log_nu, dtype=r_a.dtype, device=r_a.device)
    half = 0.5 * (r_a - r_b)  # (N,)
    logits = torch.stack([half, -half, log_nu.expand_as(half)], dim=-1)  # (N, 3)
    logp = torch.log_softmax(logits, dim=-1)  # (N, 3)
    return logp[:, 0], logp[:, 1], logp[:, 2]


def davidson_loss(
    r_a: torch.Tensor,
    r_b: torch.Tensor,
    tie: torch.Tensor,
    log_nu: torch.Tensor | float,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Negative log-likelihood of pairwise outcomes with ties under Davidson (1970).

    Source: R. R. Davidson (1970), "On extending the Bradley-Terry model to accommodate ties
    in paired comparison experiments", JASA 65:317-328:

        P(a > b) = e^{r_a} / Z,  P(b > a) = e^{r_b} / Z,  P(tie) = nu e^{(r_a + r_b)/2} / Z,
        Z = e^{r_a} + e^{r_b} + nu e^{(r_a + r_b)/2},
        loss = -sum_i w_i log P(observed_i) / sum_i w_i.

    nu = exp(log_nu) >= 0; pass a learnable scalar parameter as `log_nu` to fit it. nu -> 0
    gives Bradley-Terry: P(a > b) = sigma(r_a - r_b). The tie probability is largest
    (nu / (2 + nu)) when r_a = r_b and falls off like e^{-|x|/2}.

    Args:
        r_a: (N,) rewards; for a non-tie row, the winner's.
        r_b: (N,) rewards; for a non-tie row, the loser's.
        tie: (N,) bool, True where the row was judged a tie.
        log_nu: 0-dim tensor (or float), log of Davidson's tie parameter nu.
        weight: None or (N,) non-negative row weights with a positive sum.

    Returns:
        (loss, stats) with stats "reward/loss", "reward/accuracy", "reward/margin",
        "reward/tie_prob", "reward/tie_prob_on_ties" (as for `rao_kupper_loss`) and "reward/nu".
    """
    return _tie_model_loss(r_a, r_b, tie, log_nu, weight, davidson_log_probs, "reward/nu")


# --------------------------------------------------------------------------------------------
# Plackett-Luce
# --------------------------------------------------------------------------------------------


def plackett_luce_loss(
    rewards: torch.Tensor,
    tiers: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Plackett-Luce negative log-likelihood of K-wise rankings with ties (Breslow).

    Sources: R. L. Plackett (1975), "The analysis of permutations", Applied Statistics
    24:193-202; R. D. Luce (1959), "Individual Choice Behavior". For a strict ranking
    y_1 > ... > y_K:
        P = prod_k e^{r_k} / sum_{m >= k} e^{r_m}.
    Ties use the Breslow (1974) approximation from Cox regression ("Covariance analysis of
    censored survival data", Biometrics 30:89-99): every item i of a tier gets the denominator
    of all real items in its own tier and every worse tier,
        log P = sum_i [ r_i - log sum_{j : tier_j >= tier_i} e^{r_j} ].
    A strict ranking gets exactly the Plackett-Luce likelihood (the last item's term is 0). A
    tier of d tied items contributes the d choices "as if each were picked first from the
    same set", which rewards giving tied items equal rewards; e.g. two items tied with nothing
    below: log sigma(x) + log sigma(-x), maximal at x = 0.

    Normalisation (a choice, see docs): each ranking's loss is -log P / (n - 1), n = its
    number of real items: the mean over the n - 1 choices a strict ranking of n items makes.
    Rankings of different lengths then have losses on the same per-choice scale and one
    ranking counts about as one comparison (as the 1/C(K,2) weights do for
    `bradley_terry_loss`); K = 2 strict is exactly Bradley-Terry. The batch loss is
    sum_n w_n loss_n / sum_n w_n.

    Args:
        rewards: (N, K) float rewards, padded; values at padded positions are ignored (they
            get zero gradient, even if NaN).
        tiers: (N, K) long; tier of each item (0 = best; equal tier = tie; only the order
            of tier values matters, gaps are allowed), -1 for padding. Each row needs at
            least 2 real items.
        weight: None or (N,) non-negative per-ranking weights with a positive sum.

    Returns:
        (loss, stats) with stats "reward/loss", "reward/accuracy" and "reward/margin": the
        fraction of strictly ordered pairs (tier_i < tier_j) with r_i > r_j and the mean
        r_i - r_j over those pairs, both averaged within a ranking first and then weighted
        over the rankings that have a strictly ordered pair (NaN if none).
    """
    if rewards.dim() != 2 or tiers.shape != rewards.shape:
        raise ValueError(
            f"rewards and tiers must both have shape (N, K), got {tuple(rewards.shape)} "
            f"and {tuple(tiers.shape)}"
        )
    n, k = rewards.shape
    if n == 0:
        raise ValueError("empty batch: at least one ranking is needed")
    if tiers.dtype.is_floating_point or tiers.dtype == torch.bool:
        raise ValueError(f"tiers must be an integer tensor, got {tiers.dtype}")
    tiers = tiers.to(rewards.device)
    if bool((tiers < -1).any()):
        raise ValueError("tiers must be >= 0 for real items and -1 for padding")
    real = tiers >= 0  # (N, K)
    n_real = real.sum(dim=1)  # (N,)
    if bool((n_real < 2).any()):
        raise ValueError("each ranking needs at least 2 real (non-padding) items")
    w = _weights(weight, n, rewards)  # (N,)

    # padded rewards -> 0 (where() passes no gradient, not even NaN, to the unused side)
    r = torch.where(real, rewards, torch.zeros_like(rewards))  # (N, K)
    # risk[n, i, j]: item j is in the denominator of item i (real, same or worse tier);
    # the diagonal is always in, so padded rows i stay finite (their term is dropped below).
    eye = torch.eye(k, dtype=torch.bool, device=r.device)  # (K, K)
    risk = (
        real[:, :, None] & real[:, None, :] & (tiers[:, None, :] >= tiers[:, :, None])
    ) | eye  # (N, K, K)
    scores = r[:, None, :].expand(n, k, k).masked_fill(~risk, float("-inf"))  # (N, K, K)
    log_denom = torch.logsumexp(scores, dim=-1)  # (N, K)
    terms = torch.where(real, r - log_denom, torch.zeros_like(r))  # (N, K)
    log_p = terms.sum(dim=-1)  # (N,)
    per_ranking = -log_p / (n_real - 1).to(r.dtype)  # (N,)
    loss = _wmean(per_ranking, w)  # ()

    with torch.no_grad():
        rd = r.detach()
        better = (
            real[:, :, None] & real[:, None, :] & (tiers[:, :, None] < tiers[:, None, :])
        )  # (N, K, K): i strictly above j
        gap = rd[:, :, None] - rd[:, None, :]  # (N, K, K): r_i - r_j
        bf = better.to(rd.dtype)
        n_pairs = bf.sum(dim=(1, 2))  # (N,)
        has_pairs = n_pairs > 0  # (N,)
        safe = n_pairs.clamp(min=1)
        acc = ((gap > 0).to(rd.dtype) * bf).sum(dim=(1, 2)) / safe  # (N,)
        mar = (torch.where(better, gap, torch.zeros_like(gap))).sum(dim=(1, 2)) / safe  # (N,)
        stats = {
            "reward/loss": loss.detach(),
            "reward/accuracy": _masked_wmean(acc, w, has_pairs),
            "reward/margin": _masked_wmean(mar, w, has_pairs),
        }
    return loss, stats


# --------------------------------------------------------------------------------------------
# reward centering
# --------------------------------------------------------------------------------------------


def centering_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    coef: float,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Auxiliary reward-centering penalty: coef * mean((r_c + r_r)^2).

    Source: Eisenstein et al. (2023), "Helping or Herding? Reward Model Ensembles Mitigate but
    do not Eliminate Reward Hacking", arXiv:2312.09244, eq. 2; the same term as TRL's
    `RewardConfig.center_rewards_coefficient` (TRL recommends coef = 0.01). Pairwise losses
    see only reward differences, so the reward's offset is unidentified; this term pins the
    mean of each pair's rewards near 0 without changing the differences' optimum by much.
    It is meant to be *added* to a pairwise loss.

    With `weight` (N,) the mean is weighted, sum(w (r_c + r_r)^2) / sum(w), to match the
    per-pair weights given to the main loss; None gives TRL's plain mean.

    Returns:
        (loss, stats) with stats "reward/centering_loss" (the penalty, coef included) and
        "reward/mean_reward" (weighted mean of (r_c + r_r) / 2).
    """
    n = _check_pair(r_chosen, r_rejected)
    w = _weights(weight, n, r_chosen)  # (N,)
    s = r_chosen + r_rejected  # (N,)
    loss = coef * _wmean(s.square(), w)  # ()
    with torch.no_grad():
        stats = {
            "reward/centering_loss": loss.detach(),
            "reward/mean_reward": _wmean(0.5 * s.detach(), w),
        }
    return loss, stats
