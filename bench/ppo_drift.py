"""Does a round bound the policy's drift when its reward is weak? Old PPO defaults vs new.

Issue 14: with a weak reward model, `rankloop ppo --steps 30` left the reward model's score flat
while the KL to the reference grew to 7.1 nats and an outside oracle's score of the new samples
fell. Here the same situation is built without people, on the default model (SmolLM2-135M-
Instruct) and the bundled prompts:

  oracle : what the annotators would want, measured on the text: half for ending on its own
           (the last character closes a sentence), half for not repeating itself (share of
           distinct word trigrams).
  weak   : a reward that hardly sees the oracle, like a reward model fitted on too few labels:
           0.25 * oracle + a pseudo-random value in [0, 1) fixed per text (a hash).

Each system trains PPO for `--steps` steps on the first 60 bundled prompts (the `rankloop ppo`
defaults otherwise), then samples 2 responses to each of the other 24 prompts from the saved
policy at `rankloop generate`'s settings (temperature 0.7, top-p 0.95, 64 new tokens) and scores
them with the oracle; the base policy is scored the same way. Systems: `old` = the defaults
before the drift bounds (fixed KL coefficient 0.05, no evaluation); `new` = today's defaults
(adaptive KL toward kl_target, early stopping on held-out prompts, best policy kept).

Usage:  flock /tmp/rankloop-cpu.lock .venv/bin/python bench/ppo_drift.py [--steps 30]
Results: bench/results/ppo_drift.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace  # sample_texts reads `.lm`

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
N_TRAIN, N_SAMPLES = 60, 2


def oracle(prompts, responses) -> list[float]:
    out = []
    for r in responses:
        words = r.split()
        grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
        distinct = len(set(grams)) / len(grams) if grams else float(bool(words))
        ends = r.rstrip().endswith((".", "!", "?", '"', ")", "*", "`"))
        out.append(0.5 * distinct + 0.5 * float(ends))
    return out


def weak(prompts, responses) -> list[float]:
    noise = [int(hashlib.sha256(r.encode()).hexdigest()[:8], 16) / 2**32 for r in responses]
    return [0.25 * o + n for o, n in zip(oracle(prompts, responses), noise)]


def sample_texts(actor, tok, prompts, n: int, seed: int, with_finished: bool = False):
    """`n` responses per prompt at `rankloop generate`'s settings, the same random numbers for
    every call (so two policies' samples differ by the policy only)."""
    import contextlib

    import torch

    from rankloop.lm.device import autocast, use_bf16
    from rankloop.lm.sampling import sample_many
    from rankloop.ppo.actor_critic import merged_adapter

    chats = [p.as_chat() for p in prompts for _ in range(n)]
    texts, finished = [None] * len(chats), [None] * len(chats)

    def keep(batch, samples, _seed):
        for i, s in zip(batch, samples):
            texts[i], finished[i] = s.text, s.finished

    bf16 = use_bf16("auto", torch.device("cpu"))
    adapter = merged_adapter(actor.lm) if hasattr(actor.lm, "disable_adapter") else None
    with autocast(torch.device("cpu"), bf16), adapter or contextlib.nullcontext():
        # as the policy stage samples: the adapter merged, under autocast
        sample_many(
            actor.lm,
            tok,
            chats,
            temperature=0.7,
            top_p=0.95,
            max_new_tokens=64,
            batch_size=16,
            seed_for=lambda b: seed + b[0],
            bf16=bf16,
            on_batch=keep,
        )
    return (texts, finished) if with_finished else texts


def sample_scores(policy: str, prompts, seed: int = 0) -> dict:
    """Oracle and weak-reward means of N_SAMPLES responses per prompt from `policy`."""
    import torch

    from rankloop.lm.device import use_bf16
    from rankloop.lm.loading import load_causal_lm, load_tokenizer

    bf16 = use_bf16("auto", torch.device("cpu"))
    model = load_causal_lm(policy, dtype=torch.bfloat16 if bf16 else None)
    texts, finished = sample_texts(
        SimpleNamespace(lm=model),
        load_tokenizer(policy),
        prompts,
        N_SAMPLES,
        seed,
        with_finished=True,
    )
    ps = [p for p in prompts for _ in range(N_SAMPLES)]
    return {
        "oracle": statistics.mean(oracle(ps, texts)),
        "weak": statistics.mean(weak(ps, texts)),
        "finished": statistics.mean(map(float, finished)),
        "examples": texts[:3],
    }


def bundle_prompts() -> list:
    """The bundled prompts (data/prompts/default.jsonl) as Prompt records, in file order."""
    from rankloop.data.io import bundled_prompts, read_jsonl
    from rankloop.data.records import Message, Prompt

    return [
        Prompt.from_text(r["prompt"])
        if isinstance(r["prompt"], str)
        else Prompt(messages=tuple(Message(m["role"], m["content"]) for m in r["prompt"]))
        for _, r in read_jsonl(bundled_prompts())
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rewards", default="weak,oracle")
    ap.add_argument("--systems", default="old,new")
    ap.add_argument("--out", default=str(RESULTS / "ppo_drift.json"))
    args = ap.parse_args()
    import torch

    from rankloop.lm.loading import default_model_path
    from rankloop.ppo.config import PPOConfig
    from rankloop.ppo.reward_fns import CallableReward
    from rankloop.ppo.train import train_ppo

    torch.set_num_threads(2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    prompts = bundle_prompts()  # the last ones are conversations
    train, test = prompts[:N_TRAIN], prompts[N_TRAIN:]
    base = str(default_model_path())
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "steps": args.steps,
        "train_prompts": len(train),
        "test_prompts": len(test),
        "runs": [],
    }
    out_file = Path(args.out)
    t0 = time.perf_counter()
    report["base"] = sample_scores(base, test)
    report["base"]["seconds"] = time.perf_counter() - t0
    print(f"base policy: oracle {report['base']['oracle']:.3f}", flush=True)
    systems = {"old": {"kl_target": 0.0, "eval_every": 0}, "new": {}}
    for reward_name in args.rewards.split(","):
        fn = CallableReward({"weak": weak, "oracle": oracle}[reward_name], reward_name)
        for system in args.systems.split(","):
            cfg = PPOConfig(steps=args.steps, log_samples=0, **systems[system])
            out = RESULTS / f"ppo-drift-{reward_name}-{system}"
            t0 = time.perf_counter()
            res = train_ppo(
                cfg,
                policy=base,
                prompts=train,
                reward_fn=fn,
                out_dir=out,
                progress=False,
                log=lambda m: print(m, file=sys.stderr, flush=True),
            )
            seconds = time.perf_counter() - t0
            after = sample_scores(str(out), test)
            s = res.summary
            run = {
                "reward": reward_name,
                "system": system,
                "train_seconds": seconds,
                "after": after,
                "summary": s,
                "evaluations": res.evaluations,
                "kl_coef_per_step": [h["objective/kl_coef"] for h in res.history],
                "score_per_step": [h["objective/scores"] for h in res.history],
            }
            report["runs"].append(run)
            out_file.write_text(json.dumps(report, indent=1) + "\n")
            print(
                f"{reward_name:6s} {system:3s}: oracle {report['base']['oracle']:.3f} -> "
                f"{after['oracle']:.3f}, training reward {s['ppo/score_first']:.3f} -> "
                f"{s['ppo/score_last']:.3f}, KL last step {s['ppo/kl_last']:.2f}, "
                f"saved policy's KL {s['ppo/kl_final']:.2f}, steps {int(s['ppo/steps'])}, "
                f"kept step {int(s['ppo/kept_step'])}, {seconds:.0f} s",
                flush=True,
            )
            shutil.rmtree(out)  # ~40 MB of adapters and checkpoints per run
    print(f"results in {out_file}")


if __name__ == "__main__":
    main()
