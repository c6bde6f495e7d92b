"""Annotator statistics for the admin view: throughput, gold accuracy, position bias, agreement.

Agreement is measured on *pair outcomes*: every label (pairwise or a K-ranking) says, for each
pair of the comparison's responses (i, j), whether i is better (+1), worse (-1) or tied (0). Two
annotators agree on an item (comparison, pair) when they give it the same outcome.
- Cohen's kappa between two annotators over the items both labeled (scikit-learn's
  `cohen_kappa_score`; Cohen 1960): (p_o - p_e) / (1 - p_e), chance-corrected agreement.
- Krippendorff's alpha over all annotators and items (the `krippendorff` package, ordinal level,
  Krippendorff 2011): 1 - D_o / D_e; handles any number of raters and missing ratings.
Only people's labels count (source 'human'): imported ones (source 'external') are nobody's
work here, and simulated annotators' (`rankloop simulate`, source 'simulated') would mix an
oracle's agreement with people's; `source="simulated"` gives theirs apart.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

import krippendorff
import numpy as np
from sklearn.metrics import cohen_kappa_score

from .queue import gold_agreement
from .rankings import pair_outcomes
from .records import Label
from .store import Store


@dataclass(frozen=True)
class AnnotatorStats:
    """One row of the admin view's annotator table."""

    name: str
    role: str
    labels: int
    labels_per_hour: float | None  # 3600 / mean seconds spent per label
    median_seconds: float | None  # median seconds from showing a task to submitting it
    gold_labels: int
    gold_accuracy: float | None  # mean pair agreement with the gold answer
    first_pick_rate: float | None  # share of labels whose single best is the first-shown response
    first_pick_expected: float | None  # the same share without position bias: mean of 1/K
    skips: int
    flags: int
    mean_kappa: float | None  # mean Cohen's kappa with the annotators they overlap with


def _annotation_labels(store: Store, source: str = "human") -> list[Label]:
    return [lab for lab in store.labels() if lab.source == source]


def _items(labels: list[Label]) -> dict[int, dict[tuple[int, int, int], int]]:
    """annotator id -> {(comparison, i, j): outcome}."""
    out: dict[int, dict[tuple[int, int, int], int]] = defaultdict(dict)
    for lab in labels:
        for (i, j), v in pair_outcomes(lab.ranking).items():
            out[lab.annotator_id][(lab.comparison_id, i, j)] = v
    return out


def cohen_kappa(a: dict, b: dict) -> tuple[int, float | None]:
    """(items both rated, Cohen's kappa over them); kappa is None when undefined (no overlap,
    or both gave one and the same outcome to every item, so chance agreement is 1)."""
    common = sorted(set(a) & set(b))
    if not common:
        return 0, None
    x, y = [a[k] for k in common], [b[k] for k in common]
    if len(set(x) | set(y)) == 1:
        return len(common), None
    k = cohen_kappa_score(x, y, labels=[-1, 0, 1])
    return len(common), None if math.isnan(k) else float(k)


def pairwise_kappa(store: Store, source: str = "human") -> list[tuple[str, str, int, float | None]]:
    """(annotator, annotator, shared items, kappa) for every pair of annotators who overlap."""
    names = {a.id: a.name for a in store.annotators()}
    items = _items(_annotation_labels(store, source))
    rows = []
    for a, b in itertools.combinations(sorted(items), 2):
        n, k = cohen_kappa(items[a], items[b])
        if n:
            rows.append((names[a], names[b], n, k))
    return rows


def krippendorff_alpha(store: Store, source: str = "human") -> float | None:
    """Krippendorff's alpha (ordinal) over every annotator and item; None when no item has two
    ratings or every rating is the same value."""
    return alpha_of_labels(_annotation_labels(store, source))


def alpha_of_labels(labels: list[Label]) -> float | None:
    """Krippendorff's alpha (ordinal) over the given labels' annotators and items (e.g. one
    round's, or one source's); None as for `krippendorff_alpha`."""
    items = _items(labels)
    keys = sorted({k for per in items.values() for k in per})
    counts = defaultdict(int)
    for per in items.values():
        for k in per:
            counts[k] += 1
    if not any(c >= 2 for c in counts.values()):
        return None
    data = np.full((len(items), len(keys)), np.nan)  # (annotators, items)
    col = {k: i for i, k in enumerate(keys)}
    for row, per in enumerate(items.values()):
        for k, v in per.items():
            data[row, col[k]] = v
    try:
        alpha = krippendorff.alpha(
            reliability_data=data, value_domain=[-1, 0, 1], level_of_measurement="ordinal"
        )
    except ValueError:
        return None
    return None if math.isnan(alpha) else float(alpha)


def annotator_stats(store: Store, source: str = "human") -> list[AnnotatorStats]:
    """One `AnnotatorStats` per account of people (of simulated annotators with
    `source="simulated"`; imported sources never)."""
    labels = _annotation_labels(store, source)
    by_annotator: dict[int, list[Label]] = defaultdict(list)
    for lab in labels:
        by_annotator[lab.annotator_id].append(lab)
    gold = {c.id: c.gold for c in store.comparisons() if c.gold is not None}
    items = _items(labels)
    count = lambda table: dict(
        store.db.execute(
            f"select annotator_id, count(*) from {table} group by annotator_id"
        ).fetchall()
    )
    skips, flags = count("skips"), count("flags")
    out = []
    for a in store.annotators():
        if a.role == "external" or (a.role == "simulated") != (source == "simulated"):
            continue
        mine = by_annotator.get(a.id, [])
        secs = [lab.seconds_spent for lab in mine if lab.seconds_spent is not None]
        golds = [
            gold_agreement(lab.ranking, gold[lab.comparison_id])
            for lab in mine
            if lab.comparison_id in gold
        ]
        # Position bias: labels with a single best response, and whether it was shown first.
        strict = [
            lab
            for lab in mine
            if lab.display_order and len(lab.ranking[0]) == 1 and lab.choice != "both_bad"
        ]
        kappas = [cohen_kappa(items.get(a.id, {}), items[b])[1] for b in list(items) if b != a.id]
        kappas = [k for k in kappas if k is not None]
        out.append(
            AnnotatorStats(
                name=a.name,
                role=a.role,
                labels=len(mine),
                labels_per_hour=3600 / statistics.fmean(secs) if secs and sum(secs) > 0 else None,
                median_seconds=statistics.median(secs) if secs else None,
                gold_labels=len(golds),
                gold_accuracy=statistics.fmean(golds) if golds else None,
                first_pick_rate=statistics.fmean(
                    lab.ranking[0][0] == lab.display_order[0] for lab in strict
                )
                if strict
                else None,
                first_pick_expected=statistics.fmean(1 / len(lab.display_order) for lab in strict)
                if strict
                else None,
                skips=skips.get(a.id, 0),
                flags=flags.get(a.id, 0),
                mean_kappa=statistics.fmean(kappas) if kappas else None,
            )
        )
    return out


def labels_per_day(store: Store) -> list[tuple[str, str, int]]:
    """(UTC day, annotator, labels) for every day someone labeled, oldest first."""
    return [
        tuple(r)
        for r in store.db.execute(
            "select substr(l.created_at, 1, 10) as day, a.name, count(*) from labels l "
            "join annotators a on a.id = l.annotator_id where l.source = 'human' "
            "group by day, a.name order by day, a.name"
        ).fetchall()
    ]
