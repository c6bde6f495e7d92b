"""Per-step training curves of each round, kept in the store (table `round_curves`).

A round's summary numbers live in the `rounds` table; the curves behind them (PPO's history:
`objective/scores`, `objective/kl`, `objective/response_length` and the rest of each step's row,
docs/ppo.md) live here, so the Rounds view and `rankloop report` read one place. Whoever runs a
stage records its history when the stage finishes: `rankloop ppo` and `rankloop round`'s PPO
stage call `record_curve(store, round, "ppo", result.history)`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from .store import Store

#: The PPO metrics the Rounds view and the report plot, with their titles.
PPO_CURVES = {
    "objective/scores": "mean score",
    "objective/kl": "KL to the reference (nats)",
    "objective/response_length": "response length (tokens)",
}


@dataclass(frozen=True)
class Curve:
    """One metric of one round's stage, step by step."""

    round: int
    stage: str
    metric: str
    steps: tuple[int, ...]
    values: tuple[float, ...]


def record_curve(store: Store, round_: int, stage: str, history: Sequence[dict]) -> int:
    """Store a stage's per-step history (a list of metric rows, each with its `step`, else its
    position from 1), replacing what an earlier run of the same stage recorded, in one
    transaction. Non-numeric and non-finite values are left out. Returns the steps stored."""
    rows = []
    for k, row in enumerate(history, 1):
        step = int(row.get("step", k))
        rows += [
            {"round": round_, "stage": stage, "metric": name, "step": step, "value": float(v)}
            for name, v in row.items()
            if name != "step"
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
        ]
    with store.transaction():
        store.db.execute("delete from round_curves where round = ? and stage = ?", [round_, stage])
        store.db["round_curves"].insert_all(rows)
    return len(history)


def curves(store: Store, stage: str = "ppo", metrics: Sequence[str] | None = None) -> list[Curve]:
    """The recorded curves of `stage` (only `metrics`, when given), by round, then metric."""
    sql = "select round, metric, step, value from round_curves where stage = ?"
    params: list = [stage]
    if metrics is not None:
        sql += f" and metric in ({','.join('?' * len(metrics))})"
        params += list(metrics)
    points: dict[tuple[int, str], list[tuple[int, float]]] = defaultdict(list)
    for rnd, metric, step, value in store.db.execute(
        sql + " order by round, metric, step", params
    ).fetchall():
        points[(rnd, metric)].append((step, value))
    return [
        Curve(rnd, stage, metric, tuple(s for s, _ in pts), tuple(v for _, v in pts))
        for (rnd, metric), pts in points.items()
    ]
