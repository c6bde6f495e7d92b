"""Run by tests/test_ppo_ddp.py under `accelerate launch --cpu --num_processes 2`."""

import json
import sys
from pathlib import Path

import torch

from rankloop.data.records import Prompt
from rankloop.ppo.config import PPOConfig
from rankloop.ppo.train import train_bon, train_online_dpo, train_ppo, train_rloo


def main(policy: str, out: str, optimizer: str = "ppo") -> None:
    from accelerate import PartialState

    prompts = [Prompt.from_text(t) for t in ("hello", "write a poem", "explain gears", "yes")]
    # one step of value pretraining first: the policy sits out of that step's loss, which
    # DDP must be told about (find_unused_parameters), or it waits for its gradients
    cfg = PPOConfig(
        steps=2,
        batch_size=2,
        mini_batch_size=1,
        ppo_epochs=1,
        max_new_tokens=4,
        log_samples=0,
        bf16="no",
        lr=1e-2,
        value_pretrain_steps=1,
    )

    def reward(ps, rs):
        return torch.tensor([float(len(r)) / 10 for r in rs])

    train = train_ppo
    if optimizer == "bon":
        # process 0's samples all score alike (no KL term to tell them apart), so it keeps
        # none and must still run as many mini-batches as process 1, which keeps some
        cfg.value_pretrain_steps, cfg.bon_n, cfg.bon_margin, train = 0, 2, 0.0, train_bon
        cfg.kl_coef, cfg.kl_target = 0.0, 0.0

        def reward(ps, rs):
            rank = PartialState().process_index  # the trainer's accelerator set it up
            return torch.tensor([float(len(r)) / 10 * rank for r in rs])

    preferences = []
    if optimizer == "rloo":
        cfg.value_pretrain_steps, cfg.rloo_k, train = 0, 2, train_rloo
    if optimizer == "odpo":
        # process 0's samples all tie, so it keeps no reward-model pair; both processes take
        # labelled pairs, and the mini-batches run the same on both (a reduced count)
        cfg.value_pretrain_steps, cfg.odpo_k, cfg.odpo_margin = 0, 2, 0.0
        cfg.odpo_label_pairs, train = 1, train_online_dpo

        def reward(ps, rs):
            rank = PartialState().process_index
            return torch.tensor([float(len(r)) / 10 * rank for r in rs])

        from test_online_dpo import label_pairs  # this script runs from tests/

        preferences = label_pairs("yes ", n=2)  # 2 pairs and a tie, which DPO leaves out

    # no accelerator passed: the trainer builds its own, as `rankloop ppo` under
    # `accelerate launch --config_file docs/accelerate/cpu-ddp.yaml` does
    res = train(
        cfg,
        policy=policy,
        prompts=prompts,
        reward_fn=reward,
        out_dir=Path(out),
        progress=False,
        log=None,
        preferences=preferences,
    )
    acc = PartialState()
    state = {
        n: p.detach().double().sum().item()
        for module in (res.actor, res.critic)
        if module is not None
        for n, p in module.named_parameters()
        if p.requires_grad
    }
    Path(out, f"rank-{acc.process_index}.json").write_text(
        json.dumps({"world": acc.num_processes, "params": state, "history": res.history})
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
