"""PPO step time and peak memory: rankloop's PPO loop vs the classic TRL PPOTrainer, side by side.

Setting (issue 5): SmolLM2-135M-Instruct policy, 8 prompts per batch, 32 new tokens, 4 PPO
epochs, mini-batch 4, the same bundled prompts, and the same reward model for both: a
SmolLM2-135M sequence classifier (the policy's backbone with a seeded random score head), built
once under bench/results/. Each system runs in its own process (peak RSS = that process's
ru_maxrss, model loading included), all started together and run in lockstep
(bench/lockstep.py): the driver lets one process run one PPO step at a time, in turn (anchor
step 1, rankloop step 1, anchor step 2, ...), so the machine's drift hits both systems alike.
Times are medians over the timed steps (the first step of each process, which also loads the
models, is a warm-up and not counted); the speed-up is also given per round (anchor step r /
rankloop step r) with its range.

  anchor   : trl==0.11.4 PPOTrainer (`step(queries, responses, rewards)`), transformers 4.46.3,
             full fine-tuning fp32, value head on the policy, a second full reference copy. It
             lives in bench/.venv-trl011, which this script creates (`--setup`; torch 2.13.0
             first, then trl, transformers and `rich`, which trl 0.11.4 needs but does not
             declare). It is never a rankloop dependency.
  rankloop : `rankloop.ppo.train.train_ppo` with its defaults: LoRA policy (reference = adapter
             disabled), separate LoRA critic initialised from the reward model, bf16 weights and
             autocast where the CPU has bf16 units.

Trap: transformers 4.46 does not read the `rope_parameters` of a checkpoint written by
transformers 5 and silently falls back to rope_theta = 10000 (SmolLM2 uses 100000). The anchor
sets it back, and before timing anything both stacks compute logits on the same input and the
run stops if they disagree.

  baseline : (`--baseline DIR`) the same rankloop worker run on an older rankloop tree (made with
             `git archive REV | tar -x -C DIR`), imported through a shim package on PYTHONPATH,
             as one more system in the same lockstep: a refactor's before and after, timed
             alike.

The rankloop systems time the training loop only: `eval_every = 0`, so the held-out evaluations
(which an older tree does not have) are not in the step times.

Usage:  flock /tmp/rankloop-cpu.lock python bench/ppo.py [--steps 3] [--setup]
        [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lockstep import Turns, run_lockstep

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
VENV = HERE / ".venv-trl011"
VENV_PY = VENV / "bin" / "python"
BATCH, NEW_TOKENS, EPOCHS, MINI = 8, 32, 4, 4
CHECK_TEXT = "The quick brown fox jumps over the lazy dog. Explain PPO in one sentence."


def setup_venv() -> None:
    """The anchor's own environment: torch first (pinned, CPU wheel), then trl 0.11.4."""
    if (
        VENV_PY.exists()
        and subprocess.run(
            [VENV_PY, "-c", "import trl, rich"], check=False, capture_output=True
        ).returncode
        == 0
    ):
        return
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    pip = [VENV_PY, "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["trl==0.11.4", "transformers==4.46.3", "rich"], check=True)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB


def prompts_texts(n: int) -> list[str]:
    rows = [
        json.loads(line)
        for line in (HERE.parent / "data/prompts/default.jsonl").read_text().splitlines()
        if line.strip()
    ]
    return [r["prompt"] for r in rows][:n]


# ---------------------------------------------------------------- rankloop side (main venv)
def build_reward_model(policy_dir: str, out: Path) -> Path:
    """SmolLM2-135M with a seeded random one-output score head: both systems score with it."""
    import torch

    from rankloop.reward.model import load_backbone, load_reward_tokenizer

    if (out / "reward_stats.json").exists():
        return out
    tok = load_reward_tokenizer(policy_dir)
    torch.manual_seed(0)
    load_backbone(policy_dir, tok).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "reward_stats.json").write_text(json.dumps({"mean": 0.0, "std": 1.0}))
    return out


def worker_rankloop(args) -> dict:
    import torch

    from rankloop.data.records import Prompt
    from rankloop.lm.loading import default_model_path
    from rankloop.ppo.config import PPOConfig
    from rankloop.ppo.reward_fns import ScorerReward
    from rankloop.ppo.train import train_ppo

    torch.set_num_threads(args.threads)
    policy = str(default_model_path())
    rm = str(RESULTS / "rm-smollm2")
    extra = {"eval_every": 0} if "eval_every" in PPOConfig.__dataclass_fields__ else {}
    cfg = PPOConfig(
        steps=args.steps + 1,
        batch_size=BATCH,
        mini_batch_size=MINI,
        ppo_epochs=EPOCHS,
        max_new_tokens=NEW_TOKENS,
        log_samples=0,
        critic=args.critic,
        critic_lora_layers=args.critic_lora_layers,
        lora_layers=int(args.lora_layers),
        **extra,
    )
    prompts = [Prompt.from_text(t) for t in prompts_texts(BATCH * (args.steps + 1))]
    turns = Turns()
    turns.wait()
    t0 = time.perf_counter()
    res = train_ppo(
        cfg,
        policy=policy,
        prompts=prompts,
        reward_fn=ScorerReward(path=rm),
        out_dir=RESULTS / f"ppo-rankloop-lora{args.lora_layers}{args.tag}",
        reward_model=rm,
        progress=False,
        log=None,
        on_step=turns.step,
    )
    steps = res.history[1:]  # the first step warms up (allocator, kernels)
    mean = lambda k: statistics.median(h[k] for h in steps)
    name = f"rankloop (critic={args.critic}"
    name += f", critic LoRA on {args.critic_lora_layers or 'all'} blocks"
    name += f", policy LoRA on {args.lora_layers if int(args.lora_layers) else 'all'} blocks)"
    if args.tag:
        name += f" [{args.tag.strip('-')}]"
    return {
        "system": name,
        "step_s": mean("time/step"),
        "generation_s": mean("time/rollout"),
        "scoring_s": mean("time/score"),
        "reference_s": mean("time/reference"),
        "update_s": mean("time/update"),
        "peak_rss_gb": peak_rss_gb(),
        "wall_s": time.perf_counter() - t0,
        "response_length": mean("objective/response_length"),
        "bf16": cfg.bf16,
        "critic_origin": res.critic_origin,
        "per_step_s": [h["time/step"] for h in res.history],
    }


def logits_rankloop(args) -> dict:
    import torch

    from rankloop.lm.loading import default_model_path, load_causal_lm, load_tokenizer

    path = default_model_path()
    tok = load_tokenizer(str(path))
    ids = tok(CHECK_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = load_causal_lm(str(path))(ids).logits[0]
    return {"ids": ids[0].tolist(), "logits": logits[-5:].tolist()}


# ---------------------------------------------------------------- anchor side (trl venv)
def load_anchor_config(path: str, cls_name: str):
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    raw = json.loads((Path(path) / "config.json").read_text())
    theta = (raw.get("rope_parameters") or {}).get("rope_theta") or raw.get("rope_theta")
    if theta:
        config.rope_theta = float(theta)  # 4.46 ignores rope_parameters: set it back
    if cls_name == "seq":
        config.num_labels = 1
    return config


def load_anchor_tokenizer(path: str):
    """transformers 4.46 cannot read a tokenizer_config written by transformers 5 (class
    'TokenizersBackend'): build the fast tokenizer from tokenizer.json and the saved settings."""
    from transformers import PreTrainedTokenizerFast

    cfg = json.loads((Path(path) / "tokenizer_config.json").read_text())
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(Path(path) / "tokenizer.json"),
        **{k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if k in cfg},
    )
    template = Path(path) / "chat_template.jinja"
    tok.chat_template = template.read_text() if template.exists() else cfg.get("chat_template")
    tok.padding_side = "left"
    return tok


def logits_anchor(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    path = args.policy
    model = AutoModelForCausalLM.from_pretrained(path, config=load_anchor_config(path, "lm"))
    ids = torch.tensor([args.ids])
    with torch.no_grad():
        logits = model(ids).logits[0]
    return {"logits": logits[-5:].tolist()}


def worker_trl(args) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    turns = Turns()
    turns.wait()
    path, rm_path = args.policy, str(RESULTS / "rm-smollm2")
    tok = load_anchor_tokenizer(path)
    lm_cfg = load_anchor_config(path, "lm")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(path, config=lm_cfg)
    ref = AutoModelForCausalLMWithValueHead.from_pretrained(path, config=lm_cfg)
    rm = AutoModelForSequenceClassification.from_pretrained(
        rm_path, config=load_anchor_config(rm_path, "seq")
    ).eval()
    config = PPOConfig(
        batch_size=BATCH,
        mini_batch_size=MINI,
        ppo_epochs=EPOCHS,
        gradient_accumulation_steps=1,
        learning_rate=1.41e-5,
        seed=0,
    )
    trainer = PPOTrainer(config, model, ref, tok)
    texts = prompts_texts(BATCH * (args.steps + 1))
    queries = [
        torch.tensor(
            tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True)
        )
        for t in texts
    ]
    gen = {
        "do_sample": True,
        "top_k": 0,
        "top_p": 1.0,
        "max_new_tokens": NEW_TOKENS,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    rows = []
    t_start = time.perf_counter()
    for step in range(args.steps + 1):
        q = queries[step * BATCH : (step + 1) * BATCH]
        t0 = time.perf_counter()
        responses = trainer.generate(q, return_prompt=False, batch_size=BATCH, **gen)
        t_gen = time.perf_counter() - t0
        print(f"anchor step {step}: generated in {t_gen:.1f} s", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        with torch.no_grad():  # score decoded text with the reward model, as rankloop does
            batch = [
                tok.apply_chat_template(
                    [
                        {"role": "user", "content": t},
                        {"role": "assistant", "content": tok.decode(r, skip_special_tokens=True)},
                    ],
                    tokenize=False,
                )
                for t, r in zip(texts[step * BATCH :], responses)
            ]
            tok.padding_side = "right"
            enc = tok(batch, return_tensors="pt", padding=True, return_token_type_ids=False)
            tok.padding_side = "left"
            scores = rm(**enc).logits[:, 0]
        t_score = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats = trainer.step(q, responses, [s for s in scores])
        t_step = time.perf_counter() - t0
        print(
            f"anchor step {step}: generation {t_gen:.1f} s, scoring {t_score:.1f} s, "
            f"ppo step {t_step:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        rows.append(
            {
                "generation_s": t_gen,
                "scoring_s": t_score,
                "reference_s": float(stats["time/ppo/forward_pass"]),
                "update_s": float(stats["time/ppo/optimize_step"]),
                "ppo_step_s": t_step,
                "step_s": t_gen + t_score + t_step,
                "response_length": sum(len(r) for r in responses) / len(responses),
            }
        )
        turns.step()
    per_step = [r["step_s"] for r in rows]
    rows = rows[1:]
    mean = lambda k: statistics.median(r[k] for r in rows)
    return {
        "system": "TRL 0.11.4 PPOTrainer (anchor)",
        "step_s": mean("step_s"),
        "generation_s": mean("generation_s"),
        "scoring_s": mean("scoring_s"),
        "reference_s": mean("reference_s"),
        "update_s": mean("update_s"),
        "other_s": mean("ppo_step_s") - mean("reference_s") - mean("update_s"),
        "peak_rss_gb": peak_rss_gb(),
        "wall_s": time.perf_counter() - t_start,
        "response_length": mean("response_length"),
        "per_step_s": per_step,
    }


# ---------------------------------------------------------------- driver
ENV = dict(os.environ, PYTHONPATH="", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")


def worker_cmd(python, worker: str, args, extra=(), tag: str = "") -> tuple[list, Path]:
    out = RESULTS / f"ppo-{worker}{tag}.json"
    cmd = [
        str(python),
        __file__,
        "--worker",
        worker,
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--critic",
        args.critic,
        "--critic-lora-layers",
        str(args.critic_lora_layers),
        "--out",
        str(out),
        *extra,
    ]
    return cmd, out


def baseline_shim(tree: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes `rankloop` import from an older source tree: a
    package whose subpackages link to the tree's folders (found before the editable install's
    finder, which sits at the end of sys.meta_path)."""
    shim = RESULTS / "baseline-shim"
    pkg = shim / "rankloop"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").touch()
    for name in ("app", "data", "lm", "ppo", "reward", "settings"):
        link = pkg / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(tree).resolve() / name, target_is_directory=True)
    return shim


def call(python, worker: str, args, extra=()) -> dict:
    cmd, out = worker_cmd(python, worker, args, extra)
    subprocess.run(cmd, check=True, env=ENV)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--critic", default="reward", choices=["reward", "policy"])
    ap.add_argument(
        "--critic-lora-layers",
        type=int,
        default=4,
        help="[ppo] critic_lora_layers (rankloop's default: 4; 0 = all blocks)",
    )
    ap.add_argument(
        "--lora-layers",
        default="0,8",
        help="[ppo] lora_layers values to run (0 = rankloop's default, all blocks)",
    )
    ap.add_argument("--setup", action="store_true", help="only create the anchor's venv")
    ap.add_argument("--skip-anchor", action="store_true")
    ap.add_argument("--worker", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--baseline",
        default=None,
        help="an older rankloop source tree to time alongside (see the docstring)",
    )
    ap.add_argument("--tag", default="", help=argparse.SUPPRESS)
    ap.add_argument("--policy", default=None)
    ap.add_argument("--ids", default=None)
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.worker:
        if args.ids:
            args.ids = json.loads(args.ids)
        fn = {
            "rankloop": worker_rankloop,
            "trl": worker_trl,
            "logits-rankloop": logits_rankloop,
            "logits-trl": logits_anchor,
        }[args.worker]
        Path(args.out).write_text(json.dumps(fn(args)))
        return
    setup_venv()
    if args.setup:
        return
    from rankloop.lm.loading import default_model_path

    policy = str(default_model_path())
    build_reward_model(policy, RESULTS / "rm-smollm2")
    # 0. the two stacks must compute the same function before any timing means anything
    ours = call(sys.executable, "logits-rankloop", args)
    theirs = call(
        VENV_PY, "logits-trl", args, ["--policy", policy, "--ids", json.dumps(ours["ids"])]
    )
    diff = max(
        abs(a - b) for ra, rb in zip(ours["logits"], theirs["logits"]) for a, b in zip(ra, rb)
    )
    print(f"logits check: max |rankloop - anchor| = {diff:.2e}")
    if diff > 1e-3:
        sys.exit(f"the two stacks disagree on the logits ({diff:.3g}): fix the anchor's config")
    jobs = [] if args.skip_anchor else [worker_cmd(VENV_PY, "trl", args, ["--policy", policy])]
    for layers in str(args.lora_layers).split(","):
        jobs.append(
            worker_cmd(
                sys.executable, "rankloop", args, ["--lora-layers", layers], tag=f"-lora{layers}"
            )
        )
    if args.baseline:
        layers = str(args.lora_layers).split(",")[0]
        cmd, out = worker_cmd(
            sys.executable,
            "rankloop",
            args,
            ["--lora-layers", layers, "--tag=-baseline"],
            tag=f"-lora{layers}-baseline",
        )
        jobs.append((["env", f"PYTHONPATH={baseline_shim(Path(args.baseline))}", *cmd], out))
    run_lockstep([cmd for cmd, _ in jobs], ENV)
    results = [json.loads(out.read_text()) for _, out in jobs]
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "steps_timed": args.steps,
        "threads": args.threads,
        "logits_max_abs_diff": diff,
        "results": results,
    }
    if not args.skip_anchor:
        a = results[0]
        for r in results[1:]:
            r["speedup_vs_anchor"] = a["step_s"] / r["step_s"]
            rounds = [x / y for x, y in zip(a["per_step_s"][1:], r["per_step_s"][1:])]
            r["speedup_per_round"] = rounds
            r["memory_vs_anchor"] = r["peak_rss_gb"] / a["peak_rss_gb"]
    if args.baseline:  # the first rankloop system against the same one on the older tree
        new, old = results[0 if args.skip_anchor else 1], results[-1]
        report["vs_baseline"] = {
            "baseline": str(args.baseline),
            "step_time_ratio": new["step_s"] / old["step_s"],
            "per_round": [x / y for x, y in zip(new["per_step_s"][1:], old["per_step_s"][1:])],
            "peak_rss_ratio": new["peak_rss_gb"] / old["peak_rss_gb"],
        }
    (RESULTS / "ppo.json").write_text(json.dumps(report, indent=1) + "\n")
    cols = (
        "step_s",
        "generation_s",
        "scoring_s",
        "reference_s",
        "update_s",
        "peak_rss_gb",
        "response_length",
    )
    print(f"{'system':40s} " + " ".join(f"{c:>14s}" for c in cols))
    for row in results:
        print(f"{row['system']:40s} " + " ".join(f"{row.get(c, float('nan')):14.2f}" for c in cols))
    for r in results[1:]:
        if "speedup_vs_anchor" in r:
            rounds = r["speedup_per_round"]
            print(
                f"{r['system']}: {r['speedup_vs_anchor']:.2f}x faster per step (per round: "
                f"{min(rounds):.2f}x to {max(rounds):.2f}x), peak memory "
                f"{r['memory_vs_anchor']:.2f}x the anchor's"
            )
    if "vs_baseline" in report:
        v = report["vs_baseline"]
        print(
            f"this tree vs the baseline tree: step time {v['step_time_ratio']:.3f}x (per round "
            f"{', '.join(f'{x:.2f}' for x in v['per_round'])}), peak memory "
            f"{v['peak_rss_ratio']:.3f}x"
        )


if __name__ == "__main__":
    main()
