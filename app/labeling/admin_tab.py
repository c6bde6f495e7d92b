"""The admin's tab: dashboard, flags, gold, guidelines, accounts, upload and export.

`build_admin_tab(ctx, export_root)` creates the components inside the current `gr.Tab` and wires
them to the plain handlers of `admin.py` (each checks the admin role itself: the tab's
visibility is only a convenience). Further admin views are functions that build their components
given the ctx; they are called in `ADMIN_VIEWS` order below the dashboard.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import gradio as gr

from rankloop.data.records import PERSON_ROLES

from . import admin
from .events import guarded
from .handlers import Ctx
from .rounds_view import build_rounds_view

# Admin views built by other modules, each `view(ctx)` (e.g. the rounds view); one call each.
ADMIN_VIEWS: Sequence[Callable[[Ctx], None]] = (build_rounds_view,)


def _action(ctx: Ctx, fn):
    """An admin handler as a Gradio event function: (ctx, logged-in name, *inputs)."""

    # Gradio injects gr.Request only into a positional parameter annotated with it (a
    # keyword-only one is left out and the call fails): so it comes first here.
    def run(request: gr.Request, *args):
        return guarded(lambda: fn(ctx, request.username, *args))

    return run


def build_admin_tab(ctx: Ctx, tab: gr.Tab, export_root: Path) -> None:
    """The admin's components and events (call inside `tab`, refreshed when it is selected);
    each export is written to a fresh folder under `export_root`, which the app removes when
    it closes."""
    private = {"api_visibility": "private"}
    summary = gr.Markdown("", elem_id="rl-summary")
    refresh = gr.Button("Refresh", elem_id="rl-refresh")
    stats = gr.Dataframe(label="Annotators", interactive=False, elem_id="rl-stats")
    with gr.Row():
        per_day = gr.BarPlot(x="day", y="labels", color="annotator", title="Labels per day")
        kappa_plot = gr.BarPlot(x="pair", y="kappa", title="Cohen's kappa per pair of annotators")
    rounds_plot = gr.LinePlot(x="round", y="value", color="metric", title="Per-round metrics")
    kappa_table = gr.Dataframe(label="Agreement (Cohen's kappa)", interactive=False)
    flags_table = gr.Dataframe(label="Open flags", interactive=False)

    for view in ADMIN_VIEWS:
        view(ctx)

    with gr.Row():
        flag_id = gr.Number(label="Flag id", precision=0, elem_id="rl-flag-id")
        resolve_btn = gr.Button("Resolve flag (back to the queue)", elem_id="rl-resolve")
    with gr.Row():
        gold_cid = gr.Number(label="Comparison id", precision=0, elem_id="rl-gold-cid")
        show_btn = gr.Button("Show comparison", elem_id="rl-show")
        gold_rank = gr.Textbox(
            label="Gold answer in response ids, best first ('12 > 13'; empty = not gold)",
            elem_id="rl-gold-rank",
        )
        gold_btn = gr.Button("Set gold", elem_id="rl-set-gold")
    admin_msg = gr.Markdown("", elem_id="rl-admin-msg")
    shown_comparison = gr.HTML("", elem_id="rl-admin-comparison")
    with gr.Accordion("Guidelines", open=False):
        guide_edit = gr.Textbox(label="Guidelines (Markdown)", lines=12, elem_id="rl-guide-edit")
        guide_save = gr.Button("Save guidelines", elem_id="rl-guide-save")
    with gr.Accordion("Accounts", open=False):
        accounts = gr.Dataframe(label="Accounts", interactive=False, elem_id="rl-accounts")
        with gr.Row():
            new_name = gr.Textbox(label="Name", elem_id="rl-new-name")
            new_role = gr.Dropdown(
                list(PERSON_ROLES), value="annotator", label="Role", elem_id="rl-new-role"
            )
            new_btn = gr.Button("Create account", elem_id="rl-new-account")
        with gr.Row():
            acct_name = gr.Textbox(label="Account", elem_id="rl-account-name")
            disable_btn = gr.Button("Disable", elem_id="rl-disable")
            enable_btn = gr.Button("Enable", elem_id="rl-enable")
            reset_btn = gr.Button("Reset secret", elem_id="rl-reset-secret")
            acct_role = gr.Dropdown(
                list(PERSON_ROLES), value="annotator", label="Role", elem_id="rl-account-role"
            )
            role_btn = gr.Button("Set role", elem_id="rl-set-role")
    with gr.Accordion("Upload prompts / export", open=False):
        upload_file = gr.File(
            label="Prompts (JSONL, CSV or Parquet; as rankloop import)",
            type="filepath",
            elem_id="rl-upload-file",
        )
        upload_btn = gr.Button("Import", elem_id="rl-upload")
        with gr.Row():
            fmt = gr.Dropdown(
                list(admin.ADMIN_EXPORTS), value="jsonl", label="Format", elem_id="rl-export-format"
            )
            export_btn = gr.Button("Export", elem_id="rl-export")
        export_file = gr.File(label="Export", interactive=False, elem_id="rl-export-file")

    outputs = [
        summary,
        stats,
        per_day,
        kappa_plot,
        rounds_plot,
        kappa_table,
        flags_table,
        guide_edit,
        accounts,
    ]

    def on_refresh(request: gr.Request):
        d = guarded(lambda: admin.dashboard(ctx, request.username))
        return [
            d.summary,
            d.annotators,
            d.per_day,
            d.kappa,
            d.rounds,
            d.kappa,
            d.flags,
            admin.current_guidelines(ctx, request.username),
            admin.accounts(ctx, request.username),
        ]

    refresh.click(on_refresh, None, outputs, **private)
    tab.select(on_refresh, None, outputs, **private)

    resolve_btn.click(_action(ctx, admin.resolve_flag), [flag_id], [admin_msg], **private)
    gold_btn.click(_action(ctx, admin.set_gold), [gold_cid, gold_rank], [admin_msg], **private)
    show_btn.click(_action(ctx, admin.comparison_html), [gold_cid], [shown_comparison], **private)
    guide_save.click(_action(ctx, admin.save_guidelines), [guide_edit], [admin_msg], **private)

    # An account change shows its message, then the accounts table as it is now.
    def account_action(fn):
        def run(request: gr.Request, *args):
            msg = guarded(lambda: fn(ctx, request.username, *args))
            return msg, admin.accounts(ctx, request.username)

        return run

    for btn, fn, inputs in (
        (new_btn, admin.add_account, [new_name, new_role]),
        (disable_btn, admin.disable_account, [acct_name]),
        (enable_btn, admin.enable_account, [acct_name]),
        (reset_btn, admin.reset_secret, [acct_name]),
        (role_btn, admin.set_role, [acct_name, acct_role]),
    ):
        btn.click(account_action(fn), inputs, [admin_msg, accounts], **private)
    upload_btn.click(_action(ctx, admin.upload), [upload_file], [admin_msg], **private)

    def on_export(f, request: gr.Request):
        out_dir = Path(tempfile.mkdtemp(dir=export_root))  # one folder per export
        path, msg = guarded(lambda: admin.export(ctx, request.username, f, out_dir))
        return (str(path) if path else None), msg

    export_btn.click(on_export, [fmt], [export_file, admin_msg], **private)
