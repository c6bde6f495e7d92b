"""A ranking's pairwise outcomes: the one reading of "is response a better than b" in rankloop.

A ranking is tiers of response ids, best first, tied responses sharing a tier (the label schema
of `records.Label`). The labeling queue (gold agreement), the admin's agreement statistics, the
reward trainer's pairs, the preference export and the leaderboard's cross-round matches all read
a ranking through these functions, and a label's strength becomes a margin in `label_margin`
only.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def tier_of(ranking: Sequence[Sequence[int]]) -> dict[int, int]:
    """Response id -> its tier (0 = best; tied responses share a tier)."""
    return {r: t for t, tier in enumerate(ranking) for r in tier}


def pair_outcome(tiers: dict[int, int], a: int, b: int) -> int:
    """+1 if response a ranks above b, -1 below, 0 tied (`tiers` from `tier_of`)."""
    return (tiers[a] < tiers[b]) - (tiers[a] > tiers[b])


def pair_outcomes(ranking: Sequence[Sequence[int]]) -> dict[tuple[int, int], int]:
    """Each pair (i, j) with i < j (response ids) -> `pair_outcome` of i against j."""
    tiers = tier_of(ranking)
    return {(i, j): pair_outcome(tiers, i, j) for i, j in itertools.combinations(sorted(tiers), 2)}


def ranked_pairs(ranking: Sequence[Sequence[int]]) -> list[tuple[int, int, bool]]:
    """Every pair of a ranking's responses as (higher, lower, tie), in ranking order: a ranking
    of K gives C(K,2) pairs; the two of a tied pair stay in the order the tier lists them."""
    order = [r for tier in ranking for r in tier]
    tiers = tier_of(ranking)
    return [(hi, lo, tiers[hi] == tiers[lo]) for hi, lo in itertools.combinations(order, 2)]


#: ([reward] margin_slightly, margin_much) by default: Llama 2's margin scale (1/3, 1).
DEFAULT_MARGINS: tuple[float, float] = (0.33, 1.0)


def label_margin(
    margin: float | None, strength: str | None, margin_slightly: float, margin_much: float
) -> float:
    """A label's Bradley-Terry margin: its numeric `margin` as imported, else from its strength
    through the `[reward] margin_slightly` / `margin_much` settings, else 0.

    The one place a strength becomes a margin: the app stores the strength as the annotator
    said it, so changing the setting re-reads every label the same way (trainer and export).
    """
    if margin is not None:
        return float(margin)
    return {"slightly": margin_slightly, "much": margin_much}.get(strength or "", 0.0)


def disagreement_rate(rankings_by_item: dict) -> float:
    """How often two judges of the same item disagree on a pair of its responses.

    `rankings_by_item` maps an item (a comparison) to the rankings its judges gave. Over every
    item with 2+ rankings, every pair of its responses and every pair of its judges: the
    fraction whose outcomes (better / worse / tie) differ. NaN when no item has two rankings.
    """
    disagree = total = 0
    for rankings in rankings_by_item.values():
        if len(rankings) < 2:
            continue
        outcomes = [pair_outcomes(r) for r in rankings]
        for pair in outcomes[0]:
            for x, y in itertools.combinations([o[pair] for o in outcomes], 2):
                total += 1
                disagree += x != y
    return disagree / total if total else float("nan")
