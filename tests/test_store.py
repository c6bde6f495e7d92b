import json
import sqlite3

import pytest

from rankloop.data.migrations import MIGRATIONS, applied, migrate, schema_version
from rankloop.data.records import Annotator, Label, Message, Prompt, Response, Round, Sampling
from rankloop.data.store import Store, StoreError, check_secret, unknown_user_hash


def rows(store, sql):
    return [tuple(r) for r in store.db.execute(sql).fetchall()]


# -- migrations ---------------------------------------------------------------------------------


def test_migration_0001_initial_creates_the_schema():
    import sqlite_utils

    db = sqlite_utils.Database(memory=True)
    assert migrate(db, upto="0001_initial") == ["0001_initial"]
    assert set(db.table_names()) >= {
        "_migrations",
        "prompts",
        "responses",
        "comparisons",
        "comparison_responses",
        "annotators",
        "labels",
        "rounds",
    }
    assert db["labels"].columns_dict == {
        "id": int,
        "comparison_id": int,
        "annotator_id": int,
        "mode": str,
        "ranking": str,
        "choice": str,
        "strength": str,
        "margin": float,
        "display_order": str,
        "rationale": str,
        "seconds_spent": float,
        "source": str,
        "request_id": str,
        "created_at": str,
    }
    assert {fk.other_table for fk in db["labels"].foreign_keys} == {"comparisons", "annotators"}
    assert [i.columns for i in db["labels"].indexes if i.unique] == [
        ["request_id"],
        ["comparison_id", "annotator_id"],
    ]
    assert schema_version(db) == 1


def test_migration_0004_label_ids_are_never_given_twice(tmp_path):
    """An older store: labels 1-3, then label 3 undone (its row kept in label_revisions). After
    the migration the next label is 4, never 3 again; indexes and queue triggers still work."""
    import random

    import sqlite_utils

    from rankloop.data import queue
    from rankloop.data.records import Judgment

    db = sqlite_utils.Database(tmp_path / "old.db")
    migrate(db, upto="0003_queue_counts")
    db.execute(
        "insert into annotators (id, name, role, created_at) values (1, 'ann', 'annotator', 'x')"
    )
    db.execute(
        "insert into prompts (id, hash, messages, created_at) values (1, 'h', "
        '\'[{"role": "user", "content": "q"}]\', \'x\')'
    )
    for c in range(1, 5):
        db.execute(
            "insert into responses (id, prompt_id, hash, text, round, created_at) "
            "values (?, 1, ?, ?, 0, 'x'), (?, 1, ?, ?, 0, 'x')",
            [2 * c - 1, f"r{c}a", f"a{c}", 2 * c, f"r{c}b", f"b{c}"],
        )
        db.execute(
            "insert into comparisons (id, prompt_id, hash, round, created_at) "
            "values (?, 1, ?, 0, 'x')",
            [c, f"c{c}"],
        )
        db.execute(
            "insert into comparison_responses values (?, ?, 0), (?, ?, 1)", [c, 2 * c - 1, c, 2 * c]
        )
    for i in (1, 2, 3):
        db.execute(
            "insert into labels (id, comparison_id, annotator_id, mode, ranking, "
            "display_order, source, request_id, created_at) values "
            "(?, ?, 1, 'pairwise', ?, ?, 'human', ?, 'x')",
            [i, i, json.dumps([[2 * i - 1], [2 * i]]), json.dumps([2 * i - 1, 2 * i]), f"rq{i}"],
        )
    db.execute(
        "insert into label_revisions (label_id, comparison_id, annotator_id, action, "
        "label, created_at) values (3, 3, 1, 'undo', '{}', 'x')"
    )
    db.execute("delete from labels where id = 3")
    db.conn.commit()
    db.conn.close()

    store = Store.open(tmp_path / "old.db")  # applies 0004 and the rest
    assert "0004_label_ids_never_reused" in applied(store.db)
    assert rows(store, "select id, comparison_id from labels order by id") == [(1, 1), (2, 2)]
    rng = random.Random(0)
    t = queue.next_task(store, 1, now=0, rng=rng)
    assert t.comparison.id == 3
    assert queue.submit(store, 1, 3, t.request_id, Judgment(choice="B")) == 4  # not 3 again
    queue.undo_last(store, 1, now=0, rng=rng)
    t = queue.next_task(store, 1, now=0, rng=rng)
    assert queue.submit(store, 1, 3, t.request_id, Judgment(choice="tie")) == 5  # not 4 again
    assert rows(store, "select label_id from label_revisions order by id") == [(3,), (4,)]
    assert rows(store, "select comparison_id, labels from comparison_queue order by 1") == [
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 0),
    ]
    with pytest.raises(sqlite3.IntegrityError):  # still one label per annotator and comparison
        store.db.execute(
            "insert into labels (comparison_id, annotator_id, mode, ranking, "
            "source, created_at) values (1, 1, 'pairwise', '[]', 'human', 'x')"
        )
    store.close()


def test_migrate_is_idempotent_and_records_names(fresh_store):
    assert applied(fresh_store.db) == [name for name, _ in MIGRATIONS]
    assert migrate(fresh_store.db) == []
    assert fresh_store.schema_version == len(MIGRATIONS)


def test_failing_migration_rolls_back_whole(monkeypatch):
    import sqlite_utils

    db = sqlite_utils.Database(memory=True)
    migrate(db)

    def broken(db):
        db["half_made"].create({"id": int}, pk="id")
        raise RuntimeError("boom")

    monkeypatch.setattr(
        "rankloop.data.migrations.MIGRATIONS", MIGRATIONS + [("9999_broken", broken)]
    )
    with pytest.raises(RuntimeError):
        migrate(db)
    assert "half_made" not in db.table_names()
    assert "9999_broken" not in applied(db)
    assert schema_version(db) == len(MIGRATIONS)


def test_open_sets_wal_foreign_keys_and_full_sync(tmp_path):
    store = Store.open(tmp_path / "x.db")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


# -- prompts, responses, comparisons --------------------------------------------------------


def test_prompts_are_deduplicated_by_content(fresh_store):
    conv = Prompt(
        messages=(
            Message("user", "Hi"),
            Message("assistant", "Hello!"),
            Message("user", "Tell me a joke"),
        )
    )
    ids = fresh_store.add_prompts([Prompt.from_text("Say hi"), conv, Prompt.from_text("Say hi")])
    assert ids == [1, 2, 1]
    assert rows(fresh_store, "select id, messages, source from prompts") == [
        (1, '[{"role": "user", "content": "Say hi"}]', "import"),
        (
            2,
            (
                '[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, '
                '{"role": "user", "content": "Tell me a joke"}]'
            ),
            "import",
        ),
    ]
    assert fresh_store.prompt(2).messages == conv.messages
    assert fresh_store.prompt(2).is_conversation


def test_prompt_must_end_with_user_turn(fresh_store):
    bad = Prompt(messages=(Message("user", "Hi"), Message("assistant", "Hello")))
    with pytest.raises(StoreError, match="end with a user turn"):
        fresh_store.add_prompts([Prompt.from_text("fine"), bad])
    assert fresh_store.prompts() == []  # the good one was rolled back too


def test_responses_keep_sampling_and_policy(fresh_store):
    (pid,) = fresh_store.add_prompts([Prompt.from_text("p")])
    s = Sampling(temperature=0.7, top_p=0.9, max_new_tokens=16, seed=42)
    r = Response(
        prompt_id=pid,
        text="answer",
        round=0,
        policy="base",
        sample_index=0,
        sampling=s,
        finished=False,
    )
    assert fresh_store.add_responses([r, r]) == [1, 1]
    assert fresh_store.responses() == [
        Response(
            prompt_id=pid,
            text="answer",
            round=0,
            policy="base",
            sample_index=0,
            sampling=s,
            finished=False,
            id=1,
        )
    ]
    with pytest.raises(StoreError, match="prompt 99"):
        fresh_store.add_responses([Response(prompt_id=99, text="x")])


def test_add_comparison_texts_is_idempotent(fresh_store):
    cid = fresh_store.add_comparison_texts("Say hi", ["Hi!", "Hello.", "Hey"])
    assert fresh_store.add_comparison_texts("Say hi", ["Hi!", "Hello.", "Hey"]) == cid
    comp = fresh_store.comparison(cid)
    assert comp.response_ids == (1, 2, 3)
    assert [r.text for r in fresh_store.responses(ids=list(comp.response_ids))] == [
        "Hi!",
        "Hello.",
        "Hey",
    ]
    assert rows(fresh_store, "select count(*) from comparisons") == [(1,)]


def test_comparison_rejects_responses_of_another_prompt(fresh_store):
    a = fresh_store.add_comparison_texts("A", ["a1", "a2"])
    b = fresh_store.add_comparison_texts("B", ["b1", "b2"])
    ra, rb = fresh_store.comparison(a).response_ids[0], fresh_store.comparison(b).response_ids[0]
    with pytest.raises(StoreError, match="must answer its prompt"):
        fresh_store.add_comparison(1, [ra, rb])
    assert len(fresh_store.comparisons()) == 2


# -- annotators and labels ------------------------------------------------------------------


def test_annotator_secret_is_hashed(fresh_store):
    ann, secret = fresh_store.add_annotator("ada", role="admin")
    stored = fresh_store.db.execute("select secret_hash from annotators").fetchone()[0]
    assert secret not in stored and stored.startswith("pbkdf2$")
    assert check_secret(secret, stored)
    assert fresh_store.authenticate("ada", secret) == ann
    assert fresh_store.authenticate("ada", "wrong") is None
    with pytest.raises(StoreError, match="already exists"):
        fresh_store.add_annotator("ada")


def test_accounts_disable_enable_reset_and_role(fresh_store, monkeypatch):
    s = fresh_store
    _root, root_secret = s.add_annotator("root", role="admin", secret="r00t")
    ann, ann_secret = s.add_annotator("ann")
    s.external_annotator("import:x.jsonl")
    # An unknown name or an account nobody logs in as costs one hash, like a wrong secret.
    unknown_user_hash()  # made once per process (the app makes it before it serves)
    hashed = []
    real = __import__("hashlib").pbkdf2_hmac
    monkeypatch.setattr("hashlib.pbkdf2_hmac", lambda *a: hashed.append(a[3]) or real(*a))
    for name in ("nobody", "import:x.jsonl", "ann"):
        assert s.authenticate(name, "wrong") is None
    assert hashed == [200_000] * 3
    monkeypatch.undo()

    assert s.set_disabled("ann", True) == Annotator("ann", "annotator", ann.id, disabled=True)
    assert s.authenticate("ann", ann_secret) is None and s.credentials("ann") is None
    assert s.annotator("ann").disabled
    assert rows(s, "select name, disabled_at is not null from annotators") == [
        ("root", 0),
        ("ann", 1),
        ("import:x.jsonl", 0),
    ]
    s.set_disabled("ann", False)
    assert s.authenticate("ann", ann_secret) == ann

    new = s.set_secret("ann")
    assert new != ann_secret and s.authenticate("ann", ann_secret) is None
    assert s.authenticate("ann", new) == ann

    # The last enabled admin can be neither disabled nor demoted; with a second admin it can.
    for change in (lambda: s.set_disabled("root", True), lambda: s.set_role("root", "annotator")):
        with pytest.raises(
            StoreError, match="'root' is the only enabled admin: make another account admin first"
        ):
            change()
    assert s.set_role("ann", "admin").role == "admin"
    assert s.set_role("root", "annotator").role == "annotator"
    assert s.authenticate("root", root_secret).role == "annotator"
    for bad, message in (
        (
            lambda: s.set_role("ann", "external"),
            ("a role is one of annotator, admin; got 'external'"),
        ),
        (lambda: s.set_disabled("import:x.jsonl", True), "no account named"),
        (lambda: s.set_secret("ghost"), "no account named 'ghost'"),
        (lambda: s.add_annotator("x" * 101), "the limit is 100"),
        (lambda: s.add_annotator("bad\ud800"), "half of a surrogate pair"),
    ):
        with pytest.raises(StoreError, match=message):
            bad()
    assert [(a.name, a.role, a.disabled) for a in s.annotators()] == [
        ("root", "annotator", False),
        ("ann", "admin", False),
        ("import:x.jsonl", "external", False),
    ]


def test_pairwise_label_row_and_idempotent_retry(fresh_store):
    cid = fresh_store.add_comparison_texts("Q", ["r1", "r2"])
    ann, _ = fresh_store.add_annotator("bob")
    lab = Label.pairwise(
        cid,
        ann.id,
        display_order=(2, 1),
        choice="A",
        strength="much",
        rationale="clearer",
        seconds_spent=12.5,
        request_id="req-1",
        created_at="2026-01-01T00:00:00",
    )
    assert fresh_store.add_label(lab) == 1
    assert fresh_store.add_label(lab) == 1  # a retried request records once
    assert rows(fresh_store, "select * from labels") == [
        (
            1,
            cid,
            ann.id,
            "pairwise",
            "[[2], [1]]",
            "A",
            "much",
            None,
            "[2, 1]",
            "clearer",
            12.5,
            "human",
            "req-1",
            "2026-01-01T00:00:00",
        )
    ]
    with pytest.raises(StoreError, match="already labeled"):
        fresh_store.add_label(Label.pairwise(cid, ann.id, (1, 2), "B", request_id="req-2"))
    assert rows(fresh_store, "select count(*) from labels") == [(1,)]


def test_label_ranking_must_cover_the_comparison(fresh_store):
    cid = fresh_store.add_comparison_texts("Q", ["r1", "r2", "r3"])
    ann, _ = fresh_store.add_annotator("bob")
    with pytest.raises(ValueError, match="exactly once"):
        fresh_store.add_label(Label(cid, ann.id, ranking=((1,), (2,))))
    with pytest.raises(StoreError, match="exactly 2"):
        fresh_store.add_label(
            Label(cid, ann.id, ranking=((1, 2, 3),), mode="pairwise", choice="tie")
        )
    assert fresh_store.labels() == []


def test_preferences_expand_a_ranking_with_ties(fresh_store):
    cid = fresh_store.add_comparison_texts("Q", ["best", "mid1", "mid2", "worst"])
    ann, _ = fresh_store.add_annotator("cy")
    fresh_store.add_label(Label(cid, ann.id, ranking=((1,), (2, 3), (4,))))
    got = [
        (p.chosen, p.rejected, p.tie, p.pairs_in_label, p.annotator)
        for p in fresh_store.preferences()
    ]
    assert got == [
        ("best", "mid1", False, 6, "cy"),
        ("best", "mid2", False, 6, "cy"),
        ("best", "worst", False, 6, "cy"),
        ("mid1", "mid2", True, 6, "cy"),
        ("mid1", "worst", False, 6, "cy"),
        ("mid2", "worst", False, 6, "cy"),
    ]


def test_both_bad_is_a_tie_flagged_both_bad(fresh_store):
    cid = fresh_store.add_comparison_texts("Q", ["r1", "r2"])
    ann, _ = fresh_store.add_annotator("dee")
    fresh_store.add_label(Label.pairwise(cid, ann.id, (1, 2), "both_bad"))
    (p,) = fresh_store.preferences()
    assert (p.tie, p.both_bad, p.chosen, p.rejected) == (True, True, "r1", "r2")


def test_labels_up_to_round(fresh_store):
    ann, _ = fresh_store.add_annotator("eve")
    c0 = fresh_store.add_comparison_texts("Q0", ["a", "b"], round=0)
    c1 = fresh_store.add_comparison_texts("Q1", ["a", "b"], round=1)
    fresh_store.add_labels(
        [Label.pairwise(c0, ann.id, (1, 2), "A"), Label.pairwise(c1, ann.id, (3, 4), "B")]
    )
    assert [lab.comparison_id for lab in fresh_store.labels(round=0)] == [c0]
    assert [lab.comparison_id for lab in fresh_store.labels(round=1)] == [c0, c1]


# -- rounds and status ----------------------------------------------------------------------


def test_rounds_merge_metrics(fresh_store):
    fresh_store.save_round(
        Round(0, reward_model="rounds/0/reward", metrics={"reward/accuracy": 0.7})
    )
    fresh_store.save_round(Round(0, policy="rounds/0/policy", metrics={"objective/kl": 0.1}))
    r = fresh_store.round(0)
    assert (r.policy, r.reward_model, r.metrics) == (
        "rounds/0/policy",
        "rounds/0/reward",
        {"reward/accuracy": 0.7, "objective/kl": 0.1},
    )


def test_status_counts(fresh_store):
    ann, _ = fresh_store.add_annotator("fay")
    fresh_store.external_annotator("import:prefs.jsonl")
    c = fresh_store.add_comparison_texts("Q", ["a", "b"])
    fresh_store.add_comparison_texts("Q2", ["a", "b", "c"], round=1)
    fresh_store.add_label(Label.pairwise(c, ann.id, (1, 2), "tie"))
    s = fresh_store.status()
    assert (
        s.prompts,
        s.responses_per_round,
        s.comparisons,
        s.comparisons_pending,
        s.comparisons_labeled,
        s.labels,
        s.annotators,
    ) == (2, {0: 2, 1: 3}, 2, 1, 1, 1, 1)


def test_foreign_keys_are_enforced(fresh_store):
    with pytest.raises(sqlite3.IntegrityError):
        fresh_store.db.execute(
            "insert into responses (prompt_id, hash, text, round, created_at) "
            "values (42, 'h', 't', 0, 'now')"
        )


def test_records_reject_bad_values():
    with pytest.raises(ValueError, match="role"):
        Message("robot", "hi")
    with pytest.raises(ValueError, match="choice"):
        Label.pairwise(1, 1, (1, 2), "C")
    with pytest.raises(ValueError, match="strength"):
        Label(1, 1, ranking=((1,), (2,)), strength="enormously")
    assert json.loads(json.dumps(Prompt.from_text("x").as_chat())) == [
        {"role": "user", "content": "x"}
    ]
