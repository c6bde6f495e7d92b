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
    assert listed.output == "alice\tadmin\tactive\n"


def test_annotator_disable_enable_reset_secret_and_set_role(tmp_path):
    p = tmp_path / "p"
    Project.init(p).close()
    boss = run("annotator", "add", "boss", "--role", "admin", "--project", p)
    old = run("annotator", "add", "ann", "--project", p).output.strip().splitlines()[-1]
    assert run("annotator", "disable", "ann", "--project", p).exit_code == 0
    assert run("annotator", "list", "--project", p).output == (
        "boss\tadmin\tactive\nann\tannotator\tdisabled\n"
    )
    store = Store.open(p / "rankloop.db")
    assert store.authenticate("ann", old) is None
    store.close()
    assert run("annotator", "enable", "ann", "--project", p).exit_code == 0
    got = run("annotator", "reset-secret", "ann", "--project", p)
    new = got.output.strip().splitlines()[-1]
    assert got.exit_code == 0 and new != old
    assert run("annotator", "set-role", "ann", "admin", "--project", p).output == (
        "ann is now an admin.\n"
    )
    refused = run("annotator", "set-role", "boss", "annotator", "--project", p)
    assert refused.exit_code == 0  # ann is an admin now: boss need not stay one
    refused = run("annotator", "disable", "ann", "--project", p)
    assert (
        refused.exit_code == 1
        and ("'ann' is the only enabled admin: make another account admin first") in refused.output
    )
    missing = run("annotator", "reset-secret", "ghost", "--project", p)
    assert missing.exit_code == 1 and "no account named 'ghost'" in missing.output
    store = Store.open(p / "rankloop.db")
    assert store.authenticate("ann", old) is None
    assert store.authenticate("ann", new).role == "admin"
    assert [(a.name, a.role, a.disabled) for a in store.annotators()] == [
        ("boss", "annotator", False),
        ("ann", "admin", False),
    ]
    assert boss.exit_code == 0
    store.close()


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


def test_serve_restarts_on_its_port_at_once_after_a_stop(tmp_path):
    """A stopped server leaves its clients' connections in TIME_WAIT on its port for about a
    minute; the port check must not read that as "in use" (issue #13.4)."""
    import httpx

    from rankloop.app.commands.labeling import port_free
    from rankloop.app.labeling import build_app

    path = tmp_path / "rankloop.db"
    Store.open(path).close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for _ in range(2):
        assert port_free("127.0.0.1", port)
        app = build_app(path)
        url = app.launch(port=port, block=False)
        with httpx.Client() as client:  # a kept-alive connection that the server closes
            assert client.get(f"{url}gradio_api/login_check").status_code == 401
            app.close()
