"""What the tab and API builders share: a handler's refusal becomes a visible Gradio error."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import gradio as gr

from .handlers import AccessDenied

T = TypeVar("T")


def guarded(fn: Callable[[], T]) -> T:
    """Run a handler; an account problem becomes a message in the page, not a traceback."""
    try:
        return fn()
    except AccessDenied as e:
        raise gr.Error(str(e), print_exception=False) from None
