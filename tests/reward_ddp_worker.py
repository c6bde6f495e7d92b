"""Run by tests/test_reward_ddp.py: the reward trainer on the tests' keyword task, either under
`accelerate launch` (2 processes over gloo, batch B each) or alone (1 process, gradient
accumulation over the same 2 batches of B: twice the batch per optimizer step)."""

import json
import sys
from pathlib import Path

import torch

from rankloop.reward.config import RewardConfig
from rankloop.reward.pairs import pairwise_example
from rankloop.reward.scoring import RewardScorer
from rankloop.reward.train import train_reward

from simulate import simulate_pairs


def main(base: str, out: str, grad_accum: int) -> None:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True, gradient_accumulation_steps=grad_accum)
    pairs = [
        pairwise_example(p, a, b) if win else pairwise_example(p, b, a)
        for p, a, b, win, _ in simulate_pairs(64, seed=11)
    ]
    cfg = RewardConfig(
        lora=False,
        lr=2e-3,
        epochs=2,
        batch_size=4,
        grad_accum=grad_accum,
        eval_fraction=0.25,
        bf16="no",
        compile="no",
        warmup_ratio=0.0,
        warm_start=False,
        select_best=False,
    )
    rows = []
    result = train_reward(
        pairs,
        cfg,
        Path(out) / "rm",
        base=base,
        progress=False,
        accelerator=acc,
        on_step=lambda row: rows.append(row),
    )
    scores = None
    if acc.is_main_process:  # the saved model, scored on fixed texts
        scorer = RewardScorer.from_pretrained(result.path, device="cpu", bf16="no")
        scores = scorer.score(["q"] * 4, ["good fox", "sea wind", "good", "lazy dog"]).tolist()
    Path(out, f"rank-{acc.process_index}.json").write_text(
        json.dumps(
            {
                "world": acc.num_processes,
                "losses": [r["reward/loss"] for r in rows],
                "steps": result.steps,
                "scores": scores,
                "accuracy": result.metrics["reward/accuracy"],
            }
        )
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
