"""The PPO loop for RLHF, one function that reads top to bottom.

Each step:
  1. rollout     sample a response to each of `batch_size` prompts (KV cache, stop at EOS)
  2. score       the reward source scores the decoded (prompt, response) texts
  3. reference   log-probs of the policy and of the reference (adapter disabled), values,
                 per-token KL; RTO token rewards from the DPO adapter
  4. advantages  shaped rewards, decoupled GAE, whitening
  5. update      `ppo_epochs` passes over shuffled mini-batches: clipped policy and value losses,
                 entropy bonus, PPO-ptx, global grad-norm clipping, approx-KL early stop
  6. log         fixed metric names, decoded samples, trackers, checkpoint

The math is in `ppo/core.py` (pure, tested functions); the modules in `ppo/actor_critic.py`.
References: Ziegler et al. 2019; Ouyang et al. 2022 (InstructGPT, PPO-ptx); Zheng et al. 2023
(PPO-max); Yuan et al. 2025 (VC-PPO); Zhong et al. 2024 (RTO); Huang et al. 2024 (N+ details).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rankloop.data.records import Prompt, content_hash
from rankloop.lm.device import use_bf16
from rankloop.lm.kernels import keep_adapter_inputs_in_autocast_dtype, release_freed_memory
from rankloop.lm.loading import load_tokenizer
from rankloop.lm.sampling import autocast, encode_chats, left_pad, sampling_kwargs

from . import core
from .actor_critic import (
    Actor,
    build_critic,
    load_policy,
    load_trainable_state,
    merged_adapter,
    save_critic,
    save_policy,
    trainable_state,
)
from .config import PPOConfig
from .reward_fns import missing_eos_penalty

CHECKPOINTS = "checkpoints"


@dataclass
class PPOResult:
    """What a run produced: the saved policy, per-step metrics, and the round summary."""

    policy_path: Path
    history: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)
    critic_origin: str = ""
    actor: object = None
    """The trained actor module (LoRA policy, value head), unwrapped from accelerate."""
    critic: object = None
    """The trained critic module, or None with a value head on the policy."""


def step_seed(seed: int, step: int, rank: int, what: str) -> int:
    """A seed that depends only on (seed, step, process, purpose): a resumed run draws the same
    prompts, samples and mini-batch order as an uninterrupted one."""
    return int(content_hash(seed, step, rank, what)[:8], 16)


def prompts_for_step(n_prompts: int, batch_size: int, step: int, rank: int, world: int,
                     seed: int) -> list[int]:
    """Indices of this process's prompts for `step`: epochs over a shuffled order, no repeats
    within an epoch, disjoint across processes."""
    out = []
    for j in range(batch_size):
        k = (step * world + rank) * batch_size + j
        epoch, pos = divmod(k, n_prompts)
        order = list(range(n_prompts))
        random.Random(step_seed(seed, epoch, 0, "prompt-order")).shuffle(order)
        out.append(order[pos])
    return out


def load_ptx_texts(path: str) -> list[str]:
    """Texts for the PPO-ptx loss: a .txt file (one per line), .jsonl ('text' field), or a
    datasets folder / file with a 'text' column."""
    import datasets

    p = Path(path)
    if p.is_dir():
        ds = datasets.load_from_disk(str(p))
    elif p.suffix in (".jsonl", ".json"):
        ds = datasets.load_dataset("json", data_files=str(p), split="train")
    elif p.suffix == ".parquet":
        ds = datasets.load_dataset("parquet", data_files=str(p), split="train")
    else:
        ds = datasets.load_dataset("text", data_files=str(p), split="train")
    if "text" not in ds.column_names:
        raise ValueError(f"ptx dataset {path}: no 'text' column (found {ds.column_names})")
    texts = [t for t in ds["text"] if t and t.strip()]
    if not texts:
        raise ValueError(f"ptx dataset {path} holds no text")
    return texts


def _sequence_logprobs(actor_out_logits, response, temperature):
    """Log-probs of the response tokens under logits / temperature. (B, T, V) -> (B, T)."""
    logits = actor_out_logits.float()  # (B, T, V)
    if temperature != 1.0:
        logits = logits / temperature
    return core.logprobs_from_logits(logits, response), logits


def train_ppo(
    config: PPOConfig,
    *,
    policy: str,
    prompts: Sequence[Prompt],
    reward_fn: Callable,
    out_dir: Path,
    reward_model: str | None = None,
    dpo_model: str | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    accelerator=None,
    on_step: Callable[[dict], None] | None = None,
) -> PPOResult:
    """Run PPO and save the policy to `out_dir` (checkpoints under `out_dir/checkpoints/`).

    `policy`: start checkpoint (plain or LoRA adapter folder). `reward_fn(prompts, responses)`
    gives one score per response (see `ppo/reward_fns.py`). `reward_model`: the reward model's
    folder, used to initialise the critic (PPO-max) when config.critic == 'reward'.
    `dpo_model`: adapter folder from `train_dpo`, for RTO token rewards. `on_step(row)` is
    called with each step's metrics (the row `history` gets) once the step and its checkpoint
    are done, on every process.
    """
    from rankloop.lm.device import new_accelerator

    config.validate()
    if not prompts:
        raise ValueError("no prompts to train on: import some (`rankloop import`)")
    if config.rto and not dpo_model:
        raise ValueError("rto is on but no DPO model was given: run `rankloop train-dpo` first")
    out_dir = Path(out_dir)
    trackers = [t.strip() for t in config.log_with.split(",") if t.strip()]
    for t in trackers:  # optional packages: say what to install instead of a traceback
        if importlib.util.find_spec(t) is None and not (
                t == "tensorboard" and importlib.util.find_spec("tensorboardX")):
            raise ValueError(f"log_with = {t!r} needs the {t} package: pip install {t}")
    if accelerator is None:
        accelerator = new_accelerator(log_with=trackers or None, project_dir=str(out_dir / "logs"))
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    say = (log if (log and main) else (lambda _msg: None))
    bf16 = use_bf16(config.bf16, device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    torch.manual_seed(config.seed)  # initial weights of fresh heads/adapters: same on every rank

    # ---- models ------------------------------------------------------------------------------
    tokenizer = load_tokenizer(policy, padding_side="left")
    lm = load_policy(policy, r=config.lora_r, alpha=config.lora_alpha,
                     dropout=config.lora_dropout, dtype=dtype, top_layers=config.lora_layers)
    if dpo_model:  # RTO: the DPO adapter rides on the same base weights as a second adapter
        lm.load_adapter(dpo_model, adapter_name="dpo", is_trainable=False)
        lm.set_adapter("default")
    actor = Actor(lm, value_head=config.critic == "policy").to(device)
    critic = None
    if config.critic == "reward":
        critic = build_critic(reward_model=reward_model, policy_path=policy,
                              policy_tokenizer=tokenizer, r=config.lora_r,
                              alpha=config.lora_alpha, dropout=config.lora_dropout,
                              dtype=dtype, top_layers=config.critic_lora_layers).to(device)
        say(f"critic: separate LoRA value model initialised from the {critic.origin}")
        if hasattr(reward_fn, "share_critic") and reward_fn.share_critic(critic):
            say("reward model: scoring with the critic's frozen weights (no second copy)")
    else:
        say("critic: value head on the policy")
    if bf16:  # under autocast peft's fp32 copy of each adapter input is wasted work
        keep_adapter_inputs_in_autocast_dtype(actor, critic)
    actor_params = [p for p in actor.parameters() if p.requires_grad]
    # foreach: a few multi-tensor ops over the ~400 small adapter tensors instead of ~10 ops
    # per tensor
    actor_opt = torch.optim.AdamW(actor_params, lr=config.lr, eps=1e-5, foreach=True)
    if critic is not None:
        critic_opt = torch.optim.AdamW([p for p in critic.parameters() if p.requires_grad],
                                       lr=config.critic_lr, eps=1e-5, foreach=True)
        actor, actor_opt, critic, critic_opt = accelerator.prepare(actor, actor_opt, critic,
                                                                   critic_opt)
    else:
        critic_opt = None
        actor, actor_opt = accelerator.prepare(actor, actor_opt)
    raw_actor = accelerator.unwrap_model(actor)
    raw_critic = accelerator.unwrap_model(critic) if critic is not None else None
    if config.kl_target > 0:
        kl_ctl = core.AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
    else:
        kl_ctl = core.FixedKLController(config.kl_coef)
    ptx_texts = load_ptx_texts(config.ptx_dataset) if config.ptx_coef > 0 else []
    chats = [p.as_chat() for p in prompts]
    query_ids = encode_chats(tokenizer, chats)  # tokenised once; a step picks its rows
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id

    # ---- resume ------------------------------------------------------------------------------
    start_step, history = 0, []
    if resume:
        ckpt = latest_checkpoint(out_dir)
        if ckpt is None:
            raise ValueError(f"--resume: no checkpoint under {out_dir / CHECKPOINTS}")
        start_step, history = load_checkpoint(ckpt, raw_actor, raw_critic, actor_opt, critic_opt,
                                              kl_ctl, rank)
        say(f"resumed from {ckpt} at step {start_step}")
    if trackers:
        accelerator.init_trackers("rankloop-ppo", config=dataclasses.asdict(config))

    total = config.value_pretrain_steps + config.steps
    bar = tqdm(total=total, initial=start_step, desc="ppo", unit="step",
               disable=not (progress and main))
    for step in range(start_step, total):
        pretraining_critic = step < config.value_pretrain_steps  # VC-PPO: policy frozen
        timing = {}

        # ---- 1. rollout ----------------------------------------------------------------------
        t0 = time.perf_counter()
        idx = prompts_for_step(len(prompts), config.batch_size, step, rank, world, config.seed)
        query, query_mask = left_pad([query_ids[i] for i in idx], pad_id)  # (B, Q)
        query, query_mask = query.to(device), query_mask.to(device)
        torch.manual_seed(step_seed(config.seed, step, rank, "sample"))
        with torch.no_grad(), autocast(device, bf16), merged_adapter(raw_actor.lm):
            generated = raw_actor.lm.generate(
                input_ids=query, attention_mask=query_mask,
                **sampling_kwargs(config.temperature), max_new_tokens=config.max_new_tokens,
                pad_token_id=pad_id, eos_token_id=eos_id,
                use_cache=True)
        response = generated[:, query.shape[1]:]  # (B, T)
        B, T = response.shape
        # a token is real up to and including the first EOS; after it generate pads
        is_eos = response == eos_id  # (B, T)
        after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # (B, T) strictly after
        mask = ~after_eos  # (B, T)
        finished = is_eos.any(-1)  # (B,)
        response = torch.where(mask, response, torch.full_like(response, pad_id))  # (B, T)
        input_ids = torch.cat([query, response], 1)  # (B, Q + T)
        attention_mask = torch.cat([query_mask, mask.long()], 1)  # (B, Q + T)
        timing["time/rollout"] = time.perf_counter() - t0

        # ---- 2. score ------------------------------------------------------------------------
        t0 = time.perf_counter()
        texts = [tokenizer.decode(r[m & (r != eos_id)], skip_special_tokens=True).strip()
                 for r, m in zip(response.cpu(), mask.cpu())]
        step_prompts = [prompts[i] for i in idx]
        scores = reward_fn(step_prompts, texts).to(device=device, dtype=torch.float32)  # (B,)
        raw_scores = scores.clone()
        if config.missing_eos_penalty:
            scores = missing_eos_penalty(scores, finished, config.missing_eos_penalty)
        timing["time/score"] = time.perf_counter() - t0

        # ---- 3. reference log-probs, values, KL ----------------------------------------------
        t0 = time.perf_counter()
        with torch.no_grad(), autocast(device, bf16):
            # LoRA on the top blocks only: the frozen lower blocks run once here, their output
            # serves the reference pass and every update below
            logits, values, policy_lower = raw_actor(input_ids, attention_mask, n_last=T + 1,
                                                     keep_lower=True)
            logprobs, logits = _sequence_logprobs(logits[:, :-1], response, config.temperature)
            entropy = core.entropy_from_logits(logits)  # (B, T)
            del logits
            critic_lower = None
            if critic is not None:  # the frozen lower blocks' output is kept for the update
                values, critic_lower = raw_critic(input_ids, attention_mask, n_last=T + 1,
                                                  keep_lower=True)
            values = values[:, :-1].float()  # (B, T) V(s_t) before emitting token t
            with raw_actor.lm.disable_adapter():
                ref_logits, _ = raw_actor(input_ids, attention_mask, n_last=T + 1,
                                          lower=policy_lower)
            ref_logprobs, _ = _sequence_logprobs(ref_logits[:, :-1], response,
                                                 config.temperature)
            del ref_logits
            token_rewards = None
            if config.rto:
                raw_actor.lm.set_adapter("dpo")
                dpo_logits, _ = raw_actor(input_ids, attention_mask, n_last=T + 1)
                raw_actor.lm.set_adapter("default")
                dpo_logprobs, _ = _sequence_logprobs(dpo_logits[:, :-1], response,
                                                     config.temperature)
                del dpo_logits
                token_rewards = core.rto_token_rewards(dpo_logprobs, ref_logprobs, mask,
                                                       config.rto_beta)  # (B, T)
        timing["time/reference"] = time.perf_counter() - t0

        # ---- 4. rewards and advantages --------------------------------------------------------
        with torch.no_grad():
            rewards, non_score_reward, kl = core.compute_rewards(
                scores, logprobs, ref_logprobs, mask, kl_ctl.value, config.kl_estimator,
                token_rewards)  # (B, T) each
            advantages, returns = core.decoupled_gae(values, rewards, mask, config.gamma,
                                                     config.lam_actor, config.lam_critic)
            if config.whiten_advantages and mask.sum() > 1:
                advantages = core.masked_whiten(advantages, mask)  # (B, T)

        # ---- 5. update ------------------------------------------------------------------------
        t0 = time.perf_counter()
        stats_sum: dict[str, torch.Tensor] = {}
        n_mb = 0
        shuffle = torch.Generator().manual_seed(step_seed(config.seed, step, rank, "shuffle"))
        epochs_run = 0
        for epoch in range(config.ppo_epochs):
            epoch_kl = []
            for mb_start in range(0, B, config.mini_batch_size):
                if mb_start == 0:
                    perm = torch.randperm(B, generator=shuffle)
                mb = perm[mb_start:mb_start + config.mini_batch_size].to(device)
                mb_mask = mask[mb]  # (b, T)
                # drop the left-padding columns no row of this mini-batch needs (prompts are
                # left-padded to the longest of the whole batch): less work, same result
                lo = int(attention_mask[mb].any(0).int().argmax())
                mb_ids, mb_attn = input_ids[mb, lo:], attention_mask[mb, lo:]  # (b, L - lo)
                with autocast(device, bf16):
                    loss = torch.zeros((), device=device)
                    mb_stats = {}
                    if not pretraining_critic or config.critic == "policy":
                        new_logits, new_values = actor(
                            mb_ids, mb_attn, n_last=T + 1,
                            lower=policy_lower[mb, lo:] if policy_lower is not None else None)
                        new_logprobs, new_logits = _sequence_logprobs(
                            new_logits[:, :-1], response[mb], config.temperature)
                    if not pretraining_critic:
                        pg_loss, pg_stats = core.policy_loss(new_logprobs, logprobs[mb],
                                                             advantages[mb], mb_mask,
                                                             config.cliprange)
                        loss = loss + pg_loss
                        mb_stats.update(pg_stats)
                        epoch_kl.append(pg_stats["policy/approxkl"])
                        if config.entropy_coef > 0:
                            ent = core.masked_mean(core.entropy_from_logits(new_logits), mb_mask)
                            loss = loss - config.entropy_coef * ent
                            mb_stats["policy/entropy"] = ent.detach()
                        if config.ptx_coef > 0:
                            ptx_loss, ptx_stats = _ptx_loss(actor, tokenizer, ptx_texts, config,
                                                            step, epoch, mb_start, device)
                            loss = loss + config.ptx_coef * ptx_loss
                            mb_stats.update(ptx_stats)
                    if critic is not None:
                        new_values = critic(
                            mb_ids, mb_attn, n_last=T + 1,
                            lower=critic_lower[mb, lo:] if critic_lower is not None else None)
                    new_values = new_values[:, :-1].float()  # (b, T)
                    vf_loss, vf_stats = core.value_loss(
                        new_values, values[mb], returns[mb], mb_mask,
                        config.cliprange_value or None)
                    loss = loss + config.vf_coef * vf_loss
                    mb_stats.update(vf_stats)
                accelerator.backward(loss)
                if config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(actor.parameters(), config.max_grad_norm)
                    if critic is not None:
                        accelerator.clip_grad_norm_(critic.parameters(), config.max_grad_norm)
                if not pretraining_critic or config.critic == "policy":
                    if pretraining_critic:  # only the value head moves, the policy stays put
                        for p in raw_actor.lm.parameters():
                            p.grad = None
                    actor_opt.step()
                actor_opt.zero_grad(set_to_none=True)
                if critic_opt is not None:
                    critic_opt.step()
                    critic_opt.zero_grad(set_to_none=True)
                for k, v in mb_stats.items():
                    stats_sum[k] = stats_sum.get(k, 0.0) + v.float()
                n_mb += 1
            epochs_run += 1
            if (config.target_approxkl > 0 and epoch_kl
                    and float(torch.stack(epoch_kl).mean()) > config.target_approxkl):
                break  # the policy moved far enough from the rollout policy for this batch
        timing["time/update"] = time.perf_counter() - t0

        # ---- 6. log ---------------------------------------------------------------------------
        with torch.no_grad():
            seq_kl = kl.sum(-1)  # (B,) KL of each sequence to the reference
            lengths = mask.sum(-1).float()  # (B,)
            stats = {k: v / n_mb for k, v in stats_sum.items()}
            stats.update({
                "objective/scores": scores.mean(),
                "objective/raw_scores": raw_scores.mean(),
                "objective/kl": seq_kl.mean(),
                "objective/kl_coef": torch.tensor(kl_ctl.value),
                "objective/non_score_reward": non_score_reward.sum(-1).mean(),
                "objective/rlhf_reward": (scores + non_score_reward.sum(-1)).mean(),
                "objective/entropy": core.masked_mean(entropy, mask),
                "objective/perplexity": torch.exp(-core.masked_mean(logprobs, mask)),
                "objective/response_length": lengths.mean(),
                "objective/finished": finished.float().mean(),
                "val/var_explained": var_explained(values, returns, mask),
                "val/mean": core.masked_mean(values, mask),
                "policy/advantages_mean": core.masked_mean(advantages, mask),
                "policy/epochs": torch.tensor(float(epochs_run)),
            })
            if token_rewards is not None:
                stats["objective/rto_reward"] = token_rewards.sum(-1).mean()
            keys = sorted(stats)
            flat = torch.stack([stats[k].float().to(device) for k in keys])
            flat = accelerator.reduce(flat, reduction="mean")  # mean over processes
        row = {k: float(v) for k, v in zip(keys, flat.tolist())}
        row.update(timing)
        row["time/step"] = sum(timing.values())
        row["step"] = step + 1
        history.append(row)
        kl_ctl.update(float(row["objective/kl"]), n_steps=config.batch_size * world)
        bar.update(1)
        bar.set_postfix(score=f"{row['objective/scores']:.3f}", kl=f"{row['objective/kl']:.3f}")
        if (step + 1) % config.log_every == 0:
            accelerator.log(row, step=step + 1)
            if config.log_samples and main:
                say(format_samples(step + 1, step_prompts, texts, scores, seq_kl,
                                   config.log_samples))
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            save_checkpoint(out_dir, step + 1, history, raw_actor, raw_critic, actor_opt,
                            critic_opt, kl_ctl, accelerator)
        release_freed_memory()  # see lm/kernels.py: keeps the resident memory from creeping
        if on_step is not None:
            on_step(row)
    bar.close()

    # ---- save ----------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    if main:
        save_policy(raw_actor, tokenizer, out_dir, merge=config.merge_on_save)
        save_critic(raw_critic, raw_actor, out_dir)
        (out_dir / "ppo_history.json").write_text(json.dumps(history, indent=1) + "\n")
    if not config.checkpoint_every or total % config.checkpoint_every:
        save_checkpoint(out_dir, total, history, raw_actor, raw_critic, actor_opt, critic_opt,
                        kl_ctl, accelerator)
    if trackers:
        accelerator.end_training()
    return PPOResult(out_dir, history, summarize(history, config),
                     raw_critic.origin if raw_critic is not None else "value head on the policy",
                     raw_actor, raw_critic)


def var_explained(values, returns, mask) -> torch.Tensor:
    """Explained variance of the critic; 0 where the returns do not vary (all scores equal),
    where the ratio is undefined or dominated by rounding."""
    if core.masked_var(returns, mask, unbiased=False) < 1e-8:
        return torch.zeros(())
    return core.explained_variance(values, returns, mask)


def _ptx_loss(actor, tokenizer, texts, config, step, epoch, mb_start, device):
    """PPO-ptx (InstructGPT): LM loss on a deterministic slice of the text dataset."""
    n = config.ptx_batch_size
    start = ((step * config.ppo_epochs + epoch) * 1000 + mb_start) * n
    batch = [texts[(start + j) % len(texts)] for j in range(n)]
    enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=256,
                    padding_side="right")
    ids, am = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    logits, _ = actor(ids, am)
    return core.lm_loss(logits[:, :-1].float(), ids[:, 1:], am[:, 1:])


def format_samples(step, prompts, texts, scores, seq_kl, n) -> str:
    lines = [f"step {step} samples:"]
    for p, t, s, k in list(zip(prompts, texts, scores.tolist(), seq_kl.tolist()))[:n]:
        lines.append(f"  [score {s:+.3f} kl {k:.3f}] {p.text[:60]!r} -> {t[:120]!r}")
    return "\n".join(lines)


def summarize(history: list[dict], config: PPOConfig) -> dict[str, float]:
    """The round's summary metrics for the store: first/last scores and KL of the PPO run."""
    if not history:
        return {}
    tail = history[-min(len(history), max(1, config.log_every)):]
    mean = lambda k, rows: float(np.mean([r[k] for r in rows]))  # noqa: E731
    return {
        "ppo/steps": float(len(history)),
        "ppo/score_first": history[0]["objective/scores"],
        "ppo/score_last": mean("objective/scores", tail),
        "ppo/kl_last": mean("objective/kl", tail),
        "ppo/response_length_last": mean("objective/response_length", tail),
        "ppo/seconds_per_step": mean("time/step", history),
    }


# ---- checkpoints ---------------------------------------------------------------------------
def latest_checkpoint(out_dir: Path) -> Path | None:
    folder = Path(out_dir) / CHECKPOINTS
    steps = sorted((int(p.name.split("-")[1]), p) for p in folder.glob("step-*")
                   if (p / "state.pt").exists()) if folder.exists() else []
    return steps[-1][1] if steps else None


def save_checkpoint(out_dir, step, history, actor, critic, actor_opt, critic_opt, kl_ctl,
                    accelerator) -> Path:
    """Everything a resumed run needs to continue exactly: the trained tensors (adapters and
    heads, not the frozen base), both optimizers, the KL controller, the step counter, the
    history, and every process's RNG states."""
    folder = Path(out_dir) / CHECKPOINTS / f"step-{step}"
    rank = accelerator.process_index
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    rng = {"python": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save(rng, folder / f"rng-{rank}.pt")
    if accelerator.is_main_process:
        torch.save({
            "step": step, "history": history,
            "actor": trainable_state(actor),
            "critic": trainable_state(critic) if critic is not None else None,
            "actor_opt": actor_opt.state_dict(),
            "critic_opt": critic_opt.state_dict() if critic_opt is not None else None,
            "kl_ctl": kl_ctl.state_dict(),
        }, folder / "state.tmp")
        (folder / "state.tmp").replace(folder / "state.pt")  # a kill mid-write leaves no half
    accelerator.wait_for_everyone()
    return folder


def load_checkpoint(folder, actor, critic, actor_opt, critic_opt, kl_ctl, rank):
    state = torch.load(Path(folder) / "state.pt", weights_only=False)
    load_trainable_state(actor, state["actor"])
    if critic is not None and state["critic"] is not None:
        load_trainable_state(critic, state["critic"])
    actor_opt.load_state_dict(state["actor_opt"])
    if critic_opt is not None and state["critic_opt"] is not None:
        critic_opt.load_state_dict(state["critic_opt"])
    kl_ctl.load_state_dict(state["kl_ctl"])
    rng_file = Path(folder) / f"rng-{rank}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return state["step"], list(state["history"])
