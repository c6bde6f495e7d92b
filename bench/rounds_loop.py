"""Does the whole loop help on a task with a known answer, run after run? The suite's
known-answer test (`tests/test_rounds_loop.py`), run `--runs` times with its log printed.

Each run trains the test's tiny two-style policy, builds its project (48 prompts, half held out
for the win-rate), samples round 0, and twice: simulated annotators label the round and
`rounds.run_round` trains the reward model, runs PPO and samples the next round. Then round 2
is labeled too. Per run it reports the oracle's mean score of each round's samples (all prompts
and the held-out ones), the win-rate of round 2 over round 0 with its 95% interval, the reward
models' held-out accuracy against their probe baseline, and the step each PPO kept. Run i
(from 0) sets the seeds of sampling, reward training, PPO and the simulated annotators to i, so
run 0 is the test itself and the others are the same task drawn again.

Usage:  flock /tmp/rankloop-cpu.lock .venv/bin/python bench/rounds_loop.py [--runs 4]
            [--set ppo.eval_samples=1 ...]
Results: one JSON line per run appended to --out (default bench/results/rounds_loop.jsonl) and a
table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the scenario is the test's, not a copy of it


def parse_set(items: list[str]) -> dict[tuple[str, str], str]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not (section and name and value):
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. ppo.eval_samples=1")
        out[(section, name)] = value
    return out


def one_run(overrides: dict[tuple[str, str], str], seed: int) -> dict:
    from test_rounds_loop import share_of_good, small_project, two_style_lm

    from rankloop.app import rounds
    from rankloop.app.simulate import simulate
    from rankloop.data.leaderboard import win_rate

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="rounds-loop-"))
    p = small_project(tmp / "proj", two_style_lm(tmp / "lm"))
    p.config.generate.seed = p.config.reward.seed = p.config.ppo.seed = seed
    for (section, name), value in overrides.items():
        part = getattr(p.config, section)
        kind = type(getattr(part, name))
        setattr(part, name, value.lower() in ("1", "true", "yes") if kind is bool else kind(value))
    p.save_config()
    rounds.sample_candidates(p, 0, p.config.generate, progress=False)
    summaries = []
    for r in range(2):
        simulate(
            p.store,
            share_of_good,
            p.config.labeling,
            annotators=2,
            noise=0.1,
            round_=r,
            seed=r + 10 * seed,
            progress=False,
        )
        summaries.append(
            rounds.run_round(p, rounds.RoundSettings.of(p), log=lambda m: None, progress=False)
        )
    simulate(
        p.store,
        share_of_good,
        p.config.labeling,
        annotators=2,
        noise=0.1,
        round_=2,
        seed=2 + 10 * seed,
        progress=False,
    )
    means = rounds.oracle_means(p, share_of_good)
    wr = win_rate(p.store.cross_round_outcomes(), 2, 0, seed=0)
    row = {
        "means": {r: [round(m[0], 3), round(m[1], 3)] for r, m in means.items()},
        "win_rate_2_over_0": [round(wr.rate, 3), round(wr.low, 3), round(wr.high, 3), wr.n],
        "kept": [s.metrics.get("ppo/kept_step") for s in summaries],
        "reward_accuracy": [s.metrics.get("reward/accuracy") for s in summaries],
        "probe_accuracy": [s.metrics.get("reward/probe_accuracy") for s in summaries],
        "seed": seed,
        "overrides": {f"{a}.{b}": v for (a, b), v in overrides.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    p.close()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="Seed of the first run (0: the test's own); run i uses first-seed + i.",
    )
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/rounds_loop.jsonl")
    args = ap.parse_args()
    overrides = parse_set(args.set)
    print(
        "| seed | round 0 | round 1 | round 2 | held-out 0 -> 2 | round 2 over 0 | PPO kept | "
        "reward acc. (probe) |\n|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    for i in range(args.runs):
        row = one_run(overrides, args.first_seed + i)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        m, (rate, low, high, n) = row["means"], row["win_rate_2_over_0"]
        acc = ", ".join(
            f"{a:.3f} ({b:.3f})"
            for a, b in zip(row["reward_accuracy"], row["probe_accuracy"])
            if a is not None
        )
        kept = ", ".join(f"step {k:g}" for k in row["kept"] if k is not None)
        print(
            f"| {row['seed']} | {m[0][0]:.3f} | {m[1][0]:.3f} | {m[2][0]:.3f} | {m[0][1]:.3f} -> "
            f"{m[2][1]:.3f} | {rate:.0%} ({low:.0%}-{high:.0%}, n = {n}) | {kept} | {acc} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
