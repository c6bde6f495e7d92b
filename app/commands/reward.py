"""`rankloop train-reward` and `rankloop score`: fit the round's reward model, score texts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from rankloop.app import rounds
from rankloop.app.project import ProjectError
from rankloop.reward.config import ENSEMBLE_AGGREGATES, LOSSES
from rankloop.settings import replace

from .common import console, open_project, project_option, user_errors


@click.command("train-reward")
@click.option(
    "--round",
    "round_",
    type=int,
    default=None,
    help="Round to train for (uses labels of rounds <= it; default: the current round).",
)
@click.option(
    "--base",
    default=None,
    help="Backbone: a sequence-classification model or a "
    "causal LM (default: [reward] base, else [models] reward_model).",
)
@click.option(
    "--lora/--full", "lora", default=None, help="LoRA adapter + head (default) or full fine-tuning."
)
@click.option("--epochs", type=float, default=None)
@click.option("--batch-size", type=int, default=None, help="Comparisons per step.")
@click.option("--lr", type=float, default=None, help="Peak learning rate.")
@click.option(
    "--loss",
    type=click.Choice(LOSSES),
    default=None,
    help="bt (ties as half wins), rao-kupper, davidson, plackett-luce.",
)
@click.option("--both-bad", type=click.Choice(["drop", "tie"]), default=None)
@click.option(
    "--aggregate",
    type=click.Choice(["each", "majority"]),
    default=None,
    help="Several annotators per comparison: keep each label or the majority.",
)
@click.option("--eval-fraction", type=float, default=None, help="Share of prompts held out.")
@click.option("--max-length", type=int, default=None)
@click.option("--lora-r", type=int, default=None)
@click.option(
    "--lora-layers",
    type=int,
    default=None,
    help="LoRA on the top N decoder blocks only (0 = all): steps run those blocks only.",
)
@click.option("--seed", type=int, default=None)
@click.option(
    "--checkpoint-every", type=int, default=None, help="Save a resumable checkpoint every N steps."
)
@click.option(
    "--gradient-checkpointing/--no-gradient-checkpointing",
    default=None,
    help="Recompute activations in the backward pass: less memory, slower.",
)
@click.option(
    "--compile/--no-compile",
    "compile_",
    default=None,
    help="torch.compile each transformer block: faster steps after a one-off compile "
    "(default: auto, on from 32 steps where it works).",
)
@click.option(
    "--log-with",
    default=None,
    help="Trackers, comma-separated: tensorboard, "
    "trackio, wandb (offline); runs go under the project's logs/.",
)
@click.option(
    "--ensemble",
    type=int,
    default=None,
    help="Members: N heads on one shared backbone, each on a bootstrap resample (1 = one model).",
)
@click.option(
    "--ensemble-aggregate",
    type=click.Choice(ENSEMBLE_AGGREGATES),
    default=None,
    help="What the policy stage optimises: the members' mean, mean - k std, or the worst.",
)
@click.option("--ensemble-k", type=float, default=None, help="k of mean_minus_std.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint.")
@project_option
@user_errors
def train_reward_cmd(
    round_,
    base,
    lora,
    epochs,
    batch_size,
    lr,
    loss,
    both_bad,
    aggregate,
    eval_fraction,
    max_length,
    lora_r,
    lora_layers,
    seed,
    checkpoint_every,
    gradient_checkpointing,
    compile_,
    log_with,
    ensemble,
    ensemble_aggregate,
    ensemble_k,
    resume,
    project_dir,
):
    """Fit the reward model on every label up to the round; save it to rounds/R/reward/.

    Options override the [reward] section of rankloop.toml for this run. The model is saved
    as a standard checkpoint (AutoModelForSequenceClassification / pipeline load it) with
    reward_stats.json; held-out metrics go into the round's record (`rankloop status`).
    Run it under `accelerate launch` to use several GPUs or processes.

    \b
    Example:
      rankloop train-reward --epochs 2 --loss davidson
      rankloop train-reward --round 1 --full --lr 1e-5 --checkpoint-every 50
      rankloop train-reward --round 1 --resume
      rankloop train-reward --ensemble 4 --ensemble-aggregate mean_minus_std --ensemble-k 1
    """
    from rankloop.reward.pairs import RewardDataError

    project = open_project(project_dir)
    cfg = replace(
        project.config.reward,
        lora=lora,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        loss=loss,
        both_bad=both_bad,
        aggregate=aggregate,
        eval_fraction=eval_fraction,
        max_length=max_length,
        lora_r=lora_r,
        lora_layers=lora_layers,
        seed=seed,
        checkpoint_every=checkpoint_every,
        gradient_checkpointing=gradient_checkpointing,
        compile=compile_,
        log_with=log_with,
        ensemble=ensemble,
        ensemble_aggregate=ensemble_aggregate,
        ensemble_k=ensemble_k,
    )
    round_ = rounds.resolve_round(project, round_)
    try:
        result = rounds.train_reward_stage(
            project, round_, cfg, base=base, resume=resume, log=console.print
        )
    except RewardDataError as e:
        raise click.ClickException(str(e)) from None
    console.print(
        f"Round {round_}: reward model saved to {result.path}\n"
        f"  {result.train_examples} training comparisons, {result.eval_examples} "
        f"held out; {result.steps} steps in {result.seconds:.0f} s, loop "
        f"{result.loop_seconds:.0f} s{' (compiled)' if result.compiled else ''}"
    )
    console.print(f"  {heldout_summary(result.metrics)}")
    console.print(f"  {phase_line(result.phases)}")
    project.close()


def heldout_summary(m: dict) -> str:
    """The held-out accuracy (an ensemble's: its mean's, and the members' range and spread)
    beside the frozen-feature probe's on the same split, with a warning when the model is not
    good enough by `rankloop.reward.metrics.baseline_verdict`, the rule the round applies."""
    from rankloop.reward.metrics import baseline_verdict

    acc, probe = m.get("reward/accuracy"), m.get("reward/probe_accuracy")
    verdict = baseline_verdict(m)
    if acc is None or math.isnan(acc):
        line = "no held-out split (eval_fraction = 0): nothing to compare with"
    else:
        line = f"held-out accuracy {acc:.3f} ({int(m['reward/eval_pairs'])} pairs)"
        if "reward/spread" in m:
            line += (
                f", ensemble mean; members {m['reward/member_accuracy_min']:.3f}-"
                f"{m['reward/member_accuracy_max']:.3f}, spread {m['reward/spread']:.3f}"
            )
        if probe is not None and not math.isnan(probe):
            line += f"; frozen-feature probe baseline {probe:.3f}"
            if "reward/probe_cv_accuracy" in m:  # what [rounds] reward = 'auto' decides on
                line += (
                    f" ({m['reward/probe_cv_accuracy']:.3f} +- {m['reward/probe_cv_se']:.3f} "
                    f"cross-validated on the training labels)"
                )
    if verdict.message:
        line += f"\n  warning: {verdict.message}; label more comparisons"
        if verdict.level == "lost":
            line += (
                " (`rankloop round` will not optimise it: it optimises the probe instead or "
                "stops, [rounds] weak_reward)"
            )
        elif acc is not None and not math.isnan(acc):
            line += ", or try more --epochs or another --lr"
    return line


def phase_line(phases: dict) -> str:
    """Where the command's time went: `TrainResult.phases` in seconds, in run order."""
    order = ("load", "probe", "ensemble", "loop", "scoring", "saving")
    return "time: " + ", ".join(f"{k} {phases[k]:.1f} s" for k in order if k in phases)


@click.command("score")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL file to write: the input rows with a `score` field.",
)
@click.option(
    "--round",
    "round_",
    type=int,
    default=None,
    help="Use this round's reward model (default: the latest).",
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Score with this reward model folder instead.",
)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option(
    "--device",
    default=None,
    help="Where to score: auto, cpu, cuda, cuda:N, mps "
    "(default: the project's [runtime] device, else auto: a GPU when there is one).",
)
@project_option
@user_errors
def score_cmd(file, output, round_, model_path, batch_size, device, project_dir):
    """Score JSONL rows with `prompt` and `response` by a reward model; add a `score` field.

    `prompt` is a string or a conversation (a list of {role, content} turns); `response` is
    a string. Scores are raw rewards; reward_stats.json next to the model holds the mean and
    std over its training data.

    \b
    Example:
      rankloop score samples.jsonl --output scored.jsonl --round 1
    """
    from rankloop.reward.scoring import RewardScorer

    rows = read_score_rows(file)
    if model_path is None or device is None:
        try:
            project = open_project(project_dir)
        except ProjectError:
            if model_path is None:
                raise
            project = None  # --model outside a project: the device rule's 'auto'
        if project is not None:
            model_path = model_path or rounds.reward_model_of(project, round_)
            device = device or project.config.runtime.device
            project.close()
    scorer = RewardScorer.from_pretrained(
        model_path, batch_size=batch_size, device=device or "auto"
    )
    scores = scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows])
    tmp = output.with_name(output.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row, s in zip(rows, scores.tolist()):
            f.write(json.dumps({**row, "score": s}, ensure_ascii=False) + "\n")
    tmp.replace(output)
    console.print(f"Scored {len(rows)} rows with {model_path} -> {output}")


def read_score_rows(path: Path) -> list[dict]:
    """The rows of a JSONL file (data/io.py's reader), each with a `prompt` as the importer
    accepts it and a string `response`."""
    # the importer's own checks, so `score` and `import` accept the same prompts
    from rankloop.data.io import _parse_prompt as parse_prompt
    from rankloop.data.io import read_jsonl

    rows = []
    for where, row in read_jsonl(path):
        if "prompt" not in row or "response" not in row:
            raise click.ClickException(f"{path}: {where}: each row needs `prompt` and `response`")
        try:
            parse_prompt(row["prompt"], "prompt")
        except ValueError as e:
            raise click.ClickException(f"{path}: {where}: {e}") from None
        if not isinstance(row["response"], str):
            raise click.ClickException(f"{path}: {where}: `response` must be a string")
        rows.append(row)
    if not rows:
        raise click.ClickException(f"{path} has no rows to score")
    return rows
