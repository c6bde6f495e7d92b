"""`rankloop ppo` and `rankloop train-dpo`: optimise the round's policy against its reward."""

from __future__ import annotations

from pathlib import Path

import click

from rankloop.app import rounds
from rankloop.data.curves import record_curve
from rankloop.data.records import Round
from rankloop.settings import ConfigError, replace

from .common import console, open_project, project_option, user_errors


def describe(s: dict) -> str:
    """One line on a PPO run's summary: scores, the saved policy's KL, early stop."""
    out = (
        f"training score {s['ppo/score_first']:.3f} -> {s['ppo/score_last']:.3f}, "
        f"{s['ppo/seconds_per_step']:.2f} s/step"
    )
    if "ppo/eval_score_start" in s:
        out += (
            f"; held-out score {s['ppo/eval_score_start']:.3f} -> "
            f"{s.get('ppo/eval_score_final', float('nan')):.3f}"
        )
    out += f"; saved the policy of step {int(s['ppo/kept_step'])} (KL {s['ppo/kl_final']:.3f})"
    if s["ppo/stopped_early"]:
        out += f", stopped early after {int(s['ppo/steps'])} steps"
    return out


@click.command("ppo")
@click.option(
    "--round",
    "round_",
    type=int,
    default=None,
    help="Round R (default: the current round): starts from policy R-1 (or the "
    "base), writes rounds/R/policy.",
)
@click.option("--steps", type=int, default=None, help="PPO steps ([ppo] steps).")
@click.option("--batch-size", type=int, default=None, help="Prompts per step.")
@click.option("--mini-batch-size", type=int, default=None)
@click.option("--ppo-epochs", type=int, default=None)
@click.option("--max-new-tokens", type=int, default=None)
@click.option("--lr", type=float, default=None, help="Policy learning rate.")
@click.option(
    "--kl-coef",
    type=float,
    default=None,
    help="KL penalty coefficient (the start value with --kl-target).",
)
@click.option(
    "--kl-target",
    type=float,
    default=None,
    help="Adaptive KL: target KL per response in nats (0 = fixed --kl-coef).",
)
@click.option(
    "--eval-every",
    type=int,
    default=None,
    help="Evaluate on held-out prompts "
    "every N steps and stop early when the score stops rising (0 = off).",
)
@click.option(
    "--keep-policy",
    type=click.Choice(["best", "last"]),
    default=None,
    help="Save the best evaluated policy or the last one.",
)
@click.option(
    "--reward-fn",
    "reward_fns",
    multiple=True,
    help="Python reward "
    "`[WEIGHT*]module:function(prompts, responses) -> scores` instead of the reward "
    "model; repeat to sum several.",
)
@click.option(
    "--reward-model",
    default=None,
    help="Reward model folder (default: the round's, else the latest trained one).",
)
@click.option(
    "--critic",
    type=click.Choice(["reward", "policy"]),
    default=None,
    help="Separate critic from the reward model, or a value head on the policy.",
)
@click.option(
    "--value-pretrain-steps",
    type=int,
    default=None,
    help="VC-PPO: train only the critic for N steps first.",
)
@click.option(
    "--rto/--no-rto",
    default=None,
    help="Add DPO token rewards (RTO); needs `rankloop train-dpo` first.",
)
@click.option(
    "--merge/--no-merge",
    "merge_on_save",
    default=None,
    help="Save merged full weights instead of a LoRA adapter.",
)
@click.option("--checkpoint-every", type=int, default=None)
@click.option(
    "--log-with",
    default=None,
    help="Trackers, comma-separated: tensorboard, "
    "trackio, wandb (offline); runs go under the project's logs/.",
)
@click.option("--seed", type=int, default=None)
@click.option("--limit", type=int, default=None, help="Only the first N prompts.")
@click.option("--resume", is_flag=True, help="Continue exactly from the newest checkpoint.")
@project_option
@user_errors
def ppo_cmd(
    round_,
    steps,
    batch_size,
    mini_batch_size,
    ppo_epochs,
    max_new_tokens,
    lr,
    kl_coef,
    kl_target,
    eval_every,
    keep_policy,
    reward_fns,
    reward_model,
    critic,
    value_pretrain_steps,
    rto,
    merge_on_save,
    checkpoint_every,
    log_with,
    seed,
    limit,
    resume,
    project_dir,
):
    """Optimise the round's policy with PPO against the reward model; save rounds/R/policy/.

    Starts from the policy of round R-1 (or the base policy for round 0), scores the policy's
    responses to the project's prompts with round R's reward model (or --reward-fn), and saves
    a LoRA adapter that `rankloop generate --round R+1` samples from. Options override the
    [ppo] section of rankloop.toml. Run it under `accelerate launch` for several processes.

    \b
    Example:
      rankloop ppo --round 0 --steps 200
      rankloop ppo --steps 50 --reward-fn my_rewards:brevity --critic policy
      rankloop ppo --round 1 --rto --value-pretrain-steps 10 --resume
    """
    from rankloop.ppo.train import train_ppo

    project = open_project(project_dir)
    cfg = replace(
        project.config.ppo,
        steps=steps,
        batch_size=batch_size,
        mini_batch_size=mini_batch_size,
        ppo_epochs=ppo_epochs,
        max_new_tokens=max_new_tokens,
        lr=lr,
        kl_coef=kl_coef,
        kl_target=kl_target,
        eval_every=eval_every,
        keep_policy=keep_policy,
        critic=critic,
        value_pretrain_steps=value_pretrain_steps,
        rto=rto,
        merge_on_save=merge_on_save,
        checkpoint_every=checkpoint_every,
        log_with=log_with,
        seed=seed,
    )
    round_ = rounds.resolve_round(project, round_)
    prompts = rounds.ppo_prompts(project, limit)  # the evaluation prompts are held out
    policy = project.policy_for_round(round_)
    reward_fn, rm_path = rounds.ppo_reward(project, round_, cfg, reward_fns, reward_model)
    dpo = None
    if cfg.rto:
        dpo = cfg.rto_model or str(project.round_dir(round_, "dpo"))
        if not (Path(dpo) / "adapter_config.json").exists():
            raise ConfigError(
                f"--rto needs a DPO adapter at {dpo}: run "
                f"`rankloop train-dpo --round {round_}` first"
            )
    out = project.round_dir(round_, "policy")
    console.print(
        f"PPO round {round_}: policy {policy}, reward "
        f"{getattr(reward_fn, 'name', rm_path)}, {len(prompts)} prompts -> {out}"
    )
    try:
        result = train_ppo(
            cfg,
            policy=policy,
            prompts=prompts,
            reward_fn=reward_fn,
            out_dir=out,
            reward_model=rm_path,
            dpo_model=dpo,
            resume=resume,
            log=console.print,
            log_dir=project.root / "logs",
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    with project.store.transaction():  # the policy and its per-step curve land together
        project.store.save_round(Round(round_, policy=project.stored(out), metrics=result.summary))
        record_curve(project.store, round_, "ppo", result.history)
    console.print(
        f"Saved the policy to {out}: {describe(result.summary)}. "
        f"Next: rankloop generate --round {round_ + 1}"
    )
    project.close()


@click.command("train-dpo")
@click.option(
    "--round",
    "round_",
    type=int,
    default=None,
    help="Train on the labels of rounds <= R (default: the current round); save rounds/R/dpo/.",
)
@click.option("--epochs", type=int, default=None, help="Passes over the pairs ([dpo] epochs).")
@click.option("--lr", type=float, default=None, help="Learning rate ([dpo] lr).")
@click.option("--beta", type=float, default=None, help="DPO beta ([dpo] beta).")
@click.option(
    "--batch-size", type=int, default=None, help="Preference pairs per step ([dpo] batch_size)."
)
@click.option("--seed", type=int, default=None)
@project_option
@user_errors
def train_dpo_cmd(round_, epochs, lr, beta, batch_size, seed, project_dir):
    """Train a DPO LoRA adapter on the preferences; `rankloop ppo --rto` uses it for RTO.

    The adapter sits on the same base weights as the PPO policy (its reference), so RTO's
    token reward beta * log(pi_dpo / pi_ref) needs no extra model copy. Tied pairs are skipped.
    Options override the [dpo] section of rankloop.toml.

    \b
    Example:
      rankloop train-dpo --round 0 --epochs 2 --beta 0.1
      rankloop ppo --round 0 --rto
    """
    from rankloop.ppo.dpo import train_dpo

    project = open_project(project_dir)
    cfg = replace(
        project.config.dpo, epochs=epochs, lr=lr, beta=beta, batch_size=batch_size, seed=seed
    )
    round_ = rounds.resolve_round(project, round_)
    prefs = list(project.store.preferences(round=round_))
    out = project.round_dir(round_, "dpo")
    try:
        metrics = train_dpo(
            cfg,
            policy=project.policy_for_round(round_),
            preferences=prefs,
            out_dir=out,
            log=console.print,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    project.store.save_round(Round(round_, metrics=metrics))
    console.print(f"Saved the DPO adapter to {out}. Next: rankloop ppo --round {round_} --rto")
    project.close()
