"""Annotator statistics (data/agreement.py): kappa, alpha, gold accuracy, position bias."""

from __future__ import annotations

import krippendorff
import numpy as np
import pytest

from rankloop.data import agreement, queue
from rankloop.data.records import Label


def labeled_store(store):
    """4 pairwise comparisons; ann's outcomes (+1: lower id better) are [+1, +1, -1, 0],
    bob's [+1, -1, -1, 0]; display orders chosen so ann picks the first shown 2 times of 3."""
    cids = [store.add_comparison_texts(f"q{i}", [f"x{i}", f"y{i}"]) for i in range(4)]
    ann = store.add_annotator("ann")[0].id
    bob = store.add_annotator("bob")[0].id
    rid = {c: store.comparison(c).response_ids for c in cids}
    ann_labels = [  # (display order, choice)
        ((0, 1), "A"),
        ((1, 0), "B"),
        ((1, 0), "A"),
        ((0, 1), "tie"),
    ]
    bob_labels = [((0, 1), "A"), ((0, 1), "B"), ((0, 1), "B"), ((1, 0), "tie")]
    for aid, labels, secs in ((ann, ann_labels, [2, 4, 6, 8]), (bob, bob_labels, [1, 1, 1, 1])):
        for c, (order, choice), s in zip(cids, labels, secs):
            shown = tuple(rid[c][i] for i in order)
            store.add_label(Label.pairwise(c, aid, shown, choice, seconds_spent=float(s)))
    return cids, ann, bob


def test_cohen_kappa_matches_the_hand_computation(fresh_store):
    labeled_store(fresh_store)
    # p_o = 3/4; marginals ann (+1: 2, -1: 1, 0: 1), bob (+1: 1, -1: 2, 0: 1)
    # p_e = (2*1 + 1*2 + 1*1) / 16 = 5/16; kappa = (3/4 - 5/16) / (1 - 5/16) = 7/11
    ((a, b, n, k),) = agreement.pairwise_kappa(fresh_store)
    assert (a, b, n) == ("ann", "bob", 4)
    assert k == pytest.approx(7 / 11)


def test_krippendorff_alpha_over_the_pair_outcomes(fresh_store):
    labeled_store(fresh_store)
    expected = krippendorff.alpha(
        reliability_data=np.array([[1, 1, -1, 0], [1, -1, -1, 0]], dtype=float),
        value_domain=[-1, 0, 1],
        level_of_measurement="ordinal",
    )
    assert agreement.krippendorff_alpha(fresh_store) == pytest.approx(expected)
    assert 0 < expected < 1


def test_alpha_is_one_on_full_agreement_and_none_without_overlap(fresh_store):
    cids = [fresh_store.add_comparison_texts(f"q{i}", ["a", "b"]) for i in range(3)]
    ids = [fresh_store.add_annotator(n)[0].id for n in ("u", "v")]
    assert agreement.krippendorff_alpha(fresh_store) is None
    for aid in ids:
        for c, ch in zip(cids, "ABA"):
            fresh_store.add_label(
                Label.pairwise(c, aid, fresh_store.comparison(c).response_ids, ch)
            )
    assert agreement.krippendorff_alpha(fresh_store) == pytest.approx(1.0)
    assert agreement.pairwise_kappa(fresh_store) == [("u", "v", 3, pytest.approx(1.0))]


def test_annotator_stats(fresh_store):
    cids, _ann, _bob = labeled_store(fresh_store)
    r1, r2 = fresh_store.comparison(cids[0]).response_ids
    queue.set_gold(fresh_store, cids[0], [[r1], [r2]])  # ann and bob both said r1
    queue.set_gold(fresh_store, cids[1], [[r1 + 2], [r2 + 2]])  # the lower id better: bob wrong
    stats = {s.name: s for s in agreement.annotator_stats(fresh_store)}
    a, b = stats["ann"], stats["bob"]
    assert (a.labels, a.median_seconds, a.labels_per_hour) == (4, 5.0, 3600 / 5.0)
    assert (a.gold_labels, a.gold_accuracy) == (2, 1.0)
    assert (b.gold_labels, b.gold_accuracy) == (2, 0.5)
    # ann's strict labels: first shown won, first shown won (B with order (1, 0) is x), ...
    # c0 A of (x, y): first; c1 B of (y, x): x, second; c2 A of (y, x): y, first -> 2 of 3.
    assert a.first_pick_rate == pytest.approx(2 / 3) and a.first_pick_expected == 0.5
    assert a.mean_kappa == pytest.approx(7 / 11) == b.mean_kappa
    assert (a.skips, a.flags) == (0, 0)


def test_labels_per_day(fresh_store):
    labeled_store(fresh_store)
    fresh_store.db.execute("update labels set created_at = '2026-01-02T10:00:00' where id <= 2")
    rows = agreement.labels_per_day(fresh_store)
    assert rows[0] == ("2026-01-02", "ann", 2)
    assert sum(r[2] for r in rows) == 8
