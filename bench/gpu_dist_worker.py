"""Run by bench/gpu_check.py under `accelerate launch --config_file docs/accelerate/X.yaml`:
reward training and PPO for a few steps under that configuration, a PPO run resumed from its
checkpoint, and (on the main process) the saved models loaded back with `from_pretrained`.
Writes OUT/result.json: what ran, the seconds each took, or the error that stopped it."""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import torch


def main(model: str, out: str) -> None:
    from rankloop.app.oracles import tidy
    from rankloop.data.records import Prompt
    from rankloop.lm.device import new_accelerator
    from rankloop.lm.loading import load_causal_lm
    from rankloop.ppo.config import PPOConfig
    from rankloop.ppo.train import train_ppo
    from rankloop.reward.config import RewardConfig
    from rankloop.reward.pairs import pairwise_example
    from rankloop.reward.scoring import RewardScorer
    from rankloop.reward.train import train_reward

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from simulate import simulate_pairs

    out = Path(out)
    acc = new_accelerator()  # as the trainers build theirs
    result = {"world": acc.num_processes, "distributed_type": str(acc.distributed_type)}

    def stage(name, fn):
        t0 = time.perf_counter()
        try:
            fn()
            result[name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # noqa: BLE001 - the report says what broke; the other stages still run
            result[name] = {
                "ok": False,
                "error": f"{type(e).__name__}: {e}"[:2000],
                "trace": traceback.format_exc()[-3000:],
            }

    pairs = [
        pairwise_example(p, a, b) if win else pairwise_example(p, b, a)
        for p, a, b, win, _ in simulate_pairs(64, seed=3)
    ]
    rcfg = RewardConfig(
        lora=True,
        epochs=1,
        batch_size=4,
        eval_fraction=0.25,
        compile="no",
        warm_start=False,
        select_best=False,
    )
    stage(
        "reward_train",
        lambda: train_reward(pairs, rcfg, out / "rm", base=model, progress=False, accelerator=acc),
    )
    if acc.is_main_process:
        stage(
            "reward_load",
            lambda: RewardScorer.from_pretrained(out / "rm", device="cpu").score(["q"], ["a"]),
        )
    acc.wait_for_everyone()

    prompts = [
        Prompt.from_text(t)
        for t in (
            "hello",
            "write a poem",
            "explain gears",
            "yes",
            "name a colour",
            "count to three",
            "why",
            "sky",
        )
    ]
    pcfg = {
        "batch_size": 4,
        "mini_batch_size": 2,
        "ppo_epochs": 1,
        "max_new_tokens": 8,
        "log_samples": 0,
        "eval_every": 0,
        "checkpoint_every": 1,
    }  # the default critic: the reward model's

    def reward(ps, rs):
        return torch.tensor(tidy(ps, rs))

    def ppo(steps, resume):
        train_ppo(
            PPOConfig(steps=steps, **pcfg),
            policy=model,
            prompts=prompts,
            reward_fn=reward,
            reward_model=str(out / "rm"),
            out_dir=out / "policy",
            resume=resume,
            progress=False,
            log=None,
            accelerator=new_accelerator(),
        )

    stage("ppo_train", lambda: ppo(2, False))
    stage("ppo_resume", lambda: ppo(3, True))
    if acc.is_main_process:
        stage("ppo_load", lambda: load_causal_lm(str(out / "policy")))
        (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
