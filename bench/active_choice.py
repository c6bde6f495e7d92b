"""Active choice: which comparisons to label, random vs uncertainty vs balanced, same budget.

On the reward-quality benchmark's tasks (bench/reward_quality.py: its candidates, oracle, label
noise, train / held-out prompt split and held-out scoring, imported, not copied), a simulated
annotator labels a budget of pairs (--sizes, e.g. 100, 200, 400) from a pool of candidate
comparisons: every pair of one training prompt's candidates that the oracle does not tie (all
200 training prompts; --pool caps it to a random subset). Each candidate's noisy label
(P(a chosen) = sigma(beta (s_a - s_b))) is drawn once per seed, so the rules differ only in
which pairs they choose. The budget is spent in --rounds acquisition rounds of equal batches:

  * round 1 is the same uniform random batch for every rule (there is no model to ask yet);
  * before each later round an acquisition model is refitted on the labels so far and picks
    the next batch from the unlabeled pool by the rule:
      random       uniformly at random (the queue's `order = "random"`);
      uncertainty  the largest disagreement first (`order = "uncertainty"` with an ensemble);
      balanced     the queue's `order = "balanced"` (BAL-PM-like): the prompts with the fewest
                   labels first, within them the largest disagreement, applied pick by pick
                   (a prompt's count grows as the batch fills).

The acquisition model is an ensemble of --members frozen-feature probes (rankloop.reward.probe,
mean-pooled SmolLM2 features, as the benchmark's `probe` system) fitted on bootstrap resamples
of the labels (reward.ensemble.bootstrap_weights), the way [reward] ensemble warm-starts its
members; its disagreement on a pair is the members' std of the score gap (data.queue.gap_spread,
what the queue sorts by). It stands in for the round's reward model because 2 CPU cores cannot
fine-tune one per acquisition round. The final model, trained on all the chosen labels and
scored on the benchmark's 300 held-out pairs of 54 unseen prompts (expected accuracy against a
noisy label), is --final: `probe` (the frozen-feature probe on all labels, the default for
cost) or `rankloop` (the project's default reward model, train_reward with its defaults).

Usage:
  flock /tmp/rankloop-cpu.lock .venv/bin/python bench/active_choice.py --tasks format \\
      --sizes 100,200,400 --seeds 0,1,2 --out bench/results/active-format.jsonl
  .venv/bin/python bench/active_choice.py --table bench/results/active-*.jsonl
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reward_quality as rq

RULES = ("random", "uncertainty", "balanced")


def candidate_pool(task: str, texts, prompts: list[int], cap: int | None, seed: int):
    """[(prompt, a, b, d)]: every oracle-untied pair of each training prompt's candidates
    (a random `cap` of them when given)."""
    pool = [
        (p, a, b, d)
        for i in prompts
        for p, pairs in [rq.prompt_pairs(task, texts, i)]
        for a, b, d in pairs
    ]
    if cap is not None and cap < len(pool):
        pool = random.Random(f"pool:{task}:{seed}").sample(pool, cap)
    return pool


def labeled(pool, idx, a_wins) -> list[tuple[str, str, str]]:
    """The chosen pool pairs as (prompt, chosen, rejected) under their fixed noisy labels."""
    return [
        (pool[i][0], pool[i][1], pool[i][2]) if a_wins[i] else (pool[i][0], pool[i][2], pool[i][1])
        for i in idx
    ]


def member_weights(x: np.ndarray, members: int, seed: int) -> np.ndarray:
    """(M, H) probes, member m fitted on bootstrap resample m of the rows of x (f_chosen -
    f_rejected), weighted by how often each row was drawn."""
    from rankloop.reward.ensemble import bootstrap_weights
    from rankloop.reward.probe import fit_probe

    counts = bootstrap_weights(len(x), members, seed)
    out = []
    for m in range(members):
        keep = counts[m] > 0
        out.append(fit_probe(x[keep], counts[m][keep], seed + m))
    return np.stack(out)


def disagreement(gaps: np.ndarray) -> np.ndarray:
    """(P,) the members' population std of each pair's score gap, gaps (P, M): the vectorised
    data.queue.gap_spread."""
    return gaps.std(axis=1)


def pick_uncertain(spread: np.ndarray, free: list[int], k: int) -> list[int]:
    """The k free pool indices with the largest spread (ties: the lower index)."""
    return sorted(free, key=lambda i: (-spread[i], i))[:k]


def pick_balanced(
    spread: np.ndarray, free: list[int], k: int, prompt_of: list[str], counts: Counter
) -> list[int]:
    """k picks, each from the prompt with the fewest labels so far (labels already held plus
    this batch's picks), the most uncertain of its free pairs; ties between prompts go to the
    larger spread, then the lower index."""
    by_prompt: dict[str, list[int]] = {}
    for i in sorted(free, key=lambda i: (-spread[i], i)):
        by_prompt.setdefault(prompt_of[i], []).append(i)
    heap = [(counts[p], -spread[ids[0]], ids[0], p) for p, ids in by_prompt.items()]
    heapq.heapify(heap)
    taken, counts = [], Counter(counts)
    while heap and len(taken) < k:
        _, _, i, p = heapq.heappop(heap)
        taken.append(i)
        counts[p] += 1
        rest = by_prompt[p]
        rest.pop(0)
        if rest:
            heapq.heappush(heap, (counts[p], -spread[rest[0]], rest[0], p))
    return taken


def batches(size: int, rounds: int) -> list[int]:
    """size split into `rounds` batches as equal as possible (the larger first)."""
    return [size // rounds + (r < size % rounds) for r in range(rounds)]


def acquire(rule, pool, a_wins, feats_a, feats_b, size, rounds, members, seed, task):
    """The pool indices the rule labels within the budget, in the order labeled."""
    sizes = batches(size, rounds)
    rng = random.Random(f"first:{task}:{size}:{seed}")
    chosen = rng.sample(range(len(pool)), sizes[0])  # the same first batch for every rule
    pick_rng = random.Random(f"{rule}:{task}:{size}:{seed}")
    prompt_of = [p for p, *_ in pool]
    for r, k in enumerate(sizes[1:], start=1):
        have = set(chosen)
        free = [i for i in range(len(pool)) if i not in have]
        if rule == "random":
            chosen += pick_rng.sample(free, k)
            continue
        sign = np.where(np.asarray(a_wins)[chosen], 1.0, -1.0)[:, None]
        x = (feats_a[chosen] - feats_b[chosen]) * sign  # f_chosen - f_rejected
        w = member_weights(x, members, seed * 100 + r)  # (M, H)
        spread = disagreement((feats_a - feats_b) @ w.T)  # (P,)
        if rule == "uncertainty":
            chosen += pick_uncertain(spread, free, k)
        else:
            chosen += pick_balanced(
                spread, free, k, prompt_of, Counter(prompt_of[i] for i in chosen)
            )
    return chosen


def run(args) -> list[dict]:
    texts = rq.load()
    train_prompts, held_prompts = rq.split_prompts(len(texts))
    features = rq.FrozenFeatures(args.base)
    rows = []
    for task in args.tasks:
        beta = rq.BETA[task]
        held = rq.draw(held_prompts, rq.HELD_OUT_PAIRS, task, texts, random.Random(f"held:{task}"))
        for seed in args.seeds:
            pool = candidate_pool(task, texts, train_prompts, args.pool, seed)
            prompts = [p for p, *_ in pool]
            t0 = time.perf_counter()
            feats_a = features(prompts, [a for _, a, _, _ in pool])
            feats_b = features(prompts, [b for _, _, b, _ in pool])
            feature_seconds = time.perf_counter() - t0
            noise = random.Random(f"noise:{task}:{seed}")
            a_wins = [noise.random() < rq.sigmoid(beta * d) for *_, d in pool]
            for size in args.sizes:
                for rule in args.rules:
                    t0 = time.perf_counter()
                    chosen = acquire(
                        rule,
                        pool,
                        a_wins,
                        feats_a,
                        feats_b,
                        size,
                        args.rounds,
                        args.members,
                        seed,
                        task,
                    )
                    acquire_seconds = time.perf_counter() - t0
                    train = labeled(pool, chosen, a_wins)
                    if args.final == "rankloop":
                        fit = rq.fit_rankloop(train, seed, {}, args.base)
                    else:
                        fit = rq.fit_probe_system(train, seed, features)
                    score, seconds, extra, cleanup = fit
                    q = rq.quality(*rq.score_pairs(score, held), held, beta)
                    cleanup()
                    d = np.array([pool[i][3] for i in chosen])
                    row = {
                        "task": task,
                        "pairs": size,
                        "seed": seed,
                        "rule": rule,
                        "final": args.final,
                        "rounds": args.rounds,
                        "members": args.members,
                        "pool": len(pool),
                        **q,
                        # what the rule chose: how many prompts, how hard (|s_a - s_b|), and
                        # how many of its labels disagree with the oracle (label noise)
                        "prompts": len({pool[i][0] for i in chosen}),
                        "mean_abs_d": float(np.mean(np.abs(d))),
                        "against_oracle": float(
                            np.mean([a_wins[i] != (pool[i][3] > 0) for i in chosen])
                        ),
                        "seconds": seconds,
                        "acquire_seconds": round(acquire_seconds, 2),
                        "feature_seconds": round(feature_seconds, 1),
                        **{k: v for k, v in extra.items() if k in ("steps", "best_step")},
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.out:  # row by row: a run killed later keeps what it measured
                        with open(args.out, "a") as f:
                            f.write(json.dumps(row) + "\n")
    return rows


def cell(values: list[float]) -> str:
    """mean ± population std (per seed values)."""
    spread = f" ± {np.std(values):.3f}" if len(values) > 1 else ""
    return f"{np.mean(values):.3f}{spread} ({', '.join(f'{v:.3f}' for v in values)})"


def table(rows: list[dict]) -> str:
    """Markdown: per task, budget and final model, each rule's held-out accuracy (mean ± std
    over seeds, then each seed in seed order), and each rule's mean paired gain over random
    (same task, budget, seed), with the rules' label noise and prompts covered."""
    rules = [r for r in RULES if any(x["rule"] == r for x in rows)]
    others = [r for r in rules if r != "random"] if "random" in rules else []
    lines = [
        "| task | pairs | final | ceiling | "
        + " | ".join(rules)
        + "".join(f" | {r} - random" for r in others)
        + " | against oracle / prompts |",
        "|---|---|---|---|" + "---|" * (len(rules) + len(others) + 1),
    ]
    keys = sorted(
        {(x["task"], x["pairs"], x["final"]) for x in rows},
        key=lambda k: (rq.TASKS.index(k[0]), k[1], k[2]),
    )
    gains: dict[tuple[int, str, str], list[float]] = {}  # (budget, final, rule)
    for task, n, final in keys:
        at = {
            r: sorted(
                (
                    x
                    for x in rows
                    if (x["task"], x["pairs"], x["final"], x["rule"]) == (task, n, final, r)
                ),
                key=lambda x: x["seed"],
            )
            for r in rules
        }
        ceil = next(x["ceiling"] for v in at.values() for x in v)
        out = [cell([x["accuracy"] for x in at[r]]) if at[r] else "" for r in rules]
        for r in others:
            base = {x["seed"]: x["accuracy"] for x in at["random"]}
            diff = [x["accuracy"] - base[x["seed"]] for x in at[r] if x["seed"] in base]
            gains.setdefault((n, final, r), []).extend(diff)
            out.append(f"{np.mean(diff):+.3f} (n={len(diff)})" if diff else "")
        out.append(
            ", ".join(
                f"{r} {np.mean([x['against_oracle'] for x in at[r]]):.2f} / "
                f"{np.mean([x['prompts'] for x in at[r]]):.0f}"
                for r in rules
                if at[r]
            )
        )
        lines.append(f"| {task} | {n} | {final} | {ceil:.3f} | " + " | ".join(out) + " |")
    for n, final in sorted({(k[1], k[2]) for k in keys}):  # the paired gains over tasks
        if not others:
            break
        parts = [""] * len(rules) + [
            f"{np.mean(g):+.3f} (n={len(g)})" if (g := gains.get((n, final, r))) else ""
            for r in others
        ]
        lines.append(f"| **all** | {n} | {final} | | " + " | ".join(parts) + " | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(rq.TASKS))
    ap.add_argument("--sizes", default="100,200,400")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--rounds", type=int, default=4, help="Acquisition rounds per budget.")
    ap.add_argument("--members", type=int, default=5, help="Probes in the acquisition ensemble.")
    ap.add_argument("--pool", type=int, default=None, help="Cap the candidate pool (random).")
    ap.add_argument("--final", choices=("probe", "rankloop"), default="probe")
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--out", default=None, help="Append the rows as JSON lines here.")
    ap.add_argument("--table", nargs="*", default=None, help="Print the table of result files.")
    args = ap.parse_args()
    if args.table is not None:
        rows = [
            json.loads(line)
            for f in args.table
            for line in Path(f).read_text().split("\n")
            if line.strip()
        ]
        print(table(rows))
        return
    args.tasks = args.tasks.split(",")
    args.sizes = [int(x) for x in args.sizes.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    args.rules = args.rules.split(",")
    print(table(run(args)))


if __name__ == "__main__":
    main()
