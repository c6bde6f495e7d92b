"""`rankloop annotator add|list` and the checks `rankloop serve` makes before it listens."""

from __future__ import annotations

import socket

from click.testing import CliRunner

from rankloop.app.cli import cli
from rankloop.app.project import Project
from rankloop.data.store import Store


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_annotator_add_prints_the_secret_once_and_stores_a_hash(tmp_path):
    Project.init(tmp_path / "p").close()
    got = run("annotator", "add", "alice", "--role", "admin", "--project", tmp_path / "p")
    assert got.exit_code == 0, got.output
    secret = got.output.strip().splitlines()[-1]
    store = Store.open(tmp_path / "p" / "rankloop.db")
    assert store.authenticate("alice", secret).role == "admin"
    (stored,) = [r["secret_hash"] for r in store.db["annotators"].rows]
    assert secret not in stored and stored.startswith("pbkdf2$")
    store.close()
    again = run("annotator", "add", "alice", "--project", tmp_path / "p")
    assert again.exit_code == 1
    assert "an annotator named 'alice' already exists; choose another name" in again.output
    listed = run("annotator", "list", "--project", tmp_path / "p")
    assert listed.output == "alice\tadmin\n"


def test_serve_refuses_without_accounts_and_on_a_busy_port(tmp_path):
    Project.init(tmp_path / "p").close()
    got = run("serve", "--project", tmp_path / "p")
    assert got.exit_code == 1 and "no annotator accounts yet" in got.output
    run("annotator", "add", "bob", "--project", tmp_path / "p")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        got = run("serve", "--port", port, "--project", tmp_path / "p")
    assert got.exit_code == 1
    assert f"port {port} on 127.0.0.1 is in use: stop what runs there or pass --port" in got.output
