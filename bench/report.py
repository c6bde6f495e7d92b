"""How long the rounds' statistics take: the report and the Rounds view on a synthetic project.

A project of P evaluation prompts and R rounds after the base, each round's response compared
with the previous round's and the base's on every prompt, one label each (random outcomes).
The leaderboard's bootstrap (1000 resamples of the prompts) is timed two ways on the same
resamples, which must give the same strengths:
  anchor   : one Newton fit per resample (`leaderboard.bradley_terry` in a loop)
  rankloop : every resample in one batched Newton fit (what `leaderboard.leaderboard` does)
then `report.collect` (the store reads, win-rates, leaderboard, curves) and `render_html`.

Usage:  python bench/report.py [--prompts 200] [--rounds 4] [--bootstrap 1000] [--reps 3]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from rankloop.app import report
from rankloop.data import leaderboard as lb
from rankloop.data.records import Label, Prompt, Response
from rankloop.data.store import Store


def synthetic_project(path: Path, prompts: int, rounds: int, seed: int = 0) -> Store:
    rng = random.Random(seed)
    store = Store.open(path)
    pids = store.add_prompts([Prompt.from_text(f"evaluation prompt {i}") for i in range(prompts)])
    ann = store.add_annotator("ann")[0].id
    resp = {}
    for i, pid in enumerate(pids):
        ids = store.add_responses(
            [
                Response(pid, f"round {r} answers {i}", round=r, policy=f"policy-{r}")
                for r in range(rounds + 1)
            ]
        )
        resp.update({(i, r): rid for r, rid in enumerate(ids)})
    labels = []
    for r in range(1, rounds + 1):
        for opponent in dict.fromkeys((r - 1, 0)):
            for i, pid in enumerate(pids):
                pair = [resp[(i, opponent)], resp[(i, r)]]
                cid = store.add_comparison(pid, pair, round=r)
                labels.append(Label.pairwise(cid, ann, pair, rng.choice("AABBB")))
    store.add_labels(labels)
    return store


def timed(fn, reps: int):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_project(Path(tmp) / "bench.db", args.prompts, args.rounds)
        ms = store.cross_round_outcomes()
        t = lb.match_tables(ms)
        counts = lb.prompt_resamples(len(t.prompts), args.bootstrap, seed=0)  # (B, P)
        S, N, M = counts @ t.scores, counts @ t.counts, len(t.models)  # (B, K)
        t_loop, looped = timed(
            lambda: np.array(
                [lb.bradley_terry(t.pairs, s, n, M, reg=lb.DEFAULT_REG) for s, n in zip(S, N)]
            ),
            args.reps,
        )
        t_batch, batched = timed(
            lambda: lb.bradley_terry(t.pairs, S, N, M, reg=lb.DEFAULT_REG), args.reps
        )
        t_board, _ = timed(lambda: lb.leaderboard(ms, n_boot=args.bootstrap), args.reps)
        t_collect, got = timed(lambda: report.collect(store, n_boot=args.bootstrap), args.reps)
        t_render, page = timed(lambda: report.render_html(got), args.reps)
        store.close()
    print(
        f"machine: {platform.machine()}, python {platform.python_version()}; {len(ms)} "
        f"matches on {args.prompts} prompts, {M} policies, {args.bootstrap} resamples, "
        f"median of {args.reps}"
    )
    print(f"anchor   one fit per resample : {t_loop:.3f} s")
    print(
        f"rankloop one batched fit      : {t_batch:.3f} s ({t_loop / t_batch:.1f}x the anchor;"
        f" max |difference| of the strengths {np.abs(batched - looped).max():.1e})"
    )
    print(f"leaderboard (fit, bootstrap, intervals): {t_board:.3f} s")
    print(
        f"report.collect (store reads + all statistics): {t_collect:.3f} s; render_html "
        f"{t_render * 1e3:.1f} ms, {len(page) / 1e3:.0f} kB"
    )


if __name__ == "__main__":
    main()
