"""The HTTP API for scripted annotators (gradio_client, or plain POSTs): `next_task`, `label`.

Both are short database calls, served straight from the HTTP worker threads (POST
/gradio_api/run/<name>, one round trip) rather than through the event queue. A refusal (a bad
field, no access) is the client's mistake: it answers 400 or 403 with the message (`guard`), and
the server logs no traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import gradio as gr

from rankloop.data.store import StoreError

from . import handlers
from .guard import refuse
from .handlers import AccessDenied, Ctx

T = TypeVar("T")


def _answer(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (AccessDenied, StoreError) as e:
        refuse(403 if isinstance(e, AccessDenied) else 400)
        raise gr.Error(str(e), print_exception=False) from None


def build_api(ctx: Ctx) -> None:
    """Register the two endpoints on the current `gr.Blocks`."""

    def next_task(request: gr.Request) -> dict:
        """Your current or next task: comparison_id, request_id, mode, prompt, responses
        (in the order to judge them: the first is A), left."""
        return _answer(lambda: handlers.api_next(ctx, request.username))

    def label(
        comparison_id: int,
        request_id: str,
        choice: str = "",
        ranking: str = "",
        strength: str = "",
        rationale: str = "",
        seconds_spent: float = 0.0,
        request: gr.Request = None,
    ) -> dict:
        """Record a label on your leased comparison: choice A/B/tie/both_bad (pairwise) or
        ranking 'C > A = B'; retry with the same request_id safely. Returns label_id and
        next (your next task, as next_task returns it)."""
        return _answer(
            lambda: handlers.api_label(
                ctx,
                request.username,
                comparison_id,
                request_id,
                choice,
                ranking,
                strength,
                rationale,
                seconds_spent,
            )
        )

    gr.api(next_task, api_name="next_task", queue=False)
    gr.api(label, api_name="label", queue=False)
