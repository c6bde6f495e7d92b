"""The admin tab's Rounds view: did each round help?

It shows exactly what `rankloop report` writes (app/report.py): per round the labels by source,
the annotators' agreement, the reward model's held-out accuracy and calibration, PPO's per-step
curves (mean score, KL, response length), the win-rates with their intervals and the
leaderboard. It is computed when the admin opens the view or presses its Refresh button: the
store is read under its lock, the bootstrap runs after the lock is released, so annotators'
submissions never wait for the statistics.
"""

from __future__ import annotations

import gradio as gr

from rankloop.app import report

from . import admin
from .events import guarded
from .handlers import AccessDenied, Ctx

#: The label sources the view can count, as the dropdown offers them.
SOURCE_CHOICES = (
    ("all labels", "all"),
    ("human labels", "human"),
    ("simulated labels", "simulated"),
)


def rounds_html(ctx: Ctx, username: str | None, source: str = "all") -> str:
    """The Rounds view's HTML for an admin (anyone else is refused)."""
    if not admin.is_admin(ctx, username):
        raise AccessDenied("only an admin can see the rounds")
    if source not in {value for _, value in SOURCE_CHOICES}:
        source = "all"
    with ctx.stores() as store:
        got = report.snapshot(store, sources=None if source == "all" else [source])
    return report.render_body(report.with_statistics(got))


def build_rounds_view(ctx: Ctx) -> None:
    """The view's components and events, inside the admin tab (app/labeling/admin_tab.py)."""
    with gr.Accordion("Rounds: did each round help?", open=False, elem_id="rl-rounds") as accordion:
        with gr.Row():
            source = gr.Dropdown(
                list(SOURCE_CHOICES),
                value="all",
                label="Count",
                elem_id="rl-rounds-source",
                scale=0,
                min_width=200,
            )
            refresh = gr.Button("Refresh rounds", elem_id="rl-rounds-refresh", scale=0)
        view = gr.HTML("", elem_id="rl-rounds-view")

    def show(request: gr.Request, which: str):
        return guarded(lambda: rounds_html(ctx, request.username, which))

    private = {"api_visibility": "private"}
    accordion.expand(show, [source], [view], **private)
    refresh.click(show, [source], [view], **private)
    source.change(show, [source], [view], **private)
