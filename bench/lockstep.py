"""Run benchmark systems in lockstep, so that the machine's drift hits them alike.

This machine is shared, and its speed moves by up to 1.5x within an hour. Systems timed one
after the other carry that drift into their ratio. Here every system runs in its own process
(so its peak RSS is its own), all started together, and the driver lets exactly one of them run
one training step at a time, in turn: system A step 1, system B step 1, A step 2, ... A worker
calls `Turns.wait()` before its first step (before loading anything) and `Turns.done()` then
`Turns.wait()` after each step; `Turns.seconds` holds how long each of its turns took.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


class Turns:
    """Worker side: the protocol owns the worker's stdout; anything else printed goes to stderr."""

    def __init__(self):
        self.out = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        self.seconds: list[float] = []
        self._start = None

    def wait(self) -> None:
        if sys.stdin.readline().strip() != "go":
            sys.exit("the benchmark driver went away")
        self._start = time.perf_counter()

    def done(self) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        self.out.write("done\n")
        self.out.flush()

    def step(self, *_args) -> None:
        """End this turn and wait for the next: the callback after each training step."""
        self.done()
        self.wait()


def run_lockstep(cmds: list[list[str]], env: dict) -> None:
    """Start every worker, then give each one step at a time, in turn, until all have exited.

    A worker that ends its turn with "done" gets another; one that exits (its run finished,
    with the work after its last step done alone) leaves the rotation. A failure stops all.
    """
    procs = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for cmd in cmds
    ]
    live = list(procs)
    try:
        while live:
            for p in list(live):
                p.stdin.write("go\n")
                p.stdin.flush()
                if p.stdout.readline().strip() == "done":
                    continue
                if p.wait() != 0:
                    raise SystemExit(f"a worker failed: {' '.join(map(str, p.args))}")
                live.remove(p)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
