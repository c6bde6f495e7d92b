"""The annotator's tab: one task (prompt and 2-9 responses), the judgment controls, the keys.

`build_label_tab(ctx)` creates the components inside the current `gr.Tab` and wires their events
to the plain handlers of `handlers.py`; it returns a `LabelTab` whose `show(page)` maps a `Page`
onto `outputs` (the page-load event of `ui.build_app` uses both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from rankloop.data.queue import FLAG_KINDS, SKIP_REASONS
from rankloop.data.records import MAX_RESPONSES

from . import handlers
from .events import guarded
from .handlers import SHORTCUTS, Ctx, Page

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


@dataclass(frozen=True)
class LabelTab:
    """What the page-load event needs from the tab: its outputs and how to fill them."""

    outputs: list
    show: Callable[[Page], list]
    guidelines: gr.HTML


def build_label_tab(ctx: Ctx) -> LabelTab:
    """The annotator's components and events (call inside a `gr.Tab`)."""
    state = gr.State(None)
    progress = gr.Markdown("", elem_id="rl-progress")
    message = gr.Markdown("", elem_id="rl-message")
    with gr.Accordion("Guidelines (g)", open=False, elem_id="rl-guidelines"):
        guidelines = gr.HTML("", elem_id="rl-guidelines-text")
    with gr.Column(visible=False) as task_area:
        prompt = gr.HTML("", elem_id="rl-prompt")
        resp_cols, resp_html, rank_btns = [], [], []
        with gr.Row(equal_height=False):
            for i in range(MAX_RESPONSES):
                with gr.Column(visible=False, min_width=280) as col:
                    resp_html.append(gr.HTML("", elem_id=f"rl-response-{i}"))
                    rank_btns.append(
                        gr.Button(
                            f"Rank {chr(65 + i)} next ({i + 1})",
                            size="sm",
                            elem_id=f"rl-rank-{i}",
                            visible=False,
                        )
                    )
                resp_cols.append(col)
        with gr.Row(visible=False, elem_id="rl-pairwise") as pair_row:
            choice = gr.Radio(
                [("A better", "A"), ("B better", "B"), ("Tie", "tie"), ("Both bad", "both_bad")],
                label="Which is better?",
                elem_id="rl-choice",
            )
            strength = gr.Radio(
                [("not set", ""), ("slightly better", "slightly"), ("much better", "much")],
                value="",
                label="How much better? (optional)",
                elem_id="rl-strength",
            )
        with gr.Row(visible=False, elem_id="rl-ranking-row") as rank_row:
            ranking = gr.Textbox(
                label="Ranking, best first ('C > A = B')", elem_id="rl-ranking", scale=3
            )
            tie_btn = gr.Button("Next ties with previous (t)", elem_id="rl-tie", size="sm")
            clear_btn = gr.Button("Clear (c)", elem_id="rl-clear", size="sm")
        rationale = gr.Textbox(label="Why? (optional)", lines=2, elem_id="rl-rationale")
        with gr.Row():
            submit_btn = gr.Button("Submit (Enter)", variant="primary", elem_id="rl-submit")
            undo_btn = gr.Button("Undo last label (u)", elem_id="rl-undo")
        with gr.Row():
            skip_reason = gr.Dropdown(
                list(SKIP_REASONS),
                value=SKIP_REASONS[0],
                label="Skip reason",
                elem_id="rl-skip-reason",
            )
            skip_btn = gr.Button("Skip (k)", elem_id="rl-skip")
            flag_kind = gr.Dropdown(
                list(FLAG_KINDS), value=FLAG_KINDS[1], label="Flag as", elem_id="rl-flag-kind"
            )
            flag_note = gr.Textbox(label="Flag note (optional)", elem_id="rl-flag-note")
            flag_btn = gr.Button("Flag (f)", elem_id="rl-flag")
    idle_undo = gr.Button("Undo last label (u)", elem_id="rl-undo-idle", visible=False)
    gr.Markdown(SHORTCUTS)

    outputs = [
        message,
        progress,
        task_area,
        prompt,
        *resp_cols,
        *resp_html,
        *rank_btns,
        pair_row,
        rank_row,
        choice,
        strength,
        ranking,
        rationale,
        idle_undo,
        state,
    ]

    def show(page: Page) -> list:
        k = len(page.responses_html)
        ranked = page.mode == "ranking"
        return [
            page.message,
            page.progress,
            gr.update(visible=page.mode != "idle"),
            page.prompt_html,
            *[gr.update(visible=i < k) for i in range(MAX_RESPONSES)],
            *[page.responses_html[i] if i < k else "" for i in range(MAX_RESPONSES)],
            *[gr.update(visible=ranked and i < k) for i in range(MAX_RESPONSES)],
            gr.update(visible=page.mode == "pairwise"),
            gr.update(visible=ranked),
            gr.update(value=page.prefill.choice),
            gr.update(value=page.prefill.strength),
            page.prefill.ranking,
            page.prefill.rationale,
            gr.update(visible=page.mode == "idle"),
            page.state,
        ]

    def on_submit(st, ch, sg, rk, ra, request: gr.Request):
        return show(guarded(lambda: handlers.submit(ctx, request.username, st, ch, sg, rk, ra)))

    def on_skip(st, reason, request: gr.Request):
        return show(guarded(lambda: handlers.skip(ctx, request.username, st, reason)))

    def on_flag(st, kind, note, request: gr.Request):
        return show(guarded(lambda: handlers.flag(ctx, request.username, st, kind, note)))

    def on_undo(st, request: gr.Request):
        return show(guarded(lambda: handlers.undo(ctx, request.username, st)))

    private = {"api_visibility": "private"}
    submit_btn.click(on_submit, [state, choice, strength, ranking, rationale], outputs, **private)
    skip_btn.click(on_skip, [state, skip_reason], outputs, **private)
    flag_btn.click(on_flag, [state, flag_kind, flag_note], outputs, **private)
    for btn in (undo_btn, idle_undo):
        btn.click(on_undo, [state], outputs, **private)

    # The ranking box is built in the browser, at the speed of the keys: a server round trip
    # per key would let fast key presses overwrite each other. The server parses and checks the
    # result (`handlers.parse_ranking`) when it is submitted.
    for i, btn in enumerate(rank_btns):
        btn.click(None, [ranking], [ranking], js=RANK_NEXT_JS.replace("LETTER", chr(65 + i)))
    tie_btn.click(None, [ranking], [ranking], js=TIE_NEXT_JS)
    clear_btn.click(None, None, [ranking], js="() => ''")
    return LabelTab(outputs=outputs, show=show, guidelines=guidelines)
