"""`rankloop ppo`, `rankloop rloo`, `rankloop bon`, `rankloop odpo` and `rankloop train-dpo`: optimise the round's policy
against its reward. The stage itself is `rounds.policy_stage`, the one `rankloop round` runs."""

from __future__ import annotations

import click

from rankloop.app import rounds
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
    if s.get("ppo/over_kl_budget"):
        out += f", stopped at the KL budget ([ppo] kl_budget) after {int(s['ppo/steps'])} steps"
    elif s["ppo/stopped_early"]:
        out += f", stopped early after {int(s['ppo/steps'])} steps"
    return out


def policy_options(f):
    """The options `rankloop ppo`, `rloo`, `bon` and `odpo` share: the round, the reward, the
    scaffold's settings (rollout, KL, evaluation, saving) and the update's step sizes."""
    options = [
        click.option(
            "--round",
            "round_",
            type=int,
            default=None,
            help="Round R (default: the current round): starts from policy R-1 (or the "
            "base), writes rounds/R/policy.",
        ),
        click.option("--steps", type=int, default=None, help="Policy steps ([ppo] steps)."),
        click.option("--batch-size", type=int, default=None, help="Prompts per step."),
        click.option("--mini-batch-size", type=int, default=None, help="Prompts per update."),
        click.option("--ppo-epochs", type=int, default=None, help="Passes over each rollout."),
        click.option("--max-new-tokens", type=int, default=None),
        click.option("--lr", type=float, default=None, help="Policy learning rate."),
        click.option(
            "--kl-coef",
            type=float,
            default=None,
            help="KL penalty coefficient (the start value with --kl-target).",
        ),
        click.option(
            "--kl-target",
            type=float,
            default=None,
            help="Adaptive KL: target KL per response in nats (0 = fixed --kl-coef).",
        ),
        click.option(
            "--eval-every",
            type=int,
            default=None,
            help="Evaluate on held-out prompts "
            "every N steps and stop early when the score stops rising (0 = off).",
        ),
        click.option(
            "--keep-policy",
            type=click.Choice(["best", "last"]),
            default=None,
            help="Save the best evaluated policy or the last one.",
        ),
        click.option(
            "--reward-fn",
            "reward_fns",
            multiple=True,
            help="Python reward "
            "`[WEIGHT*]module:function(prompts, responses) -> scores` instead of the reward "
            "model; repeat to sum several.",
        ),
        click.option(
            "--reward-model",
            default=None,
            help="Reward model folder (default: the round's, else the latest trained one).",
        ),
        click.option(
            "--rto/--no-rto",
            default=None,
            help="Add DPO token rewards (RTO); needs `rankloop train-dpo` first.",
        ),
        click.option(
            "--merge/--no-merge",
            "merge_on_save",
            default=None,
            help="Save merged full weights instead of a LoRA adapter.",
        ),
        click.option("--checkpoint-every", type=int, default=None),
        click.option(
            "--log-with",
            default=None,
            help="Trackers, comma-separated: tensorboard, "
            "trackio, wandb (offline); runs go under the project's logs/.",
        ),
        click.option("--seed", type=int, default=None),
        click.option("--limit", type=int, default=None, help="Only the first N prompts."),
        click.option("--resume", is_flag=True, help="Continue exactly from the newest checkpoint."),
        project_option,
        user_errors,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def run_policy_stage(
    optimizer: str, round_, reward_fns, reward_model, limit, resume, project_dir, **overrides
) -> None:
    """Parse nothing, decide nothing: `rounds.policy_stage` wires the stage as `rankloop
    round` does; this prints its result."""
    project = open_project(project_dir)
    cfg = replace(project.config.ppo, **overrides)
    round_ = rounds.resolve_round(project, round_)
    result = rounds.policy_stage(
        project,
        round_,
        cfg,
        optimizer=optimizer,
        reward_fns=reward_fns,
        reward_model=reward_model,
        limit=limit,
        resume=resume,
        log=console.print,
    )
    console.print(
        f"Saved the policy to {result.policy_path}: {describe(result.summary)}. "
        f"Next: rankloop generate --round {round_ + 1}"
    )
    project.close()


@click.command("ppo")
@policy_options
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
def ppo_cmd(round_, reward_fns, reward_model, limit, resume, project_dir, **overrides):
    """Optimise the round's policy with PPO against the reward model; save rounds/R/policy/.

    Starts from the policy of round R-1 (or the base policy for round 0), scores the policy's
    responses to the project's prompts with round R's reward model (or --reward-fn), and saves
    a LoRA adapter that `rankloop generate --round R+1` samples from. Options override the
    [ppo] section of rankloop.toml. Run it under `accelerate launch` for several processes.
    The same stage as `rankloop round`'s, with PPO whatever [rounds] optimizer says.

    \b
    Example:
      rankloop ppo --round 0 --steps 200
      rankloop ppo --steps 50 --reward-fn my_rewards:brevity --critic policy
      rankloop ppo --round 1 --rto --value-pretrain-steps 10 --resume
    """
    run_policy_stage(
        "ppo", round_, reward_fns, reward_model, limit, resume, project_dir, **overrides
    )


@click.command("rloo")
@policy_options
@click.option(
    "--rloo-k",
    type=int,
    default=None,
    help="Responses sampled per prompt; each one's baseline is the others' mean ([ppo] rloo_k).",
)
def rloo_cmd(round_, reward_fns, reward_model, limit, resume, project_dir, **overrides):
    """Optimise the round's policy with RLOO against the reward model; save rounds/R/policy/.

    REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024): k responses per prompt,
    each one's advantage its reward minus the mean reward of the other k-1, the KL to the
    reference in the reward, no critic. The same stage as `rankloop ppo` (the [ppo] section
    of rankloop.toml, the same rollouts, evaluation and checkpoints), with RLOO's update.

    \b
    Example:
      rankloop rloo --round 0 --steps 100 --rloo-k 4
      rankloop rloo --steps 30 --reward-fn my_rewards:brevity --resume
    """
    run_policy_stage(
        "rloo", round_, reward_fns, reward_model, limit, resume, project_dir, **overrides
    )


@click.command("bon")
@policy_options
@click.option(
    "--bon-n",
    type=int,
    default=None,
    help="Responses sampled per prompt; the best is trained on ([ppo] bon_n).",
)
@click.option(
    "--bon-margin",
    type=float,
    default=None,
    help="Keep a prompt's best only if it beats the others' mean by this many standard "
    "deviations of the step's rewards ([ppo] bon_margin).",
)
def bon_cmd(round_, reward_fns, reward_model, limit, resume, project_dir, **overrides):
    """Optimise the round's policy with best-of-n fine-tuning; save rounds/R/policy/.

    Rejection-sampling fine-tuning (AlpacaFarm, RAFT): n responses per prompt, the one with
    the highest reward (score less the KL term) kept when it beats the prompt's other
    responses by the margin, then supervised LoRA steps on the kept responses. The same stage
    as `rankloop ppo` (the [ppo] section of rankloop.toml, the same rollouts, evaluation and
    checkpoints), with best-of-n's update.

    \b
    Example:
      rankloop bon --round 0 --steps 50 --bon-n 4
      rankloop bon --steps 30 --reward-fn my_rewards:brevity --bon-margin 1.0 --resume
    """
    run_policy_stage(
        "bon", round_, reward_fns, reward_model, limit, resume, project_dir, **overrides
    )


@click.command("odpo")
@policy_options
@click.option(
    "--odpo-k",
    type=int,
    default=None,
    help="Responses sampled per prompt; the best and the worst make its pair ([ppo] odpo_k).",
)
@click.option("--odpo-beta", type=float, default=None, help="DPO beta ([ppo] odpo_beta).")
@click.option(
    "--odpo-margin",
    type=float,
    default=None,
    help="Keep a prompt's pair when best and worst scores differ by this ([ppo] odpo_margin).",
)
@click.option(
    "--odpo-label-pairs",
    type=int,
    default=None,
    help="The round's labelled pairs added to each step (0 = none; [ppo] odpo_label_pairs).",
)
def odpo_cmd(round_, reward_fns, reward_model, limit, resume, project_dir, **overrides):
    """Optimise the round's policy with online DPO; save rounds/R/policy/.

    Online iterative DPO (Xiong et al. 2024): each step samples k responses per prompt from
    the current policy; the reward model's (or --reward-fn's) best and worst make the
    prompt's DPO pair when their scores differ by at least --odpo-margin, and the pairs
    people labelled on round R's candidates join every step's update. The reference is the
    base policy (the adapter disabled), as for PPO. The same stage as `rankloop ppo` (the
    [ppo] section, rollouts, evaluation, checkpoints), with DPO's update.

    \b
    Example:
      rankloop odpo --round 0 --steps 60 --odpo-k 4 --odpo-beta 0.1
      rankloop odpo --steps 30 --reward-fn my_rewards:brevity --odpo-label-pairs 0
    """
    run_policy_stage(
        "odpo", round_, reward_fns, reward_model, limit, resume, project_dir, **overrides
    )


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
            policy=rounds.start_policy(project, round_),
            preferences=prefs,
            out_dir=out,
            log=console.print,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    project.store.save_round(Round(round_, metrics=metrics))
    console.print(f"Saved the DPO adapter to {out}. Next: rankloop ppo --round {round_} --rto")
    project.close()
