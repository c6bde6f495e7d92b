"""Rendering untrusted model text as safe HTML.

Prompts and responses are model output or imported data: untrusted. They are rendered as
CommonMark by markdown-it-py with raw HTML *off*: any `<script>`, `<img onerror=...>` or other tag
in the text is escaped and shows as literal text, never parsed by the browser. markdown-it's link
validation refuses `javascript:`, `vbscript:`, `file:` and non-image `data:` URLs (such a link stays
as plain text); images are switched off too, so a response cannot make the annotator's browser
fetch a URL. Code blocks still render as `<pre><code>`, tables and strikethrough as usual.

Everything here returns HTML strings; the handlers put them in `gr.HTML` components, and the tests
read the strings directly.
"""

from __future__ import annotations

import html
import string

from markdown_it import MarkdownIt

ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
LETTERS = string.ascii_uppercase


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False})
    md.enable(["table", "strikethrough"]).disable("image")

    def link_open(renderer, tokens, idx, options, env):
        # Open links outside the labeling page and tell the target nothing about it.
        tokens[idx].attrSet("target", "_blank")
        tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


_MD = _markdown()  # immutable after construction: safe to share between threads


def markdown_html(text: str) -> str:
    """Untrusted Markdown -> HTML with every raw tag escaped."""
    return _MD.render(text)


def conversation_html(messages) -> str:
    """A prompt as a conversation: one block per turn, labelled with its role."""
    turns = []
    for m in messages:
        role = ROLE_NAMES.get(m.role, "Turn")
        turns.append(
            f'<div class="rl-turn rl-{html.escape(m.role)}">'
            f'<div class="rl-role">{role}</div>{markdown_html(m.content)}</div>'
        )
    return '<div class="rl-prompt">' + "".join(turns) + "</div>"


def response_html(position: int, text: str) -> str:
    """One response under its letter (A, B, ...); which policy or round wrote it is not shown."""
    letter = LETTERS[position]
    return (
        f'<div class="rl-response" data-position="{position}">'
        f'<div class="rl-letter">Response {letter} <span class="rl-key">(key {position + 1})'
        f"</span></div>{markdown_html(text)}</div>"
    )
