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
- Degenerate data (every outcome the same, one prompt) give the bootstrap nothing to resample:
  its interval has zero width, and a policy that never lost has no finite Bradley–Terry rating.
  `win_rate` widens its interval to contain the exact Clopper–Pearson interval on the effective
  number of comparisons (`effective_trials`), always, and flags the degenerate cases;
  `leaderboard` flags a rating the data leave unbounded and gives a one-sided exact bound instead
  of the penalty's artefact (`FLAGS`, docs/rounds.md "When the data say nothing").
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
from scipy.optimize import brentq
from scipy.special import expit, log_expit
from scipy.stats import beta

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

#: What each flag on a win-rate (`WinRate.flags`) or a rating (`Rating.flags`) means, as the
#: CLI, the JSON (the codes), the report and the Rounds view show it (docs/rounds.md).
FLAGS = {
    "never_lost": "never lost",  # every match won: the bootstrap interval alone would be [1, 1]
    "never_won": "never won",
    "all_ties": "all ties",
    "one_prompt": "one prompt",  # one prompt says nothing about the others
    "no_spread": "same on every prompt",  # every prompt the same rate: the bootstrap cannot vary
    "unbounded_above": "unbounded: never lost",  # no finite rating: a one-sided bound instead
    "unbounded_below": "unbounded: never won",
    # it lost (or won) only against policies that are unbounded themselves
    "unbounded_group": "unbounded: rated only through unbounded policies",
}


def policy_name(round_: int) -> str:
    """How tables name the policy that wrote round R's responses."""
    return "round 0 (base)" if round_ == 0 else f"round {round_}"


def trained_by(rounds: Iterable[Round]) -> dict[int, str]:
    """model -> the optimiser that trained its policy ('ppo', 'rloo', 'bon'), for the rounds that
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


# ---- exact floors ----------------------------------------------------------------------------


def clopper_pearson(successes: float, trials: float, level: float = 0.95) -> tuple[float, float]:
    """The exact binomial interval of Clopper & Pearson (1934) for `successes` of `trials`:

        low = B⁻¹(α/2; x, n − x + 1),  high = B⁻¹(1 − α/2; x + 1, n − x),  α = 1 − level,

    with B⁻¹ the beta quantile, low = 0 at x = 0 and high = 1 at x = n. For whole x and n it is
    scipy's `binomtest(x, n).proportion_ci(level, method="exact")` (tests/test_leaderboard.py);
    here x and n may be fractional (a tie counts half a success, and `effective_trials` scales
    both), where the same beta quantiles interpolate between the neighbouring whole counts.
    """
    if not 0 <= successes <= trials or trials <= 0:
        raise ValueError(f"need 0 <= successes <= trials, trials > 0; got {successes} of {trials}")
    tail = (1 - level) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = (
        1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1, trials - successes))
    )
    return low, high


def effective_trials(s: np.ndarray, n: np.ndarray) -> float:
    """How many independent comparisons the matches of P prompts are worth: prompt p scored s_p
    of its n_p matches (ties half), N = Σ n_p, rate r = Σ s_p / N.

        n_eff = r (1 − r) / v,  v = P / (P − 1) · Σ_p (s_p − r n_p)² / N²

    v is the variance of r when prompts are the independent draws (the linearised variance of a
    ratio estimator over clusters, Cochran 1977 §6; what the prompt bootstrap estimates), and
    n_eff the number of independent 0/1 comparisons with that variance: N / (design effect,
    Kish 1965). It is kept between P_eff = N² / Σ n_p² (the prompts, were the matches of a
    prompt always alike) and N (every match independent). Where the data cannot tell (every
    match won or every match lost, one prompt) it is P_eff: nothing shows that a prompt's
    matches are more than one draw. Where every prompt had the same rate r (v = 0 with
    0 < r < 1, e.g. all ties) it is N.
    """
    s, n = np.asarray(s, float), np.asarray(n, float)  # (P,), (P,)
    total = n.sum()
    prompts_eff = total**2 / (n**2).sum()
    rate = s.sum() / total
    if len(n) < 2 or rate in (0.0, 1.0):
        return float(prompts_eff)
    v = len(n) / (len(n) - 1) * ((s - rate * n) ** 2).sum() / total**2
    if v <= 1e-15:
        return float(total)
    return float(np.clip(rate * (1 - rate) / v, prompts_eff, total))


def exact_interval(s: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The Clopper–Pearson interval of the rate Σ s_p / Σ n_p on its `effective_trials`."""
    trials = effective_trials(s, n)
    rate = float(np.sum(s) / np.sum(n))
    return clopper_pearson(rate * trials, trials, level)


def bootstrap_interval(
    s: np.ndarray, n: np.ndarray, *, n_boot: int, seed: int, level: float
) -> tuple[float, float]:
    """The percentile bootstrap interval of the rate Σ s_p / Σ n_p, resampling prompts: each
    resample's rate is Σ c_p s_p / Σ c_p n_p for its draw counts c_p (`prompt_resamples`)."""
    counts = prompt_resamples(len(s), n_boot, seed)  # (B, P)
    return percentile_interval((counts @ s) / (counts @ n), level)


# ---- win-rate --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WinRate:
    """How often `model`'s responses beat `opponent`'s (ties count half)."""

    model: int
    opponent: int
    rate: float
    low: float  # the 95% interval: bootstrap (prompts resampled) widened to the exact one
    high: float
    n: int  # matches
    prompts: int
    wins: int
    ties: int
    losses: int
    source: str = "all"  # the labels it counts: 'all', or one label source
    n_eff: float = 0.0  # the independent comparisons the exact interval counts (effective_trials)
    flags: tuple[str, ...] = ()  # codes of FLAGS: where the data cannot show a spread


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
    It is then widened, where it is narrower, to contain the exact interval (`exact_interval`:
    Clopper–Pearson on the effective number of comparisons, a tie half a win): the percentile
    bootstrap has no spread to resample when every outcome agrees (10 wins of 10 would give
    [100%, 100%]; the exact interval is [69.2%, 100%]) and is too narrow on few prompts.
    Such cases are flagged (`win_rate_flags`).
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
    low, high = bootstrap_interval(s, n, n_boot=n_boot, seed=seed, level=level)
    exact_low, exact_high = exact_interval(s, n, level)
    wins, ties, losses = scores.count(1.0), scores.count(0.5), scores.count(0.0)
    return WinRate(
        model=model,
        opponent=opponent,
        rate=float(s.sum() / n.sum()),
        low=min(low, exact_low),
        high=max(high, exact_high),
        n=len(scores),
        prompts=len(s),
        wins=wins,
        ties=ties,
        losses=losses,
        source=source,
        n_eff=effective_trials(s, n),
        flags=win_rate_flags(s, n, wins, ties, losses),
    )


def win_rate_flags(
    s: np.ndarray, n: np.ndarray, wins: int, ties: int, losses: int
) -> tuple[str, ...]:
    """The FLAGS of a win-rate whose prompts (score s_p of n_p matches) leave the bootstrap
    nothing to resample: one prompt, every match the same outcome, or every prompt the same
    rate. Its interval is then the exact one alone."""
    total = wins + ties + losses
    flags = ["one_prompt"] if len(s) == 1 else []
    same = (
        "never_lost"
        if wins == total
        else "never_won"
        if losses == total
        else "all_ties"
        if ties == total
        else None
    )
    if same:
        flags.append(same)
    elif len(s) > 1 and np.ptp(s / n) == 0:
        flags.append("no_spread")
    return tuple(flags)


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
    return reachable(links, start)


def reachable(links: dict[int, set[int]], start: int) -> set[int]:
    """The nodes a chain of `links` (node -> its neighbours, a defaultdict) leads to from
    `start`, `start` included."""
    seen, todo = {start}, [start]
    while todo:
        for other in links[todo.pop()] - seen:
            seen.add(other)
            todo.append(other)
    return seen


def unbounded(
    pairs: np.ndarray, scores: np.ndarray, counts: np.ndarray, n_models: int, anchor: int
) -> tuple[set[int], set[int]]:
    """The models whose Bradley–Terry strength relative to `anchor`, θ_i − θ_anchor, the data
    bound neither above (first set) nor below (second): without the penalty its maximum-
    likelihood value would be +∞ or −∞ (Ford 1957), with it the value is the penalty's.

    Row k (a = pairs[k, 0] against b = pairs[k, 1], a scored scores[k] of counts[k]): when b won
    or tied at least once, θ_a − θ_b is bounded above (a link a → b); when a did, θ_b − θ_a is.
    So θ_i − θ_anchor is bounded above iff a chain of links leads from i to the anchor, and
    below iff one leads from the anchor to i. A policy that won every match has no link out:
    unbounded above. Models without a chain of matches to the anchor are in neither set.
    """
    gave_up: dict[int, set[int]] = defaultdict(set)  # a -> the models that scored against a
    took: dict[int, set[int]] = defaultdict(set)  # the reverse links
    for (a, b), s, n in zip(pairs.tolist(), scores, counts):
        if n > 0 and s < n:
            gave_up[a].add(b)
            took[b].add(a)
        if n > 0 and s > 0:
            gave_up[b].add(a)
            took[a].add(b)
    linked = connected_to(pairs[np.asarray(counts) > 0], n_models, anchor)
    return linked - reachable(took, anchor), linked - reachable(gave_up, anchor)


def elo_for_score(score: float, opponents: np.ndarray, counts: np.ndarray) -> float:
    """The Elo E at which a policy's expected share of `counts[k]` matches against opponents
    rated `opponents[k]` is `score`: Σ_k n_k / (1 + 10^((e_k − E) / 400)) = score · Σ_k n_k
    (one root: the left side rises with E). −∞ at score 0, +∞ at score 1."""
    if score <= 0:
        return -math.inf
    if score >= 1:
        return math.inf
    w = np.asarray(counts, float) / np.sum(counts)
    e = np.asarray(opponents, float)
    pad = ELO_PER_UNIT * (abs(math.log(score / (1 - score))) + 1)  # beyond it every term passes
    return float(
        brentq(
            lambda x: float(w @ expit((x - e) / ELO_PER_UNIT)) - score,
            e.min() - pad,
            e.max() + pad,
            xtol=1e-9,
        )
    )


def exact_elo_interval(
    ms: Sequence[Match], model: int, rated: dict[int, float], level: float = 0.95
) -> tuple[float, float]:
    """The Elo interval that `model`'s matches against the policies in `rated` (round -> Elo,
    ratings the data bound) give on their own: the exact interval of its share of them
    (`exact_interval`, prompts as the draws) mapped to Elo by `elo_for_score`, their ratings
    taken as known. (NaN, NaN) without such matches. For a policy that won all ten of its matches
    against the base: the share is at least 69.2%, so its Elo at least 1140."""
    per_prompt: dict[int, list[float]] = defaultdict(list)
    per_opponent: dict[int, int] = defaultdict(int)
    for m in ms:
        if model in (m.model_a, m.model_b):
            other = m.model_b if m.model_a == model else m.model_a
            if other in rated and other != model:
                per_prompt[m.prompt_id].append(m.score(model))
                per_opponent[other] += 1
    if not per_prompt:
        return math.nan, math.nan
    s = np.array([sum(v) for v in per_prompt.values()])  # (P,)
    n = np.array([len(v) for v in per_prompt.values()], float)  # (P,)
    low, high = exact_interval(s, n, level)
    opponents = np.array([rated[o] for o in per_opponent])
    counts = np.array(list(per_opponent.values()), float)
    return elo_for_score(low, opponents, counts), elo_for_score(high, opponents, counts)


@dataclass(frozen=True)
class Rating:
    """One policy's row of the leaderboard."""

    model: int  # the round whose policy wrote the responses
    elo: float  # NaN where the data bound it on neither side or one (flags say which)
    low: float  # the 95% bootstrap interval (prompts resampled); see `flags`
    high: float
    matches: int
    score: float  # mean outcome over its matches: its win-rate against everyone it met
    flags: tuple[str, ...] = ()  # codes of FLAGS: a rating the data leave unbounded or thin


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


def rating_flags(
    above: bool, below: bool, mine: Sequence[Match], scores: Sequence[float]
) -> tuple[str, ...]:
    """The FLAGS of a (non-anchor) policy's rating: unbounded above or below (`unbounded`)
    because it never lost (never won), or because the policies it lost to (won against) are
    unbounded themselves; every one of its matches on one prompt, or every one a tie."""
    flags = []
    if above:
        flags.append("unbounded_above" if min(scores) == 1 else "unbounded_group")
    if below:
        flags.append("unbounded_below" if max(scores) == 0 else "unbounded_group")
    flags = list(dict.fromkeys(flags))
    if len({m.prompt_id for m in mine}) == 1:
        flags.append("one_prompt")
    if all(x == 0.5 for x in scores):
        flags.append("all_ties")
    return tuple(flags)


def flag_notes(flags: Sequence[str]) -> str:
    """The flags as the tables show them: 'unbounded: never lost; one prompt'."""
    return "; ".join(FLAGS[f] for f in flags)


def elo_cells(r: Rating) -> tuple[str, str]:
    """A rating's Elo and interval as the tables show them; an unbounded one as its bound:
    ('≥ 1140', '1140–∞') for a policy that never lost, ('unbounded', '–') with no bound."""
    if math.isfinite(r.elo):
        return f"{r.elo:.0f}", f"{r.low:.0f}–{r.high:.0f}"
    if math.isfinite(r.low):
        return f"≥ {r.low:.0f}", f"{r.low:.0f}–∞"
    if math.isfinite(r.high):
        return f"≤ {r.high:.0f}", f"−∞–{r.high:.0f}"
    return "unbounded", "–"


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

    A policy the data rate only on one side of the anchor (`unbounded`: it, or the group it
    traded wins with, never lost; or never won) is flagged, its `elo` is NaN and its interval
    is one-sided: from the exact bound of its matches against the bounded policies
    (`exact_elo_interval`) to ±∞. A policy whose matches are all on one prompt, or all ties,
    is flagged and its interval widened to contain that exact interval. Nothing else changes.
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
    above, below = unbounded(pairs, total_s, total_n, len(models), index[anchor])
    rated = {  # the ratings the data bound on both sides
        r: float(point[index[r]])
        for r in models
        if not math.isnan(point[index[r]]) and index[r] not in above | below
    }
    ratings = []
    for r in models:
        k = index[r]
        if math.isnan(point[k]):
            continue
        mine = [m for m in ms if r in (m.model_a, m.model_b)]
        scores = [m.score(r) for m in mine]
        low, high = percentile_interval(boot[:, k], level)
        elo_k = float(point[k])
        flags = rating_flags(k in above, k in below, mine, scores) if r != anchor else ()
        if flags:  # no bootstrap spread to trust: the exact bound from its matches instead
            exact_low, exact_high = exact_elo_interval(ms, r, rated, level)
            if k in above or k in below:
                elo_k = math.nan
                low = -math.inf if k in below else exact_low
                high = math.inf if k in above else exact_high
            else:
                low, high = np.fmin(low, exact_low), np.fmax(high, exact_high)
        ratings.append(
            Rating(
                model=r,
                elo=elo_k,
                low=float(low),
                high=float(high),
                matches=len(mine),
                score=float(np.mean(scores)),
                flags=flags,
            )
        )
    # the penalised fit orders the unbounded ones too (a policy that never lost goes first)
    ratings.sort(key=lambda x: (-point[index[x.model]], x.model))
    return Leaderboard(
        ratings,
        anchor=anchor,
        matches=len(ms),
        prompts=len(tables.prompts),
        unconnected=[r for r in models if math.isnan(point[index[r]])],
    )
