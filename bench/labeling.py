"""Labeling app latency: submit-and-fetch-next at 1, 16 and 64 concurrent annotators.

Each simulated annotator is a thread with its own logged-in HTTP session: `/label` records the
label and returns the next task, the same work as the page's Submit, in one request (POST
/gradio_api/run/label; `gradio_client` is not used for timing because it polls its message queue
every 50 ms, which would measure the client). Two loads:
- paced: each annotator reads for a random 1 to 3 s (mean 2 s) before each submission, i.e. 64
  annotators offer about 32 labels/s; people take far longer per judgment (the admin view shows
  median seconds per label), so this is a busy team, not an idle one;
- saturation: no reading time at all, every annotator submits again the moment the last
  answer arrives: the server's capacity, and the latency when it is exceeded.
The server runs in its own process (`--serve`), as `rankloop serve` does, so client and server
do not share a GIL (they do share the machine's cores).

Two ways for the server's threads to reach SQLite are run side by side on the same data:
- `shared`: one connection behind a lock (what `rankloop serve` uses);
- `per_thread`: one connection per worker thread (the anchor it is compared with).

Also measured, without HTTP: the same handler (`handlers.api_label`) called from threads in this
process, to show what the database and handler cost apart from Gradio's queue and the client.

    flock /tmp/rankloop-cpu.lock .venv/bin/python bench/labeling.py
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from rankloop.app.config import LabelingConfig
from rankloop.data.store import Store

MODES = ("per_thread", "shared")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_db(path: Path, comparisons: int, annotators: int) -> None:
    store = Store.open(path)
    with store.transaction():
        for i in range(comparisons):
            store.add_comparison_texts(
                f"Prompt {i}: explain item {i} in two sentences.",
                [f"Response {i} one. " * 8, f"Response {i} two. " * 8],
            )
    for i in range(annotators):
        store.add_annotator(f"a{i}", secret=f"s{i}")
    store.close()


def serve(db: str, port: int, mode: str, concurrency: int) -> None:
    """The server process: the app over `db` with the given store mode, until killed."""
    from rankloop.app.labeling import StorePool, build_app

    stores = StorePool.per_thread(db) if mode == "per_thread" else StorePool.shared(Store.open(db))
    build_app(stores, LabelingConfig(concurrency=concurrency)).launch(port=port, block=True)


def percentiles(xs: list[float]) -> dict[str, float]:
    if len(xs) < 2:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    qs = statistics.quantiles(xs, n=100, method="inclusive")
    return {"p50_ms": 1000 * qs[49], "p95_ms": 1000 * qs[94], "p99_ms": 1000 * qs[98]}


def run_level(clients, seconds: float, warmup: float, think: float = 0.0) -> dict:
    """Every client labels in a loop for `seconds`; latencies after `warmup` count. `think`:
    mean reading time before each submission (uniform between 0.5 and 1.5 times it)."""
    lat: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = time.perf_counter()
    stop_at = start + warmup + seconds

    def work(i, client):
        rng = random.Random(i)
        try:
            task = client.predict(api_name="/next_task")
            if think:  # annotators do not all start at the same instant
                time.sleep(rng.uniform(0, think))
            while time.perf_counter() < stop_at and task["comparison_id"] is not None:
                if think:
                    time.sleep(rng.uniform(0.5 * think, 1.5 * think))
                t0 = time.perf_counter()
                got = client.predict(
                    comparison_id=task["comparison_id"],
                    request_id=task["request_id"],
                    choice=rng.choice("AB"),
                    api_name="/label",
                )
                t1 = time.perf_counter()
                if t0 >= start + warmup:
                    with lock:
                        lat.append(t1 - t0)
                task = got["next"]
        except BaseException as e:  # noqa: BLE001 - surfaced in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    if errors:
        raise errors[0]
    return {"labels": len(lat), "labels_per_s": len(lat) / seconds, **percentiles(lat)}


class HttpAnnotator:
    """One logged-in annotator speaking Gradio's REST API (`/gradio_api/call/v2/...`)."""

    def __init__(self, url: str, name: str, secret: str):
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=60)
        r = self.http.post(f"{self.url}/login", data={"username": name, "password": secret})
        if r.status_code != 200:
            raise RuntimeError(f"login as {name} failed: {r.status_code}")

    def predict(self, api_name: str, **kw):
        # /label's inputs in order: comparison_id, request_id, choice, ranking, strength,
        # rationale, seconds_spent.
        data = (
            []
            if api_name == "/next_task"
            else [kw["comparison_id"], kw["request_id"], kw["choice"], "", "", "", 0.0]
        )
        r = self.http.post(f"{self.url}/gradio_api/run{api_name}", json={"data": data})
        if r.status_code != 200:
            raise RuntimeError(f"{api_name}: {r.status_code} {r.text[:200]}")
        return r.json()["data"][0]


def bench_http(
    db: Path, mode: str, levels, seconds, warmup, concurrency, think: float = 0.0
) -> dict:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(db),
            "--port",
            str(port),
            "--mode",
            mode,
            "--concurrency",
            str(concurrency),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(300):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
        clients = [HttpAnnotator(url, f"a{i}", f"s{i}") for i in range(max(levels))]
        out = {}
        for level in levels:
            out[level] = run_level(clients[:level], seconds, warmup, think)
            load = f"think {think:g} s" if think else "saturation"
            print(
                f"  http {load:12s} {mode:10s} {level:3d} annotators: {fmt(out[level])}", flush=True
            )
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_direct(db: Path, mode: str, levels, seconds, warmup) -> dict:
    """The handler without HTTP: threads in this process call `api_label` directly."""
    from rankloop.app.labeling import StorePool, handlers

    stores = StorePool.per_thread(db) if mode == "per_thread" else StorePool.shared(Store.open(db))
    ctx = handlers.Ctx(stores=stores, config=LabelingConfig())

    class Direct:
        def __init__(self, name):
            self.name = name

        def predict(self, api_name, **kw):
            if api_name == "/next_task":
                return handlers.api_next(ctx, self.name)
            return handlers.api_label(
                ctx, self.name, kw["comparison_id"], kw["request_id"], choice=kw["choice"]
            )

    out = {}
    for level in levels:
        out[level] = run_level([Direct(f"a{i}") for i in range(level)], seconds, warmup)
        print(
            f"  direct saturation {mode:10s} {level:3d} annotators: {fmt(out[level])}", flush=True
        )
    stores.close()
    return out


def fmt(r: dict) -> str:
    return (
        f"p50 {r['p50_ms']:6.1f} ms  p95 {r['p95_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
        f"{r['labels_per_s']:6.1f} labels/s ({r['labels']} labels)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", default="1,16,64")
    ap.add_argument(
        "--seconds", type=float, default=8.0, help="measured seconds per level, saturation runs"
    )
    ap.add_argument(
        "--paced-seconds", type=float, default=24.0, help="measured seconds per level, paced runs"
    )
    ap.add_argument("--think", type=float, default=2.0, help="mean reading seconds, paced runs")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=LabelingConfig().concurrency)
    ap.add_argument("--comparisons", type=int, default=12000)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="per_thread", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.port, args.mode, args.concurrency)

    levels = [int(x) for x in args.levels.split(",")]
    print(
        f"rankloop labeling bench: {platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} CPUs, python {platform.python_version()}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; levels {levels}, "
        f"{args.seconds:.0f} s each, server concurrency {args.concurrency}"
    )
    results = {}
    runs = (
        [("paced", "http", m) for m in MODES]
        + [("saturation", "http", m) for m in MODES]
        + [("saturation", "direct", m) for m in MODES]
    )
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template.db"
        make_db(template, args.comparisons, max(levels))
        for load, layer, mode in runs:
            db = Path(tmp) / f"{load}-{layer}-{mode}.db"
            src = Store.open(template)  # a fresh copy of the same data for each run
            src.db.execute(f"vacuum into '{db}'")
            src.close()
            if layer == "http":
                think = args.think if load == "paced" else 0.0
                seconds = args.paced_seconds if load == "paced" else args.seconds
                r = bench_http(db, mode, levels, seconds, args.warmup, args.concurrency, think)
            else:
                r = bench_direct(db, mode, levels, args.seconds, args.warmup)
            results[f"{load}/{layer}/{mode}"] = r
    top = max(levels)
    for key in ("paced/http", "saturation/http", "saturation/direct"):
        a, b = results[f"{key}/per_thread"][top], results[f"{key}/shared"][top]
        print(
            f"{key} at {top}: shared p95 {b['p95_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms vs "
            f"per_thread (anchor) p95 {a['p95_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms: p95 "
            f"ratio {b['p95_ms'] / a['p95_ms']:.2f}; labels/s {b['labels_per_s']:.1f} vs "
            f"{a['labels_per_s']:.1f}"
        )
    for load in ("paced", "saturation"):
        p95 = results[f"{load}/http/shared"][top]["p95_ms"]
        print(
            f"goal p95 < 100 ms at {top} annotators over HTTP ({load}, as served): "
            f"{'met' if p95 < 100 else 'NOT met'} ({p95:.1f} ms)"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
