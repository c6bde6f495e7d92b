"""The labeling queue: which comparison an annotator sees next, and what they did with it.

Pure functions over a `Store`; the labeling app (`rankloop.app.labeling`) calls them, and so can a
script. The rules:

- Each comparison needs `n` independent labels (`[labeling] labels_per_comparison`), never two
  from one annotator. Gold comparisons (a known answer set by an admin) are not part of that
  count: they are mixed into each annotator's stream at `gold_rate`, once per annotator.
- `next_task` leases a comparison to one annotator until the lease expires. A comparison that
  already has `n` labels and leases together is given to nobody else; among the rest, one that
  nobody holds comes before one that somebody else is labeling, so two annotators working at the
  same time never get the same task while other tasks remain. An expired lease counts for
  nothing: an abandoned task goes back to the queue.
- The lease, not the browser, holds the order the responses were shown in and the request id
  that makes the submission idempotent.
- `submit` records one label in one `BEGIN IMMEDIATE` transaction: a retried request (same
  request id) returns the label already recorded. A late submission (after the lease expired) is
  kept, never thrown away, so such a comparison may end up with more than `n` labels.
- `skip` (with a reason) takes a comparison out of one annotator's queue; `flag` takes it out of
  everyone's until an admin resolves the flag; `undo_last` moves an annotator's last label into
  `label_revisions` and hands the comparison back to them to label again (that is how a label is
  edited).

Every write is one `store.transaction()`, which begins IMMEDIATE (see there why).
"""

from __future__ import annotations

import json
import math
import random
import secrets
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .rankings import pair_outcomes
from .records import (
    CHOICES,
    MAX_RESPONSES,
    STRENGTHS,
    Comparison,
    Judgment,
    Label,
    Prompt,
    Response,
    mode_of,
    normalize_ranking,
    to_json,
)
from .store import Store, StoreError, check_text
from .store import now as now_iso

ORDERS: tuple[str, ...] = ("oldest", "random", "uncertainty", "balanced")
MAX_RATIONALE = 10_000  # characters: a paragraph or ten, never a pasted file
MAX_NOTE = 1_000  # characters of a skip reason or a flag note
MAX_SECONDS = 86_400  # a judgment's seconds_spent; a task shown longer ago records none
MAX_REQUEST_ID = 64
FLAG_KINDS: tuple[str, ...] = ("unsafe", "broken", "unanswerable")
SKIP_REASONS: tuple[str, ...] = (
    "I cannot judge this topic",
    "too long to judge now",
    "responses are identical",
    "other",
)


@dataclass(frozen=True)
class Task:
    """A comparison leased to one annotator, with everything the page shows."""

    comparison: Comparison
    prompt: Prompt
    responses: tuple[Response, ...]  # in display order (what the annotator sees as A, B, ...)
    request_id: str
    expires_at: float
    gold: bool  # never shown to the annotator

    @property
    def display_order(self) -> tuple[int, ...]:
        return tuple(r.id for r in self.responses)

    @property
    def mode(self) -> str:
        return mode_of(len(self.responses))


@dataclass(frozen=True)
class Progress:
    """What the progress line says."""

    labeled_today: int
    labeled_total: int
    left: int  # comparisons this annotator could still label (held by others included)


# -- choosing the next comparison ---------------------------------------------------------------

# A comparison of more responses than the page shows (MAX_RESPONSES; the store refuses them,
# an older store may hold some): never leased, never counted as left. `{id}`: its id column.
_TOO_BIG = f"""exists (select 1 from comparison_responses x where x.comparison_id = {{id}}
               and x.position >= {MAX_RESPONSES})"""
# A regular comparison annotator :a may label: not gold, not flagged, not already labeled or
# skipped by them. `q` is its row in `comparison_queue` (label count kept by triggers).
_MINE = f"""
    not exists (select 1 from comparisons c where c.id = q.comparison_id and c.gold is not null)
    and not {_TOO_BIG.format(id="q.comparison_id")}
    and not exists (select 1 from labels l where l.comparison_id = q.comparison_id
                    and l.annotator_id = :a)
    and not exists (select 1 from skips k where k.comparison_id = q.comparison_id
                    and k.annotator_id = :a)
    and not exists (select 1 from flags f where f.comparison_id = q.comparison_id
                    and f.resolved_at is null)
"""
# Live leases of the comparison held by other annotators.
_HELD = """(select count(*) from leases s where s.comparison_id = q.comparison_id
            and s.annotator_id != :a and s.expires_at > :now)"""


# Labels on all comparisons of the candidate's prompt (c: the candidate's comparisons row).
_PROMPT_LABELS = """(select count(*) from labels l join comparisons c2 on c2.id = l.comparison_id
            where c2.prompt_id = c.prompt_id)"""


def _latest_scored_model(store: Store) -> str | None:
    row = store.db.execute(
        "select reward_model from response_scores order by created_at desc limit 1"
    ).fetchone()
    return row[0] if row else None


def _first(store: Store, where: str, order_by: str, params: dict, join: str = "") -> int | None:
    row = store.db.execute(
        f"select q.comparison_id from comparison_queue q {join} where q.labels < :n and {_MINE} "
        f"and {where} order by {order_by} limit 1",
        params,
    ).fetchone()
    return row[0] if row else None


def _pick_regular(
    store: Store,
    annotator_id: int,
    n: int,
    order: str,
    now: float,
    rng: random.Random,
    first_round: int | None = None,
    only_round: int | None = None,
) -> int | None:
    """The first eligible comparison in `order`: one nobody else holds if there is one, else
    one whose labels plus other annotators' live leases are still fewer than n. With
    `first_round`, that round's comparisons come before all others; with `only_round`, no
    other round's comparison is picked."""
    params = {"a": annotator_id, "now": now, "n": n}
    if only_round is None and first_round is None:
        return _pick_regular_where(store, "1", params, order, rng)
    params["round"] = only_round if only_round is not None else first_round
    of_round = (
        "exists (select 1 from comparisons r where r.id = q.comparison_id and r.round = :round)"
    )
    for tier in [of_round] if only_round is not None else [of_round, f"not {of_round}"]:
        cid = _pick_regular_where(store, tier, params, order, rng)
        if cid is not None:
            return cid
    return None


def _pick_regular_where(
    store: Store, restrict: str, params: dict, order: str, rng: random.Random
) -> int | None:
    n = params["n"]
    ways = [("q.comparison_id >= :start", "q.comparison_id", "")]  # oldest
    if order == "random":
        # A random starting point in id order, wrapping around: O(1) per pick however long the
        # queue, and every comparison can come first.
        lo, hi = store.db.execute(
            "select min(comparison_id), max(comparison_id) from comparison_queue where labels < ?",
            [n],
        ).fetchone()
        start = rng.randint(lo, hi) if lo is not None else 0
        ways = [
            ("q.comparison_id >= :start", "q.comparison_id", ""),
            ("q.comparison_id < :start", "q.comparison_id", ""),
        ]
        params["start"] = start
    else:
        params["start"] = 0
    if order in ("uncertainty", "balanced"):
        params["rm"] = _latest_scored_model(store)
        scored = "g.comparison_id = q.comparison_id and g.reward_model = :rm"
        # Most uncertain first: an ensemble's largest spread (members' std of the score gap),
        # else (a single model: spread NULL) the smallest gap; unscored ones (newer samples)
        # after the scored, oldest first.
        uncertain = "g.comparison_id is null, -coalesce(g.spread, 0), g.gap, q.comparison_id"
        join = f"left join comparison_gaps g on {scored}"
        if order == "balanced":
            # Uncertainty balanced across prompts (BAL-PM's idea, Melo et al. 2024): first the
            # prompts whose comparisons have the fewest labels so far, so no prompt gets a
            # second label before every prompt with an open comparison has had one.
            uncertain = f"{_PROMPT_LABELS}, {uncertain}"
            join = f"join comparisons c on c.id = q.comparison_id {join}"
        ways = [("1", uncertain, join)]
    for held in (f"{_HELD} = 0", f"q.labels + {_HELD} < :n"):  # a task nobody holds first
        for where, order_by, join in ways:
            cid = _first(store, f"{where} and {held} and {restrict}", order_by, params, join)
            if cid is not None:
                return cid
    return None


def _pick_gold(store: Store, annotator_id: int, rng: random.Random) -> int | None:
    rows = store.db.execute(
        "select c.id from comparisons c where c.gold is not null "
        "and not exists (select 1 from labels l where l.comparison_id = c.id "
        "and l.annotator_id = ?) "
        "and not exists (select 1 from skips k where k.comparison_id = c.id "
        f"and k.annotator_id = ?) and not {_TOO_BIG.format(id='c.id')} order by c.id",
        [annotator_id, annotator_id],
    ).fetchall()
    return rng.choice(rows)[0] if rows else None


def _task(
    store: Store,
    comparison_id: int,
    display_order: Sequence[int],
    request_id: str,
    expires_at: float,
) -> Task:
    comp = store.comparison(comparison_id)
    return Task(
        comparison=comp,
        prompt=store.prompt(comp.prompt_id),
        responses=tuple(store.responses(ids=list(display_order))),
        request_id=request_id,
        expires_at=expires_at,
        gold=comp.gold is not None,
    )


def _lease(
    store: Store,
    comparison_id: int,
    annotator_id: int,
    now: float,
    lease_seconds: float,
    rng: random.Random,
) -> Task:
    comp = store.comparison(comparison_id)
    order = list(comp.response_ids)
    rng.shuffle(order)  # a fresh random order per annotator: position bias is measurable
    request_id = secrets.token_hex(16)
    store.db["leases"].insert(
        {
            "comparison_id": comparison_id,
            "annotator_id": annotator_id,
            "display_order": to_json(order),
            "request_id": request_id,
            "issued_at": now,
            "expires_at": now + lease_seconds,
        },
        replace=True,
    )
    return _task(store, comparison_id, order, request_id, now + lease_seconds)


def current_task(store: Store, annotator_id: int, now: float) -> Task | None:
    """The live lease this annotator holds (a reloaded page shows the same task), if any."""
    row = store.db.execute(
        "select comparison_id, display_order, request_id, expires_at from leases "
        "where annotator_id = ? and expires_at > ? "
        f"and not {_TOO_BIG.format(id='leases.comparison_id')} "
        "order by issued_at desc limit 1",
        [annotator_id, now],
    ).fetchone()
    if not row:
        return None
    return _task(store, row[0], json.loads(row[1]), row[2], row[3])


def next_task(
    store: Store,
    annotator_id: int,
    *,
    n: int = 1,
    lease_seconds: float = 600,
    order: str = "oldest",
    gold_rate: float = 0.0,
    now: float,
    rng: random.Random,
    first_round: int | None = None,
    only_round: int | None = None,
) -> Task | None:
    """Lease the next comparison to `annotator_id` (or return the one they already hold).

    `first_round`: that round's comparisons (the current round's) before leftovers of other
    rounds; `only_round`: that round's only (gold tasks are mixed in either way).
    Returns None when nothing is available now: see `progress(...).left` for whether tasks
    remain that others are holding.
    """
    if order not in ORDERS:
        raise StoreError(f"unknown queue order {order!r}; use one of {', '.join(ORDERS)}")
    with store.transaction():
        held = current_task(store, annotator_id, now)
        if held is not None:
            return held
        store.db.execute("delete from leases where annotator_id = ?", [annotator_id])
        cid = None
        if gold_rate > 0 and rng.random() < gold_rate:
            cid = _pick_gold(store, annotator_id, rng)
        if cid is None:
            cid = _pick_regular(store, annotator_id, n, order, now, rng, first_round, only_round)
        if cid is None:
            return None
        return _lease(store, cid, annotator_id, now, lease_seconds, rng)


def progress(store: Store, annotator_id: int, *, n: int = 1, today: str | None = None) -> Progress:
    """Labels today (UTC date, or `today` as YYYY-MM-DD), in total, and comparisons left."""
    today = today or datetime.now(UTC).date().isoformat()
    total, on_day = store.db.execute(
        "select count(*), coalesce(sum(substr(created_at, 1, 10) = ?), 0) from labels "
        "where annotator_id = ? and source = 'human'",
        [today, annotator_id],
    ).fetchone()
    # Open comparisons, less the few this annotator cannot take (theirs, skipped, flagged,
    # gold): two index reads instead of a check per comparison.
    left = store.db.execute(
        """select (select count(*) from comparison_queue where labels < :n)
                - (select count(*) from comparison_queue q where q.labels < :n
                   and q.comparison_id in (
                       select comparison_id from labels where annotator_id = :a
                       union select comparison_id from skips where annotator_id = :a
                       union select comparison_id from flags where resolved_at is null
                       union select id from comparisons where gold is not null
                       union select comparison_id from comparison_responses
                             where position >= :max))""",
        {"a": annotator_id, "n": n, "max": MAX_RESPONSES},
    ).fetchone()[0]
    return Progress(labeled_today=on_day, labeled_total=total, left=left)


# -- what the annotator does with a task ------------------------------------------------------


def ranking_from_positions(
    tiers: Sequence[Sequence[int]], display_order: Sequence[int]
) -> tuple[tuple[int, ...], ...]:
    """Display positions (0 = first shown) in tiers, best first -> response ids in tiers."""
    try:
        ranking = [[display_order[p] for p in tier] for tier in tiers]
    except (IndexError, TypeError):
        raise StoreError(f"a ranking names positions 1..{len(display_order)} only") from None
    try:
        return normalize_ranking(ranking, display_order)
    except ValueError as e:
        raise StoreError(str(e).replace("response", "position")) from None


def _lease_row(store: Store, annotator_id: int, comparison_id: int):
    return store.db.execute(
        "select display_order, request_id, expires_at from leases "
        "where annotator_id = ? and comparison_id = ?",
        [annotator_id, comparison_id],
    ).fetchone()


def _check_judgment(choice, positions, strength, rationale, seconds_spent) -> str | None:
    """Refuse a judgment's fields that are not what a label holds (whatever sent them: the page
    or a script); returns the rationale as stored (stripped, None when empty)."""
    if (choice is None) == (positions is None):
        raise StoreError(
            "choose A or B (or tie / both bad) for 2 responses, or rank the "
            "responses: one of the two"
        )
    if choice is not None and choice not in CHOICES:
        raise StoreError(f"a choice is one of {', '.join(CHOICES)}; got {show_value(choice)}")
    if strength:
        if strength not in STRENGTHS:
            raise StoreError(
                f"a strength is one of {', '.join(STRENGTHS)} (or none); got {show_value(strength)}"
            )
        if choice not in ("A", "B"):
            raise StoreError("strength applies to 'A better' or 'B better' only")
    if seconds_spent is not None and (
        isinstance(seconds_spent, bool)
        or not isinstance(seconds_spent, (int, float))
        or not 0 <= seconds_spent <= MAX_SECONDS
    ):  # NaN fails the comparison too
        raise StoreError(
            f"seconds_spent is a number of seconds from 0 to {MAX_SECONDS:,}; got "
            f"{show_value(seconds_spent)}"
        )
    if rationale is None:
        return None
    return check_text(rationale, "the rationale", MAX_RATIONALE).strip() or None


def show_value(value) -> str:
    """A value a client sent, for a refusal message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def submit(
    store: Store,
    annotator_id: int,
    comparison_id: int,
    request_id: str,
    judgment: Judgment,
    *,
    source: str = "human",
) -> int:
    """Record the annotator's `judgment` of their leased comparison; returns the label id.

    A choice needs a pairwise comparison (`mode_of`); a ranking of display positions fits
    any comparison. Its strength is stored as said (no margin: the
    reward trainer maps strength to margin). Idempotent on `request_id`: a retry returns the
    label already recorded. `source` is 'simulated' for `rankloop simulate`'s annotators.
    """
    check_text(request_id, "the request id", MAX_REQUEST_ID)
    j = judgment
    rationale = _check_judgment(j.choice, j.positions, j.strength, j.rationale, j.seconds_spent)
    with store.transaction():
        row = store.db.execute(
            "select id, annotator_id, comparison_id from labels where request_id = ?", [request_id]
        ).fetchone()
        if row:
            if (row[1], row[2]) != (annotator_id, comparison_id):
                raise StoreError("that request id belongs to another label")
            return row[0]
        lease = _lease_row(store, annotator_id, comparison_id)
        if lease is None or lease[1] != request_id:
            raise StoreError(
                f"comparison {comparison_id} is not assigned to you (or was "
                f"already answered): reload to get your next task"
            )
        order = tuple(json.loads(lease[0]))
        if j.mode == "pairwise" and mode_of(len(order)) != "pairwise":
            raise StoreError(
                "A / B / tie / both bad is for a comparison of 2 responses; "
                "rank these responses instead"
            )
        common = {
            "strength": j.strength,
            "rationale": rationale,
            "seconds_spent": j.seconds_spent,
            "source": source,
            "request_id": request_id,
        }
        if j.mode == "pairwise":
            try:
                label = Label.pairwise(comparison_id, annotator_id, order, j.choice, **common)
            except ValueError as e:
                raise StoreError(str(e)) from None
        else:
            label = Label(
                comparison_id=comparison_id,
                annotator_id=annotator_id,
                ranking=ranking_from_positions(j.positions, order),
                mode="ranking",
                display_order=order,
                **common,
            )
        label_id = store.add_label(label)
        store.db.execute(
            "delete from leases where annotator_id = ? and comparison_id = ?",
            [annotator_id, comparison_id],
        )
        return label_id


def skip(store: Store, annotator_id: int, comparison_id: int, reason: str) -> None:
    """Take the comparison out of this annotator's queue, with their reason."""
    reason = check_text(reason or "", "the reason", MAX_NOTE).strip()
    if not reason:
        raise StoreError("say why you skip (pick a reason)")
    with store.transaction():
        if _lease_row(store, annotator_id, comparison_id) is None:
            raise StoreError(f"comparison {comparison_id} is not assigned to you")
        store.db["skips"].insert(
            {
                "comparison_id": comparison_id,
                "annotator_id": annotator_id,
                "reason": reason,
                "created_at": now_iso(),
            },
            replace=True,
        )
        store.db.execute(
            "delete from leases where annotator_id = ? and comparison_id = ?",
            [annotator_id, comparison_id],
        )


def flag(
    store: Store, annotator_id: int, comparison_id: int, kind: str, note: str | None = None
) -> int:
    """Flag a comparison (unsafe / broken / unanswerable): it leaves every queue until an
    admin resolves the flag. Returns the flag id."""
    if kind not in FLAG_KINDS:
        raise StoreError(f"a flag is one of {', '.join(FLAG_KINDS)}; got {show_value(kind)}")
    note = check_text(note or "", "the note", MAX_NOTE).strip() or None
    with store.transaction():
        if _lease_row(store, annotator_id, comparison_id) is None:
            raise StoreError(f"comparison {comparison_id} is not assigned to you")
        fid = (
            store.db["flags"]
            .insert(
                {
                    "comparison_id": comparison_id,
                    "annotator_id": annotator_id,
                    "kind": kind,
                    "note": note,
                    "created_at": now_iso(),
                }
            )
            .last_pk
        )
        store.db.execute(
            "delete from leases where annotator_id = ? and comparison_id = ?",
            [annotator_id, comparison_id],
        )
        return fid


def resolve_flag(store: Store, flag_id: int, admin_id: int) -> None:
    """Mark a flag resolved: the comparison returns to the queue (unless flagged again)."""
    with store.transaction():
        cur = store.db.execute(
            "update flags set resolved_at = ?, resolved_by = ? "
            "where id = ? and resolved_at is null",
            [now_iso(), admin_id, flag_id],
        )
        if cur.rowcount == 0:
            raise StoreError(f"no open flag with id {flag_id}")


def open_flags(store: Store) -> list[dict]:
    return [
        dict(r)
        for r in store.db.query(
            "select f.id, f.comparison_id, a.name as annotator, f.kind, f.note, f.created_at "
            "from flags f join annotators a on a.id = f.annotator_id where f.resolved_at is null "
            "order by f.id"
        )
    ]


def undo_last(
    store: Store, annotator_id: int, *, now: float, lease_seconds: float = 600, rng: random.Random
) -> tuple[Label, Task] | None:
    """Take back the annotator's last label: it moves to `label_revisions` (kept, not lost)
    and its comparison is leased back to them, in the same order, to label again.

    Returns (the label taken back, the task to redo), or None when there is nothing to undo.
    """
    with store.transaction():
        row = store.db.execute(
            "select id from labels where annotator_id = ? and source = 'human' "
            "order by id desc limit 1",
            [annotator_id],
        ).fetchone()
        if row is None:
            return None
        label = _label(store, row[0])
        store.db["label_revisions"].insert(
            {
                "label_id": label.id,
                "comparison_id": label.comparison_id,
                "annotator_id": annotator_id,
                "action": "undo",
                "label": json.dumps(dict(store.db["labels"].get(label.id)), ensure_ascii=False),
                "created_at": now_iso(),
            }
        )
        store.db.execute("delete from labels where id = ?", [label.id])
        store.db.execute("delete from leases where annotator_id = ?", [annotator_id])
        request_id = secrets.token_hex(16)
        store.db["leases"].insert(
            {
                "comparison_id": label.comparison_id,
                "annotator_id": annotator_id,
                "display_order": to_json(list(label.display_order)),
                "request_id": request_id,
                "issued_at": now,
                "expires_at": now + lease_seconds,
            }
        )
        task = _task(
            store, label.comparison_id, label.display_order, request_id, now + lease_seconds
        )
        return label, task


def _label(store: Store, label_id: int) -> Label:
    comp_id = store.db.execute(
        "select comparison_id from labels where id = ?", [label_id]
    ).fetchone()[0]
    return next(lab for lab in store.labels(comparison_id=comp_id) if lab.id == label_id)


# -- gold and reward-model scores -------------------------------------------------------------


def set_gold(store: Store, comparison_id: int, ranking) -> None:
    """Make a comparison gold with its known answer (tiers of response ids, best first), or
    pass None to make it a regular comparison again."""
    comp = store.comparison(comparison_id)
    value = None
    if ranking is not None:
        try:
            value = to_json(normalize_ranking(ranking, comp.response_ids))
        except ValueError as e:
            raise StoreError(str(e)) from None
    with store.transaction():
        store.db.execute("update comparisons set gold = ? where id = ?", [value, comparison_id])


def open_comparisons(store: Store, labels_per_comparison: int) -> list[Comparison]:
    """The comparisons that still need labels (fewer than `labels_per_comparison`)."""
    return [
        store.comparison(cid)
        for (cid,) in store.db.execute(
            "select comparison_id from comparison_queue where labels < ? order by comparison_id",
            [labels_per_comparison],
        ).fetchall()
    ]


SCORE_CHUNK = 2000  # responses per transaction: tens of milliseconds, so annotators never wait


def record_scores(
    store: Store,
    reward_model: str,
    scores: dict[int, float],
    members: dict[int, Sequence[float]] | None = None,
) -> int:
    """Store a reward model's score of each response (id -> score), and the score gap of every
    comparison holding them, for the 'uncertainty' order; returns how many scores were written.

    A comparison's gap is the smallest |r_i - r_j| over its scored pairs: under Bradley-Terry,
    P(i better than j) = sigmoid(r_i - r_j) is closest to 1/2 there, where a label teaches the
    reward model the most (uncertainty sampling; Settles, "Active Learning Literature Survey").
    Written SCORE_CHUNK responses per transaction (a whole queue's scores in one would hold the
    write lock for seconds while annotators wait); a gap is recomputed whenever one of its
    responses is written, so once all are in, every gap is over all its scored pairs.

    `members` (id -> each ensemble member's score) adds each comparison's spread: the largest,
    over its response pairs, of the members' population std of the score gap r_m(i) - r_m(j),
    where the members disagree most about the order (query by committee, Seung et al. 1992);
    the 'uncertainty' order serves the largest spread first. Computed over the responses given
    in this call.
    """
    stamp = now_iso()
    items = [(int(rid), float(s)) for rid, s in scores.items()]
    for start in range(0, len(items), SCORE_CHUNK):
        part = items[start : start + SCORE_CHUNK]
        with store.transaction():
            store.db.conn.executemany(
                "insert or replace into response_scores (response_id, reward_model, score, "
                "created_at) values (?, ?, ?, ?)",
                [(rid, reward_model, s, stamp) for rid, s in part],
            )
            store.db.execute(
                """insert or replace into comparison_gaps (comparison_id, reward_model, gap)
                select x1.comparison_id, :rm, min(abs(s1.score - s2.score))
                from comparison_responses x1
                join comparison_responses x2 on x2.comparison_id = x1.comparison_id
                     and x2.position > x1.position
                join response_scores s1 on s1.response_id = x1.response_id
                     and s1.reward_model = :rm
                join response_scores s2 on s2.response_id = x2.response_id
                     and s2.reward_model = :rm
                where x1.comparison_id in (
                    select comparison_id from comparison_responses
                    where response_id in (select value from json_each(:ids)))
                group by x1.comparison_id""",
                {"rm": reward_model, "ids": json.dumps([rid for rid, _ in part])},
            )
    if members:
        spreads = _spreads(store, members)
        for start in range(0, len(spreads), SCORE_CHUNK):
            with store.transaction():
                store.db.conn.executemany(
                    "update comparison_gaps set spread = ? "
                    "where comparison_id = ? and reward_model = ?",
                    [(sp, cid, reward_model) for cid, sp in spreads[start : start + SCORE_CHUNK]],
                )
    return len(items)


def _spreads(store: Store, members: dict[int, Sequence[float]]) -> list[tuple[int, float]]:
    """(comparison id, spread) of every comparison whose responses all have members' scores."""
    ids = json.dumps(sorted(int(r) for r in members))
    rows = store.db.execute(
        """select comparison_id, response_id from comparison_responses where comparison_id in (
               select comparison_id from comparison_responses
               where response_id in (select value from json_each(?)))
           order by comparison_id, position""",
        [ids],
    ).fetchall()
    by_comp: dict[int, list[int]] = {}
    for cid, rid in rows:
        by_comp.setdefault(cid, []).append(rid)
    out = []
    for cid, rids in by_comp.items():
        if not all(r in members for r in rids):
            continue
        pairs = [(a, b) for i, a in enumerate(rids) for b in rids[i + 1 :]]
        out.append((cid, max(gap_spread(members[a], members[b]) for a, b in pairs)))
    return out


def gap_spread(members_a: Sequence[float], members_b: Sequence[float]) -> float:
    """An ensemble's disagreement on a pair: the population std over members m of the score gap
    d_m = r_m(a) - r_m(b), sqrt(mean_m (d_m - mean d)^2). 0 for one member or when every member
    sees the same gap (an offset the two responses share cancels: only the order counts)."""
    gaps = [float(x) - float(y) for x, y in zip(members_a, members_b, strict=True)]
    if not gaps:
        return 0.0
    mean = sum(gaps) / len(gaps)
    return math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))


def gold_agreement(label_ranking, gold_ranking) -> float:
    """Fraction of response pairs the label orders as the gold answer does (ties included);
    for 2 responses this is 1 (right) or 0 (wrong)."""
    mine, gold = pair_outcomes(label_ranking), pair_outcomes(gold_ranking)
    return statistics.fmean(mine[p] == gold[p] for p in gold)
