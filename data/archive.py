"""A project's database kept safe: an online backup, a restore, and a full export.

- `backup(store, dest)`: a copy of the database made with SQLite's online backup API while the
  app keeps serving (one consistent snapshot: WAL readers do not block writers, nor writers
  them), written to a temporary file, checked (`PRAGMA integrity_check`) and renamed into place,
  so `dest` is never a half-written file.
- `restore(db_path, backup_file)`: the backup checked first, the current database saved beside
  it (`rankloop.db.before-restore-...`), then the backup copied in through the same API (into
  the live database's pages and WAL: never a file copy over a database in use, which a leftover
  `-wal` file would corrupt) and brought up to the current schema.
- `export_all(store, out_dir)`: everything the team collected as JSONL, one file per table
  (prompts, responses, comparisons with their gold answers, labels with rationales, timing and
  display order, undone labels, skips, flags, accounts without their secrets, rounds...), plus
  `manifest.json`; readable without rankloop.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .migrations import applied
from .store import Store, StoreError

# Tables rankloop derives from the others (counts, score gaps) or keeps only while a task is
# shown (leases): not part of what a team collected.
DERIVED = ("comparison_queue", "comparison_gaps", "leases")
# Columns holding JSON text: exported as JSON values, not strings.
JSON_COLUMNS = {
    "prompts": ("messages", "metadata"),
    "responses": ("sampling",),
    "comparisons": ("gold",),
    "labels": ("ranking", "display_order"),
    "label_revisions": ("label",),
    "rounds": ("metrics",),
    "round_stages": ("metrics",),
}
SECRET_COLUMNS = ("secret_hash",)  # never leaves the database


@dataclass(frozen=True)
class Summary:
    """What a backup, restore or export wrote: rows per table, bytes, seconds."""

    path: Path
    rows: dict[str, int]
    bytes: int
    seconds: float


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    tables = [
        t
        for (t,) in conn.execute(
            "select name from sqlite_master where type = 'table' and name not like 'sqlite_%' "
            "order by name"
        )
    ]
    return {t: conn.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables}


def _check(conn: sqlite3.Connection, what: str) -> None:
    result = conn.execute("PRAGMA integrity_check").fetchall()
    if result != [("ok",)]:
        raise StoreError(f"{what} fails SQLite's integrity check: {result[:3]}")
    if not conn.execute("select 1 from sqlite_master where name = '_migrations'").fetchone():
        raise StoreError(f"{what} is an SQLite database but not a rankloop one (no _migrations)")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup(store: Store, dest: str | Path) -> Summary:
    """Copy the store's database to `dest` (a single file, no WAL beside it) while others keep
    reading and writing; refuses to overwrite an existing file."""
    start = time.monotonic()
    dest = Path(dest)
    if dest.exists():
        raise StoreError(f"{dest} exists: choose a new name (a backup never overwrites)")
    if not dest.parent.is_dir():
        raise StoreError(f"{dest.parent} is not a folder")
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.unlink(missing_ok=True)
    target = sqlite3.connect(tmp)
    try:
        # pages=-1: one step, one read transaction, so one consistent snapshot.
        store.db.conn.backup(target, pages=-1)
        target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        _check(target, "the backup")
        rows = _counts(target)
    finally:
        target.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    return Summary(dest, rows, dest.stat().st_size, time.monotonic() - start)


def restore(db_path: str | Path, backup_file: str | Path) -> tuple[Summary, Path]:
    """Replace the database at `db_path` with `backup_file`'s contents; returns the summary and
    where the database as it was before was saved."""
    start = time.monotonic()
    db_path, backup_file = Path(db_path), Path(backup_file)
    if not backup_file.is_file():
        raise StoreError(f"{backup_file}: no such file")
    try:
        src = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)
        _check(src, str(backup_file))
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{backup_file} is not an SQLite database ({e})") from None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    saved = db_path.with_name(f"{db_path.name}.before-restore-{stamp}")
    store = Store.open(db_path)
    try:
        backup(store, saved)
        src.backup(store.db.conn)  # through SQLite: the live file and its WAL stay coherent
    finally:
        src.close()
        store.close()
    store = Store.open(db_path)  # a backup from an older rankloop gets the newer migrations
    try:
        rows = _counts(store.db.conn)
    finally:
        store.close()
    return Summary(db_path, rows, db_path.stat().st_size, time.monotonic() - start), saved


def export_all(store: Store, out_dir: str | Path) -> Summary:
    """Write every table a team collected as `TABLE.jsonl` in `out_dir` (created; must not hold
    files already), from one snapshot, plus `manifest.json` (schema, row counts, when)."""
    start = time.monotonic()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise StoreError(f"{out} is not empty: export into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    conn = store.db.conn
    rows: dict[str, int] = {}
    names = {i: n for i, n in conn.execute("select id, name from annotators")}
    conn.execute("BEGIN")  # a read transaction: every file from the same snapshot
    try:
        tables = [
            t
            for (t,) in conn.execute(
                "select name from sqlite_master where type = 'table' and name not like 'sqlite_%' "
                "and name != '_migrations' order by name"
            )
            if t not in DERIVED
        ]
        for table in tables:
            cur = conn.execute(f'select * from "{table}" order by rowid')
            cols = [c[0] for c in cur.description]
            decode = JSON_COLUMNS.get(table, ())
            n = 0
            with open(out / f"{table}.jsonl", "w", encoding="utf-8") as f:
                for values in cur:
                    row = {
                        c: (json.loads(v) if c in decode and isinstance(v, str) else v)
                        for c, v in zip(cols, values)
                        if c not in SECRET_COLUMNS
                    }
                    if "annotator_id" in row:  # who, by name, beside the id
                        row["annotator"] = names.get(row["annotator_id"])
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    n += 1
            rows[table] = n
        manifest = {
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "schema_version": store.schema_version,
            "migrations": applied(store.db),
            "rows": rows,
        }
    finally:
        conn.execute("COMMIT")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in out.iterdir())
    return Summary(out, rows, size, time.monotonic() - start)
