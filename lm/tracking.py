"""Experiment trackers for both trainers, through accelerate's tracker integrations.

`log_with` is a comma-separated list of `tensorboard`, `trackio` (Hugging Face's local-first
tracker) and `wandb` (run offline unless WANDB_MODE says otherwise). Each writes under the
trainer's log folder (a project's `logs/`), so a run's curves stay with the project. The
packages are optional extras: asking for a missing one says what to install.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from rankloop.settings import ConfigError

TRACKERS = ("tensorboard", "trackio", "wandb")
# tensorboard's writer is torch's SummaryWriter, which needs the tensorboard package (or the
# tensorboardX one accelerate also accepts).
_MODULES = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "trackio": ("trackio",),
    "wandb": ("wandb",),
}


def parse_trackers(log_with: str, section: str) -> list[str]:
    """The trackers named in `log_with`; an unknown name is a ConfigError naming the setting."""
    names = [t.strip() for t in (log_with or "").split(",") if t.strip()]
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(
                f"[{section}] log_with = {log_with!r}: {name!r} is not one of "
                f"{', '.join(TRACKERS)} (comma-separated, or empty for none)"
            )
    return names


def check_installed(trackers: list[str]) -> None:
    """Fail before training starts when a tracker's package is missing, saying how to get it."""
    for name in trackers:
        if not any(importlib.util.find_spec(m) for m in _MODULES[name]):
            raise ConfigError(
                f"log_with = {name!r} needs the {name} package: "
                f"pip install 'rankloop[{name}]' (or pip install {name})"
            )


def init_kwargs(trackers: list[str], log_dir: Path) -> dict:
    """`init_trackers(init_kwargs=...)` that keeps every tracker's files under `log_dir`.

    trackio reads its folder from TRACKIO_DIR when it is first imported, so it is set here
    (unless the user set it) before accelerate imports trackio.
    """
    log_dir = Path(log_dir)
    kwargs: dict = {}
    if "wandb" in trackers:  # wandb writes its runs into dir/wandb/
        log_dir.mkdir(parents=True, exist_ok=True)
        kwargs["wandb"] = {"dir": str(log_dir), "mode": os.environ.get("WANDB_MODE", "offline")}
    if "trackio" in trackers:
        os.environ.setdefault("TRACKIO_DIR", str(log_dir / "trackio"))
    return kwargs
