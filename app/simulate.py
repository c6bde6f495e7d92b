"""Simulated annotators: the loop run without people (AlpacaFarm's idea, Dubois et al. 2023).

An oracle scores each response (`app/oracles.py`, or any `module:function` of the form of a PPO
`--reward-fn`); N simulated accounts take tasks through the labeling queue exactly as the app
hands them to people (`data/queue.py`: leases, overlap of `labels_per_comparison`, gold tasks,
the queue order, the current round first) and answer with Bradley-Terry noise around the
oracle's scores:

    P(i preferred to j) = sigma((s_i - s_j) / T)

A K-wise comparison gets a whole ranking drawn from the Plackett-Luce model with utilities
s_i / T (a Gumbel perturbation of each utility, sorted), whose pairwise marginal for K = 2 is
the formula above. T = 0 always picks the higher score (ties in score keep the order shown).

T means different things on different oracles' scales, so a user may ask for an agreement
instead (`--agreement A`): T is solved so that the expected share of labelled pairs whose order
agrees with the oracle is A, over the candidates about to be labelled (`calibrate_noise`). The
Gumbel draw makes that exact: in a ranking of any K, a pair's order depends on its two keys only,
so P(a above b) = sigma((s_a - s_b) / T) as for K = 2. Pairs the oracle ties count nowhere.
Labels are stored with source 'simulated': exports mark them, the admin's agreement and
annotator statistics keep them apart from people's, and reward training uses them unless
[rounds] simulated_labels = false.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from rankloop.data import queue
from rankloop.data.records import Annotator, Judgment
from rankloop.data.store import Store, StoreError
from rankloop.settings import ConfigError

from .config import LabelingConfig
from .oracles import ORACLES


@dataclass(frozen=True)
class SimulateReport:
    labels: int
    gold_labels: int
    annotators: tuple[str, ...]
    mean_score: float | None  # the oracle's mean score of the responses the annotators saw
    noise: float | None = None  # the T used (None: --agreement found no untied pair to solve on)
    asked: float | None = None  # the agreement asked for (--agreement), else None
    pairs: int = 0  # pairs in the submitted labels that the oracle does not tie
    agreeing: int = 0  # of those, the ones ordered as the oracle orders them

    @property
    def agreement(self) -> float | None:
        """The share of the labels' oracle-untied pairs that agree with the oracle."""
        return self.agreeing / self.pairs if self.pairs else None

    def summary(self) -> str:
        """One line: what was labelled and how often the labels agree with the oracle."""
        line = f"simulated {self.labels} {'label' if self.labels == 1 else 'labels'}"
        if self.gold_labels:
            line += f" ({self.gold_labels} gold)"
        line += f" by {', '.join(self.annotators)}"
        asked = f"asked {self.asked:.0%}, " if self.asked is not None else ""
        t = f"T = {self.noise:.3g}" if self.noise is not None else "no untied pair to solve T on"
        if self.agreement is not None:
            line += (
                f": labels agree with the oracle on {self.agreement:.1%} of {self.pairs} "
                f"pairs ({asked}{t})"
            )
        elif self.labels:
            line += f": the oracle ties every pair they ordered ({asked}{t})"
        return line


def load_oracle(spec: str) -> Callable:
    """A built-in oracle by name (`ORACLES`), or `module:function` / `path.py:function`,
    checked like a PPO reward (one finite float per response)."""
    from rankloop.ppo.reward_fns import CallableReward, load_callable

    if spec in ORACLES:
        return CallableReward(ORACLES[spec], spec)
    if ":" not in spec:
        raise ConfigError(
            f"--oracle {spec!r}: give a built-in oracle ({', '.join(ORACLES)}) or module:function"
        )
    return load_callable(spec, option="--oracle")


def simulated_accounts(store: Store, n: int) -> list[Annotator]:
    """The accounts `sim-1` .. `sim-N` (role 'simulated', no secret: nobody logs in as them),
    created on first use. A person's account of that name is refused, never taken over."""
    if n < 1:
        raise ConfigError("--annotators must be at least 1")
    out = []
    for i in range(1, n + 1):
        name = f"sim-{i}"
        a = store.annotator(name)
        if a is None:
            a = store.add_simulated_annotator(name)
        elif a.role != "simulated":
            raise StoreError(
                f"an account named {name!r} exists and is not simulated: rename it "
                f"(simulated annotators are named sim-1, sim-2, ...)"
            )
        out.append(a)
    return out


def plackett_luce_order(scores: Sequence[float], noise: float, rng: random.Random) -> list[int]:
    """Positions of `scores`, best first, drawn from Plackett-Luce with utilities s / noise
    (Gumbel-max: sort s_i / T + G_i, G_i ~ Gumbel(0, 1)); noise 0 sorts by score."""
    if noise <= 0:
        return sorted(range(len(scores)), key=lambda i: -scores[i])
    keys = [s / noise - math.log(-math.log(1.0 - rng.random())) for s in scores]
    return sorted(range(len(scores)), key=lambda i: -keys[i])


def untied_gaps(score_lists: Iterable[Sequence[float]]) -> list[float]:
    """|s_a - s_b| for every pair within each list (one list: the oracle's scores of one
    comparison's responses); pairs the oracle ties (s_a == s_b) are left out."""
    return [
        abs(a - b) for scores in score_lists for a, b in itertools.combinations(scores, 2) if a != b
    ]


def expected_agreement(gaps: Sequence[float], noise: float) -> float:
    """The expected share of pairs with these score gaps that a Plackett-Luce draw at
    temperature `noise` orders as the oracle does: mean of sigma(d / T) (T = 0: all of them)."""
    if not gaps:
        raise ValueError("no oracle-untied pair")
    if noise <= 0:
        return 1.0
    from scipy.special import expit

    return float(sum(expit(d / noise) for d in gaps) / len(gaps))


def calibrate_noise(gaps: Sequence[float], agreement: float) -> float:
    """The T at which `expected_agreement(gaps, T)` equals `agreement` (0.5 < A < 1).

    The share falls from 1 to 1/2 as T grows, so the root is unique; it lies between
    d_min / logit(A) (every pair agrees at least A) and d_max / logit(A) (every pair at most A)."""
    from scipy.optimize import brentq

    check_agreement(agreement)
    if not gaps:
        raise ValueError("no oracle-untied pair: every T gives the same labels")
    logit = math.log(agreement / (1 - agreement))
    lo, hi = min(gaps) / logit, max(gaps) / logit
    if lo == hi:  # one gap size: sigma(d / T) = A exactly
        return lo
    return float(brentq(lambda t: expected_agreement(gaps, t) - agreement, lo, hi, xtol=1e-12))


def check_agreement(agreement: float) -> None:
    if not 0.5 < agreement < 1:  # NaN fails too
        raise ConfigError(
            f"--agreement must lie strictly between 0.5 and 1 (got {agreement}): 0.5 is a coin "
            f"toss, 1 never errs (that is --noise 0)"
        )


def noise_settings(
    noise: float | None, agreement: float | None, default_noise: float = 1.0
) -> tuple[float | None, float | None]:
    """(T, A) as simulate reads `--noise` and `--agreement`: one of them, checked, or T =
    `default_noise` when neither is given. Commands call it before they write anything."""
    if noise is not None and agreement is not None:
        raise ConfigError("give --noise or --agreement, not both")
    if agreement is not None:
        check_agreement(agreement)
        return None, agreement
    if noise is None:
        return default_noise, None
    if not noise >= 0:  # NaN fails too
        raise ConfigError(f"--noise must be >= 0 (got {noise})")
    return noise, None


def order_agreement(scores_in_order: Sequence[float]) -> tuple[int, int]:
    """(agreeing, untied) pairs of a ranking given as the oracle's scores, best first: a pair
    agrees when the one placed higher scores higher; pairs the oracle ties count nowhere."""
    untied = agreeing = 0
    for hi, lo in itertools.combinations(scores_in_order, 2):
        if hi != lo:
            untied += 1
            agreeing += hi > lo
    return agreeing, untied


def _score_open(
    store: Store, oracle: Callable, config: LabelingConfig, round_: int | None
) -> tuple[dict[int, float], list[list[float]]]:
    """The oracle's scores of the responses of the comparisons still open (of `round_` if
    given): the candidates the annotators are about to label. Returns (response id -> score,
    each comparison's scores)."""
    comps = [
        c
        for c in queue.open_comparisons(store, config.labels_per_comparison)
        if round_ is None or c.round == round_
    ]
    ids = sorted({r for c in comps for r in c.response_ids})
    prompts = {}
    scores: dict[int, float] = {}
    for i in range(0, len(ids), 500):  # well under SQLite's limit on bound parameters
        got = store.responses(ids=ids[i : i + 500])
        for r in got:
            if r.prompt_id not in prompts:
                prompts[r.prompt_id] = store.prompt(r.prompt_id)
        values = oracle([prompts[r.prompt_id] for r in got], [r.text for r in got])
        scores.update(zip((r.id for r in got), (float(x) for x in values)))
    return scores, [[scores[r] for r in c.response_ids] for c in comps]


def simulate(
    store: Store,
    oracle: Callable,
    config: LabelingConfig,
    *,
    annotators: int = 3,
    noise: float | None = None,
    agreement: float | None = None,
    limit: int | None = None,
    round_: int | None = None,
    first_round: int | None = None,
    seed: int = 0,
    progress: bool = True,
    clock: Callable[[], float] = time.time,
) -> SimulateReport:
    """Label open comparisons with `annotators` simulated accounts taking turns at the queue,
    until `limit` labels are written or no task is left. `round_` labels that round's
    comparisons only; else `first_round`'s come first (the current round, as in the app).
    `noise` is T (default 1.0); `agreement` instead solves T on the open comparisons' scores
    (of `round_` if given) so that the labels are expected to agree with the oracle that often.
    Bad settings raise before anything is written."""
    noise, agreement = noise_settings(noise, agreement)
    scores: dict[int, float] = {}
    if agreement is not None:
        scores, lists = _score_open(store, oracle, config, round_)
        gaps = untied_gaps(lists)
        # Nothing open, or the oracle ties every pair: any T draws the same labels (uniform
        # over ties), so none is solved; gold tasks, if any, are drawn at T = 1.
        noise = calibrate_noise(gaps, agreement) if gaps else None
    accounts = simulated_accounts(store, annotators)
    rng = random.Random(seed)
    labels = gold = pairs = agreeing = 0
    seen: set[int] = set()  # the responses shown (scores may hold more: --agreement's)
    bar = tqdm(total=limit, desc="simulated labels", unit="label", disable=not progress)
    active = list(accounts)
    while active and (limit is None or labels < limit):
        for a in list(active):
            if limit is not None and labels >= limit:
                break
            task = queue.next_task(
                store,
                a.id,
                n=config.labels_per_comparison,
                lease_seconds=config.lease_seconds,
                order=config.order,
                gold_rate=config.gold_rate,
                now=clock(),
                rng=rng,
                first_round=first_round,
                only_round=round_,
            )
            if task is None:
                active.remove(a)
                continue
            missing = [r for r in task.responses if r.id not in scores]
            if missing:
                got = oracle([task.prompt] * len(missing), [r.text for r in missing])
                scores.update(zip((r.id for r in missing), (float(x) for x in got)))
            seen.update(r.id for r in task.responses)
            shown = [scores[r.id] for r in task.responses]
            order = plackett_luce_order(shown, 1.0 if noise is None else noise, rng)
            agree, untied = order_agreement([shown[i] for i in order])
            agreeing, pairs = agreeing + agree, pairs + untied
            judgment = (
                Judgment(choice="AB"[order[0]])
                if task.mode == "pairwise"
                else Judgment(positions=tuple((p,) for p in order))
            )
            queue.submit(
                store, a.id, task.comparison.id, task.request_id, judgment, source="simulated"
            )
            labels += 1
            gold += task.gold
            bar.update(1)
    bar.close()
    return SimulateReport(
        labels=labels,
        gold_labels=gold,
        annotators=tuple(a.name for a in accounts),
        mean_score=sum(scores[r] for r in seen) / len(seen) if seen else None,
        noise=noise,
        asked=agreement,
        pairs=pairs,
        agreeing=agreeing,
    )
