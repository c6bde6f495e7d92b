"""Labels -> reward training examples: exact pairs, weights, ties, margins, split, errors."""

from __future__ import annotations

import math

import pytest

from rankloop.data.records import Label
from rankloop.reward.pairs import (
    Pair,
    RewardDataError,
    build_examples,
    check_trainable,
    split_by_prompt,
)


def _annotators(store, *names):
    return [store.add_annotator(n)[0].id for n in names]


def _pairwise(store, prompt, a, b, who, choice, **kw):
    cid = store.add_comparison_texts(prompt, [a, b])
    ids = store.comparison(cid).response_ids
    store.add_label(Label.pairwise(cid, who, ids, choice, **kw))
    return cid


def test_pairwise_choice_strength_and_numeric_margin(fresh_store):
    (ann,) = _annotators(fresh_store, "ann")
    _pairwise(fresh_store, "p1", "x", "y", ann, "B", strength="much")
    _pairwise(fresh_store, "p2", "u", "v", ann, "A", strength="slightly")
    _pairwise(fresh_store, "p3", "s", "t", ann, "A", margin=2.5)
    data = build_examples(fresh_store, margin_slightly=0.25, margin_much=1.0)
    ex = data.examples
    assert [e.responses for e in ex] == [("x", "y"), ("u", "v"), ("s", "t")]
    # B chosen: response 1 ("y") is better than response 0
    assert ex[0].pairs == (Pair(1, 0, False, 1.0, 1.0),)
    assert ex[0].tiers == (1, 0)
    assert ex[1].pairs == (Pair(0, 1, False, 0.25, 1.0),)
    assert ex[2].pairs == (Pair(0, 1, False, 2.5, 1.0),)
    assert [e.annotator for e in ex] == ["ann"] * 3
    assert (data.labels, data.pairs, data.ties, data.dropped_both_bad) == (3, 3, 0, 0)
    assert math.isnan(data.disagreement)


def test_kwise_ranking_keeps_all_pairs_in_one_example_with_ties(fresh_store):
    (ann,) = _annotators(fresh_store, "ann")
    cid = fresh_store.add_comparison_texts("p", ["r0", "r1", "r2", "r3"])
    r0, r1, r2, r3 = fresh_store.comparison(cid).response_ids
    # r2 best; r0 and r3 tied; r1 worst
    fresh_store.add_label(Label(cid, ann, ((r2,), (r0, r3), (r1,))))
    data = build_examples(fresh_store)
    (ex,) = data.examples
    w = 1 / 6
    assert ex.tiers == (1, 2, 0, 1)
    assert ex.pairs == (
        Pair(0, 1, False, 0.0, w),  # r0 > r1
        Pair(2, 0, False, 0.0, w),  # r2 > r0
        Pair(0, 3, True, 0.0, w),  # r0 = r3
        Pair(2, 1, False, 0.0, w),  # r2 > r1
        Pair(3, 1, False, 0.0, w),  # r3 > r1
        Pair(2, 3, False, 0.0, w),  # r2 > r3
    )
    assert (data.pairs, data.ties) == (6, 1)


def test_both_bad_dropped_or_kept_as_tie(fresh_store):
    (ann,) = _annotators(fresh_store, "ann")
    _pairwise(fresh_store, "p1", "a", "b", ann, "both_bad")
    _pairwise(fresh_store, "p2", "c", "d", ann, "tie")
    _pairwise(fresh_store, "p3", "e", "f", ann, "A")
    dropped = build_examples(fresh_store)
    assert [e.responses for e in dropped.examples] == [("c", "d"), ("e", "f")]
    assert (dropped.dropped_both_bad, dropped.ties) == (1, 1)
    kept = build_examples(fresh_store, both_bad="tie")
    assert [e.pairs[0].tie for e in kept.examples] == [True, True, False]
    assert kept.dropped_both_bad == 0


def test_several_annotators_each_or_majority_and_disagreement(fresh_store):
    a, b, c = _annotators(fresh_store, "a", "b", "c")
    cid = _pairwise(fresh_store, "p", "x", "y", a, "A", strength="much")
    ids = fresh_store.comparison(cid).response_ids
    fresh_store.add_label(Label.pairwise(cid, b, ids, "A"))
    fresh_store.add_label(Label.pairwise(cid, c, ids, "B"))
    each = build_examples(fresh_store, margin_much=1.0)
    assert [e.annotator for e in each.examples] == ["a", "b", "c"]
    assert [e.pairs[0].better for e in each.examples] == [0, 0, 1]
    # 3 annotator pairs on one response pair: (a,b) agree, (a,c) and (b,c) disagree
    assert each.disagreement == pytest.approx(2 / 3)
    maj = build_examples(fresh_store, aggregate="majority", margin_much=1.0)
    (ex,) = maj.examples
    # 2 of 3 say x better; margin = mean over the agreeing labels (1.0 and 0.0)
    assert ex.pairs == (Pair(0, 1, False, 0.5, 1.0),)
    assert ex.annotator == "majority" and len(ex.label_ids) == 3
    assert ex.tiers == (0, 1)


def test_majority_split_vote_is_a_tie(fresh_store):
    a, b = _annotators(fresh_store, "a", "b")
    cid = _pairwise(fresh_store, "p", "x", "y", a, "A")
    fresh_store.add_label(Label.pairwise(cid, b, fresh_store.comparison(cid).response_ids, "B"))
    (ex,) = build_examples(fresh_store, aggregate="majority").examples
    assert ex.pairs == (Pair(0, 1, True, 0.0, 1.0),)
    assert ex.tiers == (0, 0)
    assert build_examples(fresh_store).disagreement == 1.0


def test_round_filter(fresh_store):
    (ann,) = _annotators(fresh_store, "ann")
    cid0 = fresh_store.add_comparison_texts("p0", ["a", "b"], round=0)
    cid1 = fresh_store.add_comparison_texts("p1", ["c", "d"], round=1)
    for cid in (cid0, cid1):
        fresh_store.add_label(
            Label.pairwise(cid, ann, fresh_store.comparison(cid).response_ids, "A")
        )
    assert [e.comparison_id for e in build_examples(fresh_store, round=0).examples] == [cid0]
    assert len(build_examples(fresh_store, round=1).examples) == 2


def test_split_by_prompt_is_deterministic_and_disjoint(fresh_store):
    a, b = _annotators(fresh_store, "a", "b")
    for i in range(20):
        cid = _pairwise(fresh_store, f"prompt {i}", f"x{i}", f"y{i}", a, "A")
        fresh_store.add_label(Label.pairwise(cid, b, fresh_store.comparison(cid).response_ids, "B"))
    ex = build_examples(fresh_store).examples
    train, held = split_by_prompt(ex, 0.2, seed=3)
    assert len(held) == 8 and len(train) == 32  # 4 prompts x 2 annotators held out
    assert not {e.prompt_id for e in train} & {e.prompt_id for e in held}
    again = split_by_prompt(ex, 0.2, seed=3)
    assert again == (train, held)
    other = split_by_prompt(ex, 0.2, seed=4)
    assert {e.prompt_id for e in other[1]} != {e.prompt_id for e in held}
    # a prompt keeps its side when more prompts are labeled later
    held_ids = {e.prompt_id for e in held}
    _, held_more = split_by_prompt(ex + ex[:0], 0.2, seed=3)
    assert {e.prompt_id for e in held_more} == held_ids
    assert split_by_prompt(ex, 0.0) == (ex, ())


def test_errors_no_labels_single_class_too_few(fresh_store):
    with pytest.raises(RewardDataError, match="no labels up to round 0"):
        check_trainable(build_examples(fresh_store, round=0), 0)
    (ann,) = _annotators(fresh_store, "ann")
    _pairwise(fresh_store, "p", "a", "b", ann, "both_bad")
    with pytest.raises(RewardDataError, match="'both bad'"):
        check_trainable(build_examples(fresh_store), None)
    _pairwise(fresh_store, "q", "c", "d", ann, "tie")
    with pytest.raises(RewardDataError, match="single label class"):
        check_trainable(build_examples(fresh_store), None)
    _pairwise(fresh_store, "q", "e", "f", ann, "A")
    data = build_examples(fresh_store)
    check_trainable(data, None)
    with pytest.raises(RewardDataError, match="only 1 labeled prompt"):
        split_by_prompt(data.examples, 0.1)
