"""The annotator view's handlers: plain functions of (context, logged-in name, inputs).

Each returns a `Page` (what the annotator sees next); the Gradio layer (`ui.py`) only maps a
`Page` onto components, so these run and are tested without a browser or a server. The annotator
is always the name Gradio's login put on the request (`gr.Request.username`), never a value from
the page. The session state (`Page.state`) holds the leased comparison and when it was shown;
the lease in the database, not the state, decides which order the responses were shown in and
which request id makes the submission idempotent.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rankloop.app.config import LabelingConfig
from rankloop.data import queue
from rankloop.data.rankings import DEFAULT_MARGINS
from rankloop.data.records import PERSON_ROLES, Annotator, Judgment, mode_of
from rankloop.data.store import Store, StoreError, check_text

from .render import LETTERS, conversation_html, markdown_html, response_html
from .sessions import Sessions
from .store_pool import StorePool

DEFAULT_GUIDELINES = """\
# Labeling guidelines

Read the prompt (the whole conversation), then every response. Judge which response a careful,
honest expert would rather have received:

1. **Helpful**: does it do what the user asked, completely and correctly?
2. **Honest**: no made-up facts; it says so when it does not know.
3. **Harmless**: no dangerous, hateful or private content. A refusal is right only when the
   request is harmful.

Length is not quality: a short correct answer beats a long padded one.

- **Tie**: the responses are equally good (or equally flawed in the same way).
- **Both bad**: neither is acceptable; still pick the less bad one if you can, else tie.
- **Slightly / much better**: how sure and how large the difference is.
- **Skip** when you cannot judge (topic, language); **flag** a prompt that is unsafe, broken or
  unanswerable.
"""

SHORTCUTS = """\
**Keys** (outside text boxes): **1** / **a** A better · **2** / **b** B better ·
**t** tie · **x** both bad · **s** slightly · **m** much better · **Enter** submit ·
**k** skip · **f** flag · **u** undo last label · **g** guidelines. Ranking K responses:
press **1**-**9** in order, best first; **t** ties the next one with the previous;
**c** clears the ranking.
"""


class AccessDenied(PermissionError):
    """The request has no logged-in annotator, or one without the right role."""


@dataclass(frozen=True)
class Ctx:
    """What every handler needs: built once by `build_app`, shared read-only by all sessions."""

    stores: StorePool
    config: LabelingConfig
    guidelines_path: Path | None = None
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.SystemRandom)
    sessions: Sessions = field(default_factory=Sessions)  # the server's logins, once it serves
    # ([reward] margin_slightly, margin_much): the admin's export reads strengths as training does
    margins: tuple[float, float] = DEFAULT_MARGINS


@dataclass(frozen=True)
class Prefill:
    """Inputs to show again (after an undo, or after a refused submission)."""

    choice: str | None = None
    strength: str = ""
    ranking: str = ""
    rationale: str = ""


@dataclass(frozen=True)
class Page:
    """Everything the annotator view shows after an action."""

    mode: str  # "pairwise", "ranking", or "idle" (no task: done, or all held by others)
    prompt_html: str
    responses_html: tuple[str, ...]
    progress: str
    message: str
    state: dict | None  # {"comparison_id", "request_id", "shown_at", "k"}
    prefill: Prefill = Prefill()


def annotator(store: Store, username: str | None) -> Annotator:
    """The logged-in account; every handler starts here (so disabling an account takes
    effect at its next request, whichever process disabled it)."""
    if not username:
        raise AccessDenied("log in to label")
    a = store.annotator(username)
    if a is None or a.role not in PERSON_ROLES:
        raise AccessDenied(f"no annotator account named {username!r}")
    if a.disabled:
        raise AccessDenied(f"the account {username!r} is disabled; ask an admin")
    return a


def _progress_line(store: Store, ctx: Ctx, aid: int) -> str:
    p = queue.progress(store, aid, n=ctx.config.labels_per_comparison)
    return (
        f"Labeled today: **{p.labeled_today}** · in total: **{p.labeled_total}** · "
        f"left in the queue: **{p.left}**"
    )


def _page(
    ctx: Ctx,
    store: Store,
    a: Annotator,
    task: queue.Task | None,
    message: str = "",
    prefill: Prefill = Prefill(),
    prev: dict | None = None,
) -> Page:
    progress = _progress_line(store, ctx, a.id)
    if task is None:
        left = queue.progress(store, a.id, n=ctx.config.labels_per_comparison).left
        idle = (
            "Nothing left to label: thank you!"
            if left == 0
            else f"The {left} comparison(s) left are being labeled by others right now; "
            f"try again in a minute."
        )
        return Page("idle", "", (), progress, (message + " " + idle).strip(), None, prefill)
    # The clock for seconds_spent starts when a task is first shown, not at a re-render.
    same = prev is not None and prev.get("request_id") == task.request_id
    state = {
        "comparison_id": task.comparison.id,
        "request_id": task.request_id,
        "shown_at": prev["shown_at"] if same else ctx.clock(),
        "k": len(task.responses),
    }
    return Page(
        task.mode,
        conversation_html(task.prompt.messages),
        tuple(response_html(i, r.text) for i, r in enumerate(task.responses)),
        progress,
        message,
        state,
        prefill,
    )


def _next(ctx: Ctx, store: Store, a: Annotator) -> queue.Task | None:
    c = ctx.config
    return queue.next_task(
        store,
        a.id,
        n=c.labels_per_comparison,
        lease_seconds=c.lease_seconds,
        order=c.order,
        gold_rate=c.gold_rate,
        now=ctx.clock(),
        rng=ctx.rng,
        first_round=store.current_round() if c.current_round_first else None,
    )


def load(ctx: Ctx, username: str | None) -> Page:
    """Open the page: the task this annotator holds, or their next one."""
    with ctx.stores() as store:
        a = annotator(store, username)
        return _page(ctx, store, a, _next(ctx, store, a))


def _same_task(
    ctx: Ctx, store: Store, a: Annotator, message: str, prefill: Prefill, prev: dict | None = None
) -> Page:
    """Show the held task again with an error message and the inputs as they were."""
    return _page(ctx, store, a, _next(ctx, store, a), message, prefill, prev)


# -- the ranking box: "C > A = B" (built in the browser, checked here) ----------------------


def parse_ranking(text: str, k: int) -> list[list[int]]:
    """'C > A = B' -> [[2], [0, 1]]: letters are display positions, '>' separates tiers (best
    first) and '=' joins ties; spaces are ignored, and two letters need one of the two between
    them. Every one of the k responses must appear exactly once."""
    letters = list(LETTERS[:k])
    example = " > ".join(letters)
    tokens = re.findall(r"[A-Z]+|\S", check_text(text or "", "the ranking", 200).upper())
    if not tokens:
        raise StoreError(
            f"rank the responses: type e.g. '{example}' or press their number keys, best first"
        )
    tiers: list[list[int]] = [[]]
    for i, t in enumerate(tokens):
        if i % 2 == 0:  # a response
            if t in (">", "="):
                raise StoreError(
                    "the ranking has an empty place: a response must come first, "
                    "last, and between two of '>' or '='"
                )
            if t not in letters:
                raise StoreError(f"unknown response {t!r} in the ranking; use {', '.join(letters)}")
            tiers[-1].append(letters.index(t))
        elif t == ">":
            tiers.append([])
        elif t != "=":
            raise StoreError(
                f"put '>' (better) or '=' (tie) between two responses, not {t!r}: e.g. '{example}'"
            )
    if len(tokens) % 2 == 0:
        raise StoreError(f"the ranking ends with {tokens[-1]!r}: name a response after it")
    flat = [p for tier in tiers for p in tier]
    if sorted(flat) != list(range(k)):
        missing = [letters[p] for p in range(k) if p not in flat]
        twice = sorted({letters[p] for p in flat if flat.count(p) > 1})
        raise StoreError(
            "rank every response exactly once: "
            + (
                f"missing {', '.join(missing)}"
                if missing
                else f"{', '.join(twice)} appear(s) twice"
            )
        )
    return tiers


# -- actions ----------------------------------------------------------------------------------


def _elapsed(ctx: Ctx, state: dict) -> float | None:
    """Seconds since the task was shown; none when the clock went back or over a day passed
    (a tab left open says nothing about the time a judgment took)."""
    seconds = round(ctx.clock() - state["shown_at"], 3)
    return seconds if 0 <= seconds <= queue.MAX_SECONDS else None


def judgment_of(
    k: int,
    choice: str | None,
    ranking: str | None,
    strength: str | None,
    rationale: str | None,
    seconds_spent: float | None,
) -> Judgment:
    """The page's or the API's fields as one `Judgment` for a task of `k` responses: a choice
    where the task is pairwise (`mode_of`), else the ranking box parsed. An API caller may also
    rank a pairwise task ('A > B')."""
    positions = None
    if not choice:
        if mode_of(k) == "pairwise" and not (ranking or "").strip():
            raise StoreError("choose A better, B better, tie or both bad first")
        positions = tuple(tuple(tier) for tier in parse_ranking(ranking or "", k))
    return Judgment(
        choice=choice or None,
        positions=positions,
        strength=strength or None,
        rationale=rationale,
        seconds_spent=seconds_spent,
    )


def submit(
    ctx: Ctx,
    username: str | None,
    state: dict | None,
    choice: str | None,
    strength: str | None,
    ranking: str | None,
    rationale: str | None,
) -> Page:
    """Record the judgment of the task in `state`, then show the next task.

    A double click sends the same request id twice: the second returns the label the first
    recorded, and the page moves on once.
    """
    prefill = Prefill(choice or None, strength or "", ranking or "", rationale or "")
    with ctx.stores() as store:
        a = annotator(store, username)
        if not state:
            return _same_task(ctx, store, a, "Nothing to submit: here is your next task.", prefill)
        try:
            judgment = judgment_of(
                state["k"], choice, ranking, strength, rationale, _elapsed(ctx, state)
            )
            # The label and the next lease commit together: one transaction, one fsync.
            with store.transaction():
                label_id = queue.submit(
                    store, a.id, state["comparison_id"], state["request_id"], judgment
                )
                task = _next(ctx, store, a)
        except StoreError as e:
            return _same_task(ctx, store, a, f"Not saved: {e}", prefill, state)
        return _page(ctx, store, a, task, f"Saved label #{label_id}.")


def skip(ctx: Ctx, username: str | None, state: dict | None, reason: str | None) -> Page:
    """Skip the current task with a reason; it will not come back to this annotator."""
    with ctx.stores() as store:
        a = annotator(store, username)
        if not state:
            return _same_task(ctx, store, a, "", Prefill())
        try:
            queue.skip(store, a.id, state["comparison_id"], reason or "")
        except StoreError as e:
            return _same_task(ctx, store, a, f"Not skipped: {e}", Prefill(), state)
        return _page(ctx, store, a, _next(ctx, store, a), "Skipped.")


def flag(
    ctx: Ctx, username: str | None, state: dict | None, kind: str | None, note: str | None
) -> Page:
    """Flag the current task for an admin; it leaves the queue until they resolve it."""
    with ctx.stores() as store:
        a = annotator(store, username)
        if not state:
            return _same_task(ctx, store, a, "", Prefill())
        try:
            queue.flag(store, a.id, state["comparison_id"], kind or "", note)
        except StoreError as e:
            return _same_task(ctx, store, a, f"Not flagged: {e}", Prefill(), state)
        return _page(ctx, store, a, _next(ctx, store, a), f"Flagged as {kind}.")


def undo(ctx: Ctx, username: str | None, state: dict | None) -> Page:
    """Take back one's own last label and show that comparison again, filled in, to edit."""
    with ctx.stores() as store:
        a = annotator(store, username)
        got = queue.undo_last(
            store, a.id, now=ctx.clock(), lease_seconds=ctx.config.lease_seconds, rng=ctx.rng
        )
        if got is None:
            return _same_task(ctx, store, a, "Nothing to undo.", Prefill())
        label, task = got
        order = list(label.display_order)
        ranking = " > ".join(
            " = ".join(LETTERS[order.index(r)] for r in tier) for tier in label.ranking
        )
        prefill = Prefill(
            label.choice,
            label.strength or "",
            "" if label.mode == "pairwise" else ranking,
            label.rationale or "",
        )
        return _page(
            ctx,
            store,
            a,
            task,
            f"Label #{label.id} taken back: change it and submit again.",
            prefill,
        )


def guidelines_markdown(ctx: Ctx) -> str:
    p = ctx.guidelines_path
    return p.read_text(encoding="utf-8") if p is not None and p.exists() else DEFAULT_GUIDELINES


def guidelines_html(ctx: Ctx) -> str:
    """The project's guidelines (Markdown written by an admin, rendered with HTML escaped)."""
    return markdown_html(guidelines_markdown(ctx))


# -- the HTTP API for scripted annotators (gradio_client) -------------------------------------


def _task_data(ctx: Ctx, store: Store, a: Annotator) -> dict:
    task = _next(ctx, store, a)
    left = queue.progress(store, a.id, n=ctx.config.labels_per_comparison).left
    if task is None:
        return {"comparison_id": None, "left": left}
    return {
        "comparison_id": task.comparison.id,
        "request_id": task.request_id,
        "mode": task.mode,
        "prompt": task.prompt.as_chat(),
        "responses": [r.text for r in task.responses],
        "left": left,
    }


def api_next(ctx: Ctx, username: str | None) -> dict:
    """The annotator's current or next task as plain data, for gradio_client."""
    with ctx.stores() as store:
        return _task_data(ctx, store, annotator(store, username))


def api_label(
    ctx: Ctx,
    username: str | None,
    comparison_id,
    request_id,
    choice="",
    ranking="",
    strength="",
    rationale="",
    seconds_spent=None,
) -> dict:
    """Record a label on the annotator's leased comparison; returns {"label_id": id, "next":
    the next task as `api_next` gives it} (submit-and-fetch-next in one request, as the page).

    Pairwise: `choice` (A / B / tie / both_bad, A = first response returned by `api_next`);
    K-wise: `ranking` as in the page ('C > A = B'). Retrying with the same request id returns the
    same label id. The fields come from a script: every one is checked (type, range, size,
    grammar) and a bad one refused with a StoreError naming it, before anything is written.
    """
    comparison_id = _whole_number(comparison_id, "comparison_id")
    choice, ranking, strength = (
        check_text(v if v is not None else "", name, 200)
        for v, name in ((choice, "choice"), (ranking, "ranking"), (strength, "strength"))
    )
    if (
        isinstance(seconds_spent, (int, float))
        and not isinstance(seconds_spent, bool)
        and seconds_spent == 0
    ):
        seconds_spent = None  # the API's default: not measured
    if choice and ranking.strip():
        raise StoreError("give a choice (2 responses) or a ranking, not both")
    with ctx.stores() as store:
        a = annotator(store, username)
        k = len(store.comparison(comparison_id).response_ids)
        judgment = judgment_of(k, choice, ranking, strength, rationale, seconds_spent)
        with store.transaction():  # the label and the next lease: one commit
            label_id = queue.submit(store, a.id, comparison_id, request_id, judgment)
            return {"label_id": label_id, "next": _task_data(ctx, store, a)}


def _whole_number(value, name: str) -> int:
    """An id a script sent: an integer (or a float with no fraction, as JavaScript sends it)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not value.is_integer())
        or not 0 < value < 2**63
    ):
        raise StoreError(f"{name} must be a whole number; got {queue.show_value(value)}")
    return int(value)
