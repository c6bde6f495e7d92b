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
      rankloop annotator disable alice
    """


@annotator.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(PERSON_ROLES),
    default="annotator",
    show_default=True,
    help="admin: also sees the admin view (statistics, flags, gold, upload, export).",
)
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
    console.print(
        f"Created {a.role} [bold]{a.name}[/bold]. Secret (shown only now, give it to "
        f"them privately):"
    )
    click.echo(secret)


@annotator.command("list")
@project_option
@user_errors
def annotator_list(project_dir):
    """List the accounts: name, role, active or disabled (secrets are never shown again).

    \b
    Example:
      rankloop annotator list --project myproject
    """
    project = open_project(project_dir)
    for a in project.store.annotators():
        if a.role in PERSON_ROLES:
            click.echo(f"{a.name}\t{a.role}\t{'disabled' if a.disabled else 'active'}")
    project.close()


@annotator.command("disable")
@click.argument("name")
@project_option
@user_errors
def annotator_disable(name, project_dir):
    """Disable an account: it can no longer log in, label or administer (its labels stay).
    A running app refuses it from its next request on.

    \b
    Example:
      rankloop annotator disable alice
    """
    project = open_project(project_dir)
    project.store.set_disabled(name, True)
    project.close()
    console.print(f"Disabled {name}; `rankloop annotator enable {name}` undoes it.")


@annotator.command("enable")
@click.argument("name")
@project_option
@user_errors
def annotator_enable(name, project_dir):
    """Enable a disabled account again (with its old secret).

    \b
    Example:
      rankloop annotator enable alice
    """
    project = open_project(project_dir)
    project.store.set_disabled(name, False)
    project.close()
    console.print(f"Enabled {name}.")


@annotator.command("reset-secret")
@click.argument("name")
@project_option
@user_errors
def annotator_reset_secret(name, project_dir):
    """Give an account a new secret and print it once (the old one stops working).

    \b
    Example:
      rankloop annotator reset-secret alice
    """
    project = open_project(project_dir)
    secret = project.store.set_secret(name)
    project.close()
    console.print(
        f"New secret for [bold]{name}[/bold] (shown only now, give it to them privately):"
    )
    click.echo(secret)


@annotator.command("set-role")
@click.argument("name")
@click.argument("role", type=click.Choice(PERSON_ROLES))
@project_option
@user_errors
def annotator_set_role(name, role, project_dir):
    """Make an account an annotator or an admin (the last enabled admin stays one).

    \b
    Example:
      rankloop annotator set-role alice admin
    """
    project = open_project(project_dir)
    project.store.set_role(name, role)
    project.close()
    console.print(f"{name} is now an {role}.")


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
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0 exposes the app to the network: use HTTPS in front of it).",
)
@click.option("--port", type=int, default=7860, show_default=True)
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Handler calls run at once ([labeling] concurrency).",
)
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
        raise click.ClickException(
            "no annotator accounts yet: create one with `rankloop "
            "annotator add NAME` (add --role admin for the admin view)"
        )
    if not port_free(host, port):
        raise click.ClickException(
            f"port {port} on {host} is in use: stop what runs there or pass --port"
        )
    rc = project.config.reward
    app = build_app(
        db_path,
        config,
        guidelines_path=project.root / GUIDELINES_FILE,
        margins=(rc.margin_slightly, rc.margin_much),
    )
    console.print(
        f"Labeling app for {project.root} on http://{host}:{port} "
        f"({len(accounts)} accounts). Ctrl+C stops it."
    )
    try:
        app.launch(host=host, port=port)
    finally:
        app.close()
