"""The SQLite store: every prompt, response, comparison, label and round of a project.

`Store` wraps a sqlite-utils `Database` (WAL journal, foreign keys on, `synchronous=FULL` so a
committed transaction survives a power cut) and speaks only typed records from
`rankloop.data.records`. Every multi-row change runs in one transaction: it lands whole or not at
all.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import itertools
import json
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from .migrations import migrate, schema_version, write_transaction
from .rankings import label_margin, pair_outcome, ranked_pairs, tier_of
from .records import (
    MAX_RESPONSES,
    PERSON_ROLES,
    Annotator,
    Comparison,
    Label,
    Match,
    Message,
    Preference,
    Prompt,
    Response,
    Round,
    RoundStage,
    Sampling,
    normalize_ranking,
    to_json,
)


class StoreError(ValueError):
    """A request the store refuses; the message says what was wrong and what to do."""


def too_many_responses(n: int) -> str:
    return (
        f"{n} responses in one comparison; the labeling page shows at most {MAX_RESPONSES} "
        f"(one per number key): split them into comparisons of 2 to {MAX_RESPONSES}"
    )


MAX_NAME = 100  # characters in an account's name


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    """PBKDF2-SHA256 of an annotator secret, as `pbkdf2$iterations$salt$hash` (hex)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    iterations = 200_000
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    return f"pbkdf2${iterations}${salt.hex()}${digest.hex()}"


def new_secret(secret: str | None = None) -> tuple[str, str]:
    """A fresh random secret (or the given one) and its hash, for a new or reset account."""
    secret = secret or secrets.token_urlsafe(12)
    return secret, hash_secret(secret)


@functools.cache
def unknown_user_hash() -> str:
    """A hash no secret matches, checked for a name without an account: the same work as a
    known name's, so the time a login takes does not tell whether the name exists."""
    return hash_secret(secrets.token_urlsafe(16))


def check_text(value, what: str, max_chars: int) -> str:
    """`value` as text SQLite can store, or one StoreError naming `what`: a string, at most
    `max_chars` characters, without lone surrogates (JSON may carry them, UTF-8 cannot)."""
    if not isinstance(value, str):
        raise StoreError(f"{what} must be text, got {type(value).__name__}")
    if len(value) > max_chars:
        raise StoreError(f"{what} is {len(value):,} characters long; the limit is {max_chars:,}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError(f"{what} holds half of a surrogate pair (not a character)") from None
    return value


def check_secret(secret: str, stored: str) -> bool:
    try:
        _, iterations, salt, digest = stored.split("$")
    except ValueError:
        return False
    # surrogatepass: a secret typed or posted with a lone surrogate is wrong, not an error
    got = hashlib.pbkdf2_hmac(
        "sha256", secret.encode("utf-8", "surrogatepass"), bytes.fromhex(salt), int(iterations)
    )
    return secrets.compare_digest(got.hex(), digest)


@dataclass(frozen=True)
class StoreStatus:
    """What `rankloop status` prints."""

    prompts: int
    responses_per_round: dict[int, int]
    comparisons: int
    comparisons_pending: int
    comparisons_labeled: int
    labels: int
    annotators: int
    rounds: list[Round]
    current_round: int = 0


class Store:
    """A project's database. Open with `Store.open(path)` or `Store.memory()` (tests)."""

    def __init__(self, db: sqlite_utils.Database):
        self.db = db
        self.db.execute("PRAGMA foreign_keys = ON")
        migrate(self.db)

    @classmethod
    def open(cls, path: str | Path) -> Store:
        conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
        db = sqlite_utils.Database(conn)
        # WAL lets the app read while a trainer writes; FULL sync makes each commit durable
        # (fsync of the WAL at every commit), so an acknowledged label survives a crash.
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA busy_timeout = 30000")
        return cls(db)

    @classmethod
    def memory(cls) -> Store:
        return cls(sqlite_utils.Database(sqlite3.connect(":memory:", check_same_thread=False)))

    def close(self) -> None:
        self.db.close()

    @property
    def schema_version(self) -> int:
        return schema_version(self.db)

    @contextlib.contextmanager
    def transaction(self):
        """One transaction (a savepoint when nested): all of it lands, or none of it. It takes
        the write lock at BEGIN, so it waits for another writer instead of failing
        (`migrations.write_transaction`)."""
        with write_transaction(self.db):
            yield self

    @functools.cached_property
    def inserted(self) -> collections.Counter[str]:
        """Rows this Store inserted, per table: how an import counts what it added while other
        writers (annotators) add rows to the same tables."""
        return collections.Counter()

    def _insert(self, table: str, row: dict) -> int:
        """Insert one row; returns its id and counts it in `inserted`. Plain SQL: the hot path
        of imports and generation (sqlite-utils' insert re-reads the schema on every call,
        two thirds of an import's time)."""
        sql = f"insert into {table} ({', '.join(row)}) values ({', '.join('?' * len(row))})"
        rowid = self.db.conn.execute(sql, list(row.values())).lastrowid
        self.inserted[table] += 1
        return rowid

    # -- prompts -----------------------------------------------------------------------------

    def add_prompts(self, prompts: Iterable[Prompt]) -> list[int]:
        """Insert prompts (those already present, by content hash, are not added again).

        Returns the id of each given prompt, in order, whether new or existing.
        """
        ids = []
        with self.transaction():
            for p in prompts:
                ids.append(self._add_prompt(p))
        return ids

    def _add_prompt(self, p: Prompt) -> int:
        if not p.messages or p.messages[-1].role != "user":
            raise StoreError("a prompt must end with a user turn")
        if any(not m.content.strip() for m in p.messages):
            raise StoreError("a prompt cannot have an empty turn")
        h = p.hash
        row = self.db.execute("select id from prompts where hash = ?", [h]).fetchone()
        if row:
            return row[0]
        return self._insert(
            "prompts",
            {
                "hash": h,
                "messages": to_json(p.as_chat()),
                "source": p.source,
                "metadata": to_json(p.metadata),
                "created_at": now(),
            },
        )

    def prompt(self, prompt_id: int) -> Prompt:
        rows = self._prompts("where id = ?", [prompt_id])
        if not rows:
            raise StoreError(f"no prompt with id {prompt_id}")
        return rows[0]

    def prompts(self, limit: int | None = None) -> list[Prompt]:
        if limit is None:
            return self._prompts("order by id", [])
        return self._prompts("order by id limit ?", [limit])

    def _prompts(self, where: str, params: list) -> list[Prompt]:
        rows = self.db.execute(
            f"select id, messages, source, metadata from prompts {where}", params
        ).fetchall()
        return [
            Prompt(
                messages=tuple(Message(**m) for m in json.loads(msgs)),
                source=src,
                metadata=json.loads(meta or "{}"),
                id=pid,
            )
            for pid, msgs, src, meta in rows
        ]

    # -- responses ---------------------------------------------------------------------------

    def add_responses(self, responses: Iterable[Response]) -> list[int]:
        """Insert responses (idempotent by content hash); returns their ids in order."""
        with self.transaction():
            return [self._add_response(r) for r in responses]

    def _add_response(self, r: Response) -> int:
        h = r.hash
        row = self.db.execute("select id from responses where hash = ?", [h]).fetchone()
        if row:
            return row[0]
        try:
            return self._insert(
                "responses",
                {
                    "prompt_id": r.prompt_id,
                    "hash": h,
                    "text": r.text,
                    "round": r.round,
                    "policy": r.policy,
                    "source": r.source,
                    "sample_index": r.sample_index,
                    "sampling": to_json(r.sampling) if r.sampling else None,
                    "finished": int(r.finished),
                    "created_at": now(),
                },
            )
        except sqlite3.IntegrityError as e:
            raise StoreError(
                f"response refers to prompt {r.prompt_id}, which does not exist"
            ) from e

    def responses(
        self,
        prompt_id: int | None = None,
        round: int | None = None,
        ids: Sequence[int] | None = None,
    ) -> list[Response]:
        where, params = [], []
        if prompt_id is not None:
            where.append("prompt_id = ?"), params.append(prompt_id)
        if round is not None:
            where.append("round = ?"), params.append(round)
        if ids is not None:
            where.append(f"id in ({','.join('?' * len(ids))})"), params.extend(ids)
        sql = (
            "select id, prompt_id, text, round, policy, source, sample_index, sampling, "
            "finished from responses"
        )
        if where:
            sql += " where " + " and ".join(where)
        rows = self.db.execute(sql + " order by id", params).fetchall()
        out = [
            Response(
                prompt_id=pid,
                text=text,
                round=rnd,
                policy=pol or "",
                source=src,
                sample_index=si,
                sampling=Sampling(**json.loads(s)) if s else None,
                finished=bool(fin),
                id=rid,
            )
            for rid, pid, text, rnd, pol, src, si, s, fin in rows
        ]
        if ids is not None:
            by_id = {r.id: r for r in out}
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise StoreError(f"no response with id {missing[0]}")
            out = [by_id[i] for i in ids]
        return out

    def generated_counts(self, round: int, policy: str) -> dict[int, int]:
        """prompt id -> number of responses the given policy already generated in `round`."""
        rows = self.db.execute(
            "select prompt_id, count(*) from responses where round = ? and policy = ? "
            "and source = 'generated' group by prompt_id",
            [round, policy],
        ).fetchall()
        return dict(rows)

    # -- comparisons -------------------------------------------------------------------------

    def add_comparisons(self, comparisons: Iterable[Comparison]) -> list[int]:
        """Insert comparisons (idempotent: same prompt and same set of responses)."""
        with self.transaction():
            return [self._add_comparison(c) for c in comparisons]

    def add_comparison(self, prompt_id: int, response_ids: Sequence[int], round: int = 0) -> int:
        return self.add_comparisons([Comparison(prompt_id, tuple(response_ids), round)])[0]

    def _add_comparison(self, c: Comparison) -> int:
        row = self.db.execute("select id from comparisons where hash = ?", [c.hash]).fetchone()
        if row:
            return row[0]
        if len(c.response_ids) > MAX_RESPONSES:
            raise StoreError(too_many_responses(len(c.response_ids)))
        owners = {r.prompt_id for r in self.responses(ids=list(c.response_ids))}
        if owners != {c.prompt_id}:
            raise StoreError(
                f"every response of a comparison must answer its prompt {c.prompt_id}; "
                f"these answer prompt(s) {sorted(owners)}"
            )
        cid = self._insert(
            "comparisons",
            {
                "prompt_id": c.prompt_id,
                "hash": c.hash,
                "round": c.round,
                "gold": to_json(c.gold) if c.gold else None,
                "created_at": now(),
            },
        )
        self.db.conn.executemany(
            "insert into comparison_responses (comparison_id, response_id, position) "
            "values (?, ?, ?)",
            [(cid, rid, i) for i, rid in enumerate(c.response_ids)],
        )
        return cid

    def add_comparison_texts(
        self,
        prompt: Prompt | str,
        responses: Sequence[str],
        *,
        source: str = "external",
        round: int = 0,
    ) -> int:
        """Add a prompt, responses a team produced elsewhere, and one comparison over them.

        The shortest way in from a notebook: `store.add_comparison_texts("Say hi", ["Hi!",
        "Hello."])`. Idempotent: the same call twice returns the same comparison id.
        """
        if isinstance(prompt, str):
            prompt = Prompt.from_text(prompt, source=source)
        if len(responses) < 2:
            raise StoreError("a comparison needs at least 2 responses")
        if len(responses) > MAX_RESPONSES:
            raise StoreError(too_many_responses(len(responses)))
        if len(set(responses)) != len(responses):
            raise StoreError("the responses of one comparison must differ")
        with self.transaction():
            pid = self._add_prompt(prompt)
            rids = [
                self._add_response(
                    Response(prompt_id=pid, text=t, round=round, source=source, sample_index=i)
                )
                for i, t in enumerate(responses)
            ]
            return self._add_comparison(Comparison(pid, tuple(rids), round))

    def comparison(self, comparison_id: int) -> Comparison:
        got = self._comparisons("where c.id = ?", [comparison_id])
        if not got:
            raise StoreError(f"no comparison with id {comparison_id}")
        return got[0]

    def comparisons(self, round: int | None = None) -> list[Comparison]:
        if round is None:
            return self._comparisons("", [])
        return self._comparisons("where c.round = ?", [round])

    def _comparisons(self, where: str, params: list) -> list[Comparison]:
        rows = self.db.execute(
            f"select c.id, c.prompt_id, c.round, c.gold, group_concat(cr.response_id) "
            f"from comparisons c join (select * from comparison_responses order by position) cr "
            f"on cr.comparison_id = c.id {where} group by c.id order by c.id",
            params,
        ).fetchall()
        return [
            Comparison(
                prompt_id=pid,
                response_ids=tuple(int(x) for x in rids.split(",")),
                round=rnd,
                gold=_tiers(json.loads(gold)) if gold else None,
                id=cid,
            )
            for cid, pid, rnd, gold, rids in rows
        ]

    # -- annotators --------------------------------------------------------------------------

    def add_annotator(
        self,
        name: str,
        role: str = "annotator",
        secret: str | None = None,
        *,
        secret_hash: str | None = None,
    ) -> tuple[Annotator, str | None]:
        """Create an account; returns it and its secret (only a hash is stored). Pass
        `secret_hash` (from `new_secret()`) to hash outside a lock held around the store."""
        name = name.strip()
        if not name:
            raise StoreError("an annotator needs a name")
        check_text(name, "an annotator's name", MAX_NAME)
        try:
            a = Annotator(name=name, role=role)
        except ValueError as e:
            raise StoreError(str(e)) from None
        if self.db.execute("select 1 from annotators where name = ?", [name]).fetchone():
            raise StoreError(f"an annotator named {name!r} already exists; choose another name")
        if secret_hash is None:
            secret, secret_hash = new_secret(secret)
        with self.transaction():
            aid = (
                self.db["annotators"]
                .insert(
                    {
                        "name": a.name,
                        "role": a.role,
                        "secret_hash": secret_hash,
                        "created_at": now(),
                    }
                )
                .last_pk
            )
        return Annotator(name=a.name, role=a.role, id=aid), secret

    def add_simulated_annotator(self, name: str) -> Annotator:
        """Create a simulated annotator's account (role 'simulated', no secret: nobody logs in
        as it)."""
        with self.transaction():
            aid = (
                self.db["annotators"]
                .insert({"name": name, "role": "simulated", "created_at": now()})
                .last_pk
            )
        return Annotator(name=name, role="simulated", id=aid)

    def external_annotator(self, name: str) -> Annotator:
        """The pseudo-annotator that owns labels imported from `name` (created on first use)."""
        with self.transaction():
            row = self.db.execute(
                "select id, role from annotators where name = ?", [name]
            ).fetchone()
            if row:
                return Annotator(name=name, role=row[1], id=row[0])
            aid = (
                self.db["annotators"]
                .insert({"name": name, "role": "external", "created_at": now()})
                .last_pk
            )
        return Annotator(name=name, role="external", id=aid)

    def credentials(self, name: str) -> tuple[Annotator, str] | None:
        """A person's account that may log in (enabled, with a secret) and its secret's hash;
        None otherwise. A quick read: check the secret against it without holding the store."""
        row = self.db.execute(
            "select id, role, secret_hash from annotators where name = ? and disabled_at is null",
            [name],
        ).fetchone()
        if row is None or not row[2] or row[1] not in PERSON_ROLES:
            return None
        return Annotator(name=name, role=row[1], id=row[0]), row[2]

    def authenticate(self, name: str, secret: str) -> Annotator | None:
        """The account if `secret` is its secret (and it may log in), else None; an unknown
        name costs one hash too, so timing does not tell which names exist."""
        got = self.credentials(name)
        ok = check_secret(secret, got[1] if got else unknown_user_hash())
        return got[0] if got and ok else None

    def annotators(self) -> list[Annotator]:
        return [
            Annotator(name=n, role=r, id=i, disabled=d is not None)
            for i, n, r, d in self.db.execute(
                "select id, name, role, disabled_at from annotators order by id"
            ).fetchall()
        ]

    def annotator(self, name: str) -> Annotator | None:
        """The account named `name`, or None."""
        row = self.db.execute(
            "select id, role, disabled_at from annotators where name = ?", [name]
        ).fetchone()
        return (
            None
            if row is None
            else Annotator(name=name, role=row[1], id=row[0], disabled=row[2] is not None)
        )

    def _person(self, name: str) -> Annotator:
        a = self.annotator(name)
        if a is None or a.role not in PERSON_ROLES:
            raise StoreError(f"no account named {name!r} (see `rankloop annotator list`)")
        return a

    def _keep_an_admin(self, a: Annotator) -> None:
        """Refuse to disable or demote the last enabled admin: nobody could administer."""
        if (
            a.role == "admin"
            and not a.disabled
            and not self.db.execute(
                "select 1 from annotators where role = 'admin' and disabled_at is null and id != ?",
                [a.id],
            ).fetchone()
        ):
            raise StoreError(
                f"{a.name!r} is the only enabled admin: make another account admin first"
            )

    def set_disabled(self, name: str, disabled: bool) -> Annotator:
        """Disable an account (it can no longer log in, label or administer; its labels stay)
        or enable it again."""
        with self.transaction():
            a = self._person(name)
            if disabled:
                self._keep_an_admin(a)
            self.db.execute(
                "update annotators set disabled_at = ? where id = ?",
                [now() if disabled else None, a.id],
            )
        return Annotator(name=a.name, role=a.role, id=a.id, disabled=disabled)

    def set_role(self, name: str, role: str) -> Annotator:
        """Make an account an annotator or an admin."""
        if role not in PERSON_ROLES:
            raise StoreError(f"a role is one of {', '.join(PERSON_ROLES)}; got {role!r}")
        with self.transaction():
            a = self._person(name)
            if role != "admin":
                self._keep_an_admin(a)
            self.db.execute("update annotators set role = ? where id = ?", [role, a.id])
        return Annotator(name=a.name, role=role, id=a.id, disabled=a.disabled)

    def set_secret(
        self, name: str, secret: str | None = None, *, secret_hash: str | None = None
    ) -> str | None:
        """Give an account a new secret (the old one stops working); returns it."""
        if secret_hash is None:
            secret, secret_hash = new_secret(secret)
        with self.transaction():
            a = self._person(name)
            self.db.execute(
                "update annotators set secret_hash = ? where id = ?", [secret_hash, a.id]
            )
        return secret

    # -- labels ------------------------------------------------------------------------------

    def add_label(self, label: Label) -> int:
        """Record one judgment in one transaction; returns its id.

        Idempotent: a label whose `request_id` is already recorded returns the existing id
        (a double click or a retried request records once). A second, different label by the
        same annotator on the same comparison is refused.
        """
        with self.transaction():
            return self._add_label(label)

    def add_labels(self, labels: Iterable[Label]) -> list[int]:
        with self.transaction():
            return [self._add_label(lab) for lab in labels]

    def _add_label(self, lab: Label) -> int:
        if lab.request_id is not None:
            row = self.db.execute(
                "select id from labels where request_id = ?", [lab.request_id]
            ).fetchone()
            if row:
                return row[0]
        comp = self.comparison(lab.comparison_id)
        ranking = normalize_ranking(lab.ranking, comp.response_ids)
        if lab.display_order and sorted(lab.display_order) != sorted(comp.response_ids):
            raise StoreError("display_order must list the comparison's responses")
        if lab.mode == "pairwise" and len(comp.response_ids) != 2:
            raise StoreError("a pairwise label needs a comparison of exactly 2 responses")
        if self.db.execute(
            "select 1 from labels where comparison_id = ? and annotator_id = ?",
            [lab.comparison_id, lab.annotator_id],
        ).fetchone():
            raise StoreError(
                f"annotator {lab.annotator_id} already labeled comparison {lab.comparison_id}; "
                f"edit that label instead"
            )
        try:
            return self._insert(
                "labels",
                {
                    "comparison_id": lab.comparison_id,
                    "annotator_id": lab.annotator_id,
                    "mode": lab.mode,
                    "ranking": to_json(ranking),
                    "choice": lab.choice,
                    "strength": lab.strength,
                    "margin": lab.margin,
                    "display_order": to_json(list(lab.display_order)),
                    "rationale": lab.rationale,
                    "seconds_spent": lab.seconds_spent,
                    "source": lab.source,
                    "request_id": lab.request_id,
                    "created_at": lab.created_at or now(),
                },
            )
        except sqlite3.IntegrityError as e:
            raise StoreError(f"annotator {lab.annotator_id} does not exist") from e

    def labels(self, round: int | None = None, comparison_id: int | None = None) -> list[Label]:
        where, params = [], []
        if round is not None:
            where.append("c.round <= ?"), params.append(round)
        if comparison_id is not None:
            where.append("l.comparison_id = ?"), params.append(comparison_id)
        sql = (
            "select l.id, l.comparison_id, l.annotator_id, l.mode, l.ranking, l.choice, "
            "l.strength, l.margin, l.display_order, l.rationale, l.seconds_spent, l.source, "
            "l.request_id, l.created_at from labels l "
            "join comparisons c on c.id = l.comparison_id"
        )
        if where:
            sql += " where " + " and ".join(where)
        return [
            Label(
                id=i,
                comparison_id=cid,
                annotator_id=aid,
                mode=mode,
                ranking=_tiers(json.loads(rk)),
                choice=ch,
                strength=st,
                margin=mg,
                display_order=tuple(json.loads(do or "[]")),
                rationale=ra,
                seconds_spent=ss,
                source=src,
                request_id=rq,
                created_at=ca,
            )
            for i, cid, aid, mode, rk, ch, st, mg, do, ra, ss, src, rq, ca in self.db.execute(
                sql + " order by l.id", params
            ).fetchall()
        ]

    def preferences(
        self, round: int | None = None, margins: tuple[float, float] | None = None
    ) -> Iterator[Preference]:
        """Every label (up to `round`) as pairs: a ranking of K yields its C(K,2) pairs
        (`rankings.ranked_pairs`, the reading the reward trainer and the leaderboard share).

        Pairs inside one tier are ties (`tie=True`, in display order). `margins` =
        ([reward] margin_slightly, margin_much) turns a strength into each pair's margin as the
        trainer does (`rankings.label_margin`); without it, the label's stored margin. Order is
        deterministic: by label id, then by position in the ranking.
        """
        names = {a.id: a.name for a in self.annotators()}
        prompts: dict[int, Prompt] = {}
        for lab in self.labels(round=round):
            comp = self.comparison(lab.comparison_id)
            if comp.prompt_id not in prompts:
                prompts[comp.prompt_id] = self.prompt(comp.prompt_id)
            texts = {r.id: r.text for r in self.responses(ids=list(comp.response_ids))}
            pairs = ranked_pairs(lab.ranking)
            margin = (
                lab.margin if margins is None else label_margin(lab.margin, lab.strength, *margins)
            )
            for hi, lo, tie in pairs:
                yield Preference(
                    label_id=lab.id,
                    comparison_id=comp.id,
                    prompt=prompts[comp.prompt_id],
                    chosen=texts[hi],
                    rejected=texts[lo],
                    chosen_id=hi,
                    rejected_id=lo,
                    tie=tie,
                    both_bad=lab.both_bad,
                    strength=lab.strength,
                    margin=None if tie else margin,
                    annotator=names[lab.annotator_id],
                    round=comp.round,
                    source=lab.source,
                    pairs_in_label=len(pairs),
                )

    # -- rounds ------------------------------------------------------------------------------

    def save_round(self, r: Round) -> None:
        """Insert or update a round; metrics are merged into those already stored."""
        with self.transaction():
            old = self.round(r.number)
            metrics = {**(old.metrics if old else {}), **r.metrics}
            self.db["rounds"].upsert(
                {
                    "number": r.number,
                    "policy": r.policy if r.policy is not None else (old.policy if old else None),
                    "reward_model": r.reward_model
                    if r.reward_model is not None
                    else (old.reward_model if old else None),
                    "metrics": to_json(metrics),
                    "started_at": r.started_at or (old.started_at if old else None) or now(),
                    "finished_at": r.finished_at or (old.finished_at if old else None),
                    "optimizer": r.optimizer or (old.optimizer if old else None),
                },
                pk="number",
            )

    def round(self, number: int) -> Round | None:
        got = self._rounds("where number = ?", [number])
        return got[0] if got else None

    def rounds(self) -> list[Round]:
        return self._rounds("order by number", [])

    def _rounds(self, where: str, params: list) -> list[Round]:
        return [
            Round(
                number=n,
                policy=p,
                reward_model=rm,
                metrics=json.loads(m or "{}"),
                started_at=s,
                finished_at=f,
                optimizer=o,
            )
            for n, p, rm, m, s, f, o in self.db.execute(
                f"select number, policy, reward_model, metrics, started_at, finished_at, "
                f"optimizer from rounds {where}",
                params,
            ).fetchall()
        ]

    def current_round(self) -> int:
        """The round whose samples are being labeled (0 in a new project)."""
        row = self.db.execute(
            "select value from project_state where key = 'current_round'"
        ).fetchone()
        return int(row[0]) if row else 0

    def set_current_round(self, number: int) -> None:
        if number < 0:
            raise StoreError(f"a round number is >= 0, got {number}")
        with self.transaction():
            self.db["project_state"].upsert(
                {"key": "current_round", "value": str(number)}, pk="key"
            )

    def finish_stage(self, stage: RoundStage) -> None:
        """Record that a stage of round `stage.round` finished (a second record replaces it)."""
        with self.transaction():
            self.db["round_stages"].upsert(
                {
                    "round": stage.round,
                    "stage": stage.stage,
                    "seconds": stage.seconds,
                    "metrics": to_json(stage.metrics),
                    "finished_at": stage.finished_at or now(),
                },
                pk=("round", "stage"),
            )

    def forget_stage(self, round: int, stage: str) -> None:
        """Drop a stage's record, so that `rankloop round` runs it again."""
        with self.transaction():
            self.db.execute(
                "delete from round_stages where round = ? and stage = ?", [round, stage]
            )

    def stages(self, round: int | None = None) -> list[RoundStage]:
        """Finished stages (of one round, or all): by round, then in the order they finished."""
        where, params = ("where round = ?", [round]) if round is not None else ("", [])
        return [
            RoundStage(round=r, stage=st, seconds=sec, metrics=json.loads(m or "{}"), finished_at=f)
            for r, st, sec, m, f in self.db.execute(
                f"select round, stage, seconds, metrics, finished_at from round_stages "
                f"{where} order by round, finished_at, rowid",
                params,
            ).fetchall()
        ]

    def label_counts_by_round(self) -> dict[int, dict[str, int]]:
        """{round: {source: labels}} for the comparisons of each round."""
        out: dict[int, dict[str, int]] = {}
        for rnd, source, n in self.db.execute(
            "select c.round, l.source, count(*) from labels l join comparisons c "
            "on c.id = l.comparison_id group by c.round, l.source"
        ).fetchall():
            out.setdefault(rnd, {})[source] = n
        return out

    def comparison_rounds(self) -> dict[int, int]:
        """{comparison id: its round}."""
        return dict(self.db.execute("select id, round from comparisons").fetchall())

    def cross_round_outcomes(self, sources: Sequence[str] | None = None) -> list[Match]:
        """Every verdict between two rounds' policies: for each label (of `sources` only, when
        given) on a comparison holding generated responses of two or more rounds, one `Match`
        per pair of its responses from different rounds, newer round as side a. Imported
        responses (source other than 'generated') belong to no round's policy: no match.
        Ordered by label id, then by response ids."""
        rounds: dict[int, int] = {}  # generated response -> its round, in mixed comparisons
        cross = """select x.comparison_id from comparison_responses x
            join responses r on r.id = x.response_id where r.source = 'generated'
            group by x.comparison_id having count(distinct r.round) > 1"""
        for rid, rnd in self.db.execute(
            f"select r.id, r.round from comparison_responses x join responses r "
            f"on r.id = x.response_id where r.source = 'generated' "
            f"and x.comparison_id in ({cross})"
        ).fetchall():
            rounds[rid] = rnd
        out = []
        for lid, cid, pid, ranking, src in self.db.execute(
            f"select l.id, l.comparison_id, c.prompt_id, l.ranking, l.source from labels l "
            f"join comparisons c on c.id = l.comparison_id "
            f"where l.comparison_id in ({cross}) order by l.id"
        ).fetchall():
            if sources is not None and src not in sources:
                continue
            tiers = tier_of(json.loads(ranking))
            for i, j in itertools.combinations(sorted(tiers), 2):
                if i not in rounds or j not in rounds or rounds[i] == rounds[j]:
                    continue
                if rounds[i] < rounds[j]:  # the newer round is side a
                    i, j = j, i
                outcome = (pair_outcome(tiers, i, j) + 1) / 2  # win 1, tie 0.5, loss 0
                out.append(
                    Match(
                        prompt_id=pid,
                        comparison_id=cid,
                        label_id=lid,
                        model_a=rounds[i],
                        model_b=rounds[j],
                        response_a=i,
                        response_b=j,
                        outcome=outcome,
                        source=src,
                    )
                )
        return out

    # -- status ------------------------------------------------------------------------------

    def status(self) -> StoreStatus:
        q = lambda sql: self.db.execute(sql).fetchone()[0]
        labeled = q("select count(distinct comparison_id) from labels")
        comparisons = q("select count(*) from comparisons")
        return StoreStatus(
            prompts=q("select count(*) from prompts"),
            responses_per_round=dict(
                self.db.execute(
                    "select round, count(*) from responses group by round order by round"
                ).fetchall()
            ),
            comparisons=comparisons,
            comparisons_pending=comparisons - labeled,
            comparisons_labeled=labeled,
            labels=q("select count(*) from labels"),
            annotators=q("select count(*) from annotators where role in ('annotator', 'admin')"),
            rounds=self.rounds(),
            current_round=self.current_round(),
        )


def _tiers(obj) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(x) for x in tier) for tier in obj)
