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
Labels are stored with source 'simulated': exports mark them, the admin's agreement and
annotator statistics keep them apart from people's, and reward training uses them unless
[rounds] simulated_labels = false.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
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


def simulate(
    store: Store,
    oracle: Callable,
    config: LabelingConfig,
    *,
    annotators: int = 3,
    noise: float = 1.0,
    limit: int | None = None,
    round_: int | None = None,
    first_round: int | None = None,
    seed: int = 0,
    progress: bool = True,
    clock: Callable[[], float] = time.time,
) -> SimulateReport:
    """Label open comparisons with `annotators` simulated accounts taking turns at the queue,
    until `limit` labels are written or no task is left. `round_` labels that round's
    comparisons only; else `first_round`'s come first (the current round, as in the app)."""
    if noise < 0:
        raise ConfigError("--noise must be >= 0")
    accounts = simulated_accounts(store, annotators)
    rng = random.Random(seed)
    scores: dict[int, float] = {}
    labels = gold = 0
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
            order = plackett_luce_order([scores[r.id] for r in task.responses], noise, rng)
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
        mean_score=sum(scores.values()) / len(scores) if scores else None,
    )
