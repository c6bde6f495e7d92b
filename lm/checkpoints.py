"""Where a trainer keeps its resumable checkpoints: the one rule both trainers follow."""

from __future__ import annotations

from pathlib import Path

FOLDER = "checkpoints"


def checkpoint_dir(out_dir: str | Path) -> Path:
    """The checkpoints of a run that saves to `out_dir`: `out_dir/checkpoints/` (`step-N/`
    each). The reward trainer and the policy stage both write there, and `--resume` reads it."""
    return Path(out_dir) / FOLDER
