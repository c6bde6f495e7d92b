"""Named, transactional schema migrations.

Each migration is a function registered with `@migration("NNNN_name")`; `migrate(db)` applies the
ones not yet recorded in the `_migrations` table, each inside its own transaction, in order, and
sets `PRAGMA user_version` to the number applied. A migration never runs twice, and a failure
rolls back that migration whole (SQLite DDL is transactional).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

import sqlite_utils

MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = []


def migration(name: str):
    """Register `fn` as the next migration under `name` (names must be unique and ordered)."""

    def register(fn):
        if any(n == name for n, _ in MIGRATIONS):
            raise ValueError(f"duplicate migration name {name!r}")
        MIGRATIONS.append((name, fn))
        return fn

    return register


def applied(db: sqlite_utils.Database) -> list[str]:
    """Names of the migrations already applied to `db`, in order."""
    if "_migrations" not in db.table_names():
        return []
    return [r["name"] for r in db.query("select name from _migrations order by id")]


def migrate(db: sqlite_utils.Database, upto: str | None = None) -> list[str]:
    """Apply pending migrations (up to and including `upto`); return the names applied now."""
    done = set(applied(db))
    ran = []
    for name, fn in MIGRATIONS:
        if name not in done:
            with write_transaction(db):
                # Two processes opening an older store at once: the second waits for the first
                # (IMMEDIATE) and then finds the migration applied.
                if name not in applied(db):
                    if "_migrations" not in db.table_names():
                        db["_migrations"].create(
                            {"id": int, "name": str, "applied_at": str},
                            pk="id",
                            not_null={"name", "applied_at"},
                        )
                    fn(db)
                    db["_migrations"].insert(
                        {"name": name, "applied_at": datetime.now(UTC).isoformat()}
                    )
                    db.execute(f"PRAGMA user_version = {len(applied(db))}")
                    ran.append(name)
        if name == upto:
            break
    return ran


@contextlib.contextmanager
def write_transaction(db: sqlite_utils.Database):
    """One write transaction (a savepoint when nested) that takes SQLite's write lock at BEGIN.

    BEGIN IMMEDIATE waits its turn (busy_timeout) behind another connection's writer. A
    deferred BEGIN that read and then wrote failed at once with "database is locked" when
    another connection had written in between (its snapshot was stale, and SQLite does not wait
    then): e.g. two `rankloop import` runs, or an import and a trainer saving its metrics.
    """
    if db.conn.in_transaction:
        with db.atomic():
            yield
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


def schema_version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


@migration("0001_initial")
def m0001_initial(db: sqlite_utils.Database) -> None:
    """Prompts, responses, comparisons (and their responses), annotators, labels, rounds."""
    db["prompts"].create(
        {
            "id": int,
            "hash": str,
            "messages": str,
            "source": str,
            "metadata": str,
            "created_at": str,
        },
        pk="id",
        not_null={"hash", "messages", "created_at"},
    )
    db["prompts"].create_index(["hash"], unique=True)

    db["responses"].create(
        {
            "id": int,
            "prompt_id": int,
            "hash": str,
            "text": str,
            "round": int,
            "policy": str,
            "source": str,
            "sample_index": int,
            "sampling": str,
            "finished": int,
            "created_at": str,
        },
        pk="id",
        not_null={"prompt_id", "hash", "text", "round", "created_at"},
        foreign_keys=[("prompt_id", "prompts", "id")],
    )
    db["responses"].create_index(["hash"], unique=True)
    db["responses"].create_index(["prompt_id", "round"])

    db["comparisons"].create(
        {
            "id": int,
            "prompt_id": int,
            "hash": str,
            "round": int,
            "gold": str,
            "created_at": str,
        },
        pk="id",
        not_null={"prompt_id", "hash", "round", "created_at"},
        foreign_keys=[("prompt_id", "prompts", "id")],
    )
    db["comparisons"].create_index(["hash"], unique=True)

    db["comparison_responses"].create(
        {
            "comparison_id": int,
            "response_id": int,
            "position": int,
        },
        pk=("comparison_id", "position"),
        not_null={"response_id"},
        foreign_keys=[("comparison_id", "comparisons", "id"), ("response_id", "responses", "id")],
    )

    db["annotators"].create(
        {
            "id": int,
            "name": str,
            "role": str,
            "secret_hash": str,
            "created_at": str,
        },
        pk="id",
        not_null={"name", "role", "created_at"},
    )
    db["annotators"].create_index(["name"], unique=True)

    db["labels"].create(
        {
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
        },
        pk="id",
        not_null={"comparison_id", "annotator_id", "mode", "ranking", "source", "created_at"},
        foreign_keys=[("comparison_id", "comparisons", "id"), ("annotator_id", "annotators", "id")],
    )
    # One judgment per annotator per comparison; a retried submission (same request id) is one.
    db["labels"].create_index(["comparison_id", "annotator_id"], unique=True)
    db["labels"].create_index(["request_id"], unique=True)

    db["rounds"].create(
        {
            "number": int,
            "policy": str,
            "reward_model": str,
            "metrics": str,
            "started_at": str,
            "finished_at": str,
        },
        pk="number",
    )


@migration("0002_labeling_queue")
def m0002_labeling_queue(db: sqlite_utils.Database) -> None:
    """The labeling app's queue: leases, skips, flags, undone labels, reward-model scores."""
    # A lease hands one comparison to one annotator until `expires_at` (unix seconds); it also
    # fixes the order the responses were shown in and the request id that makes the submission
    # idempotent, so neither is ever taken from the browser.
    db["leases"].create(
        {
            "comparison_id": int,
            "annotator_id": int,
            "display_order": str,
            "request_id": str,
            "issued_at": float,
            "expires_at": float,
        },
        pk=("comparison_id", "annotator_id"),
        not_null={"display_order", "request_id", "issued_at", "expires_at"},
        foreign_keys=[("comparison_id", "comparisons", "id"), ("annotator_id", "annotators", "id")],
    )
    db["leases"].create_index(["annotator_id"])
    db["leases"].create_index(["expires_at"])

    db["skips"].create(
        {
            "id": int,
            "comparison_id": int,
            "annotator_id": int,
            "reason": str,
            "created_at": str,
        },
        pk="id",
        not_null={"comparison_id", "annotator_id", "reason", "created_at"},
        foreign_keys=[("comparison_id", "comparisons", "id"), ("annotator_id", "annotators", "id")],
    )
    db["skips"].create_index(["comparison_id", "annotator_id"], unique=True)

    # An unresolved flag takes the comparison out of every annotator's queue until an admin
    # resolves it.
    db["flags"].create(
        {
            "id": int,
            "comparison_id": int,
            "annotator_id": int,
            "kind": str,
            "note": str,
            "created_at": str,
            "resolved_at": str,
            "resolved_by": int,
        },
        pk="id",
        not_null={"comparison_id", "annotator_id", "kind", "created_at"},
        foreign_keys=[("comparison_id", "comparisons", "id"), ("annotator_id", "annotators", "id")],
    )
    db["flags"].create_index(["comparison_id"])

    # Undo keeps the label it removes: nothing an annotator submitted is ever lost.
    db["label_revisions"].create(
        {
            "id": int,
            "label_id": int,
            "comparison_id": int,
            "annotator_id": int,
            "action": str,
            "label": str,
            "created_at": str,
        },
        pk="id",
        not_null={"label_id", "comparison_id", "annotator_id", "action", "label", "created_at"},
    )

    # Scores of a reward model, for the active-learning order (least certain first).
    db["response_scores"].create(
        {
            "response_id": int,
            "reward_model": str,
            "score": float,
            "created_at": str,
        },
        pk=("response_id", "reward_model"),
        not_null={"score", "created_at"},
        foreign_keys=[("response_id", "responses", "id")],
    )

    db["labels"].create_index(["annotator_id", "created_at"])
    db["comparison_responses"].create_index(["response_id"])


@migration("0003_queue_counts")
def m0003_queue_counts(db: sqlite_utils.Database) -> None:
    """Per-comparison label counts kept by triggers, and reward-model score gaps, so choosing
    the next task reads a few index entries instead of counting every comparison's labels."""
    db.execute("""create table comparison_queue (
        comparison_id integer primary key,
        labels integer not null default 0)""")
    db.execute("create index idx_comparison_queue_open on comparison_queue (labels, comparison_id)")
    db.execute("""insert into comparison_queue (comparison_id, labels)
        select c.id, (select count(*) from labels l where l.comparison_id = c.id)
        from comparisons c""")
    # Every writer of labels and comparisons (the app, imports, scripts) keeps the counts.
    db.execute("""create trigger comparison_queue_add after insert on comparisons begin
        insert into comparison_queue (comparison_id, labels) values (new.id, 0); end""")
    db.execute("""create trigger comparison_queue_remove after delete on comparisons begin
        delete from comparison_queue where comparison_id = old.id; end""")
    db.execute("""create trigger comparison_queue_label after insert on labels begin
        update comparison_queue set labels = labels + 1
        where comparison_id = new.comparison_id; end""")
    db.execute("""create trigger comparison_queue_unlabel after delete on labels begin
        update comparison_queue set labels = labels - 1
        where comparison_id = old.comparison_id; end""")
    db.execute("create index idx_comparisons_gold on comparisons (id) where gold is not null")
    db["skips"].create_index(["annotator_id"])
    # The smallest score gap between two responses of a comparison, per reward model
    # (written by `queue.record_scores`), read in gap order by the 'uncertainty' queue order.
    db["comparison_gaps"].create(
        {
            "comparison_id": int,
            "reward_model": str,
            "gap": float,
        },
        pk=("comparison_id", "reward_model"),
        not_null={"gap"},
        foreign_keys=[("comparison_id", "comparisons", "id")],
    )
    db["comparison_gaps"].create_index(["reward_model", "gap"])


# -- 0004-0009: the labeling app and the store ---------------------------------------------------


@migration("0004_label_ids_never_reused")
def m0004_label_ids_never_reused(db: sqlite_utils.Database) -> None:
    """`labels.id` becomes AUTOINCREMENT. A plain INTEGER PRIMARY KEY hands out max(id) + 1, so
    the id of an undone last label went to the next label while `label_revisions` still held it
    for the old one. SQLite cannot change a key in place: the table is rebuilt with its indexes
    and triggers, and the id counter starts above every id a label or a revision ever had."""
    objects = db.execute(
        "select type, sql from sqlite_master where tbl_name = 'labels' and sql is not null"
    ).fetchall()
    (table_sql,) = [sql for kind, sql in objects if kind == "table"]
    key = '"id" INTEGER PRIMARY KEY,'
    if key not in table_sql:
        raise RuntimeError(f"unexpected labels schema: {table_sql}")
    db.execute(
        table_sql.replace('TABLE "labels"', 'TABLE "labels_new"', 1).replace(
            key, '"id" INTEGER PRIMARY KEY AUTOINCREMENT,', 1
        )
    )
    db.execute("insert into labels_new select * from labels")
    db.execute("drop table labels")  # its indexes and triggers go with it
    db.execute("alter table labels_new rename to labels")
    for kind, sql in objects:
        if kind != "table":
            db.execute(sql)
    db.execute("delete from sqlite_sequence where name = 'labels'")
    db.execute("""insert into sqlite_sequence (name, seq) values ('labels', max(
        (select coalesce(max(id), 0) from labels),
        (select coalesce(max(label_id), 0) from label_revisions)))""")


@migration("0005_account_status")
def m0005_account_status(db: sqlite_utils.Database) -> None:
    """Accounts can be disabled (and enabled again): `disabled_at` is set while one is."""
    db["annotators"].add_column("disabled_at", str)


# -- 0010+: the rounds (`rankloop round`); 0004-0009 are the labeling app's -------------------


@migration("0010_rounds_state")
def m0010_rounds_state(db: sqlite_utils.Database) -> None:
    """The project's current round (the round whose samples are being labeled) and the finished
    stages of `rankloop round`, so a killed round continues from its unfinished stage."""
    db["project_state"].create({"key": str, "value": str}, pk="key", not_null={"value"})
    # A project that predates this: its current round is the newest round with comparisons.
    current = db.execute("select coalesce(max(round), 0) from comparisons").fetchone()[0]
    db["project_state"].insert({"key": "current_round", "value": str(current)})
    db["round_stages"].create(
        {
            "round": int,
            "stage": str,
            "seconds": float,
            "metrics": str,
            "finished_at": str,
        },
        pk=("round", "stage"),
        not_null={"seconds", "finished_at"},
    )


# -- 0020+: measuring the rounds (win-rates, leaderboard, the Rounds view) --------------------


@migration("0020_round_curves")
def m0020_round_curves(db: sqlite_utils.Database) -> None:
    """Per-step training curves of each round (PPO's history: mean score, KL, response length,
    ...), one row per (round, stage, metric, step), for the Rounds view and `rankloop report`."""
    db["round_curves"].create(
        {
            "round": int,
            "stage": str,
            "metric": str,
            "step": int,
            "value": float,
        },
        pk=("round", "stage", "metric", "step"),
        not_null={"value"},
    )


@migration("0021_round_optimizer")
def m0021_round_optimizer(db: sqlite_utils.Database) -> None:
    """Which optimiser trained each round's policy ('ppo', 'rloo'). The rounds of an older
    project that have a policy were trained by PPO, the only optimiser before this."""
    db["rounds"].add_column("optimizer", str)
    db.execute("update rounds set optimizer = 'ppo' where policy is not null")


# -- 0022: reward ensembles ----------------------------------------------------------------------


@migration("0022_comparison_gap_spread")
def m0022_comparison_gap_spread(db: sqlite_utils.Database) -> None:
    """`comparison_gaps.spread`: an ensemble reward model's disagreement on a comparison (the
    largest, over its response pairs, of the members' std of the score gap), written by
    `queue.record_scores`; the 'uncertainty' order serves the largest first. NULL for a single
    model, whose comparisons keep their gap order."""
    db["comparison_gaps"].add_column("spread", float)


# -- 0030+: one rule for each decision --------------------------------------------------------


@migration("0030_strength_not_margin")
def m0030_strength_not_margin(db: sqlite_utils.Database) -> None:
    """The app stored a margin from `[labeling] margin_*` with each strength; now a label keeps
    the strength as said and `[reward] margin_*` maps it when the labels are read. Labels of
    the app (source 'human' with a strength) lose the stored copy; imported margins stay."""
    db.execute("update labels set margin = null where source = 'human' and strength is not null")
