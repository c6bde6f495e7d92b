"""What every command shares: the console, the --project option, one-line user errors."""

from __future__ import annotations

import functools
from pathlib import Path

import click
from rich.console import Console

from rankloop.app.project import Project, ProjectError
from rankloop.data.io import ImportFileError
from rankloop.data.store import StoreError
from rankloop.lm.loading import ModelLoadError
from rankloop.reward.pairs import RewardDataError
from rankloop.settings import ConfigError

USER_ERRORS = (
    ConfigError,
    ImportFileError,
    ModelLoadError,
    ProjectError,
    RewardDataError,
    StoreError,
)

console = Console(soft_wrap=True)  # never hard-wrap paths and messages


def user_errors(fn):
    """Turn the errors a user can cause into one clear line and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise click.ClickException(str(e)) from None

    return wrapper


project_option = click.option(
    "--project",
    "project_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Project folder (default: the current directory or its nearest parent holding "
    "rankloop.toml).",
)


def open_project(project_dir: Path | None) -> Project:
    return Project.find(project_dir)
