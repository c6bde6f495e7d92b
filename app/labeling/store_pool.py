"""Store access from Gradio's worker threads.

A `Store` wraps one sqlite3 connection, and one connection must not run transactions from
several threads at once. Gradio runs handlers in a thread pool, so the app reaches the database
through `StorePool`, in one of two modes:

- `StorePool.per_thread(path)`: each worker thread opens its own connection to the same file (WAL
  lets readers run while one writer commits; writers queue on SQLite's lock with busy_timeout).
- `StorePool.shared(store)`: one connection behind a lock, one handler at a time. What `rankloop
  serve` uses: on the benchmark (bench/labeling.py) it matches a connection per thread on p95
  and avoids its tails of seconds: per-thread writers queue in SQLite's busy handler, which
  sleeps and retries (up to 100 ms a time), instead of on a lock that wakes the next at once.
  Also the only mode for an in-memory store (tests).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from rankloop.data.store import Store


class StorePool:
    """Hands a handler the `Store` it may use on the current thread."""

    def __init__(
        self, *, path: Path | None = None, store: Store | None = None, owned: bool = False
    ):
        if (path is None) == (store is None):
            raise ValueError("give a database path (per-thread) or one store (shared)")
        self.path = Path(path) if path is not None else None
        self._shared = store
        self._lock = threading.Lock()
        self._local = threading.local()
        self._opened: list[Store] = [store] if store is not None and owned else []

    @classmethod
    def per_thread(cls, path: str | Path) -> StorePool:
        stores = cls(path=Path(path))
        with stores():  # apply migrations once, up front, on this thread
            pass
        return stores

    @classmethod
    def shared(cls, store: Store, owned: bool = False) -> StorePool:
        """One store for every thread; `owned`: `close()` closes it too."""
        return cls(store=store, owned=owned)

    @property
    def mode(self) -> str:
        return "shared" if self._shared is not None else "per_thread"

    @contextlib.contextmanager
    def __call__(self) -> Iterator[Store]:
        if self._shared is not None:
            with self._lock:
                yield self._shared
            return
        store = getattr(self._local, "store", None)
        if store is None:
            store = Store.open(self.path)
            self._local.store = store
            with self._lock:
                self._opened.append(store)
        yield store

    def close(self) -> None:
        """Close every connection this object opened (a shared store only when owned)."""
        with self._lock:
            for s in self._opened:
                s.close()
            self._opened.clear()
