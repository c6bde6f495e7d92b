"""32 simulated annotators label through the app's HTTP API (gradio_client) until the queue is
empty: every comparison gets exactly N labels, nobody labels one twice, no acknowledged label
is missing, and a retried request records once."""

from __future__ import annotations

import random
import socket
import threading
import time

import httpx
from gradio_client import Client

from rankloop.app.config import LabelingConfig
from rankloop.app.labeling import build_app
from rankloop.data.store import Store

ANNOTATORS, COMPARISONS, N = 32, 48, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_32_annotators_over_http_label_each_comparison_exactly_n_times(tmp_path):
    path = tmp_path / "rankloop.db"
    store = Store.open(path)
    cids = [
        store.add_comparison_texts(
            f"prompt {i}", [f"{i} left", f"{i} right"] + ([f"{i} third"] if i % 4 == 0 else [])
        )
        for i in range(COMPARISONS)
    ]
    for i in range(ANNOTATORS):
        store.add_annotator(f"a{i}", secret=f"s{i}")
    store.close()
    app = build_app(path, LabelingConfig(labels_per_comparison=N, concurrency=16))
    url = app.launch(port=free_port(), block=False)
    acked: list[tuple[str, int, int]] = []  # (annotator, comparison, label id) acknowledged
    errors: list[BaseException] = []
    lock = threading.Lock()

    def annotate(i: int) -> None:
        rng = random.Random(i)
        try:
            # httpx's 5 s default: 32 clients starting at once on 2 busy cores can exceed it
            # (latency is bench/labeling.py's business; this test is about exactly-once)
            client = Client(
                url, auth=(f"a{i}", f"s{i}"), verbose=False, httpx_kwargs={"timeout": 60}
            )
            task = client.predict(api_name="/next_task")
            while not errors:  # one failure stops everyone (its lease would stall the rest)
                if task["comparison_id"] is None:
                    if task["left"] == 0:
                        return
                    time.sleep(0.05)  # the rest is leased to others: they will finish it
                    task = client.predict(api_name="/next_task")
                    continue
                kw = (
                    {"choice": rng.choice(["A", "B", "tie", "both_bad"])}
                    if task["mode"] == "pairwise"
                    else {"ranking": "C > A = B"}
                )
                args = dict(
                    comparison_id=task["comparison_id"],
                    request_id=task["request_id"],
                    api_name="/label",
                    **kw,
                )
                got = client.predict(**args)
                if rng.random() < 0.25:  # a retried request (lost acknowledgment)
                    again = client.predict(**args)
                    assert again["label_id"] == got["label_id"]
                    # ...and the next task is the one already leased, not a second one.
                    assert again["next"].get("request_id") == got["next"].get("request_id")
                with lock:
                    acked.append((f"a{i}", task["comparison_id"], got["label_id"]))
                task = got["next"]
        except BaseException as e:  # noqa: BLE001 - surfaced in the main thread
            errors.append(e)

    # Without a login every route that reads or writes labels is refused.
    for route, body in (
        ("run/next_task", {"data": []}),
        ("run/label", {"data": [cids[0], "x", "A", "", "", "", 0.0]}),
        ("queue/join", {"data": [], "fn_index": 0, "session_hash": "s"}),
    ):
        r = httpx.post(f"{url}gradio_api/{route}", json=body, timeout=30)
        assert r.status_code == 401, (route, r.status_code)
    assert (
        httpx.post(
            f"{url}login", data={"username": "a0", "password": "wrong"}, timeout=30
        ).status_code
        == 400
    )

    threads = [threading.Thread(target=annotate, args=(i,)) for i in range(ANNOTATORS)]
    try:
        [t.start() for t in threads]
        deadline = time.monotonic() + 240
        [t.join(timeout=max(0.0, deadline - time.monotonic())) for t in threads]
    finally:
        app.close()
    assert [repr(e) for e in errors] == []
    assert not any(t.is_alive() for t in threads)

    store = Store.open(path)
    rows = store.db.execute(
        "select l.id, a.name, l.comparison_id from labels l "
        "join annotators a on a.id = l.annotator_id order by l.id"
    ).fetchall()
    per_comparison = store.db.execute(
        "select comparison_id, count(*), count(distinct annotator_id) from labels "
        "group by comparison_id order by comparison_id"
    ).fetchall()
    store.close()
    assert per_comparison == [(c, N, N) for c in cids]
    assert sorted((lid, name, cid) for name, cid, lid in acked) == [tuple(r) for r in rows]
    assert len(acked) == COMPARISONS * N
