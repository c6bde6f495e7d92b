"""The Gradio 6 page: `build_app(stores_or_path, config) -> gr.Blocks`.

No module-level mutable state (every session's data is in `gr.State`, every shared object is in
the `Ctx` built here); the event functions below only read `gr.Request.username` (set by the
login Gradio's `launch(auth=...)` enforces on every route) and map the plain handlers of
`handlers.py` / `admin.py` onto components.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from rankloop.app.config import LabelingConfig
from rankloop.data.io import EXPORT_FORMATS
from rankloop.data.queue import FLAG_KINDS, SKIP_REASONS
from rankloop.data.store import Store, StoreError

from . import admin, handlers
from .handlers import SHORTCUTS, AccessDenied, Ctx, Page
from .store_pool import StorePool

MAX_K = 9

CSS = """
.rl-turn { border-left: 3px solid #999; padding: 0 .6em; margin: .4em 0; }
.rl-role, .rl-letter { font-weight: 600; opacity: .8; }
.rl-key { font-weight: 400; opacity: .7; }
.rl-response pre, .rl-turn pre { white-space: pre-wrap; }
"""

# Keyboard shortcuts: every key clicks the control a mouse would (so both go through the same
# event and the same server-side checks). Keys are ignored while typing in a text box.
HEAD = """
<script>
(() => {
  const shown = (sel) => { const el = document.querySelector(sel);
                           return el && el.offsetParent !== null ? el : null; };
  const click = (sel) => { const el = shown(sel);
                           if (el) { el.click(); return true; } return false; };
  const radio = (id, value) => click(`#${id} input[type=radio][value="${value}"]`)
                               || click(`#${id} label[data-testid="${value}-radio-label"]`);
  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.tagName === 'TEXTAREA' || t.isContentEditable ||
              (t.tagName === 'INPUT' && !['radio', 'checkbox', 'button'].includes(t.type)))) return;
    const pairwise = shown('#rl-pairwise') !== null;
    const k = e.key.toLowerCase();
    let done = false;
    if (pairwise && (k === '1' || k === 'a')) done = radio('rl-choice', 'A');
    else if (pairwise && (k === '2' || k === 'b')) done = radio('rl-choice', 'B');
    else if (pairwise && k === 't') done = radio('rl-choice', 'tie');
    else if (pairwise && k === 'x') done = radio('rl-choice', 'both_bad');
    else if (pairwise && k === 's') done = radio('rl-strength', 'slightly');
    else if (pairwise && k === 'm') done = radio('rl-strength', 'much');
    else if (!pairwise && /^[1-9]$/.test(k)) done = click(`#rl-rank-${Number(k) - 1}`);
    else if (!pairwise && k === 't') done = click('#rl-tie');
    else if (!pairwise && k === 'c') done = click('#rl-clear');
    else if (k === 'enter') done = click('#rl-submit');
    else if (k === 'k') done = click('#rl-skip');
    else if (k === 'f') done = click('#rl-flag');
    else if (k === 'u') done = click('#rl-undo');
    else if (k === 'g') done = click('#rl-guidelines .label-wrap');
    if (done) e.preventDefault();
  });
})();
</script>
"""


# The ranking box, edited in the browser: place a response next (ignored if already placed;
# after a trailing '=' it ties with the previous one), tie the next with the previous, clear.
RANK_NEXT_JS = """(text) => {
  const letter = 'LETTER'; text = (text || '').trim();
  if ((text.toUpperCase().match(/[A-Z]/g) || []).includes(letter)) return text;
  if (!text) return letter;
  return text.endsWith('=') ? `${text} ${letter}` : `${text} > ${letter}`;
}"""
TIE_NEXT_JS = """(text) => {
  text = (text || '').trim();
  return !text || text.endsWith('=') ? text : `${text} =`;
}"""


def launch_kwargs() -> dict:
    """The page assets Gradio 6 takes at `launch()` (no longer at `gr.Blocks()`)."""
    return {"head": HEAD, "css": CSS}


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860,
           block: bool = True) -> str:
    """Serve a `build_app` page behind the login; returns its URL (with `block=False` the
    server runs in a background thread: tests and benchmarks; stop it with `demo.close()`)."""
    ctx = demo.rankloop_ctx
    _, url, _ = demo.launch(
        server_name=host, server_port=port, auth=authenticator(ctx.stores),
        auth_message="Log in with the name and secret from `rankloop annotator add`.",
        show_error=True, quiet=True, max_threads=max(40, 2 * ctx.config.concurrency),
        footer_links=[], prevent_thread_lock=not block, **launch_kwargs())
    return url


def authenticator(stores: StorePool):
    """`launch(auth=...)`: a name and secret checked against the store's PBKDF2 hashes."""

    def check(name: str, secret: str) -> bool:
        with stores() as store:
            a = store.authenticate(name, secret)
        return a is not None and a.role in ("annotator", "admin")

    return check


def _as_stores(source: StorePool | Store | str | Path) -> StorePool:
    """A database file gets one connection behind a lock: on bench/labeling.py it matches a
    connection per thread on p95 without the seconds-long tails of writers waiting in SQLite's
    sleeping busy handler (docs/benchmarks.md)."""
    if isinstance(source, StorePool):
        return source
    if isinstance(source, Store):
        return StorePool.shared(source)
    return StorePool.shared(Store.open(source), owned=True)


def build_app(source: StorePool | Store | str | Path, config: LabelingConfig | None = None, *,
              guidelines_path: Path | None = None, ctx: Ctx | None = None) -> gr.Blocks:
    """The labeling app over a database file, one `Store` (both: one connection shared behind a
    lock), or a `StorePool` (e.g. `StorePool.per_thread(path)`: a connection per worker thread)."""
    ctx = ctx or Ctx(stores=_as_stores(source), config=config or LabelingConfig(),
                     guidelines_path=guidelines_path)
    export_dir = Path(tempfile.mkdtemp(prefix="rankloop-export-"))

    with gr.Blocks(title="rankloop labeling") as demo:
        state = gr.State(None)
        with gr.Row():
            who = gr.Markdown("")
            gr.Button("Log out", link="/logout", size="sm", scale=0)
        with gr.Tabs():
            with gr.Tab("Label", id="label"):
                progress = gr.Markdown("", elem_id="rl-progress")
                message = gr.Markdown("", elem_id="rl-message")
                with gr.Accordion("Guidelines (g)", open=False, elem_id="rl-guidelines"):
                    guidelines = gr.HTML("", elem_id="rl-guidelines-text")
                with gr.Column(visible=False) as task_area:
                    prompt = gr.HTML("", elem_id="rl-prompt")
                    resp_cols, resp_html, rank_btns = [], [], []
                    with gr.Row(equal_height=False):
                        for i in range(MAX_K):
                            with gr.Column(visible=False, min_width=280) as col:
                                resp_html.append(gr.HTML("", elem_id=f"rl-response-{i}"))
                                rank_btns.append(gr.Button(
                                    f"Rank {chr(65 + i)} next ({i + 1})", size="sm",
                                    elem_id=f"rl-rank-{i}", visible=False))
                            resp_cols.append(col)
                    with gr.Row(visible=False, elem_id="rl-pairwise") as pair_row:
                        choice = gr.Radio([("A better", "A"), ("B better", "B"), ("Tie", "tie"),
                                           ("Both bad", "both_bad")], label="Which is better?",
                                          elem_id="rl-choice")
                        strength = gr.Radio([("not set", ""), ("slightly better", "slightly"),
                                             ("much better", "much")], value="",
                                            label="How much better? (optional)",
                                            elem_id="rl-strength")
                    with gr.Row(visible=False, elem_id="rl-ranking-row") as rank_row:
                        ranking = gr.Textbox(label="Ranking, best first ('C > A = B')",
                                             elem_id="rl-ranking", scale=3)
                        tie_btn = gr.Button("Next ties with previous (t)", elem_id="rl-tie",
                                            size="sm")
                        clear_btn = gr.Button("Clear (c)", elem_id="rl-clear", size="sm")
                    rationale = gr.Textbox(label="Why? (optional)", lines=2,
                                           elem_id="rl-rationale")
                    with gr.Row():
                        submit_btn = gr.Button("Submit (Enter)", variant="primary",
                                               elem_id="rl-submit")
                        undo_btn = gr.Button("Undo last label (u)", elem_id="rl-undo")
                    with gr.Row():
                        skip_reason = gr.Dropdown(list(SKIP_REASONS), value=SKIP_REASONS[0],
                                                  label="Skip reason", elem_id="rl-skip-reason")
                        skip_btn = gr.Button("Skip (k)", elem_id="rl-skip")
                        flag_kind = gr.Dropdown(list(FLAG_KINDS), value=FLAG_KINDS[1],
                                                label="Flag as", elem_id="rl-flag-kind")
                        flag_note = gr.Textbox(label="Flag note (optional)",
                                               elem_id="rl-flag-note")
                        flag_btn = gr.Button("Flag (f)", elem_id="rl-flag")
                idle_undo = gr.Button("Undo last label (u)", elem_id="rl-undo-idle",
                                      visible=False)
                gr.Markdown(SHORTCUTS)

            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                summary = gr.Markdown("", elem_id="rl-summary")
                refresh = gr.Button("Refresh", elem_id="rl-refresh")
                stats = gr.Dataframe(label="Annotators", interactive=False, elem_id="rl-stats")
                with gr.Row():
                    per_day = gr.BarPlot(x="day", y="labels", color="annotator",
                                         title="Labels per day")
                    kappa_plot = gr.BarPlot(x="pair", y="kappa",
                                            title="Cohen's kappa per pair of annotators")
                rounds_plot = gr.LinePlot(x="round", y="value", color="metric",
                                          title="Per-round metrics")
                kappa_table = gr.Dataframe(label="Agreement (Cohen's kappa)", interactive=False)
                flags_table = gr.Dataframe(label="Open flags", interactive=False)
                with gr.Row():
                    flag_id = gr.Number(label="Flag id", precision=0, elem_id="rl-flag-id")
                    resolve_btn = gr.Button("Resolve flag (back to the queue)", elem_id="rl-resolve")
                with gr.Row():
                    gold_cid = gr.Number(label="Comparison id", precision=0, elem_id="rl-gold-cid")
                    show_btn = gr.Button("Show comparison", elem_id="rl-show")
                    gold_rank = gr.Textbox(label="Gold answer in response ids, best first "
                                                 "('12 > 13'; empty = not gold)",
                                           elem_id="rl-gold-rank")
                    gold_btn = gr.Button("Set gold", elem_id="rl-set-gold")
                admin_msg = gr.Markdown("", elem_id="rl-admin-msg")
                shown_comparison = gr.HTML("", elem_id="rl-admin-comparison")
                with gr.Accordion("Guidelines", open=False):
                    guide_edit = gr.Textbox(label="Guidelines (Markdown)", lines=12,
                                            elem_id="rl-guide-edit")
                    guide_save = gr.Button("Save guidelines", elem_id="rl-guide-save")
                with gr.Accordion("Accounts", open=False):
                    with gr.Row():
                        new_name = gr.Textbox(label="Name", elem_id="rl-new-name")
                        new_role = gr.Dropdown(["annotator", "admin"], value="annotator",
                                               label="Role", elem_id="rl-new-role")
                        new_btn = gr.Button("Create account", elem_id="rl-new-account")
                with gr.Accordion("Upload prompts / export preferences", open=False):
                    upload_file = gr.File(label="Prompts (JSONL, CSV or Parquet; as rankloop "
                                                "import)", type="filepath",
                                          elem_id="rl-upload-file")
                    upload_btn = gr.Button("Import", elem_id="rl-upload")
                    with gr.Row():
                        fmt = gr.Dropdown(list(EXPORT_FORMATS), value="jsonl", label="Format",
                                          elem_id="rl-export-format")
                        export_btn = gr.Button("Export", elem_id="rl-export")
                    export_file = gr.File(label="Export", interactive=False, elem_id="rl-export-file")

        # -- wiring ---------------------------------------------------------------------------
        page_outputs = [message, progress, task_area, prompt, *resp_cols, *resp_html,
                        *rank_btns, pair_row, rank_row, choice, strength, ranking, rationale,
                        idle_undo, state]

        def show(page: Page) -> list:
            k = len(page.responses_html)
            ranked = page.mode == "ranking"
            return [page.message, page.progress, gr.update(visible=page.mode != "idle"),
                    page.prompt_html,
                    *[gr.update(visible=i < k) for i in range(MAX_K)],
                    *[page.responses_html[i] if i < k else "" for i in range(MAX_K)],
                    *[gr.update(visible=ranked and i < k) for i in range(MAX_K)],
                    gr.update(visible=page.mode == "pairwise"), gr.update(visible=ranked),
                    gr.update(value=page.prefill.choice), gr.update(value=page.prefill.strength),
                    page.prefill.ranking, page.prefill.rationale,
                    gr.update(visible=page.mode == "idle"), page.state]

        def guarded(fn):
            """Run a handler; an account problem becomes a visible error, not a traceback."""
            try:
                return fn()
            except AccessDenied as e:
                raise gr.Error(str(e)) from None

        def on_load(request: gr.Request):
            page = guarded(lambda: handlers.load(ctx, request.username))
            name = request.username
            return [*show(page), f"Logged in as **{name}**", handlers.guidelines_html(ctx),
                    gr.update(visible=admin.is_admin(ctx, name))]

        demo.load(on_load, None, [*page_outputs, who, guidelines, admin_tab],
                  api_visibility="private")

        def on_submit(st, ch, sg, rk, ra, request: gr.Request):
            return show(guarded(lambda: handlers.submit(ctx, request.username, st, ch, sg, rk,
                                                        ra)))

        submit_btn.click(on_submit, [state, choice, strength, ranking, rationale], page_outputs,
                         api_visibility="private")

        def on_skip(st, reason, request: gr.Request):
            return show(guarded(lambda: handlers.skip(ctx, request.username, st, reason)))

        skip_btn.click(on_skip, [state, skip_reason], page_outputs, api_visibility="private")

        def on_flag(st, kind, note, request: gr.Request):
            return show(guarded(lambda: handlers.flag(ctx, request.username, st, kind, note)))

        flag_btn.click(on_flag, [state, flag_kind, flag_note], page_outputs,
                       api_visibility="private")

        def on_undo(st, request: gr.Request):
            return show(guarded(lambda: handlers.undo(ctx, request.username, st)))

        for btn in (undo_btn, idle_undo):
            btn.click(on_undo, [state], page_outputs, api_visibility="private")

        # The ranking box is built in the browser, at the speed of the keys: a server round
        # trip per key would let fast key presses overwrite each other. The server parses and
        # checks the result (`handlers.parse_ranking`) when it is submitted.
        for i, btn in enumerate(rank_btns):
            btn.click(None, [ranking], [ranking], js=RANK_NEXT_JS.replace("LETTER", chr(65 + i)))
        tie_btn.click(None, [ranking], [ranking], js=TIE_NEXT_JS)
        clear_btn.click(None, None, [ranking], js="() => ''")

        # -- admin ----------------------------------------------------------------------------
        admin_outputs = [summary, stats, per_day, kappa_plot, rounds_plot, kappa_table,
                         flags_table, guide_edit]

        def on_refresh(request: gr.Request):
            d = guarded(lambda: admin.dashboard(ctx, request.username))
            return [d.summary, d.annotators, d.per_day, d.kappa, d.rounds, d.kappa, d.flags,
                    admin.current_guidelines(ctx, request.username)]

        refresh.click(on_refresh, None, admin_outputs, api_visibility="private")
        admin_tab.select(on_refresh, None, admin_outputs, api_visibility="private")

        def admin_action(fn):
            # Gradio injects gr.Request only into a positional parameter annotated with it
            # (a keyword-only one is left out and the call fails): so it comes first here.
            def run(request: gr.Request, *args):
                return guarded(lambda: fn(ctx, request.username, *args))
            return run

        resolve_btn.click(admin_action(admin.resolve_flag), [flag_id], [admin_msg],
                          api_visibility="private")
        gold_btn.click(admin_action(admin.set_gold), [gold_cid, gold_rank], [admin_msg],
                       api_visibility="private")
        show_btn.click(admin_action(admin.comparison_html), [gold_cid], [shown_comparison],
                       api_visibility="private")
        guide_save.click(admin_action(admin.save_guidelines), [guide_edit], [admin_msg],
                         api_visibility="private")
        new_btn.click(admin_action(admin.add_account), [new_name, new_role], [admin_msg],
                      api_visibility="private")
        upload_btn.click(admin_action(admin.upload), [upload_file], [admin_msg],
                         api_visibility="private")

        def on_export(f, request: gr.Request):
            path, msg = guarded(lambda: admin.export(ctx, request.username, f, export_dir))
            return (str(path) if path else None), msg

        export_btn.click(on_export, [fmt], [export_file, admin_msg], api_visibility="private")

        # -- the HTTP API for scripted annotators (gradio_client) ------------------------------
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
                    return handlers.api_label(ctx, request.username, int(comparison_id),
                                              request_id, choice, ranking, strength, rationale,
                                              seconds_spent or None)
                except StoreError as e:
                    raise gr.Error(str(e)) from None
            return guarded(run)

        # Short database calls: served straight from the HTTP worker threads (POST
        # /gradio_api/run/<name>, one round trip) rather than through the event queue.
        gr.api(next_task, api_name="next_task", queue=False)
        gr.api(label, api_name="label", queue=False)

    demo.queue(default_concurrency_limit=ctx.config.concurrency)
    demo.rankloop_ctx = ctx  # for the server to close per-thread connections at shutdown
    return demo
