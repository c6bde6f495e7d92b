"""The policy stage's scaffold: `train_policy` reads top to bottom, one numbered phase per
block; the optimiser (`ppo/ppo.py`, `ppo/rloo.py`, `ppo/bon.py`, `ppo/online_dpo.py`) supplies
only phases 5 and 6.

Each step:
  1. rollout     sample `samples_per_prompt` responses (PPO 1, RLOO, best-of-n and online DPO
                 k) to each of `batch_size` prompts (KV cache, stop at EOS)
  2. score       the reward source scores the decoded (prompt, response) texts
  3. reference   log-probs of the policy and of the reference (adapter disabled), PPO's
                 values; RTO token rewards from the DPO adapter
  4. rewards     per-token KL to the reference, shaped rewards (score at the last token)
  5. advantages  the optimiser's: PPO decoupled GAE; RLOO the leave-one-out baseline;
                 best-of-n the selection of each prompt's best; online DPO each prompt's
                 best-versus-worst pair
  6. update      the optimiser's: PPO clipped policy and value losses over `ppo_epochs` of
                 mini-batches; RLOO the sequence-level loss; best-of-n supervised steps on the
                 kept responses; online DPO the DPO loss (`StepContext` gives it the model and
                 the optimizer)
  7. log         fixed metric names, decoded samples, trackers; the adaptive KL coefficient
                 moves toward `kl_target`
  8. evaluate    every `eval_every` steps: score and KL on held-out prompts; stop early when
                 the score has fallen for sure (`core.EarlyStopping`); checkpoint
At the end the last policy is saved, or the best evaluated one when the last fell for sure
(`keep_policy`, `save_trained_policy`).

The math is in `ppo/core.py` (pure, tested functions); the modules in `ppo/actor_critic.py`.
References: Ziegler et al. 2019; Ouyang et al. 2022 (InstructGPT, PPO-ptx); Zheng et al. 2023
(PPO-max); Yuan et al. 2025 (VC-PPO); Zhong et al. 2024 (RTO); Huang et al. 2024 (N+ details);
Ahmadian et al. 2024 (RLOO); Dubois et al. 2023 (AlpacaFarm, best-of-n); Xiong et al. 2024
(online iterative DPO).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from rankloop.data.records import Preference, Prompt
from rankloop.lm import tracking
from rankloop.lm.checkpoints import checkpoint_dir
from rankloop.lm.device import autocast, use_bf16, weights_dtype
from rankloop.lm.kernels import keep_adapter_inputs_in_autocast_dtype, release_freed_memory
from rankloop.lm.loading import load_tokenizer
from rankloop.lm.sampling import (
    encode_chats,
    generate_shared_prompts,
    left_pad,
    sampling_kwargs,
)
from rankloop.lm.seeds import derive_seed, seed_everything
from rankloop.settings import ConfigError

from . import core
from .actor_critic import (
    Actor,
    ActorCritic,
    build_critic,
    load_policy,
    load_trainable_state,
    merged_adapter,
    save_critic,
    save_policy,
    trainable_state,
)
from .config import OPTIMIZERS, PPOConfig
from .reward_fns import missing_eos_penalty


@dataclass
class PPOResult:
    """What a run produced: the saved policy, per-step metrics, and the round summary."""

    policy_path: Path
    history: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, float | list[float]] = field(default_factory=dict)
    """`summarize`'s metrics (docs/ppo.md, "Metrics"); `ppo/kl_per_step` is a list."""
    critic_origin: str = ""
    actor: object = None
    """The trained actor module (LoRA policy, value head), unwrapped from accelerate; holds the
    saved policy (the best evaluated one with keep_policy = 'best')."""
    critic: object = None
    """The trained critic module, or None with a value head on the policy."""
    evaluations: list[dict[str, float]] = field(default_factory=list)
    """Each held-out evaluation: `step` (0 = the start policy) and the `eval/...` metrics."""
    optimizer: str = "ppo"
    """The optimiser whose update trained the policy (`OPTIMIZERS`)."""


@dataclass
class Rollout:
    """Phase 1's batch: B sampled responses to left-padded queries of Q tokens, T new tokens."""

    input_ids: Tensor  # (B, Q + T) query, then response
    attention_mask: Tensor  # (B, Q + T)
    response: Tensor  # (B, T) sampled tokens, pad after the first EOS
    mask: Tensor  # (B, T) True up to and including the first EOS
    finished: Tensor  # (B,) the response ended with EOS
    texts: list[str]  # decoded responses, without special tokens


@dataclass
class Reference:
    """Phase 3's outputs for a rollout batch, all computed without gradient."""

    logprobs: Tensor  # (B, T) of the sampled tokens under the policy
    ref_logprobs: Tensor  # (B, T) under the reference (adapter disabled)
    entropy: Tensor  # (B, T) of the policy
    values: Tensor | None  # (B, T) V(s_t) before emitting token t; None without a critic
    token_rewards: Tensor | None  # (B, T) RTO token rewards, or None
    policy_lower: Tensor | None  # output of the policy's frozen lower blocks, reused
    critic_lower: Tensor | None  # same for the critic


def step_seed(seed: int, step: int, rank: int, what: str) -> int:
    """A seed that depends only on (seed, step, process, purpose): a resumed run draws the same
    prompts, samples and mini-batch order as an uninterrupted one (`lm.seeds.derive_seed`)."""
    return derive_seed(seed, step, rank, what)


def prompts_for_step(
    n_prompts: int, batch_size: int, step: int, rank: int, world: int, seed: int
) -> list[int]:
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


def split_prompts(n: int, config: PPOConfig, world: int) -> tuple[list[int], list[int]]:
    """(training, held-out) prompt indices. `eval_prompts` are drawn with the seed, at most a
    quarter of the `n` prompts (training keeps most of them), rounded down to a multiple of the
    processes (each evaluates an equal share); none when `eval_every` is 0."""
    n_eval = 0
    if config.eval_every:
        n_eval = min(config.eval_prompts, n // 4) // world * world
    order = list(range(n))
    random.Random(step_seed(config.seed, 0, 0, "eval-split")).shuffle(order)
    held_out = sorted(order[:n_eval])
    return [i for i in range(n) if i not in set(held_out)], held_out


def _sequence_logprobs(actor_out_logits, response, temperature, keep_logits: bool = True):
    """Log-probs of the response tokens under logits / temperature. (B, T, V) -> (B, T), and
    the fp32 logits / temperature; without `keep_logits` (None in their place) the update's
    memory-lean path, the same numbers (`core.sampled_logprobs`)."""
    if not keep_logits:
        return core.sampled_logprobs(actor_out_logits, response, temperature), None
    logits = actor_out_logits.float()  # (B, T, V)
    if temperature != 1.0:
        logits = logits / temperature
    return core.logprobs_from_logits(logits, response), logits


@dataclass
class StepContext:
    """What an optimiser's update needs from the scaffold: the prepared model and optimizer
    and the unwrapped modules (`raw_actor`, `raw_critic`), the process, the tokenizer."""

    config: PPOConfig
    accelerator: object
    model: object  # the prepared ActorCritic
    optimizer: torch.optim.Optimizer
    raw_actor: Actor
    raw_critic: object
    tokenizer: object
    device: torch.device
    bf16: bool
    rank: int


def optimizer_update(name: str, config: PPOConfig):
    """The update class of optimiser `name` (`OPTIMIZERS`), after its `check(config)`: one
    module each, imported here only, so the scaffold knows no optimiser's internals. A new
    optimiser is a module with a class that has `name`, `uses_critic` (the scaffold builds
    PPO's critic or value head only when True), `check(config)`, `critic_origin(critic)`, and,
    built with `(config, tokenizer)`, `samples_per_prompt`, `frozen_policy_steps` and
    `step(ctx, step, batch, ref, rewards, scores) -> stats` (phases 5 and 6). One with
    `takes_preferences = True` is built with `preferences=` too: labelled pairs it trains on
    beside its rollouts (online DPO)."""
    if name == "ppo":
        from .ppo import PPOUpdate as update
    elif name == "rloo":
        from .rloo import RLOOUpdate as update
    elif name == "odpo":
        from .online_dpo import OnlineDPOUpdate as update
    elif name == "bon":
        from .bon import BestOfNUpdate as update
    else:
        raise ValueError(f"optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
    update.check(config)
    return update


def train_ppo(config: PPOConfig, **kwargs) -> PPOResult:
    """`train_policy` with PPO's update (`ppo/ppo.py`)."""
    return train_policy(config, optimizer="ppo", **kwargs)


def train_rloo(config: PPOConfig, **kwargs) -> PPOResult:
    """`train_policy` with RLOO's update (`ppo/rloo.py`)."""
    return train_policy(config, optimizer="rloo", **kwargs)


def train_online_dpo(config: PPOConfig, **kwargs) -> PPOResult:
    """`train_policy` with online DPO's update (`ppo/online_dpo.py`)."""
    return train_policy(config, optimizer="odpo", **kwargs)


def train_bon(config: PPOConfig, **kwargs) -> PPOResult:
    """`train_policy` with best-of-n fine-tuning's update (`ppo/bon.py`)."""
    return train_policy(config, optimizer="bon", **kwargs)


def train_policy(
    config: PPOConfig,
    *,
    optimizer: str = "ppo",
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
    log_dir: Path | None = None,
    preferences: Sequence[Preference] = (),
) -> PPOResult:
    """Optimise the policy with `optimizer` (`OPTIMIZERS`), save it to `out_dir`
    (checkpoints under `out_dir/checkpoints/`).

    `policy`: start checkpoint (plain or LoRA adapter folder). `reward_fn(prompts, responses)`
    gives one score per response (see `ppo/reward_fns.py`). `reward_model`: the reward model's
    folder, used to initialise PPO's critic (PPO-max) when config.critic == 'reward'.
    `dpo_model`: adapter folder from `train_dpo`, for RTO token rewards. `on_step(row)` is
    called with each step's metrics (the row `history` gets) once the step and its checkpoint
    are done, on every process. With `eval_every` > 0, `eval_prompts` of `prompts` are held
    out from training to evaluate on (`split_prompts`). Trackers (`config.log_with`) write
    under `log_dir` (default `out_dir/logs`; the CLI passes the project's `logs/`).
    `preferences`: labelled pairs for an optimiser that trains on them too (online DPO's
    `takes_preferences`); another optimiser refuses them rather than ignore them.
    """
    from rankloop.lm.device import new_accelerator

    config.validate()
    if not prompts:
        raise ValueError("no prompts to train on: import some (`rankloop import`)")
    if config.rto and not dpo_model:
        raise ValueError("rto is on but no DPO model was given: run `rankloop train-dpo` first")
    out_dir = Path(out_dir)
    trackers = tracking.parse_trackers(config.log_with, "ppo")
    tracking.check_installed(trackers)  # before any model loads: say what to install
    log_dir = Path(log_dir) if log_dir else out_dir / "logs"
    if accelerator is None:
        accelerator = new_accelerator(log_with=trackers or None, project_dir=str(log_dir))
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    say = log if (log and main) else (lambda _msg: None)
    bf16 = use_bf16(config.bf16, device)
    seed_everything(config.seed)  # initial weights of fresh heads/adapters: same on every rank

    # ---- models, optimizer, the optimiser's update --------------------------------------------
    update_class = optimizer_update(optimizer, config)
    takes_preferences = getattr(update_class, "takes_preferences", False)
    if preferences and not takes_preferences:
        raise ValueError(f"{optimizer} trains on no labelled pairs: pass no preferences")
    tokenizer, actor, critic = build_models(
        config,
        policy,
        reward_model,
        dpo_model,
        reward_fn,
        device,
        bf16,
        say,
        critic=update_class.uses_critic,
    )
    if not update_class.uses_critic:
        say(f"critic: {update_class.critic_origin(None)}")
    extra = {"preferences": preferences} if takes_preferences else {}
    update = update_class(config, tokenizer, **extra)
    model, torch_optimizer = prepare_models(accelerator, actor, critic, config)
    raw = accelerator.unwrap_model(model)  # for the no-grad passes, checkpoints and saving
    raw_actor, raw_critic = raw.actor, raw.critic
    ctx = StepContext(
        config, accelerator, model, torch_optimizer, raw_actor, raw_critic, tokenizer, device,
        bf16, rank,
    )  # fmt: skip
    if config.kl_target > 0:
        kl_ctl = core.KLConstraintController(config.kl_coef, config.kl_target, config.kl_horizon)
    else:
        kl_ctl = core.FixedKLController(config.kl_coef)
    query_ids = encode_chats(tokenizer, [p.as_chat() for p in prompts])  # a step picks rows
    train_idx, eval_idx = split_prompts(len(prompts), config, world)
    my_eval = eval_idx[rank::world]  # this process's share of the held-out prompts
    stopper = core.EarlyStopping(
        config.early_stop_patience, config.early_stop_drop, config.kl_budget
    )
    if config.eval_every and not eval_idx:
        say(
            f"evaluation off: {len(prompts)} prompts are too few to hold some out "
            f"(it needs {4 * world} or more)"
        )

    def evaluate(step: int) -> dict[str, float]:
        row = evaluate_policy(
            raw_actor,
            tokenizer,
            [query_ids[i] for i in my_eval],
            [prompts[i] for i in my_eval],
            reward_fn,
            config,
            device,
            bf16,
            accelerator,
            step_seed(config.seed, 0, rank, "eval"),
        )
        nonlocal best_state, within_state  # the adapters and heads only: a few MB
        if stopper.update(row["eval/scores"], row["eval/score_se"], step, kl=row["eval/kl"]):
            best_state = trainable_state(raw_actor)
        elif config.kl_budget and stopper.last_step == step:
            within_state = trainable_state(raw_actor)  # kept if the next one passes the budget
        row["eval/best_step"] = float(stopper.best_step)
        evaluations.append({"step": step, **row})
        return row

    # ---- resume, or evaluate the start policy --------------------------------------------------
    start_step, history, evaluations, best_state, within_state = 0, [], [], None, None
    if resume:
        ckpt = latest_checkpoint(out_dir)
        if ckpt is None:
            raise ValueError(f"--resume: no checkpoint under {checkpoint_dir(out_dir)}")
        state = load_checkpoint(
            ckpt, raw_actor, raw_critic, torch_optimizer, kl_ctl, rank, optimizer_name=optimizer
        )
        start_step, history = state["step"], list(state["history"])
        evaluations, best_state = list(state.get("evaluations", [])), state.get("best_actor")
        within_state = state.get("within_actor")
        if state.get("early_stop"):
            stopper.load_state_dict(state["early_stop"])
        if stopper.kl_start is None and evaluations:  # a checkpoint from before the KL budget
            stopper.kl_start = evaluations[0]["eval/kl"]
        say(f"resumed from {ckpt} at step {start_step}")
    elif eval_idx:
        ev = evaluate(0)
        say(
            f"held-out evaluation on {len(eval_idx)} prompts x {config.eval_samples} samples "
            f"before training: score "
            f"{ev['eval/scores']:.3f} +- {ev['eval/score_se']:.3f}"
        )
    if trackers:
        accelerator.init_trackers(
            "rankloop-ppo",
            config=dataclasses.asdict(config),
            init_kwargs=tracking.init_kwargs(trackers, log_dir),
        )

    def checkpoint(step: int) -> None:
        save_checkpoint(
            out_dir,
            step,
            history,
            raw_actor,
            raw_critic,
            torch_optimizer,
            kl_ctl,
            accelerator,
            extra={
                **run_state(stopper, evaluations, best_state, within_state),
                "optimizer_name": optimizer,
            },
        )

    k = update.samples_per_prompt
    total = update.frozen_policy_steps + config.steps
    bar = tqdm(
        total=total,
        initial=start_step,
        desc=optimizer,
        unit="step",
        disable=not (progress and main),
    )
    for step in range(start_step, total):
        if stopper.should_stop:  # a resumed run that had stopped early stays stopped
            break
        timing = {}

        # ---- 1. rollout: k samples of each of batch_size prompts -----------------------------
        t0 = time.perf_counter()
        idx = [
            train_idx[j]
            for j in prompts_for_step(
                len(train_idx), config.batch_size, step, rank, world, config.seed
            )
        ]
        idx = [i for i in idx for _ in range(k)]  # a prompt's k samples side by side
        batch = rollout(
            raw_actor.lm,
            tokenizer,
            [query_ids[i] for i in idx],
            config,
            device,
            bf16,
            step_seed(config.seed, step, rank, "sample"),
        )
        B = batch.response.shape[0]
        timing["time/rollout"] = time.perf_counter() - t0

        # ---- 2. score ------------------------------------------------------------------------
        t0 = time.perf_counter()
        step_prompts = [prompts[i] for i in idx]
        raw_scores = reward_fn(step_prompts, batch.texts).to(
            device=device, dtype=torch.float32
        )  # (B,)
        scores = missing_eos_penalty(raw_scores, batch.finished, config.missing_eos_penalty)
        timing["time/score"] = time.perf_counter() - t0

        # ---- 3. reference log-probs (and the critic's values) --------------------------------
        t0 = time.perf_counter()
        ref = reference_pass(
            raw_actor, raw_critic, batch, config, device, bf16, config.rto,
            rows=config.mini_batch_size * k, runs=k,
        )  # fmt: skip
        timing["time/reference"] = time.perf_counter() - t0

        # ---- 4. KL to the reference and shaped rewards ---------------------------------------
        with torch.no_grad():
            rewards, non_score_reward, kl = core.compute_rewards(
                scores,
                ref.logprobs,
                ref.ref_logprobs,
                batch.mask,
                kl_ctl.value,
                config.kl_estimator,
                ref.token_rewards,
            )  # (B, T) each

        # ---- 5.-6. the optimiser's advantages and update (ppo.py, rloo.py, bon.py, online_dpo.py)
        t0 = time.perf_counter()
        stats = update.step(ctx, step, batch, ref, rewards, scores)
        timing["time/update"] = time.perf_counter() - t0

        # ---- 7. log --------------------------------------------------------------------------
        stats.update(step_stats(batch, ref, scores, raw_scores, non_score_reward, kl, kl_ctl.value))
        keys = sorted(stats)
        flat = torch.stack([stats[k].float().to(device) for k in keys])
        flat = accelerator.reduce(flat, reduction="mean")  # mean over processes
        row = {k: float(v) for k, v in zip(keys, flat.tolist())}
        # samples = per-process batch x processes (lm-human-preferences counts episodes)
        kl_ctl.update(row["objective/kl"], n_steps=B * world)
        bar.update(1)
        bar.set_postfix(score=f"{row['objective/scores']:.3f}", kl=f"{row['objective/kl']:.3f}")
        if config.log_samples and main and (step + 1) % config.log_every == 0:
            say(
                format_samples(
                    step + 1, step_prompts, batch.texts, scores, kl.sum(-1), config.log_samples
                )
            )

        # ---- 8. evaluate on the held-out prompts, stop early, checkpoint ---------------------
        policy_step = step + 1 - update.frozen_policy_steps  # the policy moved this many steps
        if (
            my_eval
            and policy_step > 0
            and (policy_step % config.eval_every == 0 or step + 1 == total)
        ):
            t0 = time.perf_counter()
            row.update(evaluate(step + 1))
            timing["time/eval"] = time.perf_counter() - t0
        row.update(timing)
        row["time/step"] = sum(timing.values())
        row["step"] = step + 1
        history.append(row)
        if (step + 1) % config.log_every == 0:
            accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step + 1)
        stopping = stopper.should_stop
        if stopping or (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0):
            checkpoint(step + 1)
        release_freed_memory()  # see lm/kernels.py: keeps the resident memory from creeping
        if on_step is not None:
            on_step(row)
        if stopping and stopper.over_budget:
            say(
                f"stopped after step {step + 1}: the held-out KL to the reference "
                f"({evaluations[-1]['eval/kl']:.2f}) rose more than kl_budget = "
                f"{config.kl_budget:g} nats past its start ({stopper.kl_start:.2f})"
            )
            break
        if stopping:
            say(
                f"stopped early after step {step + 1}: the held-out score fell more than "
                f"{config.early_stop_drop:g} standard errors below its best "
                f"({stopper.best:.3f}, step {stopper.best_step}) in "
                f"{config.early_stop_patience} evaluations in a row"
            )
            break
    bar.close()

    # ---- save ----------------------------------------------------------------------------------
    steps_run = history[-1]["step"] if history else start_step
    if not (
        stopper.should_stop
        or (config.checkpoint_every and steps_run % config.checkpoint_every == 0)
    ):
        checkpoint(steps_run)
    kept = stopper.kept_step(steps_run, config.keep_policy) if evaluations else steps_run
    state = best_state if kept == stopper.best_step else within_state
    if kept != steps_run and state is not None:
        load_trainable_state(raw_actor, state)  # after the checkpoint: resume goes on
        if stopper.over_budget and kept == stopper.last_step:
            say(f"keeping the policy of step {kept}, the last one within the KL budget")
        else:
            why = "its best" if config.keep_policy == "best" else "the last one fell below it"
            say(f"keeping the policy of step {kept} (held-out score {stopper.best:.3f}: {why})")
    elif kept != steps_run:
        kept = steps_run  # the kept policy's weights are not at hand (an old checkpoint)
    accelerator.wait_for_everyone()
    if main:
        save_trained_policy(raw_actor, raw_critic, tokenizer, out_dir, config, history, evaluations)
    if trackers:
        accelerator.end_training()
    summary = summarize(
        history,
        config,
        evaluations,
        kept_step=kept,
        stopped_early=stopper.should_stop,
        kl_coef=kl_ctl.value,
        over_kl_budget=stopper.over_budget,
    )
    if main:
        from rankloop.lm.cards import write_policy_card

        write_policy_card(
            out_dir,
            base=policy,
            config=dataclasses.asdict(config),
            summary=summary,
            trained_on={"prompts": len(prompts), "reward": reward_model or "a reward function"},
            optimizer=optimizer.upper(),
        )
    return PPOResult(
        out_dir,
        history,
        summary,
        update.critic_origin(raw_critic),
        raw_actor,
        raw_critic,
        evaluations,
        optimizer,
    )


def save_trained_policy(
    actor: Actor, critic, tokenizer, out_dir: Path, config: PPOConfig, history, evaluations
) -> None:
    """The one place the stage's result is written (main process): the LoRA adapter (or merged
    weights), PPO's critic, the per-step history and the evaluations."""
    save_policy(actor, tokenizer, out_dir, merge=config.merge_on_save)
    if critic is not None or actor.value_head is not None:
        save_critic(critic, actor, out_dir)
    (out_dir / "ppo_history.json").write_text(json.dumps(history, indent=1) + "\n")
    (out_dir / "ppo_evaluations.json").write_text(json.dumps(evaluations, indent=1) + "\n")


# ---- setup ---------------------------------------------------------------------------------
def prepare_models(accelerator, actor: Actor, critic, config: PPOConfig):
    """Hand the policy and critic to accelerate as one module with one optimizer (two parameter
    groups, each with its learning rate): DeepSpeed and FSDP2 take one model per `prepare`.

    VC-PPO's value pretraining leaves the policy out of the loss, so DDP is told to expect
    unused parameters then (it would wait for their gradients otherwise).
    """
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType

    if config.value_pretrain_steps and accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError(
            "value_pretrain_steps needs the policy's gradients dropped for a few "
            "steps, which DeepSpeed's engine does not allow: set "
            "value_pretrain_steps = 0, or run under DDP or FSDP"
        )
    if config.value_pretrain_steps and accelerator.ddp_handler is None:
        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
    groups = [{"params": [p for p in actor.parameters() if p.requires_grad], "lr": config.lr}]
    if critic is not None:
        groups.append(
            {"params": [p for p in critic.parameters() if p.requires_grad], "lr": config.critic_lr}
        )
    # foreach: a few multi-tensor ops over the ~400 small adapter tensors, not ~10 per tensor
    optimizer = torch.optim.AdamW(groups, eps=1e-5, foreach=True)
    return accelerator.prepare(ActorCritic(actor, critic), optimizer)


def build_models(
    config: PPOConfig,
    policy: str,
    reward_model: str | None,
    dpo_model: str | None,
    reward_fn,
    device,
    bf16: bool,
    say,
    *,
    critic: bool = True,
):
    """(tokenizer, actor, critic or None): the LoRA policy (with a value head when critic =
    'policy', with the DPO adapter beside it for RTO) and the separate critic. `critic` False
    (RLOO): neither value head nor critic."""
    dtype = weights_dtype(bf16)
    tokenizer = load_tokenizer(policy, padding_side="left")
    lm = load_policy(
        policy,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        dtype=dtype,
        top_layers=config.lora_layers,
    )
    if dpo_model:  # RTO: the DPO adapter rides on the same base weights as a second adapter
        lm.load_adapter(dpo_model, adapter_name="dpo", is_trainable=False)
        lm.set_adapter("default")
    if not critic:
        actor = Actor(lm, value_head=False).to(device)
        actor.checkpoint = config.gradient_checkpointing
        if bf16:
            keep_adapter_inputs_in_autocast_dtype(actor, None)
        return tokenizer, actor, None
    actor = Actor(lm, value_head=config.critic == "policy").to(device)
    critic = None
    if config.critic == "reward":
        critic = build_critic(
            reward_model=reward_model,
            policy_path=policy,
            policy_tokenizer=tokenizer,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            dtype=dtype,
            top_layers=config.critic_lora_layers,
        ).to(device)
        say(f"critic: separate LoRA value model initialised from the {critic.origin}")
        if hasattr(reward_fn, "share_critic") and reward_fn.share_critic(critic):
            say("reward model: scoring with the critic's frozen weights (no second copy)")
    else:
        say("critic: value head on the policy")
    actor.checkpoint = config.gradient_checkpointing
    if critic is not None:
        critic.checkpoint = config.gradient_checkpointing
    if bf16:  # under autocast peft's fp32 copy of each adapter input is wasted work
        keep_adapter_inputs_in_autocast_dtype(actor, critic)
    return tokenizer, actor, critic


# ---- the phases ----------------------------------------------------------------------------
def rollout(
    lm, tokenizer, queries: list[list[int]], config: PPOConfig, device, bf16: bool, seed: int
) -> Rollout:
    """Phase 1: sample one response per query with the KV cache until EOS or max_new_tokens,
    the adapter merged into the weights (no adapter ops per token; see `merged_adapter`)."""
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    query, query_mask = left_pad(queries, pad_id)  # (B, Q)
    query, query_mask = query.to(device), query_mask.to(device)
    seed_everything(seed)
    with torch.no_grad(), autocast(device, bf16), merged_adapter(lm):
        generated = generate_shared_prompts(
            lm,
            input_ids=query,
            attention_mask=query_mask,
            **sampling_kwargs(config.temperature),
            max_new_tokens=config.max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            use_cache=True,
        )
    response = generated[:, query.shape[1] :]  # (B, T)
    # a token is real up to and including the first EOS; after it generate pads
    is_eos = response == eos_id  # (B, T)
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # (B, T) strictly after
    mask = ~after_eos  # (B, T)
    response = torch.where(mask, response, torch.full_like(response, pad_id))  # (B, T)
    texts = [
        tokenizer.decode(r[m & (r != eos_id)], skip_special_tokens=True).strip()
        for r, m in zip(response.cpu(), mask.cpu())
    ]
    return Rollout(
        input_ids=torch.cat([query, response], 1),
        attention_mask=torch.cat([query_mask, mask.long()], 1),
        response=response,
        mask=mask,
        finished=is_eos.any(-1),
        texts=texts,
    )


def reference_pass(
    actor: Actor,
    critic,
    batch: Rollout,
    config: PPOConfig,
    device,
    bf16: bool,
    rto: bool,
    rows: int = 0,
    runs: int = 1,
) -> Reference:
    """Phase 3: the policy's and the reference's log-probs of the sampled tokens, the policy's
    entropy, the values, and with `rto` the DPO adapter's token rewards. `rows` > 0: in chunks
    of that many sequences (the scaffold passes the update's mini-batch): the same numbers (a
    row's forward does not depend on its neighbours; a matmul may block its sums differently
    for fewer rows, a last-bit difference), with a chunk's full-vocabulary logits in memory at
    a time instead of the whole batch's. `runs` > 1: a prompt's `runs` samples lie side by
    side, and the policy's passes run each prompt once (`Actor.forward`)."""
    B = batch.response.shape[0]
    step = rows if 0 < rows < B else B
    parts = [
        _reference_rows(actor, critic, batch, slice(i, i + step), config, device, bf16, rto, runs)
        for i in range(0, B, step)
    ]
    if len(parts) == 1:
        return parts[0]
    fields = zip(*([getattr(p, f.name) for f in dataclasses.fields(Reference)] for p in parts))
    return Reference(*(None if f[0] is None else torch.cat(f) for f in fields))


def _reference_rows(
    actor: Actor, critic, batch: Rollout, rows: slice, config: PPOConfig, device, bf16, rto, runs
) -> Reference:
    """`reference_pass` on rows `rows` of the batch."""
    T = batch.response.shape[1]
    ids, attn = batch.input_ids[rows], batch.attention_mask[rows]
    response = batch.response[rows]
    with torch.no_grad(), autocast(device, bf16):
        # LoRA on the top blocks only: the frozen lower blocks run once here, their output
        # serves the reference pass and every update
        logits, values, policy_lower = actor(ids, attn, n_last=T + 1, keep_lower=True, runs=runs)
        logprobs, entropy = core.logprobs_and_entropy(
            logits[:, :-1], response, config.temperature
        )  # (b, T) each
        del logits
        critic_lower = None
        if critic is not None:
            values, critic_lower = critic(ids, attn, n_last=T + 1, keep_lower=True)
        if values is not None:
            values = values[:, :-1].float()  # (b, T) V(s_t) before emitting token t
        with actor.lm.disable_adapter():
            ref_logits, _ = actor(ids, attn, n_last=T + 1, lower=policy_lower, runs=runs)
        ref_logprobs, _ = _sequence_logprobs(
            ref_logits[:, :-1], response, config.temperature, keep_logits=False
        )
        del ref_logits
        token_rewards = None
        if rto:
            actor.lm.set_adapter("dpo")
            dpo_logits, _ = actor(ids, attn, n_last=T + 1, runs=runs)
            actor.lm.set_adapter("default")
            dpo_logprobs, _ = _sequence_logprobs(
                dpo_logits[:, :-1], response, config.temperature, keep_logits=False
            )
            del dpo_logits
            token_rewards = core.rto_token_rewards(
                dpo_logprobs, ref_logprobs, batch.mask[rows], config.rto_beta
            )  # (b, T)
    return Reference(
        logprobs, ref_logprobs, entropy, values, token_rewards, policy_lower, critic_lower
    )


def forward_minibatch(
    model,
    batch: Rollout,
    ref: Reference,
    mb: Tensor,
    *,
    policy: bool = True,
    value: bool = True,
    runs: int = 1,
) -> tuple[Tensor | None, Tensor | None]:
    """Phase 6's forward on rows `mb` of the rollout: (logits, values) of the last T + 1
    positions, from the lower blocks the reference pass kept. The left-padding columns no row
    of this mini-batch needs are dropped first (prompts are left-padded to the longest of the
    whole batch): less work, same result. `runs` > 1: `mb` lists a prompt's `runs` samples
    side by side, and each prompt runs once (`Actor.forward`)."""
    T = batch.response.shape[1]
    lo = int(batch.attention_mask[mb].any(0).int().argmax())
    ids, attn = batch.input_ids[mb, lo:], batch.attention_mask[mb, lo:]  # (b, L - lo)
    return model(
        ids,
        attn,
        n_last=T + 1,
        policy=policy,
        value=value,
        policy_lower=ref.policy_lower[mb, lo:] if ref.policy_lower is not None else None,
        critic_lower=ref.critic_lower[mb, lo:] if ref.critic_lower is not None else None,
        runs=runs,
    )


def optimizer_step(
    accelerator, actor, critic, optimizer, config: PPOConfig, *, train_policy: bool
) -> None:
    """Clip the gradients of policy and critic separately, step the optimizer. During value
    pretraining (not `train_policy`) the policy's language model keeps its weights: its
    gradients are dropped, and AdamW skips a parameter without one."""
    if config.max_grad_norm > 0:
        accelerator.clip_grad_norm_(actor.parameters(), config.max_grad_norm)
        if critic is not None:
            accelerator.clip_grad_norm_(critic.parameters(), config.max_grad_norm)
    if not train_policy:
        for p in actor.lm.parameters():
            p.grad = None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class CriticFreeUpdate:
    """What RLOO's, best-of-n's and online DPO's updates share: no critic, no frozen policy
    steps, `samples_field` ([ppo] setting) samples per prompt, and a `check` that refuses PPO's
    critic-only levers. A subclass sets `name`, `samples_field` and supplies `step`."""

    uses_critic = False
    frozen_policy_steps = 0
    takes_preferences = False
    samples_field = ""
    refused = ("value_pretrain_steps", "ptx_coef")

    def __init__(self, config: PPOConfig, tokenizer):
        self.config = config
        self.samples_per_prompt = getattr(config, self.samples_field)

    @classmethod
    def check(cls, config: PPOConfig) -> None:
        """Levers this optimiser does not use are refused, not ignored: one message naming it."""
        for name in cls.refused:
            if getattr(config, name):
                raise ConfigError(
                    f"[ppo] {name} = {getattr(config, name)!r}: not used by {cls.name}; turn "
                    f"it off (0) to train with {cls.name}"
                )


def minibatch_update(
    ctx: StepContext,
    step: int,
    batch: Rollout,
    ref: Reference,
    groups: Tensor,
    loss_fn: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]],
    real: Tensor | None = None,
) -> tuple[dict[str, Tensor], int]:
    """Phase 6 of the optimisers without a critic (RLOO, best-of-n): `ppo_epochs` passes over
    the G groups of rollout rows `groups` (G, g), in shuffled mini-batches of `mini_batch_size`
    groups (a group's g rows stay together). Per mini-batch: the policy's forward on its rows
    `mb`, `loss_fn(mb, new_logprobs, mask) -> (loss, stats)`, minus the entropy bonus, one
    clipped optimizer step. `real` (G,) False marks padding groups (their tokens are masked
    out: every process then runs as many mini-batches, as DDP needs). An epoch whose mean
    `policy/approxkl` exceeds `target_approxkl` is the last. Returns the stats' means over the
    mini-batches (empty with none) and the epochs run."""
    config, device = ctx.config, ctx.device
    G, g = groups.shape
    stats_sum: dict[str, Tensor] = {}
    n_mb = epochs_run = 0
    shuffle = torch.Generator().manual_seed(step_seed(config.seed, step, ctx.rank, "shuffle"))
    for _epoch in range(config.ppo_epochs):
        if G == 0:
            break
        perm = torch.randperm(G, generator=shuffle)
        epoch_kl = []
        for mb_start in range(0, G, config.mini_batch_size):
            chosen = perm[mb_start : mb_start + config.mini_batch_size]  # (p,)
            mb = groups[chosen].reshape(-1).to(device)  # (p * g,)
            mask = batch.mask[mb]  # (b, T)
            if real is not None:
                mask = mask & real[chosen].repeat_interleave(g)[:, None].to(device)
            with autocast(device, ctx.bf16):
                logits, _ = forward_minibatch(ctx.model, batch, ref, mb, value=False, runs=g)
                new_logprobs, logits = _sequence_logprobs(
                    logits[:, :-1], batch.response[mb], config.temperature,
                    keep_logits=config.entropy_coef > 0,
                )  # fmt: skip
                loss, mb_stats = loss_fn(mb, new_logprobs, mask)
                if config.entropy_coef > 0:
                    ent = core.masked_mean(core.entropy_from_logits(logits), mask)
                    loss = loss - config.entropy_coef * ent
                    mb_stats["policy/entropy"] = ent.detach()
            ctx.accelerator.backward(loss)
            optimizer_step(
                ctx.accelerator, ctx.raw_actor, None, ctx.optimizer, config, train_policy=True
            )
            for name, v in mb_stats.items():
                stats_sum[name] = stats_sum.get(name, 0.0) + v.float()
            epoch_kl.append(mb_stats["policy/approxkl"])
            n_mb += 1
        epochs_run += 1
        if config.target_approxkl > 0 and float(torch.stack(epoch_kl).mean()) > (
            config.target_approxkl
        ):
            break
    return {name: v / n_mb for name, v in stats_sum.items()}, epochs_run


def step_stats(
    batch: Rollout, ref: Reference, scores, raw_scores, non_score_reward, kl, kl_coef: float
) -> dict[str, Tensor]:
    """Phase 7: the rollout's metrics every optimiser shares (docs/ppo.md, "Metrics"), 0-dim
    tensors; the optimiser's update adds its own (`policy/...`, PPO's `val/...`)."""
    with torch.no_grad():
        mask = batch.mask
        return {
            "objective/scores": scores.mean(),
            "objective/raw_scores": raw_scores.mean(),
            "objective/kl": kl.sum(-1).mean(),  # per sequence: the sum of its tokens' KL
            "objective/kl_coef": torch.tensor(kl_coef),
            "objective/non_score_reward": non_score_reward.sum(-1).mean(),
            "objective/rlhf_reward": (scores + non_score_reward.sum(-1)).mean(),
            "objective/entropy": core.masked_mean(ref.entropy, mask),
            "objective/perplexity": torch.exp(-core.masked_mean(ref.logprobs, mask)),
            "objective/response_length": mask.sum(-1).float().mean(),
            "objective/finished": batch.finished.float().mean(),
            **(
                {"objective/rto_reward": ref.token_rewards.sum(-1).mean()}
                if ref.token_rewards is not None
                else {}
            ),
        }


def evaluate_policy(
    actor: Actor,
    tokenizer,
    queries,
    prompts,
    reward_fn,
    config: PPOConfig,
    device,
    bf16: bool,
    accelerator,
    seed: int,
) -> dict[str, float]:
    """Phase 8: `eval_samples` sampled responses per held-out prompt, with the same random
    numbers at every evaluation (so two evaluations differ by the policy, not by the draw);
    their score (with the missing-EOS penalty, as in training) and KL to the reference. Means
    over the responses of every process, and the standard error of the mean score."""
    queries = [q for q in queries for _ in range(config.eval_samples)]
    prompts = [p for p in prompts for _ in range(config.eval_samples)]
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    # in rollouts of batch_size prompts with their samples, as RLOO's and best-of-n's training
    # rollouts (decoding 32 rows costs little more than 8 on a CPU; a prompt's prefix runs
    # once), and the reference pass in chunks of batch_size rows: no more memory than training
    rows = config.batch_size * config.eval_samples
    for i, start in enumerate(range(0, len(queries), rows)):
        part = slice(start, start + rows)
        batch = rollout(actor.lm, tokenizer, queries[part], config, device, bf16, seed + i)
        raw = reward_fn(prompts[part], batch.texts).to(device=device, dtype=torch.float32)
        scores = missing_eos_penalty(raw, batch.finished, config.missing_eos_penalty)  # (B,)
        ref = reference_pass(
            actor, None, batch, config, device, bf16, rto=False, rows=config.batch_size,
            runs=config.eval_samples,
        )  # fmt: skip
        seq_kl = core.masked_mean(
            core.kl_penalty(ref.logprobs, ref.ref_logprobs, config.kl_estimator), batch.mask, dim=-1
        )
        seq_kl = seq_kl * batch.mask.sum(-1)  # (B,) per sequence, as objective/kl
        sums += torch.stack(
            [
                scores.sum(),
                (scores**2).sum(),
                seq_kl.sum(),
                batch.mask.sum().float(),
                torch.tensor(float(len(batch.texts)), device=device),
            ]
        ).double()
    s, s2, k, length, n = accelerator.reduce(sums, reduction="sum").tolist()
    mean = s / n
    var = max(s2 - n * mean**2, 0.0) / max(n - 1, 1)  # unbiased
    return {
        "eval/scores": mean,
        "eval/score_se": math.sqrt(var / n),
        "eval/kl": k / n,
        "eval/response_length": length / n,
    }


def format_samples(step, prompts, texts, scores, seq_kl, n) -> str:
    lines = [f"step {step} samples:"]
    for p, t, s, k in list(zip(prompts, texts, scores.tolist(), seq_kl.tolist()))[:n]:
        lines.append(f"  [score {s:+.3f} kl {k:.3f}] {p.text[:60]!r} -> {t[:120]!r}")
    return "\n".join(lines)


def summarize(
    history: list[dict],
    config: PPOConfig,
    evaluations: Sequence[dict] = (),
    *,
    kept_step: int | None = None,
    stopped_early: bool = False,
    kl_coef: float | None = None,
    over_kl_budget: bool = False,
) -> dict[str, float | list[float]]:
    """The round's summary metrics for the store (names in docs/ppo.md, "Metrics")."""
    if not history:
        return {}
    tail = history[-min(len(history), max(1, config.log_every)) :]
    mean = lambda k, rows: float(np.mean([r[k] for r in rows]))
    out = {
        "ppo/steps": float(len(history)),
        "ppo/score_first": history[0]["objective/scores"],
        "ppo/score_last": mean("objective/scores", tail),
        "ppo/kl_last": mean("objective/kl", tail),
        "ppo/kl_per_step": [round(r["objective/kl"], 5) for r in history],
        "ppo/kl_coef_last": history[-1]["objective/kl_coef"] if kl_coef is None else kl_coef,
        "ppo/response_length_last": mean("objective/response_length", tail),
        "ppo/seconds_per_step": mean("time/step", history),
        "ppo/stopped_early": float(stopped_early),
        "ppo/over_kl_budget": float(over_kl_budget),
        "ppo/kept_step": float(kept_step if kept_step is not None else history[-1]["step"]),
    }
    # the KL of the policy that was saved: measured on held-out prompts where there are some
    kept = [e for e in evaluations if e["step"] == out["ppo/kept_step"]]
    out["ppo/kl_final"] = kept[-1]["eval/kl"] if kept else out["ppo/kl_last"]
    if evaluations:
        out["ppo/eval_score_start"] = evaluations[0]["eval/scores"]
        out["ppo/eval_kl_start"] = evaluations[0]["eval/kl"]
        if kept:
            out["ppo/eval_score_final"] = kept[-1]["eval/scores"]
    return out


# ---- checkpoints ---------------------------------------------------------------------------
def run_state(
    stopper: core.EarlyStopping, evaluations: list, best_state, within_state=None
) -> dict:
    """What early stopping needs to resume: its counters, the evaluations, the best policy and
    (with a KL budget) the last one evaluated within it."""
    return {
        "early_stop": stopper.state_dict(),
        "evaluations": evaluations,
        "best_actor": best_state,
        "within_actor": within_state,
    }


def latest_checkpoint(out_dir: Path) -> Path | None:
    folder = checkpoint_dir(out_dir)
    steps = (
        sorted(
            (int(p.name.split("-")[1]), p)
            for p in folder.glob("step-*")
            if (p / "state.pt").exists()
        )
        if folder.exists()
        else []
    )
    return steps[-1][1] if steps else None


def save_checkpoint(
    out_dir, step, history, actor, critic, optimizer, kl_ctl, accelerator, extra: dict | None = None
) -> Path:
    """Everything a resumed run needs to continue exactly: the trained tensors (adapters and
    heads, not the frozen base), the optimizer, the KL controller, the step counter, the
    history, early stopping's state (`extra`), and every process's RNG states."""
    folder = checkpoint_dir(out_dir) / f"step-{step}"
    rank = accelerator.process_index
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    torch.save(rng, folder / f"rng-{rank}.pt")
    if accelerator.is_main_process:
        torch.save(
            {
                "step": step,
                "history": history,
                "actor": trainable_state(actor),
                "critic": trainable_state(critic) if critic is not None else None,
                "optimizer": optimizer.state_dict(),
                "kl_ctl": kl_ctl.state_dict(),
                **(extra or {}),
            },
            folder / "state.tmp",
        )
        (folder / "state.tmp").replace(folder / "state.pt")  # a kill mid-write leaves no half
    accelerator.wait_for_everyone()
    return folder


def load_checkpoint(
    folder, actor, critic, optimizer, kl_ctl, rank, *, optimizer_name: str = "ppo"
) -> dict:
    """Load a checkpoint into the modules, optimizers and KL controller; restore this process's
    RNG states; return the saved state (step, history, early stopping's state). A checkpoint
    of another optimiser (`optimizer_name`; older ones are PPO's) is a clear error."""
    state = torch.load(Path(folder) / "state.pt", weights_only=False)
    written_by = state.get("optimizer_name", "ppo")
    if written_by != optimizer_name:
        raise ValueError(
            f"--resume: {folder} was written by {written_by}, not {optimizer_name}: resume "
            f"with {written_by}, or start again without --resume"
        )
    load_trainable_state(actor, state["actor"])
    if critic is not None and state["critic"] is not None:
        load_trainable_state(critic, state["critic"])
    if "optimizer" not in state:
        raise ValueError(
            f"{folder} was written by an older rankloop (one optimizer per model): "
            "start the run again without --resume"
        )
    optimizer.load_state_dict(state["optimizer"])
    kl_ctl.load_state_dict(state["kl_ctl"])
    rng_file = Path(folder) / f"rng-{rank}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return state
