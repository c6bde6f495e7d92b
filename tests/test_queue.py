"""The labeling queue (data/queue.py) and migration 0002, over real stores."""

from __future__ import annotations

import json
import random
import threading

import pytest
import sqlite_utils

from rankloop.data import queue
from rankloop.data.migrations import applied, migrate, schema_version
from rankloop.data.records import Judgment
from rankloop.data.store import Store, StoreError


def setup(store: Store, comparisons: int = 3, k: int = 2, annotators=("ann", "bob")):
    """`comparisons` prompts with k responses each, one comparison per prompt."""
    cids = [
        store.add_comparison_texts(f"prompt {i}", [f"p{i} r{j}" for j in range(k)])
        for i in range(comparisons)
    ]
    ids = [store.add_annotator(name)[0].id for name in annotators]
    return cids, ids


def lease(store, aid, now=0.0, seed=0, **kw):
    return queue.next_task(store, aid, now=now, rng=random.Random(seed), **kw)


def test_migration_0002_adds_queue_tables():
    db = sqlite_utils.Database(memory=True)
    assert migrate(db, upto="0001_initial") == ["0001_initial"]
    assert "leases" not in db.table_names()
    assert migrate(db, upto="0002_labeling_queue") == ["0002_labeling_queue"]
    assert applied(db) == ["0001_initial", "0002_labeling_queue"] and schema_version(db) == 2
    assert db["leases"].columns_dict == {
        "comparison_id": int,
        "annotator_id": int,
        "display_order": str,
        "request_id": str,
        "issued_at": float,
        "expires_at": float,
    }
    assert db["leases"].pks == ["comparison_id", "annotator_id"]
    assert {tuple(i.columns) for i in db["skips"].indexes if i.unique} == {
        ("comparison_id", "annotator_id")
    }
    for table in ("flags", "label_revisions", "response_scores"):
        assert table in db.table_names()
    assert ["annotator_id", "created_at"] in [i.columns for i in db["labels"].indexes]
    assert migrate(db, upto="0002_labeling_queue") == []  # never twice


def test_migration_0003_backfills_label_counts_and_triggers_keep_them(tmp_path):
    db = sqlite_utils.Database(tmp_path / "old.db")
    migrate(db, upto="0002_labeling_queue")
    old = Store.__new__(Store)  # a store at schema 2, as an older rankloop left it
    old.db = db
    cids = [old.add_comparison_texts(f"p{i}", ["x", "y"]) for i in range(3)]
    aid = old.add_annotator("ann")[0].id
    from rankloop.data.records import Label

    old.add_label(Label.pairwise(cids[1], aid, old.comparison(cids[1]).response_ids, "A"))
    assert migrate(db, upto="0003_queue_counts") == ["0003_queue_counts"]
    assert schema_version(db) == 3
    counts = lambda: db.execute(
        "select comparison_id, labels from comparison_queue order by 1"
    ).fetchall()
    assert counts() == [(cids[0], 0), (cids[1], 1), (cids[2], 0)]
    store = Store(db)
    c3 = store.add_comparison_texts("p3", ["x", "y"])
    lid = store.add_label(Label.pairwise(c3, aid, store.comparison(c3).response_ids, "B"))
    assert counts()[-1] == (c3, 1)
    db.execute("delete from labels where id = ?", [lid])
    assert counts()[-1] == (c3, 0)
    db.execute("delete from comparison_responses where comparison_id = ?", [c3])
    db.execute("delete from comparisons where id = ?", [c3])
    assert counts() == [(cids[0], 0), (cids[1], 1), (cids[2], 0)]
    assert "comparison_gaps" in db.table_names()


def test_oldest_first_and_two_annotators_never_share_while_others_remain(fresh_store):
    (c1, c2, _c3), (a, b) = setup(fresh_store)
    ta, tb = lease(fresh_store, a), lease(fresh_store, b)
    assert (ta.comparison.id, tb.comparison.id) == (c1, c2)
    assert sorted(ta.display_order) == sorted(fresh_store.comparison(c1).response_ids)
    # Asking again (a reloaded page) gives the same lease back, same order and request id.
    again = lease(fresh_store, a, now=5.0, seed=99)
    assert (again.comparison.id, again.display_order, again.request_id) == (
        c1,
        ta.display_order,
        ta.request_id,
    )


def test_a_task_held_by_another_is_not_given_when_n_is_1(fresh_store):
    (c1,), (a, b) = setup(fresh_store, comparisons=1)
    assert lease(fresh_store, a).comparison.id == c1
    assert lease(fresh_store, b) is None
    assert queue.progress(fresh_store, b).left == 1  # there is work, someone else holds it
    # With n = 2 the second annotator gets it too (an independent second label).
    assert lease(fresh_store, b, n=2).comparison.id == c1


def test_an_abandoned_lease_expires_and_the_task_returns(fresh_store):
    (c1,), (a, b) = setup(fresh_store, comparisons=1)
    assert lease(fresh_store, a, now=0.0, lease_seconds=60).comparison.id == c1
    assert lease(fresh_store, b, now=59.0, lease_seconds=60) is None
    assert lease(fresh_store, b, now=61.0, lease_seconds=60).comparison.id == c1


def test_submit_pairwise_records_one_exact_row_and_is_idempotent(fresh_store):
    (c1, c2, _), (a, _) = setup(fresh_store)
    t = lease(fresh_store, a)
    first, second = t.display_order
    lid = queue.submit(
        fresh_store,
        a,
        c1,
        t.request_id,
        Judgment(choice="B", strength="much", rationale="  clearer  ", seconds_spent=4.5),
    )
    again = queue.submit(fresh_store, a, c1, t.request_id, Judgment(choice="A"))
    assert again == lid
    row = fresh_store.db["labels"].get(lid)
    assert {
        k: row[k]
        for k in (
            "comparison_id",
            "annotator_id",
            "mode",
            "ranking",
            "choice",
            "strength",
            "margin",
            "display_order",
            "rationale",
            "seconds_spent",
            "source",
            "request_id",
        )
    } == {
        "comparison_id": c1,
        "annotator_id": a,
        "mode": "pairwise",
        "ranking": json.dumps([[second], [first]]),
        "choice": "B",
        "strength": "much",
        "margin": None,  # the reward trainer's [reward] margin_much applies (one setting)
        "display_order": json.dumps([first, second]),
        "rationale": "clearer",
        "seconds_spent": 4.5,
        "source": "human",
        "request_id": t.request_id,
    }
    assert fresh_store.db["labels"].count == 1 and fresh_store.db["leases"].count == 0
    assert lease(fresh_store, a).comparison.id == c2


def test_submit_refuses_without_the_lease_and_leaves_the_db_unchanged(fresh_store):
    (c1, _c2, _), (a, b) = setup(fresh_store)
    t = lease(fresh_store, a)
    with pytest.raises(StoreError, match="not assigned to you"):
        queue.submit(fresh_store, b, c1, t.request_id, Judgment(choice="A"))  # someone else's task
    with pytest.raises(StoreError, match="not assigned to you"):
        queue.submit(fresh_store, a, c1, "forged", Judgment(choice="A"))
    with pytest.raises(StoreError, match="strength applies"):
        queue.submit(fresh_store, a, c1, t.request_id, Judgment(choice="tie", strength="much"))
    with pytest.raises(StoreError, match="choose A or B"):
        queue.submit(fresh_store, a, c1, t.request_id, Judgment())
    assert fresh_store.db["labels"].count == 0 and fresh_store.db["leases"].count == 1


def test_submit_k_wise_ranking_with_a_tie(fresh_store):
    (c1,), (a, _) = setup(fresh_store, comparisons=1, k=4)
    t = lease(fresh_store, a)
    assert t.mode == "ranking"
    o = t.display_order
    lid = queue.submit(fresh_store, a, c1, t.request_id, Judgment(positions=[[2], [0, 3], [1]]))
    assert json.loads(fresh_store.db["labels"].get(lid)["ranking"]) == [
        [o[2]],
        [o[0], o[3]],
        [o[1]],
    ]
    t2 = lease(fresh_store, a)
    assert t2 is None
    with pytest.raises(StoreError, match="A / B / tie"):
        fresh_store.add_comparison_texts("x", ["1", "2", "3"])
        t3 = lease(fresh_store, a)
        queue.submit(fresh_store, a, t3.comparison.id, t3.request_id, Judgment(choice="A"))
    with pytest.raises(StoreError, match="exactly once"):
        queue.submit(
            fresh_store, a, t3.comparison.id, t3.request_id, Judgment(positions=[[0], [1]])
        )
    with pytest.raises(StoreError, match="positions 1..3"):
        queue.submit(
            fresh_store, a, t3.comparison.id, t3.request_id, Judgment(positions=[[0], [1], [7]])
        )


def test_skip_is_per_annotator_and_flag_holds_for_everyone(fresh_store):
    (c1, c2, c3), (a, b) = setup(fresh_store)
    lease(fresh_store, a)
    with pytest.raises(StoreError, match="say why"):
        queue.skip(fresh_store, a, c1, "  ")
    queue.skip(fresh_store, a, c1, "too long to judge now")
    assert lease(fresh_store, a).comparison.id == c2  # a skipped c1...
    assert lease(fresh_store, b).comparison.id == c1  # ...b still gets it
    fid = queue.flag(fresh_store, a, c2, "unsafe", "asks for a weapon")
    assert [
        (f["id"], f["comparison_id"], f["annotator"], f["kind"], f["note"])
        for f in queue.open_flags(fresh_store)
    ] == [(fid, c2, "ann", "unsafe", "asks for a weapon")]
    with pytest.raises(StoreError, match="a flag is one of"):
        queue.flag(fresh_store, a, c3, "boring")
    assert lease(fresh_store, a).comparison.id == c3
    assert queue.progress(fresh_store, b).left == 2  # c1 (b holds it) and c3; c2 is flagged
    queue.resolve_flag(fresh_store, fid, a)
    assert queue.progress(fresh_store, b).left == 3
    with pytest.raises(StoreError, match="no open flag"):
        queue.resolve_flag(fresh_store, fid, a)


def test_undo_keeps_the_label_and_hands_the_task_back_to_edit(fresh_store):
    (c1, _c2, _), (a, _) = setup(fresh_store)
    t = lease(fresh_store, a)
    lid = queue.submit(fresh_store, a, c1, t.request_id, Judgment(choice="A", seconds_spent=2.0))
    lease(fresh_store, a)  # moved on to c2
    label, redo = queue.undo_last(fresh_store, a, now=10.0, rng=random.Random(1))
    assert (label.id, label.choice, redo.comparison.id) == (lid, "A", c1)
    assert redo.display_order == t.display_order and redo.request_id != t.request_id
    assert fresh_store.db["labels"].count == 0
    (rev,) = list(fresh_store.db["label_revisions"].rows)
    assert (rev["label_id"], rev["action"], json.loads(rev["label"])["choice"]) == (
        lid,
        "undo",
        "A",
    )
    assert lease(fresh_store, a, now=11.0).comparison.id == c1  # the redo, not c2
    new = queue.submit(fresh_store, a, c1, redo.request_id, Judgment(choice="tie"))
    assert fresh_store.db["labels"].get(new)["choice"] == "tie"
    assert queue.undo_last(fresh_store, 999, now=0.0, rng=random.Random(0)) is None


def test_gold_is_mixed_in_and_kept_out_of_the_regular_queue(fresh_store):
    (c1, c2, c3), (a, b) = setup(fresh_store)
    r1, r2 = fresh_store.comparison(c3).response_ids
    queue.set_gold(fresh_store, c3, [[r2], [r1]])
    assert fresh_store.comparison(c3).gold == ((r2,), (r1,))
    with pytest.raises(StoreError, match="exactly once"):
        queue.set_gold(fresh_store, c3, [[r2]])
    assert queue.progress(fresh_store, a).left == 2
    t = lease(fresh_store, a, gold_rate=1.0)
    assert (t.comparison.id, t.gold) == (c3, True)
    queue.submit(
        fresh_store, a, c3, t.request_id, Judgment(choice="A" if t.display_order[0] == r2 else "B")
    )
    # Gold answered once: the next draw falls back to the regular queue.
    assert lease(fresh_store, a, gold_rate=1.0).comparison.id == c1
    assert lease(fresh_store, b, gold_rate=0.0).comparison.id == c2


def test_gold_agreement_and_pair_outcomes():
    assert queue.pair_outcomes([[3], [1, 2]]) == {(1, 2): 0, (1, 3): -1, (2, 3): -1}
    assert queue.gold_agreement([[1], [2]], [[1], [2]]) == 1.0
    assert queue.gold_agreement([[2], [1]], [[1], [2]]) == 0.0
    # 3 pairs: (1,2) tie vs 1>2 wrong, (1,3) right, (2,3) right.
    assert queue.gold_agreement([[1, 2], [3]], [[1], [2], [3]]) == pytest.approx(2 / 3)


def test_uncertainty_order_serves_the_smallest_score_gap_first(fresh_store):
    (c1, c2, c3), (a, _) = setup(fresh_store)
    # Before any reward model scored anything, it falls back to oldest first.
    assert lease(fresh_store, a, order="uncertainty").comparison.id == c1
    fresh_store.db.execute("delete from leases")
    gaps = {c1: 2.0, c2: 0.1}  # c3 unscored
    for cid, gap in gaps.items():
        r1, r2 = fresh_store.comparison(cid).response_ids
        queue.record_scores(fresh_store, "rm-1", {r1: 1.0, r2: 1.0 + gap})
    got = []
    for _ in range(3):
        t = lease(fresh_store, a, order="uncertainty")
        got.append(t.comparison.id)
        queue.submit(fresh_store, a, t.comparison.id, t.request_id, Judgment(choice="tie"))
    assert got == [c2, c1, c3]


def test_random_order_and_display_order_follow_the_rng(fresh_store):
    _cids, (a, _b) = setup(fresh_store, comparisons=6)
    seen_orders = set()
    picks = []
    for seed in range(8):
        t = lease(fresh_store, a, order="random", seed=seed)
        picks.append(t.comparison.id)
        seen_orders.add(t.display_order == fresh_store.comparison(t.comparison.id).response_ids)
        fresh_store.db.execute("delete from leases")
    assert seen_orders == {True, False}  # both orders get shown
    assert len(set(picks)) > 1
    with pytest.raises(StoreError, match="unknown queue order"):
        lease(fresh_store, a, order="newest")


def test_progress_counts_today_and_total(fresh_store):
    (_c1, _c2, _c3), (a, _) = setup(fresh_store)
    for _ in range(2):
        t = lease(fresh_store, a)
        queue.submit(fresh_store, a, t.comparison.id, t.request_id, Judgment(choice="A"))
    fresh_store.db.execute("update labels set created_at = '2020-01-01T00:00:00' where id = 1")
    p = queue.progress(fresh_store, a)
    assert (p.labeled_today, p.labeled_total, p.left) == (1, 2, 1)
    assert queue.progress(fresh_store, a, today="2020-01-01").labeled_today == 1


def test_threads_with_own_connections_label_each_comparison_exactly_n_times(tmp_path):
    path = tmp_path / "q.db"
    store = Store.open(path)
    cids, ids = setup(store, comparisons=20, annotators=[f"a{i}" for i in range(6)])
    store.close()
    n, errors, acked = 2, [], []

    def work(aid, seed):
        s, rng = Store.open(path), random.Random(seed)
        try:
            while True:
                t = queue.next_task(s, aid, n=n, now=0.0, rng=rng)
                if t is None:
                    if queue.progress(s, aid, n=n).left == 0:
                        return
                    continue
                acked.append(
                    (
                        aid,
                        queue.submit(
                            s, aid, t.comparison.id, t.request_id, Judgment(choice=rng.choice("AB"))
                        ),
                    )
                )
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(e)
        finally:
            s.close()

    threads = [threading.Thread(target=work, args=(aid, i)) for i, aid in enumerate(ids)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    store = Store.open(path)
    rows = store.db.execute(
        "select comparison_id, count(*), count(distinct annotator_id) "
        "from labels group by comparison_id"
    ).fetchall()
    assert sorted(rows) == [(c, n, n) for c in cids]
    assert sorted(lid for _, lid in acked) == [
        r[0] for r in store.db.execute("select id from labels order by id")
    ]
    store.close()


def legacy_comparison(store: Store, k: int) -> int:
    """A comparison of k responses written straight into the tables, as an older store (before
    the store refused more than MAX_RESPONSES) may hold it."""
    from rankloop.data.records import Prompt, Response

    (pid,) = store.add_prompts([Prompt.from_text(f"{k} responses")])
    rids = store.add_responses(
        [Response(pid, f"r{j}", source="old", sample_index=j) for j in range(k)]
    )
    cid = (
        store.db["comparisons"]
        .insert({"prompt_id": pid, "hash": f"legacy-{k}", "round": 0, "created_at": "x"})
        .last_pk
    )
    store.db["comparison_responses"].insert_all(
        {"comparison_id": cid, "response_id": r, "position": i} for i, r in enumerate(rids)
    )
    return cid


def test_comparisons_the_page_cannot_show_are_refused_and_never_leased(fresh_store):
    from rankloop.data.records import MAX_RESPONSES

    s = fresh_store
    assert MAX_RESPONSES == 9
    with pytest.raises(
        StoreError, match="10 responses in one comparison; the labeling page shows at most 9"
    ):
        s.add_comparison_texts("too many", [f"r{j}" for j in range(10)])
    assert s.prompts() == []  # nothing of it was written
    nine = s.add_comparison_texts("nine", [f"r{j}" for j in range(9)])
    big12, big30 = legacy_comparison(s, 12), legacy_comparison(s, 30)
    (ann,) = [s.add_annotator("ann")[0].id]
    # The 30-response one even holds a live lease (from before the upgrade): not shown again.
    s.db["leases"].insert(
        {
            "comparison_id": big30,
            "annotator_id": ann,
            "display_order": "[]",
            "request_id": "old",
            "issued_at": 0.0,
            "expires_at": 1e12,
        }
    )
    assert queue.progress(s, ann).left == 1
    t = lease(s, ann, now=1.0)
    assert (t.comparison.id, len(t.responses)) == (nine, 9)
    queue.submit(s, ann, nine, t.request_id, Judgment(positions=[[p] for p in range(9)]))
    assert lease(s, ann, now=2.0) is None and queue.progress(s, ann).left == 0
    s.db.execute("update comparisons set gold = '[[1]]' where id in (?, ?)", [big12, big30])
    assert lease(s, ann, now=3.0, gold_rate=1.0) is None  # nor as gold
    assert [r["comparison_id"] for r in s.db["leases"].rows] == []


def test_scores_are_written_in_short_transactions_with_the_same_gaps(fresh_store, monkeypatch):
    """A whole queue's scores in one transaction held the write lock while annotators waited;
    now SCORE_CHUNK responses at a time, and the gaps come out as if written at once."""
    cids, _ = setup(fresh_store, comparisons=4, k=3)
    rids = [r for c in cids for r in fresh_store.comparison(c).response_ids]
    scores = {r: float((r * 7) % 5) for r in rids}  # 12 responses
    statements = []
    fresh_store.db.conn.set_trace_callback(statements.append)
    monkeypatch.setattr(queue, "SCORE_CHUNK", 5)
    assert queue.record_scores(fresh_store, "rm", scores) == 12
    fresh_store.db.conn.set_trace_callback(None)
    assert statements.count("BEGIN IMMEDIATE") == 3  # 5 + 5 + 2
    expected = {
        c: min(
            abs(scores[i] - scores[j])
            for i in fresh_store.comparison(c).response_ids
            for j in fresh_store.comparison(c).response_ids
            if i < j
        )
        for c in cids
    }
    assert (
        dict(
            fresh_store.db.execute(
                "select comparison_id, gap from comparison_gaps where reward_model = 'rm'"
            ).fetchall()
        )
        == expected
    )


def test_migration_0022_adds_the_spread_column_to_an_older_store():
    db = sqlite_utils.Database(memory=True)
    migrate(db, upto="0021_round_optimizer")
    assert "spread" not in db["comparison_gaps"].columns_dict
    assert migrate(db, upto="0022_comparison_gap_spread") == ["0022_comparison_gap_spread"]
    assert db["comparison_gaps"].columns_dict["spread"] is float
    assert migrate(db, upto="0022_comparison_gap_spread") == []  # never twice


def test_record_scores_with_members_writes_each_comparisons_largest_spread(fresh_store):
    cid = fresh_store.add_comparison_texts("q", ["a", "b", "c"])
    ra, rb, rc = fresh_store.comparison(cid).response_ids
    # gaps per member: a-b (1, 1) std 0; a-c (0, 4) std 2; b-c (-1, 3) std 2 -> spread 2
    members = {ra: [1.0, 5.0], rb: [0.0, 4.0], rc: [1.0, 1.0]}
    means = {r: sum(m) / 2 for r, m in members.items()}
    assert queue.record_scores(fresh_store, "rm", means, members) == 3
    row = fresh_store.db.execute("select gap, spread from comparison_gaps").fetchone()
    # means a 3, b 2, c 1: the smallest gap 1; the members disagree most on a-c and b-c: 2
    assert row == (pytest.approx(1.0), pytest.approx(2.0))
    assert queue.gap_spread([2.0, 5.0], [1.0, 2.0]) == pytest.approx(1.0)  # gaps 1, 3


def test_balanced_order_gives_every_prompt_a_label_before_any_prompt_gets_two(fresh_store):
    """Prompt A holds the two most uncertain comparisons, B the least uncertain one: the
    uncertainty order serves A, A, B; the balanced order A (the most uncertain), then B (A has
    a label now, B none), then A's second."""
    a1 = fresh_store.add_comparison_texts("prompt A", ["x1", "y1"])
    a2 = fresh_store.add_comparison_texts("prompt A", ["x2", "y2"])
    b1 = fresh_store.add_comparison_texts("prompt B", ["x3", "y3"])
    assert fresh_store.comparison(a1).prompt_id == fresh_store.comparison(a2).prompt_id
    gaps = {a1: 0.1, a2: 0.2, b1: 0.9}  # a single model: the smallest gap is the least sure
    for cid, gap in gaps.items():
        r1, r2 = fresh_store.comparison(cid).response_ids
        queue.record_scores(fresh_store, "rm-1", {r1: 0.0, r2: gap})
    aid = fresh_store.add_annotator("ann")[0].id

    def served(order: str) -> list[int]:
        got = []
        for _ in range(3):
            t = lease(fresh_store, aid, order=order)
            got.append(t.comparison.id)
            queue.submit(fresh_store, aid, t.comparison.id, t.request_id, Judgment(choice="tie"))
        fresh_store.db.execute("delete from labels")
        return got

    assert served("uncertainty") == [a1, a2, b1]
    assert served("balanced") == [a1, b1, a2]
