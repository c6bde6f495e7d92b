"""Reliability of the labeling app under load: kill -9, a big import, a burst of logins.

Each run serves a real project with `rankloop serve` in its own process and drives it over HTTP
with scripted annotators (each a thread with its own logged-in session, as bench/labeling.py),
the way issue #13 measured it:

- `kill`: 32 annotators label as fast as they can while the server is killed with SIGKILL
  several times and restarted at once on the same port (a supervisor's job). A request that
  fails (connection refused, session lost) is retried with the same request id after logging in
  again. Afterwards every acknowledged label must be in the database exactly once, each retried
  request must have been answered with its original label, and `PRAGMA integrity_check` must say
  ok. Reported: acknowledged, lost, doubled, restarts and how long each took.
- `import`: 32 paced annotators (a judgment every 0.5-1.5 s) label while `rankloop import`
  writes a 200k-row file into the same database. Reported: the longest an annotator waited for
  one request, p99 and errors, before (the anchor: same load, no import) and during the import;
  `--one-transaction` adds the old behaviour (the whole file in one transaction) for contrast.
- `logins`: one annotator's `next_task` latency, alone (the anchor) and while 30 accounts log in
  over and over.

    flock /tmp/rankloop-cpu.lock .venv/bin/python bench/reliability.py all --out rel.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from rankloop.app.project import Project
from rankloop.data.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from labeling import free_port, make_db

RANKLOOP = [sys.executable, "-m", "rankloop.app.cli"]


def make_project(root: Path, comparisons: int, annotators: int) -> None:
    """A project whose store holds bench/labeling.py's comparisons and accounts."""
    Project.init(root).close()
    make_db(root / "rankloop.db", comparisons, annotators)


class Server:
    """`rankloop serve` in its own process; `kill()` is kill -9, `start()` restarts it."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.proc = root, port, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 120) -> float:
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [*RANKLOOP, "serve", "--project", str(self.root), "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/gradio_api/login_check", timeout=1).status_code == 401:
                    return time.monotonic() - t0
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("serve did not come up")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


class Annotator:
    """One logged-in annotator over HTTP; `call` rides out a server restart (same request)."""

    def __init__(self, url: str, name: str, secret: str):
        self.url, self.name, self.secret = url, name, secret
        self.http = httpx.Client(timeout=60)
        self.retries = 0
        self.login()

    def login(self) -> None:
        while True:
            try:
                if (
                    self.http.post(
                        f"{self.url}/login", data={"username": self.name, "password": self.secret}
                    ).status_code
                    == 200
                ):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)

    def call(self, api: str, data: list):
        """(seconds waited, answer); retried until answered while the server is down."""
        t0 = time.perf_counter()
        while True:
            try:
                r = self.http.post(f"{self.url}/gradio_api/run/{api}", json={"data": data})
            except httpx.TransportError:
                self.retries += 1
                time.sleep(0.1)
                continue
            if r.status_code == 401:  # a restarted server forgot the session
                self.retries += 1
                self.login()
                continue
            if r.status_code != 200:
                raise RuntimeError(f"{self.name} /{api}: HTTP {r.status_code} {r.text[:300]}")
            return time.perf_counter() - t0, r.json()["data"][0]


def pct(xs, q):
    return (
        statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else float("nan")
    )


# -- kill -9 ------------------------------------------------------------------------------------


def bench_kill(
    tmp: Path, annotators: int = 32, kills: int = 3, every: float = 15.0, comparisons: int = 20_000
) -> dict:
    root = tmp / "kill"
    make_project(root, comparisons=comparisons, annotators=annotators)
    server = Server(root, free_port())
    server.start()
    acked: list[tuple[str, int, str, int]] = []  # annotator, comparison, request id, label id
    mismatched, errors = [], []
    lock, stop = threading.Lock(), threading.Event()

    def work(i: int) -> None:
        rng = random.Random(i)
        try:
            a = Annotator(server.url, f"a{i}", f"s{i}")
            _, task = a.call("next_task", [])
            while not stop.is_set() and task["comparison_id"] is not None:
                data = [
                    task["comparison_id"],
                    task["request_id"],
                    rng.choice("AB"),
                    "",
                    "",
                    "",
                    0.0,
                ]
                _, got = a.call("label", data)
                if rng.random() < 0.1:  # a retry of an acknowledged request
                    _, again = a.call("label", data)
                    if again["label_id"] != got["label_id"]:
                        mismatched.append((got["label_id"], again["label_id"]))
                with lock:
                    acked.append(
                        (a.name, task["comparison_id"], task["request_id"], got["label_id"])
                    )
                task = got["next"]
        except BaseException as e:  # noqa: BLE001 - reported
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(annotators)]
    [t.start() for t in threads]
    restarts = []
    try:
        for _ in range(kills):
            time.sleep(every * random.uniform(0.7, 1.3))
            server.kill()
            restarts.append(server.start())  # at once, on the same port
            print(
                f"  kill -9 #{len(restarts)}: back in {restarts[-1]:.1f} s, "
                f"{len(acked)} labels acknowledged so far",
                flush=True,
            )
        time.sleep(every / 2)
    finally:
        stop.set()
        [t.join(timeout=120) for t in threads]
        server.stop()
    store = Store.open(root / "rankloop.db")
    integrity = store.db.execute("PRAGMA integrity_check").fetchone()[0]
    rows = {
        r[0]: r[1:]
        for r in store.db.execute(
            "select l.id, a.name, l.comparison_id, l.request_id from labels l "
            "join annotators a on a.id = l.annotator_id"
        ).fetchall()
    }
    doubled = (
        store.db.execute(
            "select count(*) from (select 1 from labels group by annotator_id, comparison_id "
            "having count(*) > 1)"
        ).fetchone()[0]
        + store.db.execute(
            "select count(*) from (select 1 from labels group by request_id having count(*) > 1)"
        ).fetchone()[0]
    )
    store.close()
    lost = [a for a in acked if rows.get(a[3]) != a[:3]]
    return {
        "annotators": annotators,
        "kills": kills,
        "acknowledged": len(acked),
        "lost": len(lost),
        "doubled": doubled,
        "retry_mismatches": len(mismatched),
        "stored_labels": len(rows),
        "integrity": integrity,
        "restart_seconds": [round(r, 2) for r in restarts],
        "errors": errors[:5],
    }


# -- a big import while labeling ----------------------------------------------------------------


def run_load(server: Server, annotators: int, until, think: float = 1.0) -> dict:
    """Paced annotators label until `until()` is true; every request's wait is recorded."""
    waits, errors = [], []
    lock = threading.Lock()

    def work(i: int) -> None:
        rng = random.Random(i)
        try:
            a = Annotator(server.url, f"a{i}", f"s{i}")
            _, task = a.call("next_task", [])
            while not until() and task["comparison_id"] is not None:
                time.sleep(rng.uniform(0.5 * think, 1.5 * think))
                w, got = a.call(
                    "label",
                    [task["comparison_id"], task["request_id"], rng.choice("AB"), "", "", "", 0.0],
                )
                with lock:
                    waits.append(w)
                task = got["next"]
        except BaseException as e:  # noqa: BLE001 - reported
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(annotators)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return {
        "labels": len(waits),
        "max_wait_s": round(max(waits), 3),
        "p99_ms": round(1000 * pct(waits, 99), 1),
        "p50_ms": round(1000 * pct(waits, 50), 1),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


IMPORT_WITH = """
import sys
from rankloop.data.io import import_file
from rankloop.data.store import Store
print(import_file(Store.open(sys.argv[1]), sys.argv[2], chunk_seconds=float(sys.argv[3]),
                  pause_seconds=float(sys.argv[4])))
"""


def write_rows(path: Path, rows: int, tag: str) -> Path:
    with path.open("w") as f:
        for i in range(rows):
            f.write(
                json.dumps(
                    {
                        "prompt": f"{tag} question {i}: what about item {i}?",
                        "responses": [f"{tag} answer {i} one.", f"{tag} answer {i} two."],
                    }
                )
                + "\n"
            )
    return path


def bench_import(
    tmp: Path,
    rows: int = 200_000,
    annotators: int = 32,
    one_transaction: bool = False,
    comparisons: int = 30_000,
    settings: list[tuple[float, float]] = (),
) -> dict:
    root = tmp / "import"
    make_project(root, comparisons=comparisons, annotators=annotators)
    runs = [
        (
            "import",
            [
                *RANKLOOP,
                "import",
                str(write_rows(tmp / "a.jsonl", rows, "A")),
                "--project",
                str(root),
            ],
        )
    ]
    if one_transaction:  # the old way, for contrast: another file, all in one transaction
        settings = [*settings, (1e9, 0.0)]
    for k, (chunk, pause) in enumerate(settings):  # other transaction lengths and pauses
        name = (
            "import_one_transaction" if chunk >= 1e9 else f"import_chunk_{chunk:g}_pause_{pause:g}"
        )
        runs.append(
            (
                name,
                [
                    sys.executable,
                    "-c",
                    IMPORT_WITH,
                    str(root / "rankloop.db"),
                    str(write_rows(tmp / f"b{k}.jsonl", rows, f"B{k}")),
                    str(chunk),
                    str(pause),
                ],
            )
        )
    server = Server(root, free_port())
    server.start()
    out = {"rows": rows, "annotators": annotators}
    try:
        t_end = time.monotonic() + 20
        out["no_import"] = run_load(server, annotators, lambda: time.monotonic() > t_end)
        print(f"  anchor, no import: {out['no_import']}", flush=True)
        for name, cmd in runs:
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            load = run_load(server, annotators, lambda p=proc: p.poll() is not None)
            stdout, stderr = proc.communicate()
            out[name] = {
                **load,
                "import_seconds": round(time.monotonic() - t0, 1),
                "import_exit": proc.returncode,
                "import_said": (stdout or stderr).decode().strip()[-300:],
            }
            print(f"  during {name}: {out[name]}", flush=True)
    finally:
        server.stop()
    out["max_wait_ratio"] = round(out["import"]["max_wait_s"] / out["no_import"]["max_wait_s"], 2)
    return out


# -- a burst of logins ----------------------------------------------------------------------------


def bench_logins(
    tmp: Path, burst: int = 30, seconds: float = 15.0, comparisons: int = 20_000
) -> dict:
    root = tmp / "logins"
    make_project(root, comparisons=comparisons, annotators=burst + 1)
    server = Server(root, free_port())
    server.start()

    def next_task_latencies(stop_at: float) -> list[float]:
        a = Annotator(server.url, f"a{burst}", f"s{burst}")
        out = []
        while time.monotonic() < stop_at:
            w, _ = a.call("next_task", [])
            out.append(w)
        return out

    try:
        alone = next_task_latencies(time.monotonic() + seconds)
        stop, logins = threading.Event(), []

        def log_in_again_and_again(i: int) -> None:
            with httpx.Client(timeout=60) as c:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    c.post(f"{server.url}/login", data={"username": f"a{i}", "password": f"s{i}"})
                    logins.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=log_in_again_and_again, args=(i,)) for i in range(burst)]
        [t.start() for t in threads]
        time.sleep(1)
        during = next_task_latencies(time.monotonic() + seconds)
        stop.set()
        [t.join() for t in threads]
    finally:
        server.stop()
    med = lambda xs: round(1000 * statistics.median(xs), 1)
    return {
        "burst": burst,
        "next_task_median_ms_alone": med(alone),
        "next_task_median_ms_during_logins": med(during),
        "ratio": round(statistics.median(during) / statistics.median(alone), 2),
        "next_task_p99_ms_during_logins": round(1000 * pct(during, 99), 1),
        "logins": len(logins),
        "login_median_ms": med(logins),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", default="all", choices=["kill", "import", "logins", "all"])
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--every", type=float, default=15.0, help="kill: seconds between kills")
    ap.add_argument("--annotators", type=int, default=32)
    ap.add_argument(
        "--comparisons", type=int, default=20_000, help="in the project at the start (import: 1.5x)"
    )
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument(
        "--one-transaction",
        action="store_true",
        help="import: also run the whole file as one transaction (the old way)",
    )
    ap.add_argument(
        "--settings",
        default="",
        help="import: also run these CHUNK/PAUSE seconds, e.g. 0.1/0.12,0.25/0.25",
    )
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    print(
        f"rankloop reliability bench: {platform.machine()}, {os.cpu_count()} CPUs, python "
        f"{platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        flush=True,
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.what in ("kill", "all"):
            results["kill"] = bench_kill(
                Path(tmp), args.annotators, args.kills, args.every, args.comparisons
            )
            print(f"kill -9: {results['kill']}", flush=True)
        if args.what in ("import", "all"):
            settings = [tuple(map(float, x.split("/"))) for x in args.settings.split(",") if x]
            results["import"] = bench_import(
                Path(tmp),
                args.rows,
                args.annotators,
                args.one_transaction,
                args.comparisons * 3 // 2,
                settings,
            )
            print(f"import: {results['import']}", flush=True)
        if args.what in ("logins", "all"):
            results["logins"] = bench_logins(Path(tmp), comparisons=args.comparisons)
            print(f"logins: {results['logins']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
