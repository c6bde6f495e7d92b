"""The HTTP API for scripted annotators (gradio_client, or plain POSTs): `next_task`, `label`.

Both are short database calls, served straight from the HTTP worker threads (POST
/gradio_api/run/<name>, one round trip) rather than through the event queue.
"""

from __future__ import annotations

import gradio as gr

from rankloop.data.store import StoreError

from . import handlers
from .events import guarded
from .handlers import Ctx


def build_api(ctx: Ctx) -> None:
    """Register the two endpoints on the current `gr.Blocks`."""

    def next_task(request: gr.Request) -> dict:
        """Your current or next task: comparison_id, request_id, mode, prompt, responses
        (in the order to judge them: the first is A), left."""
        return guarded(lambda: handlers.api_next(ctx, request.username))

    def label(comparison_id: int, request_id: str, choice: str = "", ranking: str = "",
              strength: str = "", rationale: str = "", seconds_spent: float = 0.0,
              request: gr.Request = None) -> dict:
        """Record a label on your leased comparison: choice A/B/tie/both_bad (pairwise) or
        ranking 'C > A = B'; retry with the same request_id safely. Returns label_id and
        next (your next task, as next_task returns it)."""
        def run():
            try:
                return handlers.api_label(ctx, request.username, comparison_id, request_id,
                                          choice, ranking, strength, rationale, seconds_spent)
            except StoreError as e:  # the client's mistake: said, not logged as a crash
                raise gr.Error(str(e), print_exception=False) from None
        return guarded(run)

    gr.api(next_task, api_name="next_task", queue=False)
    gr.api(label, api_name="label", queue=False)
