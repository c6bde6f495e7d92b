"""`rankloop annotator add|list` and `rankloop serve` (the labeling app)."""

from __future__ import annotations

import errno
import socket

import click

from rankloop.data.records import PERSON_ROLES
from rankloop.settings import replace

from .common import console, open_project, project_option, user_errors

GUIDELINES_FILE = "guidelines.md"


@click.group()
def annotator():
    """Manage annotator accounts (the labeling app's logins).

    \b
    Example:
      rankloop annotator add alice
      rankloop annotator add bob --role admin
      rankloop annotator list
    """


@annotator.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(PERSON_ROLES),
              default="annotator", show_default=True,
              help="admin: also sees the admin view (statistics, flags, gold, upload, export).")
@project_option
@user_errors
def annotator_add(name, role, project_dir):
    """Create an account and print its secret once (only a hash of it is stored).

    \b
    Example:
      rankloop annotator add alice --role annotator
    """
    project = open_project(project_dir)
    a, secret = project.store.add_annotator(name, role=role)
    project.close()
    console.print(f"Created {a.role} [bold]{a.name}[/bold]. Secret (shown only now, give it to "
                  f"them privately):")
    click.echo(secret)


@annotator.command("list")
@project_option
@user_errors
def annotator_list(project_dir):
    """List the accounts (names and roles; secrets are never shown again).

    \b
    Example:
      rankloop annotator list --project myproject
    """
    project = open_project(project_dir)
    for a in project.store.annotators():
        if a.role != "external":
            click.echo(f"{a.name}\t{a.role}")
    project.close()


def port_free(host: str, port: int) -> bool:
    """Whether the server could listen on `port` now. SO_REUSEADDR, as the server itself binds:
    without it, the TIME_WAIT connections a stopped or crashed server leaves for about a minute
    would read as "in use" and keep a supervisor from restarting it at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 exposes the app to the network: use HTTPS "
                   "in front of it).")
@click.option("--port", type=int, default=7860, show_default=True)
@click.option("--concurrency", type=int, default=None,
              help="Handler calls run at once ([labeling] concurrency).")
@project_option
@user_errors
def serve(host, port, concurrency, project_dir):
    """Start the labeling app: annotators log in, rank responses, and every label lands in the
    project's database. Create accounts first with `rankloop annotator add`.

    \b
    Example:
      rankloop annotator add alice && rankloop serve --port 7860
    """
    from rankloop.app.labeling import build_app

    project = open_project(project_dir)
    config = replace(project.config.labeling, concurrency=concurrency)
    accounts = [a for a in project.store.annotators() if a.role in ("annotator", "admin")]
    db_path = project.root / "rankloop.db"
    project.close()
    if not accounts:
        raise click.ClickException("no annotator accounts yet: create one with `rankloop "
                                   "annotator add NAME` (add --role admin for the admin view)")
    if not port_free(host, port):
        raise click.ClickException(f"port {port} on {host} is in use: stop what runs there or "
                                   f"pass --port")
    app = build_app(db_path, config, guidelines_path=project.root / GUIDELINES_FILE)
    console.print(f"Labeling app for {project.root} on http://{host}:{port} "
                  f"({len(accounts)} accounts). Ctrl+C stops it.")
    try:
        app.launch(host=host, port=port)
    finally:
        app.close()
