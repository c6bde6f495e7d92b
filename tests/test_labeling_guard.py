"""The app's front door over real HTTP (issue #13.6, 8, 9): login throttling, equal work for
unknown names, hashing off the store lock and the event loop, admin-only uploads and files,
`fn_index` refused on direct API calls, refusals as 4xx without a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket

import httpx

from rankloop.app.config import LabelingConfig
from rankloop.app.labeling import Ctx, StorePool, build_app
from rankloop.app.labeling.guard import Throttle
from rankloop.data.store import Store


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(tmp_path, clock=None):
    path = tmp_path / "rankloop.db"
    store = Store.open(path)
    store.add_comparison_texts("q?", ["yes", "no"])
    for name, role in (("ann", "annotator"), ("root", "admin")):
        store.add_annotator(name, role=role, secret=f"{name}-secret")
    store.close()
    stores = StorePool.shared(Store.open(path), owned=True)
    ctx = Ctx(stores=stores, config=LabelingConfig(), clock=clock or Clock(), rng=random.Random(0))
    app = build_app(stores, ctx=ctx)
    url = app.launch(port=free_port(), block=False)
    try:
        yield url, path, app
    finally:
        app.close()


def client(url: str, name: str | None = None) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=30)
    if name:
        assert (
            c.post("login", data={"username": name, "password": f"{name}-secret"}).status_code
            == 200
        )
    return c


def test_throttle_waits_double_after_the_free_failures_and_forgets():
    t = Throttle(free=2, max_wait=8, forget_after=100)
    assert t.wait("a", 0) == 0
    for now in (0, 1):
        t.failed("a", now)
    assert [t.wait("a", now) for now in (1, 1.5, 2)] == [1, 0.5, 0]
    t.failed("a", 2)
    assert t.wait("a", 2) == 2 and t.wait("b", 2) == 0
    for now in (4, 8, 16, 24):
        t.failed("a", now)
    assert t.wait("a", 24) == 8  # 2**5 capped at max_wait
    assert t.wait("a", 125) == 0  # forgotten after 100 s without a failure
    t.failed("a", 125)
    assert t.wait("a", 125) == 0  # counting starts again
    t.succeeded("a")
    assert t._failures == {}


def test_failed_logins_are_throttled_per_account_and_per_address(tmp_path):
    clock = Clock()
    with serving(tmp_path, clock) as (url, _, _):

        def login(name, secret):
            return httpx.post(
                f"{url}login", data={"username": name, "password": secret}, timeout=30
            )

        # 30 wrong passwords in a row met no slowdown (issue #13.8): 5 free, then a wait.
        assert [login("ann", "wrong").status_code for _ in range(5)] == [400] * 5
        r = login("ann", "ann-secret")  # even the right secret waits its turn
        assert (r.status_code, r.json(), r.headers["retry-after"]) == (
            429,
            {"detail": "Too many failed logins: try again in 1 s."},
            "1",
        )
        assert login("root", "root-secret").status_code == 200  # other names are not held
        clock.t += 1
        assert login("ann", "wrong").status_code == 400
        assert login("ann", "ann-secret").json()["detail"].endswith("try again in 2 s.")
        clock.t += 2
        assert login("ann", "ann-secret").status_code == 200  # and the count starts again
        assert login("ann", "wrong").status_code == 400

        # One address trying many names: after 20 failures, every name waits.
        clock.t += 1000
        assert {login(f"guess{i}", "x").status_code for i in range(20)} == {400}
        r = login("root", "root-secret")
        assert r.status_code == 429 and "try again in 1 s" in r.json()["detail"]


def test_an_unknown_name_costs_one_hash_like_a_known_one_off_the_lock_and_loop(
    tmp_path, monkeypatch
):
    import hashlib

    seen = []
    real = hashlib.pbkdf2_hmac

    def spy(*args):
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        seen.append((args[3], app.ctx.stores._lock.locked(), on_loop))
        return real(*args)

    with serving(tmp_path) as (url, _, app):
        monkeypatch.setattr("rankloop.data.store.hashlib.pbkdf2_hmac", spy)
        for name in ("ann", "nobody"):
            assert (
                httpx.post(
                    f"{url}login", data={"username": name, "password": "wrong"}, timeout=30
                ).status_code
                == 400
            )
    # one PBKDF2 each, of the same cost, with the store free and the event loop free
    assert seen == [(200_000, False, False)] * 2


def test_uploads_and_files_are_for_admins_only_and_uploads_are_capped(tmp_path, monkeypatch):
    monkeypatch.setattr("rankloop.app.labeling.ui.MAX_UPLOAD", "2kb")
    with serving(tmp_path) as (url, _, _):
        ann, root = client(url, "ann"), client(url, "root")
        small = {"files": ("p.jsonl", b'{"prompt": "hi"}\n')}
        assert ann.post("gradio_api/upload", files=small).status_code == 403
        r = root.post("gradio_api/upload", files=small)
        assert r.status_code == 200
        (uploaded,) = r.json()
        assert root.get(f"gradio_api/file={uploaded}").text == '{"prompt": "hi"}\n'
        # An admin's file (an upload, an export) is not for annotators, URL or not.
        r = ann.get(f"gradio_api/file={uploaded}")
        assert (r.status_code, r.text) == (403, "only an admin may upload or download files")
        assert client(url).get(f"gradio_api/file={uploaded}").status_code == 403
        big = {"files": ("big.jsonl", b'{"prompt": "x"}\n' * 200)}
        assert root.post("gradio_api/upload", files=big).status_code == 413


def test_direct_calls_run_only_the_named_endpoint(tmp_path):
    with serving(tmp_path) as (url, path, app):
        root = client(url, "root")
        # fn_index names another event (here: each private one in turn, admin ones included).
        for fn_index in app.blocks.fns:
            r = root.post("gradio_api/run/next_task", json={"data": [], "fn_index": fn_index})
            assert (r.status_code, r.text) == (
                400,
                ("/gradio_api/run/next_task runs the endpoint its URL names; leave fn_index out"),
            )
        r = root.post("gradio_api/run/label", content=b'{"data": ["' + b"x" * (1 << 20) + b'"]}')
        assert r.status_code == 413
        assert root.post("gradio_api/run/next_task", json={"data": []}).status_code == 200
    store = Store.open(path)
    assert store.db["labels"].count == 0 and store.db["annotators"].count == 2
    store.close()


def test_label_api_refusals_are_4xx_with_the_message_and_no_traceback(tmp_path, capfd):
    with serving(tmp_path) as (url, path, _):
        ann = client(url, "ann")
        task = ann.post("gradio_api/run/next_task", json={"data": []}).json()["data"][0]
        cid, rid = task["comparison_id"], task["request_id"]
        hostile = [
            ([cid, rid, "A", "", "", "", -5], 400, "seconds_spent is a number of seconds"),
            ([cid, rid, "A", "", "", "", "abc"], 400, "got 'abc'"),
            ([cid, rid, "A", "", "", "x" * 100_000, 1], 400, "the rationale is 100,000"),
            ([cid, rid, "A", "", "much", "", 1], 200, None),  # then a retry, then the rest
            ([cid, rid, "A", "", "much", "", 1], 200, None),
            (["abc", rid, "A", "", "", "", 1], 400, "comparison_id must be a whole number"),
            ([999, rid, "A", "", "", "", 1], 400, "no comparison with id 999"),
            ([cid, rid, "A", "", "", "\ud800", 1], 400, "half of a surrogate pair"),
        ]
        got = []
        for data, status, message in hostile:
            # json.dumps writes the lone surrogate as \ud800, as a hostile client would
            r = ann.post(
                "gradio_api/run/label",
                content=json.dumps({"data": data}),
                headers={"content-type": "application/json"},
            )
            got.append(r.status_code)
            if message:
                assert message in r.json()["error"]
        assert got == [s for _, s, _ in hostile]
        for data, message in (  # too few inputs: a 400 naming them, not Gradio's 500
            ([], "label needs comparison_id, request_id first in data; got 0"),
            ([cid], "label needs comparison_id, request_id first in data; got 1"),
            ("x", "data must be a list"),
        ):
            r = ann.post("gradio_api/run/label", json={"data": data})
            assert (r.status_code, message in r.json()["error"]) == (400, True)
        r = client(url).post("gradio_api/run/label", json={"data": [cid, rid, "A"]})
        assert r.status_code == 401
    assert "Traceback" not in capfd.readouterr().err
    store = Store.open(path)
    assert [(r["choice"], r["strength"]) for r in store.db["labels"].rows] == [("A", "much")]
    store.close()


def test_a_refusal_rewrites_the_status_of_direct_api_calls_only():
    """A handler's refusal turns Gradio's 500 into its status on a direct `/run/` call; in a
    queued event (the page) the context holds another request's record, which must stay as
    it is: the page shows the refusal's message itself."""
    from rankloop.app.labeling import guard

    for path, expected in ((f"{guard.API}/run/label", 400), (f"{guard.API}/queue/join", None)):
        info = {"path": path, "status": None}
        token = guard._REQUEST.set(info)
        try:
            guard.refuse(400)
        finally:
            guard._REQUEST.reset(token)
        assert info["status"] == expected, path
