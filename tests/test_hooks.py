"""The commit-msg hook that `make setup` installs (core.hooksPath = .githooks)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

HOOK = Path(__file__).resolve().parent.parent / ".githooks" / "commit-msg"


@pytest.mark.parametrize(
    ("message", "ok"),
    [
        ("x" * 72 + "\n\nA body line may be as long as it likes: " + "y" * 100 + "\n", True),
        ("x" * 73 + "\n", False),
        ("# a comment git strips\n" + "é" * 72 + "\n", True),  # characters, not bytes
        ("# a comment git strips\n" + "é" * 73 + "\n", False),
    ],
)
def test_the_hook_refuses_a_subject_over_72_characters(tmp_path, message, ok):
    msg = tmp_path / "COMMIT_EDITMSG"
    msg.write_text(message, encoding="utf-8")
    run = subprocess.run(["sh", str(HOOK), str(msg)], capture_output=True, text=True, check=False)
    assert (run.returncode == 0) == ok, run.stderr
    if not ok:
        assert "keep it to 72" in run.stderr


def test_make_setup_points_git_at_the_hooks():
    makefile = (HOOK.parent.parent / "Makefile").read_text(encoding="utf-8")
    assert "git config core.hooksPath .githooks" in makefile
    assert "setup: $(STAMP) hooks" in makefile and "test: $(STAMP) hooks" in makefile
