"""Did a round help? Win-rates and a Bradley–Terry leaderboard over cross-round comparisons.

Round R's responses are sampled by round R's start policy: the base policy for round 0, the
policy trained in round R-1 otherwise (`rankloop.app.rounds.start_policy`). A *cross-round comparison* puts
generated responses of two or more rounds side by side for one prompt; annotators see it blind
and shuffled like every other comparison. Each label on one gives a `Match` (data/records.py,
from `Store.cross_round_outcomes`) for every pair of its responses written by two different
rounds: outcome 1 when the newer round's response ranks above, 0 below, 1/2 for a tie (a "both
bad" answer is a tie). Everything here is a pure function of those matches.

- `win_rate`: the mean outcome of one round against another (ties count half), with a 95%
  percentile bootstrap interval that resamples *prompts* with all their matches (the matches of
  one prompt share its responses, so they are not independent draws), and n.
- `leaderboard`: a Bradley–Terry model, P(i beats j) = σ(θ_i − θ_j) (Bradley & Terry 1952),
  fitted on every match with ties as half a win each way, the way Chatbot Arena does (Chiang et al.
  2024; FastChat's `rating_systems.compute_bt`), and scaled to Elo points: 400/ln 10 points per
  natural unit, so a 400-point gap is 10:1 odds; the base policy is anchored at 1000. Intervals
  resample prompts as above (Arena resamples single votes; here several matches share a prompt).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit, log_expit

from .records import Match, Round

#: Elo points per natural Bradley–Terry unit: P(i beats j) = 1 / (1 + 10^(-(E_i - E_j) / 400)).
ELO_PER_UNIT = 400 / math.log(10)
#: The rating of the anchor policy (the base, round 0, when it has matches).
ANCHOR_ELO = 1000.0
#: L2 penalty on the strengths (natural units). It keeps ratings finite when a policy won or lost
#: every one of its matches (then no maximum-likelihood estimate exists, Ford 1957); otherwise it
#: shrinks the gaps by about 1% with 4 matches per pair of policies and 0.1% with 40
#: (tests/test_leaderboard.py).
DEFAULT_REG = 0.01
#: Bootstrap resamples for the intervals.
N_BOOT = 1000


def policy_name(round_: int) -> str:
    """How tables name the policy that wrote round R's responses."""
    return "round 0 (base)" if round_ == 0 else f"round {round_}"


def trained_by(rounds: Iterable[Round]) -> dict[int, str]:
    """model -> the optimiser that trained its policy ('ppo', 'rloo'), for the rounds that
    recorded one: the policy that wrote round R's responses was trained in round R - 1."""
    return {r.number + 1: r.optimizer for r in rounds if r.optimizer}


def models_of(ms: Iterable[Match]) -> list[int]:
    """The rounds that appear in the matches, in order."""
    return sorted({m.model_a for m in ms} | {m.model_b for m in ms})


# ---- bootstrap over prompts --------------------------------------------------------------------


def prompt_resamples(n_prompts: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_prompts) counts: how often each prompt is drawn in each bootstrap resample of
    n_prompts draws with replacement (multinomial counts, as Arena reweights its votes)."""
    if n_boot < 1:
        raise ValueError(f"the bootstrap needs at least 1 resample, got {n_boot}")
    draws = np.random.default_rng(seed).integers(0, n_prompts, size=(n_boot, n_prompts))
    flat = draws + n_prompts * np.arange(n_boot)[:, None]  # row b counts in [b·P, (b+1)·P)
    return np.bincount(flat.ravel(), minlength=n_boot * n_prompts).reshape(n_boot, n_prompts)


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap samples (NaN samples ignored)."""
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():  # a model absent from every resample: NaN, said once here
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return float(low), float(high)


# ---- win-rate --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WinRate:
    """How often `model`'s responses beat `opponent`'s (ties count half)."""

    model: int
    opponent: int
    rate: float
    low: float  # the 95% bootstrap interval (prompts resampled)
    high: float
    n: int  # matches
    prompts: int
    wins: int
    ties: int
    losses: int
    source: str = "all"  # the labels it counts: 'all', or one label source


def win_rate(
    ms: Sequence[Match],
    model: int,
    opponent: int,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
    source: str = "all",
) -> WinRate | None:
    """`model`'s win-rate over `opponent` on their matches, or None when they have none.

    rate = (wins + ties / 2) / n. The interval resamples prompts: with s_p the score and n_p the
    matches of prompt p, each resample's rate is Σ c_p s_p / Σ c_p n_p for its draw counts c_p.
    """
    per_prompt: dict[int, list[float]] = defaultdict(list)
    for m in ms:
        if {m.model_a, m.model_b} == {model, opponent}:
            per_prompt[m.prompt_id].append(m.score(model))
    if not per_prompt:
        return None
    scores = [s for ss in per_prompt.values() for s in ss]
    s = np.array([sum(ss) for ss in per_prompt.values()])  # (P,)
    n = np.array([len(ss) for ss in per_prompt.values()], dtype=float)  # (P,)
    counts = prompt_resamples(len(s), n_boot, seed)  # (B, P)
    low, high = percentile_interval((counts @ s) / (counts @ n), level)
    return WinRate(
        model=model,
        opponent=opponent,
        rate=float(s.sum() / n.sum()),
        low=low,
        high=high,
        n=len(scores),
        prompts=len(s),
        wins=scores.count(1.0),
        ties=scores.count(0.5),
        losses=scores.count(0.0),
        source=source,
    )


def round_win_rates(
    ms: Sequence[Match],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
    by_source: bool = True,
) -> list[WinRate]:
    """Each round R+1's win-rate over round R and over round 0 (where they have matches); with
    `by_source`, also per label source when the matches come from more than one."""
    groups = [("all", list(ms))]
    sources = sorted({m.source for m in ms})
    if by_source and len(sources) > 1:
        groups += [(s, [m for m in ms if m.source == s]) for s in sources]
    out = []
    for r in models_of(ms):
        for opponent in dict.fromkeys((r - 1, 0)):  # (r-1, 0) without a repeat when r == 1
            if opponent >= r:
                continue
            for source, group in groups:
                wr = win_rate(
                    group, r, opponent, n_boot=n_boot, seed=seed, level=level, source=source
                )
                if wr is not None:
                    out.append(wr)
    return out


# ---- Bradley–Terry ---------------------------------------------------------------------------


def bradley_terry(
    pairs: np.ndarray,
    scores: np.ndarray,
    counts: np.ndarray,
    n_models: int,
    *,
    reg: float = 0.0,
    max_iter: int = 200,
    tol: float = 1e-10,
) -> np.ndarray:
    """Bradley–Terry strengths θ in natural units (Σθ = 0), by Newton's method.

    Row k: model pairs[k, 0] met model pairs[k, 1] counts[k] times and scored scores[k] of them
    (a win 1, a tie 1/2, so a tie is half a win each way, as in Chatbot Arena). Maximises

        Σ_k s_k · log σ(θ_i − θ_j) + (n_k − s_k) · log σ(θ_j − θ_i) − reg/2 · ||θ||²

    (Bradley & Terry 1952), which is logistic regression on one ±1 feature per model without an
    intercept: tests/test_leaderboard.py checks it against scikit-learn's LogisticRegression with
    C = 1/reg. With reg = 0 the maximum exists only when, for every split of the models in two,
    each side won or tied at least once against the other (Ford 1957); otherwise the strengths of
    the unbeaten side grow without bound until max_iter. Models without matches get θ = 0.

    `scores` and `counts` may be (B, K): B fits at once (the bootstrap), θ then (B, M).
    """
    single = np.ndim(scores) == 1
    s, n = np.atleast_2d(scores).astype(float), np.atleast_2d(counts).astype(float)  # (B, K)
    D = np.zeros((len(pairs), n_models))  # (K, M): +1 for model i, -1 for model j of row k
    D[np.arange(len(pairs)), pairs[:, 0]] = 1
    D[np.arange(len(pairs)), pairs[:, 1]] = -1
    theta = np.zeros((s.shape[0], n_models))  # (B, M)

    def objective(t):  # (B,)
        d = t @ D.T  # (B, K) θ_i − θ_j
        return (s * log_expit(d) + (n - s) * log_expit(-d)).sum(1) - reg / 2 * (t * t).sum(1)

    value = objective(theta)
    for _ in range(max_iter):
        p = expit(theta @ D.T)  # (B, K) P(i beats j)
        grad = (s - n * p) @ D - reg * theta  # (B, M)
        # minus the Hessian: the graph Laplacian weighted by n p (1 - p), plus reg · I
        neg_hess = np.einsum("km,bk,kn->bmn", D, n * p * (1 - p), D) + reg * np.eye(n_models)
        # pseudo-inverse: with reg = 0 the Laplacian is singular along θ + const
        step = (np.linalg.pinv(neg_hess) @ grad[..., None])[..., 0]  # (B, M)
        t = np.ones(len(theta))
        for _ in range(20):  # backtrack where a Newton step overshoots (far from the optimum)
            worse = objective(theta + t[:, None] * step) < value - 1e-12
            if not worse.any():
                break
            t[worse] /= 2
        theta = theta + t[:, None] * step
        value = objective(theta)
        if np.max(np.abs(t[:, None] * step)) < tol:
            break
    theta = theta - theta.mean(1, keepdims=True)
    return theta[0] if single else theta


def connected_to(pairs: np.ndarray, n_models: int, start: int) -> set[int]:
    """The models linked to `start` by a chain of matches (`pairs` rows with counts > 0)."""
    links: dict[int, set[int]] = defaultdict(set)
    for a, b in pairs.tolist():
        links[a].add(b)
        links[b].add(a)
    seen, todo = {start}, [start]
    while todo:
        for other in links[todo.pop()] - seen:
            seen.add(other)
            todo.append(other)
    return seen


@dataclass(frozen=True)
class Rating:
    """One policy's row of the leaderboard."""

    model: int  # the round whose policy wrote the responses
    elo: float
    low: float  # the 95% bootstrap interval (prompts resampled)
    high: float
    matches: int
    score: float  # mean outcome over its matches: its win-rate against everyone it met


@dataclass(frozen=True)
class Leaderboard:
    """Every rated policy, best first."""

    ratings: list[Rating]
    anchor: int  # the round rated ANCHOR_ELO
    matches: int
    prompts: int
    unconnected: list[int] = field(default_factory=list)  # no chain of matches to the anchor


@dataclass(frozen=True)
class MatchTables:
    """The matches as the Bradley–Terry fit and its bootstrap read them: per prompt p and pair of
    policies k (model index pairs[k, 0] against pairs[k, 1], indices into `models`), the
    matches played and the score of the first (wins + ties / 2)."""

    models: list[int]  # rounds, in order
    prompts: list[int]  # prompt ids, in order
    pairs: np.ndarray  # (K, 2)
    scores: np.ndarray  # (P, K)
    counts: np.ndarray  # (P, K)


def match_tables(ms: Sequence[Match]) -> MatchTables:
    models = models_of(ms)
    index = {r: k for k, r in enumerate(models)}
    keys = sorted({(index[m.model_a], index[m.model_b]) for m in ms})
    col = {k: c for c, k in enumerate(keys)}
    prompts = sorted({m.prompt_id for m in ms})
    row = {p: r for r, p in enumerate(prompts)}
    S = np.zeros((len(prompts), len(keys)))  # (P, K)
    N = np.zeros((len(prompts), len(keys)))  # (P, K)
    for m in ms:
        c = col[(index[m.model_a], index[m.model_b])]
        S[row[m.prompt_id], c] += m.outcome
        N[row[m.prompt_id], c] += 1
    return MatchTables(models, prompts, np.array(keys, dtype=int).reshape(-1, 2), S, N)


def leaderboard(
    ms: Sequence[Match],
    *,
    reg: float = DEFAULT_REG,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> Leaderboard:
    """A Bradley–Terry fit on every match, in Elo points, the base (or the oldest round with
    matches) anchored at ANCHOR_ELO, with bootstrap intervals that resample prompts.

    A resample in which a policy has no chain of matches to the anchor leaves it out of that
    resample's interval; a policy with no chain at all is listed in `unconnected`, unrated.
    """
    models = models_of(ms)
    if not models:
        return Leaderboard([], anchor=0, matches=0, prompts=0)
    anchor = models[0]  # round 0 when the base has matches
    index = {r: k for k, r in enumerate(models)}
    tables = match_tables(ms)
    pairs, S, N = tables.pairs, tables.scores, tables.counts

    def elo(theta, n) -> np.ndarray:
        """Ratings of the models linked to the anchor by played matches (NaN for the rest)."""
        linked = sorted(connected_to(pairs[n > 0], len(models), index[anchor]))
        out = np.full(len(models), np.nan)
        out[linked] = ELO_PER_UNIT * (theta[linked] - theta[index[anchor]]) + ANCHOR_ELO
        return out

    total_s, total_n = S.sum(0), N.sum(0)  # (K,)
    point = elo(bradley_terry(pairs, total_s, total_n, len(models), reg=reg), total_n)  # (M,)
    counts = prompt_resamples(len(tables.prompts), n_boot, seed)  # (B, P)
    boot_s, boot_n = counts @ S, counts @ N  # (B, K)
    thetas = bradley_terry(pairs, boot_s, boot_n, len(models), reg=reg)  # (B, M)
    boot = np.array([elo(th, bn) for th, bn in zip(thetas, boot_n)])  # (B, M)
    ratings = []
    for r in models:
        k = index[r]
        if math.isnan(point[k]):
            continue
        mine = [m.score(r) for m in ms if r in (m.model_a, m.model_b)]
        low, high = percentile_interval(boot[:, k], level)
        ratings.append(
            Rating(
                model=r,
                elo=float(point[k]),
                low=low,
                high=high,
                matches=len(mine),
                score=float(np.mean(mine)),
            )
        )
    ratings.sort(key=lambda x: (-x.elo, x.model))
    return Leaderboard(
        ratings,
        anchor=anchor,
        matches=len(ms),
        prompts=len(tables.prompts),
        unconnected=[r for r in models if math.isnan(point[index[r]])],
    )
