"""The app's logged-in sessions, so an admin's change to an account ends its sessions at once.

Gradio keeps each login as a token in its server's `tokens` dict (token -> name); `LabelingApp`
attaches that dict here when it starts serving. A handler in another process (the CLI) cannot
reach it: there, a disabled account is still refused at its next request, because every handler
reads the account from the database first.
"""

from __future__ import annotations


class Sessions:
    """Ends the live logins of one account (before the app serves: nothing to end)."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] | None = None

    def attach(self, tokens: dict[str, str]) -> None:
        self._tokens = tokens

    def end(self, name: str) -> int:
        """Log `name` out everywhere; returns how many sessions ended."""
        if self._tokens is None:
            return 0
        # A snapshot: logins from other threads may add tokens meanwhile.
        mine = [t for t, who in list(self._tokens.items()) if who == name]
        for t in mine:
            self._tokens.pop(t, None)
        return len(mine)
