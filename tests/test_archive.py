"""`rankloop backup`, `restore` and `export-all` (data/archive.py): an online backup while
another connection writes, a restore that keeps what it replaces, everything exported."""

from __future__ import annotations

import json
import random
import sqlite3
import threading

import pytest
from click.testing import CliRunner

from rankloop.app.cli import cli
from rankloop.app.project import Project
from rankloop.data import archive, queue
from rankloop.data.records import Judgment
from rankloop.data.store import Store, StoreError


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def label_all(store: Store, name: str, n: int | None = None) -> list[int]:
    """`name` labels open comparisons through the queue (A every time); returns label ids."""
    aid = (store.annotator(name) or store.add_annotator(name)[0]).id
    rng, ids = random.Random(0), []
    while n is None or len(ids) < n:
        t = queue.next_task(store, aid, now=0, rng=rng)
        if t is None:
            break
        ids.append(
            queue.submit(
                store,
                aid,
                t.comparison.id,
                t.request_id,
                Judgment(
                    choice="A" if len(t.responses) == 2 else None,
                    positions=None if len(t.responses) == 2 else [[0], [1], [2]],
                ),
            )
        )
    return ids


def test_a_backup_taken_while_another_connection_writes_is_one_whole_snapshot(tmp_path):
    path = tmp_path / "rankloop.db"
    store = Store.open(path)
    for i in range(300):
        store.add_comparison_texts(f"q{i}", ["yes", "no"])
    stop, written = threading.Event(), []

    def annotate():  # its own connection, labeling as fast as it can until told to stop
        writer = Store.open(path)
        while not stop.is_set() and len(written) < 300:
            written.extend(label_all(writer, "ann", 1))
        writer.close()

    t = threading.Thread(target=annotate)
    t.start()
    while len(written) < 20:  # the backup starts mid-stream
        threading.Event().wait(0.01)
    summary = archive.backup(store, tmp_path / "copy.db")
    stop.set()
    t.join()
    copy = sqlite3.connect(tmp_path / "copy.db")
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # one file, no WAL
    n = copy.execute("select count(*) from labels").fetchone()[0]
    assert 20 <= n <= len(written) and summary.rows["labels"] == n
    # One snapshot: the trigger-kept counts agree with the labels themselves.
    assert copy.execute(
        "select count(*) from comparison_queue q where labels != (select "
        "count(*) from labels l where l.comparison_id = q.comparison_id)"
    ).fetchone() == (0,)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no .partial
    with pytest.raises(StoreError, match="exists: choose a new name"):
        archive.backup(store, tmp_path / "copy.db")
    copy.close()
    store.close()


def test_restore_brings_a_backup_back_and_keeps_what_it_replaced(tmp_path):
    Project.init(tmp_path / "p").close()
    db = tmp_path / "p" / "rankloop.db"
    store = Store.open(db)
    for i in range(4):
        store.add_comparison_texts(f"q{i}", ["yes", "no"])
    label_all(store, "ann", 2)
    assert run("backup", tmp_path / "b.db", "--project", tmp_path / "p").exit_code == 0
    label_all(store, "ann")  # two more after the backup
    store.close()

    got = run("restore", tmp_path / "b.db", "--project", tmp_path / "p")
    assert got.exit_code == 0, got.output
    assert "Restored 2 labels, 4 comparisons, 4 prompts from" in got.output
    store = Store.open(db)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [lab.id for lab in store.labels()] == [1, 2]
    assert label_all(store, "ann") == [3, 4]  # the restored store takes labels again
    store.close()
    (saved,) = (tmp_path / "p").glob("rankloop.db.before-restore-*")
    assert sqlite3.connect(saved).execute("select count(*) from labels").fetchone() == (4,)

    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    sqlite3.connect(tmp_path / "other.db").execute("create table t (x)").connection.commit()
    for bad, message in (
        ("junk.db", "is not an SQLite database"),
        ("other.db", "not a rankloop one"),
        ("missing.db", "no such file"),
    ):
        got = run("restore", tmp_path / bad, "--project", tmp_path / "p")
        assert got.exit_code == 1 and message in got.output
    assert Store.open(db).db["labels"].count == 4  # untouched by the refusals


def test_export_all_writes_what_the_team_collected(tmp_path, fresh_store):
    s = fresh_store
    cids = [s.add_comparison_texts(f"q{i}", ["yes", "no"]) for i in range(3)]
    ann, _ = s.add_annotator("ann", secret="pw")
    rng = random.Random(0)
    t = queue.next_task(s, ann.id, now=0, rng=rng)
    queue.submit(
        s,
        ann.id,
        t.comparison.id,
        t.request_id,
        Judgment(choice="B", strength="much", rationale="B is right", seconds_spent=7.5),
    )
    queue.undo_last(s, ann.id, now=1, rng=rng)
    t = queue.next_task(s, ann.id, now=1, rng=rng)
    queue.submit(
        s, ann.id, t.comparison.id, t.request_id, Judgment(choice="tie", seconds_spent=3.0)
    )
    t = queue.next_task(s, ann.id, now=2, rng=rng)
    queue.skip(s, ann.id, t.comparison.id, "too long to judge now")
    t = queue.next_task(s, ann.id, now=3, rng=rng)
    queue.flag(s, ann.id, t.comparison.id, "broken", "cut off")
    r1, r2 = s.comparison(cids[2]).response_ids
    queue.set_gold(s, cids[2], [[r2], [r1]])

    summary = archive.export_all(s, tmp_path / "all")

    def read(table):
        return [json.loads(line) for line in (tmp_path / "all" / f"{table}.jsonl").open()]

    (label,) = read("labels")
    order = label["display_order"]
    assert {
        k: label[k]
        for k in (
            "id",
            "comparison_id",
            "annotator",
            "mode",
            "choice",
            "strength",
            "rationale",
            "seconds_spent",
            "source",
        )
    } == {
        "id": 2,
        "comparison_id": cids[0],
        "annotator": "ann",
        "mode": "pairwise",
        "choice": "tie",
        "strength": None,
        "rationale": None,
        "seconds_spent": 3.0,
        "source": "human",
    }
    assert label["ranking"] == [order] and sorted(order) == list(s.comparison(cids[0]).response_ids)
    (undone,) = read("label_revisions")
    assert (
        undone["label_id"],
        undone["annotator"],
        undone["label"]["choice"],
        undone["label"]["rationale"],
        undone["label"]["seconds_spent"],
    ) == (1, "ann", "B", "B is right", 7.5)
    assert [(r["comparison_id"], r["reason"], r["annotator"]) for r in read("skips")] == [
        (cids[1], "too long to judge now", "ann")
    ]
    assert [(r["comparison_id"], r["kind"], r["note"]) for r in read("flags")] == [
        (cids[2], "broken", "cut off")
    ]
    assert [c["gold"] for c in read("comparisons")] == [None, None, [[r2], [r1]]]
    assert read("prompts")[0]["messages"] == [{"role": "user", "content": "q0"}]
    assert read("annotators") == [
        {
            "id": ann.id,
            "name": "ann",
            "role": "annotator",
            "created_at": read("annotators")[0]["created_at"],
            "disabled_at": None,
        }
    ]  # never the secret's hash
    manifest = json.loads((tmp_path / "all" / "manifest.json").read_text())
    assert manifest["rows"] == summary.rows and manifest["rows"]["labels"] == 1
    assert not (tmp_path / "all" / "leases.jsonl").exists()  # derived or passing state
    with pytest.raises(StoreError, match="is not empty: export into a new folder"):
        archive.export_all(s, tmp_path / "all")


def test_backup_and_export_all_commands(tmp_path):
    Project.init(tmp_path / "p").close()
    store = Store.open(tmp_path / "p" / "rankloop.db")
    store.add_comparison_texts("q", ["a", "b"])
    label_all(store, "ann")
    store.close()
    got = run("backup", tmp_path / "b.db", "--project", tmp_path / "p")
    assert got.exit_code == 0 and "Backed up 1 labels, 1 comparisons, 1 prompts to" in got.output
    again = run("backup", tmp_path / "b.db", "--project", tmp_path / "p")
    assert again.exit_code == 1 and "exists: choose a new name" in again.output
    got = run("export-all", tmp_path / "all", "--project", tmp_path / "p")
    assert got.exit_code == 0 and "Exported 1 labels, 1 comparisons, 1 prompts" in got.output
    assert (tmp_path / "all" / "labels.jsonl").read_text().count("\n") == 1
