"""`train_dpo`: a DPO LoRA adapter trained on the project's preferences, for RTO's token rewards.

RTO (Zhong et al. 2024, "DPO Meets PPO: Reinforced Token Optimization for RLHF") turns a DPO
model into a dense reward: r_t = beta * log(pi_dpo(a_t|s_t) / pi_ref(a_t|s_t)). The DPO model is
trained here with `core.dpo_loss` (Rafailov et al. 2023); the reference is the base weights with
the adapter disabled, the same base PPO uses, so PPO can load this adapter next to its own.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rankloop.lm.device import autocast, use_bf16, weights_dtype
from rankloop.lm.kernels import keep_adapter_inputs_in_autocast_dtype
from rankloop.lm.loading import adapter_base, load_tokenizer
from rankloop.lm.sampling import encode_chats
from rankloop.lm.seeds import seed_everything

from . import core
from .actor_critic import Actor, load_policy, save_policy
from .config import DPOConfig


def response_logps(
    actor: Actor,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
) -> torch.Tensor:
    """Summed log-prob of each response given its prompt (B,). Right padding."""
    seqs = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, L)
    att = torch.zeros_like(ids)  # (B, L)
    resp = torch.zeros_like(ids, dtype=torch.bool)  # (B, L) response tokens
    for i, (p, s) in enumerate(zip(prompt_ids, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        resp[i, len(p) : len(s)] = True
    device = next(actor.parameters()).device
    ids, att, resp = ids.to(device), att.to(device), resp.to(device)
    logits, _ = actor(ids, att)  # (B, L, V)
    logps = core.logprobs_from_logits(logits[:, :-1].float(), ids[:, 1:])  # (B, L-1)
    return torch.where(resp[:, 1:], logps, torch.zeros_like(logps)).sum(-1)  # (B,)


def train_dpo(
    config: DPOConfig,
    *,
    policy: str,
    preferences: Sequence,
    out_dir: Path,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Train a DPO adapter on `preferences` (records with .prompt, .chosen, .rejected, .tie);
    ties are skipped (DPO has no tie outcome). Saves the adapter to `out_dir`; returns the
    final metrics (`dpo/loss`, `dpo/accuracy`, `dpo/margin`, ...)."""
    config.validate()
    pairs = [p for p in preferences if not p.tie]
    if not pairs:
        raise ValueError("no untied preference pairs to train DPO on: label some comparisons")
    base = adapter_base(policy) or policy  # same base weights as PPO's reference
    tokenizer = load_tokenizer(base, padding_side="right")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = use_bf16(config.bf16, device)
    seed_everything(config.seed)
    lm = load_policy(
        base,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=0.0,
        dtype=weights_dtype(bf16),
        top_layers=config.lora_layers,
    )
    actor = Actor(lm, value_head=False).to(device)
    if bf16:
        keep_adapter_inputs_in_autocast_dtype(actor)
    opt = torch.optim.AdamW(
        [p for p in actor.parameters() if p.requires_grad], lr=config.lr, foreach=True
    )
    prompt_ids = encode_chats(tokenizer, [p.prompt.as_chat() for p in pairs])
    eos = [tokenizer.eos_token_id]
    chosen = [tokenizer(p.chosen, add_special_tokens=False)["input_ids"] + eos for p in pairs]
    rejected = [tokenizer(p.rejected, add_special_tokens=False)["input_ids"] + eos for p in pairs]
    order = list(range(len(pairs)))
    rng = random.Random(config.seed)
    bs = config.batch_size
    steps = config.epochs * ((len(pairs) + bs - 1) // bs)
    bar = tqdm(total=steps, desc="dpo", unit="step", disable=not progress)
    history = []
    for _epoch in range(config.epochs):
        rng.shuffle(order)
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            p_ids = [prompt_ids[i] for i in idx] * 2
            r_ids = [chosen[i] for i in idx] + [rejected[i] for i in idx]
            with autocast(device, bf16):
                with torch.no_grad(), lm.disable_adapter():
                    ref = response_logps(actor, p_ids, r_ids, tokenizer.pad_token_id)  # (2b,)
                pol = response_logps(actor, p_ids, r_ids, tokenizer.pad_token_id)  # (2b,)
                n = len(idx)
                loss, stats = core.dpo_loss(
                    pol[:n], pol[n:], ref[:n], ref[n:], config.beta, config.label_smoothing
                )
            loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(actor.parameters(), config.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            history.append({k: float(v) for k, v in stats.items()})
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]['dpo/loss']:.3f}")
    bar.close()
    tokenizer.padding_side = "left"
    save_policy(actor, tokenizer, out_dir, merge=False)
    tail = history[-max(1, len(history) // 4) :]
    metrics = {k: sum(h[k] for h in tail) / len(tail) for k in tail[0]}
    metrics["dpo/pairs"] = float(len(pairs))
    (Path(out_dir) / "dpo_history.json").write_text(json.dumps(history, indent=1) + "\n")
    from rankloop.lm.cards import write_policy_card

    write_policy_card(
        out_dir,
        base=base,
        config=dict(vars(config)),
        summary=metrics,
        trained_on={"preference pairs (ties left out)": len(pairs)},
        optimizer="DPO",
    )
    if log:
        log(
            f"DPO: {len(pairs)} pairs, {steps} steps, final loss {metrics['dpo/loss']:.4f}, "
            f"accuracy {metrics['dpo/accuracy']:.3f}"
        )
    return metrics
