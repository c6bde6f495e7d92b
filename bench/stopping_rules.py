"""What do the policy stage's stopping and keeping rules cost on a good reward, and save on a bad?

Issue 22: with a known-good reward, the old rules (keep the best of the noisy held-out
evaluations, stop when none rose 0.5 standard errors above it for 3 evaluations) kept a lucky
early step and stopped real progress. Here each rule is replayed on the same runs, so the
rules differ by their decision only, not by the draw:

1. one run per (reward, seed) with no rule at all: `--steps` steps (default 30) of the policy
   stage with its defaults otherwise (held-out evaluation every 5 steps on 16 of the training
   prompts x 4 samples), a checkpoint at every evaluation;
2. each evaluated policy (step 0, 5, ..., 30) samples `--samples` (4) responses to each of the
   24 test prompts the run never saw, with the same random numbers for every step, scored by
   the oracle: the curve a rule chooses from;
3. each rule reads the run's held-out evaluations in order, as training would, and says where
   it would have stopped and which step it would have kept; its result is the oracle's mean of
   that step's samples. The rules:
     none     run every step, keep the last;
     old      the rules before issue 22: stop after `patience` (3) evaluations without a rise of
              more than 0.5 standard errors over the best; keep the best;
     guarded  issue 22's rule (`ppo.core.EarlyStopping`): stop after `patience` evaluations in a
              row that fell more than `early_stop_drop` (2) standard errors of the difference
              below the best; keep the last unless it fell so, then the best;
     budget   today's defaults: `guarded` plus the KL budget (`kl_budget`, 6 nats): stop at the
              first evaluation whose held-out KL rose more than the budget past step 0's, keep
              among the steps within it.

Rewards (the oracle is `bench/ppo_drift.py`'s: half for ending on its own, half for the share of
distinct word trigrams; `tidy` is the project's own oracle):
  oracle   the oracle itself: a known-good reward (the rules should cost nothing);
  tidy     rankloop's `tidy` oracle as the reward, scored by itself;
  weak     0.25 x oracle + a pseudo-random value fixed per text: a reward that hardly sees the
           oracle, as a reward model fitted on too few labels;
  away     minus the oracle: a reward that points away from the truth, whose held-out score
           rises exactly as the truth falls (no rule that reads the reward can see it);
  rm       a reward model (rankloop's defaults) fitted on simulated labels of the oracle: 4
           base-policy samples of each training prompt, their 6 pairs each (360), labels drawn
           from Bradley-Terry noise calibrated so they agree with the oracle on 70% of pairs;
  rm-ens   the same labels, `[reward] ensemble = 4` scored by mean - 1 x std (Coste et al.):
           with `rm`, the over-optimisation curve (the oracle and the proxy along the run).

Usage:  flock /tmp/rankloop-cpu.lock .venv/bin/python bench/stopping_rules.py \\
            --rewards oracle,weak --seeds 0,1 --out bench/results/stopping-rules.jsonl
        .venv/bin/python bench/stopping_rules.py --table bench/results/stopping-rules.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace  # sample_texts reads `.lm`

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ppo_drift import N_TRAIN, bundle_prompts, oracle, sample_texts, weak


def tidy_reward(prompts, responses):
    from rankloop.app.oracles import tidy

    return tidy(prompts, responses)


def away(prompts, responses) -> list[float]:
    return [-o for o in oracle(prompts, responses)]


REWARDS = {"oracle": oracle, "weak": weak, "tidy": tidy_reward, "away": away}
# what each reward's run is judged by
JUDGE = {
    "oracle": oracle,
    "weak": oracle,
    "tidy": tidy_reward,
    "away": oracle,
    "rm": oracle,
    "rm-ens": oracle,
}
RM_OVERRIDES = {"rm": {}, "rm-ens": {"ensemble": 4, "ensemble_aggregate": "mean_minus_std"}}
AGREEMENT = 0.7


def fit_proxy(reward: str, seed: int, train, base: str, work: Path):
    """A reward model fitted on simulated labels of the oracle (see `rm` above)."""
    import itertools
    import random

    from scipy.optimize import brentq

    from rankloop.lm.loading import load_causal_lm, load_tokenizer
    from rankloop.ppo.reward_fns import ScorerReward
    from rankloop.reward.config import RewardConfig
    from rankloop.reward.pairs import pairwise_example
    from rankloop.reward.train import train_reward

    tok = load_tokenizer(base)
    texts = sample_texts(SimpleNamespace(lm=load_causal_lm(base)), tok, train, 4, 5000 + seed)
    scores = oracle([p for p in train for _ in range(4)], texts)
    pairs = []
    for i, p in enumerate(train):
        for a, b in itertools.combinations(range(4 * i, 4 * i + 4), 2):
            if scores[a] != scores[b]:
                pairs.append((p, a, b, abs(scores[a] - scores[b])))

    def agreement(t):
        return sum(1 / (1 + math.exp(-d / t)) for *_, d in pairs) / len(pairs) - AGREEMENT

    temp = brentq(agreement, 1e-4, 100.0)
    rng = random.Random(seed)
    examples, agree = [], 0
    for p, a, b, d in pairs:
        better, worse = (a, b) if scores[a] > scores[b] else (b, a)
        if rng.random() < 1 / (1 + math.exp(-d / temp)):
            agree += 1
        else:
            better, worse = worse, better
        examples.append(pairwise_example(p, texts[better], texts[worse]))
    out = work / f"reward-{reward}"
    result = train_reward(
        examples, RewardConfig(seed=seed, **RM_OVERRIDES[reward]), out, base=base, progress=False
    )
    info = {
        "pairs": len(examples),
        "label_agreement": agree / len(examples),
        "temperature": temp,
        "accuracy": result.metrics.get("reward/accuracy"),
        "probe_accuracy": result.metrics.get("reward/probe_accuracy"),
        "spread": result.metrics.get("reward/spread"),
    }
    print(f"  proxy {reward}: {info}", file=sys.stderr, flush=True)
    return ScorerReward(path=str(out)), info


def one_run(reward: str, seed: int, args) -> dict:
    import torch

    from rankloop.lm.loading import default_model_path, load_tokenizer
    from rankloop.ppo.actor_critic import load_trainable_state, trainable_state
    from rankloop.ppo.config import PPOConfig
    from rankloop.ppo.reward_fns import CallableReward
    from rankloop.ppo.train import checkpoint_dir, train_policy

    prompts = bundle_prompts()
    train, test = prompts[:N_TRAIN], prompts[N_TRAIN:]
    base = str(default_model_path())
    cfg = PPOConfig(
        steps=args.steps,
        seed=seed,
        log_samples=0,
        checkpoint_every=5,
        early_stop_patience=0,  # no rule: the rules are replayed on the evaluations below
        kl_budget=0.0,
        keep_policy="last",
    )
    out = Path(tempfile.mkdtemp(prefix=f"stop-{reward}-{seed}-"))
    proxy_info = None
    if reward in RM_OVERRIDES:
        reward_fn, proxy_info = fit_proxy(reward, seed, train, base, out)
    else:
        reward_fn = CallableReward(REWARDS[reward], reward)
    t0 = time.perf_counter()
    res = train_policy(
        cfg,
        optimizer=args.optimizer,
        policy=base,
        prompts=train,
        reward_fn=reward_fn,
        out_dir=out,
        progress=False,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    train_seconds = time.perf_counter() - t0
    tok = load_tokenizer(base)
    judge = JUDGE[reward]
    ps = [p for p in test for _ in range(args.samples)]
    curve = {}
    t0 = time.perf_counter()
    for e in res.evaluations:
        step = int(e["step"])
        if step == 0:  # the start policy: a LoRA adapter with B = 0 adds nothing
            state = {
                k: torch.zeros_like(v) if "lora_B" in k else v
                for k, v in trainable_state(res.actor).items()
            }
        else:
            path = checkpoint_dir(out) / f"step-{step}" / "state.pt"
            state = torch.load(path, weights_only=False)["actor"]
        load_trainable_state(res.actor, state)
        texts = sample_texts(res.actor, tok, test, args.samples, 1000)
        scores = judge(ps, texts)
        curve[step] = {
            "oracle": statistics.mean(scores),
            "oracle_se": statistics.stdev(scores) / math.sqrt(len(scores)),
            "proxy": float(reward_fn(ps, texts).float().mean()),  # the reward, on test prompts
            "example": texts[0][:160],
        }
        print(f"  step {step:3d}: oracle {curve[step]['oracle']:.3f}", file=sys.stderr, flush=True)
    shutil.rmtree(out)
    return {
        "reward": reward,
        "seed": seed,
        "optimizer": args.optimizer,
        "steps": args.steps,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "train_seconds": train_seconds,
        "sample_seconds": time.perf_counter() - t0,
        "proxy": proxy_info,
        "evaluations": res.evaluations,
        "curve": {str(k): v for k, v in curve.items()},
        "kl_per_step": [h["objective/kl"] for h in res.history],
    }


# ---- the rules, replayed on a run's evaluations ------------------------------------------------
def rule_none(evals):
    return evals[-1]["step"], evals[-1]["step"]


def rule_old(evals, patience=3, min_delta=0.5):
    """The rule before issue 22: a new best needs a rise of min_delta standard errors; stop after
    `patience` evaluations without one; keep the best."""
    best = best_step = None
    since = 0
    for e in evals:
        s, se = e["eval/scores"], e["eval/score_se"]
        if best is None or s > best + min_delta * se:
            best, best_step, since = s, e["step"], 0
        else:
            since += 1
        if since >= patience:
            return e["step"], best_step
    return evals[-1]["step"], best_step


def rule_guarded(evals, kl_budget=0.0):
    """Issue 22's rule as the scaffold runs it (`ppo.core.EarlyStopping`, its defaults), with a
    KL budget when `kl_budget` > 0."""
    from rankloop.ppo.config import PPOConfig
    from rankloop.ppo.core import EarlyStopping

    d = PPOConfig()
    stop = EarlyStopping(d.early_stop_patience, d.early_stop_drop, kl_budget)
    for e in evals:
        stop.update(e["eval/scores"], e["eval/score_se"], e["step"], kl=e["eval/kl"])
        if stop.should_stop:
            break
    return e["step"], stop.kept_step(e["step"], keep="guarded")


def rule_budget(evals):
    """Today's defaults: the guarded rule and the KL budget."""
    from rankloop.ppo.config import PPOConfig

    return rule_guarded(evals, kl_budget=PPOConfig().kl_budget)


RULES = {"none": rule_none, "old": rule_old, "guarded": rule_guarded, "budget": rule_budget}


def table(rows: list[dict]) -> str:
    """Each run's curve and what each rule makes of it, then the mean gains per (reward,
    optimiser): the optimisers' rows differ by their runs, the rules' by their decision."""
    lines = [
        (
            "| reward | optimiser | seed | oracle (judge) at steps 0, 5, 10, ... | none | old "
            "| guarded | budget |"
        ),
        "| --- | --- | ---: | --- | --- | --- | --- | --- |",
    ]
    gains: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        opt = r.get("optimizer", "ppo")
        curve = {int(k): v["oracle"] for k, v in r["curve"].items()}
        start = curve[0]
        cells = []
        for name, rule in RULES.items():
            stopped, kept = rule(r["evaluations"])
            gain = curve[int(kept)] - start
            gains.setdefault((r["reward"], opt, name), []).append(gain)
            cells.append(f"stop {int(stopped)}, keep {int(kept)}: {gain:+.3f}")
        pts = ", ".join(f"{curve[k]:.3f}" for k in sorted(curve))
        lines.append(f"| {r['reward']} | {opt} | {r['seed']} | {pts} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "| reward | optimiser | runs | mean gain: none | old | guarded | budget "
        "| budget's cost vs none |"
    )
    lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for reward, opt in sorted({(k[0], k[1]) for k in gains}):
        g = {name: statistics.mean(gains[(reward, opt, name)]) for name in RULES}
        n = len(gains[(reward, opt, "none")])
        cost = (g["none"] - g["budget"]) / g["none"] if g["none"] > 0 else float("nan")
        lines.append(
            f"| {reward} | {opt} | {n} | {g['none']:+.3f} | {g['old']:+.3f} | "
            f"{g['guarded']:+.3f} | {g['budget']:+.3f} | {cost:.0%} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """The over-optimisation figure: the oracle's and the proxy's score of fresh samples along
    each run, one line per reward, as one SVG (the report's line charts)."""
    from rankloop.app.report import line_chart

    charts = []
    for what, title in (
        ("oracle", "oracle (the truth)"),
        ("proxy", "proxy (the reward optimised)"),
    ):
        series = []
        for r in rows:
            steps = sorted(int(k) for k in r["curve"])
            ys = [r["curve"][str(k)][what] for k in steps]
            series.append((f"{r['reward']} seed {r['seed']}", steps, ys))
        charts.append(line_chart(title, series, x_label="PPO step", width=380, height=240))
    style = (
        "<style>.rl-axis{stroke:#444}.rl-grid{stroke:#ddd}text{font:11px sans-serif}"
        ".rl-plot-title{font-weight:bold}</style>"
    )
    body = "".join(c.replace("<svg ", f'<svg x="{380 * i}" ', 1) for i, c in enumerate(charts))
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="760" height="240" '
        f'viewBox="0 0 760 240">{style}{body}</svg>\n'
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rewards", default="oracle,weak")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--optimizer", default="ppo")
    ap.add_argument("--out", default=str(HERE / "results" / "stopping-rules.jsonl"))
    ap.add_argument("--table", nargs="*", help="print the table of these result files")
    ap.add_argument("--plot", type=Path, help="with --table: draw their curves into this SVG")
    args = ap.parse_args()
    if args.table is not None:
        from rankloop.data.io import read_jsonl

        rows = [row for f in (args.table or [args.out]) for _, row in read_jsonl(Path(f))]
        print(table(rows))
        if args.plot:
            plot(rows, args.plot)
        return
    import torch

    torch.set_num_threads(2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for reward in args.rewards.split(","):
            row = one_run(reward, seed, args)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(table([row]), flush=True)


if __name__ == "__main__":
    main()
