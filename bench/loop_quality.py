"""Do rounds help? Two whole rounds per optimiser on the default model, four hidden oracles.

Issue 22. Each run builds a project on the default model (SmolLM2-135M-Instruct) with the first
`--prompts` (60) bundled prompts, samples 4 candidates per prompt, and twice: simulated
annotators rank each prompt's 4 candidates (6 pairs each, 360 pairs a round) with labels that
agree with the task's oracle on `--agreement` (70%) of pairs, then `rankloop round` trains the
reward model and runs the policy stage with `--optimizer`, and samples the next round. Round 2 is
labelled too. A quarter of the prompts are the round's evaluation prompts: never trained on,
they carry the cross-round comparisons that the simulated annotators label
(`--eval-comparisons` (4) per prompt and opponent).

Tasks (each oracle scores (prompt, response); none is one the project's defaults were tuned on,
except `tidy`, the demo's own):
  tidy       ends on its own (a finished sentence) plus 1 - its share of repeated word 4-grams;
  format     the prompt asks for a bulleted list (even prompts) or one paragraph (odd prompts);
             the share of the response's lines that are bullets, or 1 minus it;
  relevance  the share of the prompt's content words (4+ letters, not stop words) the
             response uses: does it answer what was asked;
  concise    1 - |words - 40| / 40, floored at 0: answers of about 40 words.

Per row: the oracle's mean of each round's samples on the evaluation prompts, round 2's win-rate
over the base from the simulated cross-round comparisons (95% bootstrap interval), the policy
stages' held-out KL, the reward models' held-out accuracy (and their probe's), how well each
reward model, its probe and the labels order the held-out pairs by the oracle itself
(`rounds.oracle_reward_accuracy`: on an oracle with few levels most pairs tie, and their labels are
coin flips the held-out accuracy counts), and the wall time of each stage. Best-of-n at inference (round 0's reward model choosing among n samples of the
base policy, no training) is the reference a trained optimiser must beat: with `--best-of-n N`
the row carries the oracle's mean of those choices on the evaluation prompts.

`--weak-reward probe`: a round whose reward model lost to its frozen-feature probe optimises the
probe instead of stopping (issue 23 item 5); the table marks those rounds. `--reward model+probe`:
every policy stage optimises the mean of the model's and its probe's normalised scores
(`[rounds] reward`); the table marks the row.

Usage (one cell is ~40 min on the 2-core machine; run cells one at a time):
  flock /tmp/rankloop-cpu.lock .venv/bin/python bench/loop_quality.py --tasks tidy \\
      --optimizers ppo --seeds 0 --out bench/results/loop-quality.jsonl
  .venv/bin/python bench/loop_quality.py --table bench/results/loop-quality.jsonl
  .venv/bin/python bench/loop_quality.py --diagnose /tmp/loop-tidy-bon-XXXX/proj --tasks tidy
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_WORD = re.compile(r"[A-Za-z]+")
STOP = {
    "this",
    "that",
    "with",
    "from",
    "what",
    "have",
    "your",
    "about",
    "which",
    "their",
    "there",
    "would",
    "could",
    "should",
    "when",
    "where",
    "will",
    "them",
    "they",
    "then",
    "than",
    "these",
    "those",
    "into",
    "some",
    "more",
    "most",
    "other",
    "just",
    "like",
    "also",
    "been",
    "were",
    "does",
    "only",
    "very",
    "make",
    "made",
    "over",
    "such",
    "each",
    "much",
    "many",
    "give",
    "tell",
    "write",
    "explain",
    "describe",
}
_BULLET = re.compile(r"^\s*([-*•]|\d+[.)])\s+")
ASK = (" Answer as a bulleted list.", " Answer in one paragraph, without a list.")


def prompt_text(p) -> str:
    return p if isinstance(p, str) else p.text


def tidy(prompts, responses):
    from rankloop.app.oracles import tidy as t

    return t(prompts, responses)


def fmt(prompts, responses):
    out = []
    for p, r in zip(prompts, responses):
        lines = [ln for ln in r.splitlines() if ln.strip()]
        share = sum(bool(_BULLET.match(ln)) for ln in lines) / len(lines) if lines else 0.0
        out.append(share if prompt_text(p).endswith(ASK[0]) else 1.0 - share)
    return out


def relevance(prompts, responses):
    out = []
    for p, r in zip(prompts, responses):
        text = prompt_text(p)
        for ask in ASK:
            text = text.removesuffix(ask)
        asked = {w.lower() for w in _WORD.findall(text) if len(w) >= 4} - STOP
        said = {w.lower() for w in _WORD.findall(r)}
        out.append(len(asked & said) / len(asked) if asked else 0.0)
    return out


def concise(prompts, responses):
    return [max(0.0, 1.0 - abs(len(r.split()) - 40) / 40) for r in responses]


TASKS = {"tidy": tidy, "format": fmt, "relevance": relevance, "concise": concise}


def build_project(
    root: Path,
    task: str,
    n_prompts: int,
    seed: int,
    optimizer: str,
    eval_comparisons: int,
    weak_reward: str | None = None,
    reward: str | None = None,
):
    from rankloop.app.commands.rounds import DEMO_SETTINGS
    from rankloop.app.project import Project
    from rankloop.data.io import bundled_prompts, read_jsonl
    from rankloop.data.records import Prompt

    p = Project.init(root)
    for section, values in DEMO_SETTINGS.items():
        for key, value in values.items():
            setattr(getattr(p.config, section), key, value)
    # the policy stage the first rows ran with (the demo's settings then): rows stay comparable
    p.config.ppo.steps, p.config.ppo.eval_every = 10, 5
    p.config.generate.n = 4  # 4 candidates ranked per prompt: 6 pairs each
    p.config.labeling.k = 4
    p.config.rounds.optimizer = optimizer
    if weak_reward:
        p.config.rounds.weak_reward = weak_reward
    if reward:
        p.config.rounds.reward = reward
    # the win-rate's comparisons: each evaluation prompt's new response against this many of
    # round 0's (and of the round before); ~15 evaluation prompts x 2 gave n = 20, an interval
    # of +-0.23
    p.config.rounds.eval_comparisons = eval_comparisons
    p.config.generate.seed = p.config.reward.seed = p.config.ppo.seed = seed
    p.save_config()
    rows = [row for _, row in read_jsonl(bundled_prompts())]
    prompts = []
    for i, r in enumerate(rows[:n_prompts]):
        text = r["prompt"] if isinstance(r["prompt"], str) else None
        if text is None:
            continue  # the conversations at the end: one message keeps the format task simple
        if task == "format":
            text += ASK[i % 2]
        prompts.append(Prompt.from_text(text))
    p.store.add_prompts(prompts)
    return Project.find(root)


def best_of_n_reference(p, oracle, n: int, seed: int) -> dict:
    """Best-of-n at inference: the reward round 0's policy stage optimised picks the best of `n`
    samples of the base policy on each evaluation prompt, no training; the oracle's mean of its
    picks, and of all the samples (the same sampling as the policy stage's, unchosen: the
    like-for-like baseline, as the policy stage's `max_new_tokens` may differ from the
    candidates')."""
    from rankloop.app import rounds
    from rankloop.ppo.best_of_n import scored_samples

    held = rounds.split_prompts(p.store.prompts(), p.config.rounds.eval_fraction)[1]
    # the reward round 0's policy stage optimised: the model, or the probe it lost to
    reward_fn, _ = rounds.ppo_reward(p, 0, p.config.ppo, probe=rounds.optimises_probe(p, 0))
    t0 = time.perf_counter()
    samples = scored_samples(rounds.start_policy(p, 0), held, reward_fn, n, p.config.ppo, seed)
    picks = [max(range(n), key=lambda k: (s[k][1], -k)) for s in samples]
    every = oracle([q for q in held for _ in range(n)], [t for s in samples for t, _ in s])
    return {
        "n": n,
        "oracle": statistics.mean(every[i * n + k] for i, k in enumerate(picks)),
        "oracle_all": statistics.mean(every),
        "seconds": time.perf_counter() - t0,
    }


def one_run(task: str, optimizer: str, seed: int, args) -> dict:
    from rankloop.app import rounds
    from rankloop.app.simulate import simulate
    from rankloop.data.leaderboard import win_rate

    oracle = TASKS[task]
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"loop-{task}-{optimizer}-"))
    p = build_project(
        tmp / "proj",
        task,
        args.prompts,
        seed,
        optimizer,
        args.eval_comparisons,
        args.weak_reward,
        args.reward,
    )
    times: dict[str, list[float]] = {}
    rounds.sample_candidates(p, 0, p.config.generate, progress=False)
    summaries, agreements, bon, stopped = [], [], None, None
    for r in range(3):
        got = simulate(
            p.store,
            oracle,
            p.config.labeling,
            annotators=1,
            agreement=args.agreement,
            round_=r,
            seed=r + 100 * seed,
            progress=False,
        )
        agreements.append(getattr(got, "agreement", None))
        if r == 2:
            break
        try:
            summary = rounds.run_round(
                p,
                rounds.RoundSettings.of(p),
                log=lambda m: print(m, file=sys.stderr, flush=True),
                progress=False,
            )
        except rounds.RoundStopped as e:  # the reward gate: a row, not a crash
            stopped = {"round": r, "why": str(e)}
            break
        summaries.append(summary)
        for stage, seconds in (summary.seconds or {}).items():
            times.setdefault(stage, []).append(round(seconds, 1))
        if r == 0 and args.best_of_n:
            bon = best_of_n_reference(p, oracle, args.best_of_n, seed)
    means = rounds.oracle_means(p, oracle)
    wr = win_rate(p.store.cross_round_outcomes(), 2, 0, seed=0) if stopped is None else None
    row = {
        "task": task,
        "optimizer": optimizer,
        "seed": seed,
        "agreement_asked": args.agreement,
        "weak_reward": p.config.rounds.weak_reward,
        "reward": p.config.rounds.reward,
        "optimised_probe": [bool(s.metrics.get("ppo/optimised_probe")) for s in summaries],
        "optimised_mix": [bool(s.metrics.get("ppo/optimised_mix")) for s in summaries],
        "probe_cv": [s.metrics.get("reward/probe_cv_accuracy") for s in summaries],
        "prompts": args.prompts,
        "eval_comparisons": args.eval_comparisons,
        "agreement": agreements,
        "eval_means": {r: m[1] for r, m in means.items()},
        "all_means": {r: m[0] for r, m in means.items()},
        "win_rate_2_over_0": [wr.rate, wr.low, wr.high, wr.n] if wr else None,
        "stopped": stopped,
        "best_of_n": bon,
        "kl": [s.metrics.get("ppo/kl_final") for s in summaries],
        "kept": [s.metrics.get("ppo/kept_step") for s in summaries],
        "reward_accuracy": [s.metrics.get("reward/accuracy") for s in summaries],
        "probe_accuracy": [s.metrics.get("reward/probe_accuracy") for s in summaries],
        "stage_seconds": times,
        "seconds": round(time.perf_counter() - t0, 1),
        "reward_oracle": rounds.oracle_reward_accuracy(p, oracle),
        "project": str(tmp / "proj"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    p.close()
    return row


def table(rows: list[dict]) -> str:
    lines = [
        (
            "| task | optimiser | seed | label agreement | oracle (eval prompts) r0 -> r1 -> r2 "
            "| round 2 over base | best-of-n (r0's reward) | KL r0, r1 | reward acc. (probe) "
            "| by the oracle: reward (probe, labels), pairs | minutes |"
        ),
        "| --- | --- | ---: | --- | --- | --- | --- | --- | --- | --- | ---: |",
    ]
    for r in rows:
        m = r["eval_means"]
        if r.get("stopped"):  # the reward gate stopped round R before its policy stage
            lines.append(
                f"| {r['task']} | {r['optimizer']} | {r['seed']} | - | {m['0']:.3f} | round "
                f"{r['stopped']['round']} stopped: its reward model lost to its probe | - | - | - "
                f"| {oracle_cell(r)} | {r['seconds'] / 60:.0f} |"
            )
            continue
        rate, low, high, n = r["win_rate_2_over_0"]
        agree = ", ".join(f"{a:.0%}" for a in r["agreement"] if a is not None) or "-"
        acc = ", ".join(
            f"{a:.2f} ({b:.2f})"
            for a, b in zip(r["reward_accuracy"], r["probe_accuracy"])
            if a is not None and b is not None
        )
        kl = ", ".join(f"{k:.2f}" for k in r["kl"] if k is not None)
        b = r.get("best_of_n")
        bon = "-"
        if b:  # the picks' mean, and all n samples' (the same sampling) when recorded
            every = f", all {b['oracle_all']:.3f}" if "oracle_all" in b else ""
            bon = f"{b['oracle']:.3f} (n = {b['n']}{every})"
        probe = [str(i) for i, x in enumerate(r.get("optimised_probe") or []) if x]
        opt = r["optimizer"] + (f" (probe in r{', r'.join(probe)})" if probe else "")
        if r.get("reward", "model") != "model":
            opt += f", {r['reward']}"
        mixed = [str(i) for i, x in enumerate(r.get("optimised_mix") or []) if x]
        if r.get("reward") == "auto":  # which rounds 'auto' mixed the probe in
            opt += f" (mix in r{', r'.join(mixed)})" if mixed else " (model only)"
        lines.append(
            f"| {r['task']} | {opt} | {r['seed']} | {agree} | "
            f"{m['0']:.3f} -> {m['1']:.3f} -> {m['2']:.3f} | {rate:.0%} ({low:.0%}-{high:.0%}, "
            f"n = {n}) | {bon} | {kl} | {acc} | {oracle_cell(r)} | {r['seconds'] / 60:.0f} |"
        )
    return "\n".join(lines)


def oracle_cell(row: dict) -> str:
    """Each round's `rounds.oracle_reward_accuracy`: "0.87 (0.40, 0.87), 15 of 36" = the model, (its
    probe, the labels) on the 15 held-out pairs of 36 that the oracle does not tie."""
    cells = [
        f"{o['model']:.2f} ({o['probe']:.2f}, {o['labels']:.2f}), {o['untied']} of {o['pairs']}"
        if o["untied"]
        else f"- (0 of {o['pairs']} untied)"
        for o in row.get("reward_oracle") or []
    ]
    return "; ".join(cells) or "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--optimizers", default="ppo,rloo,bon,odpo")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--agreement", type=float, default=0.7)
    ap.add_argument(
        "--eval-comparisons",
        type=int,
        default=4,
        help="[rounds] eval_comparisons: cross-round comparisons per evaluation prompt",
    )
    ap.add_argument(
        "--weak-reward",
        choices=("warn", "stop", "run", "probe"),
        help="[rounds] weak_reward (default: the project's default)",
    )
    ap.add_argument(
        "--reward",
        choices=("model", "model+probe", "auto"),
        help="[rounds] reward (default: the project's default)",
    )
    ap.add_argument("--best-of-n", type=int, default=4, help="n of the reference (0 = none)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/loop-quality.jsonl"))
    ap.add_argument("--table", nargs="*", help="print the table of these result files")
    ap.add_argument(
        "--diagnose",
        metavar="PROJECT",
        help="print rounds.oracle_reward_accuracy of a finished run's project (its row's 'project'; "
        "the first task of --tasks is its oracle) as JSON",
    )
    args = ap.parse_args()
    if args.diagnose:
        from rankloop.app import rounds
        from rankloop.app.project import Project

        p = Project.find(Path(args.diagnose))
        print(json.dumps(rounds.oracle_reward_accuracy(p, TASKS[args.tasks.split(",")[0]])))
        p.close()
        return
    if args.table is not None:
        from rankloop.data.io import read_jsonl

        rows = [row for f in (args.table or [args.out]) for _, row in read_jsonl(Path(f))]
        for r in rows:  # JSON keys are strings
            r["eval_means"] = {str(k): v for k, v in r["eval_means"].items()}
        print(table(rows))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for task in args.tasks.split(","):
            for optimizer in args.optimizers.split(","):
                row = one_run(task, optimizer, seed, args)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                row["eval_means"] = {str(k): v for k, v in row["eval_means"].items()}
                print(table([row]), flush=True)


if __name__ == "__main__":
    main()
