"""`rankloop train-reward` and `rankloop score`: fit the round's reward model, score texts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from rankloop.app.cli import cli, console, open_project, project_option, user_errors
from rankloop.data.config import replace
from rankloop.data.records import Round
from rankloop.reward.config import LOSSES


def next_reward_round(store) -> int:
    """One after the last round that has a reward model, or 0."""
    done = [r.number for r in store.rounds() if r.reward_model]
    return max(done) + 1 if done else 0


def train_round(project, round_: int, cfg, *, base: str | None = None, resume: bool = False,
                progress: bool = True, max_steps: int | None = None):
    """Train round `round_`'s reward model on the labels of rounds <= it and record it."""
    from rankloop.reward.train import train_reward

    out = project.round_dir(round_, "reward")
    base = base or cfg.base or project.config.models.reward_model
    result = train_reward(project.store, cfg, out, base=base, round=round_, resume=resume,
                          progress=progress, log_dir=project.root / "logs",
                          max_steps=max_steps)
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v)
             for k, v in result.metrics.items()}
    project.store.save_round(Round(round_, reward_model=str(out.relative_to(project.root)),
                                   metrics=clean))
    score_open_comparisons(project, out, progress=progress)
    return result


def score_open_comparisons(project, reward_dir: Path, scorer=None, progress: bool = True) -> int:
    """Score the responses of every comparison that still needs labels with the new reward
    model, so the labeling queue's 'uncertainty' order puts the comparisons it is least sure
    about first (active learning). Returns how many responses were scored."""
    from rankloop.data.queue import record_scores
    from rankloop.reward.scoring import RewardScorer

    store = project.store
    n = project.config.labeling.labels_per_comparison
    open_ids = [cid for (cid,) in store.db.execute(
        "select comparison_id from comparison_queue where labels < ?", [n]).fetchall()]
    comps = [store.comparison(cid) for cid in open_ids]
    rids = sorted({rid for c in comps for rid in c.response_ids})
    if not rids:
        return 0
    responses = store.responses(ids=rids)
    prompts = {pid: store.prompt(pid) for pid in {r.prompt_id for r in responses}}
    scorer = scorer or RewardScorer.from_pretrained(str(reward_dir))
    scores = scorer.score([prompts[r.prompt_id] for r in responses], [r.text for r in responses])
    record_scores(store, str(reward_dir.relative_to(project.root)),
                  dict(zip(rids, scores.tolist())))
    if progress:
        console.print(f"Scored {len(rids)} responses of {len(comps)} open comparisons for the "
                      f"labeling queue's uncertainty order")
    return len(rids)


@cli.command("train-reward")
@click.option("--round", "round_", type=int, default=None,
              help="Round to train for (uses labels of rounds <= it; default: the next round "
                   "without a reward model).")
@click.option("--base", default=None, help="Backbone: a sequence-classification model or a "
              "causal LM (default: [reward] base, else [models] reward_model).")
@click.option("--lora/--full", "lora", default=None, help="LoRA adapter + head (default) or "
              "full fine-tuning.")
@click.option("--epochs", type=float, default=None)
@click.option("--batch-size", type=int, default=None, help="Comparisons per step.")
@click.option("--lr", type=float, default=None, help="Peak learning rate.")
@click.option("--loss", type=click.Choice(LOSSES), default=None,
              help="bt (ties as half wins), rao-kupper, davidson, plackett-luce.")
@click.option("--both-bad", type=click.Choice(["drop", "tie"]), default=None)
@click.option("--aggregate", type=click.Choice(["each", "majority"]), default=None,
              help="Several annotators per comparison: keep each label or the majority.")
@click.option("--eval-fraction", type=float, default=None, help="Share of prompts held out.")
@click.option("--max-length", type=int, default=None)
@click.option("--lora-r", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--checkpoint-every", type=int, default=None, help="Save a resumable checkpoint "
              "every N steps.")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
              help="Recompute activations in the backward pass: less memory, slower.")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile each transformer block: faster steps after a one-off compile "
              "(default: auto, on from 32 steps where it works).")
@click.option("--log-with", type=click.Choice(["", "tensorboard", "wandb"]), default=None)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint.")
@project_option
@user_errors
def train_reward_cmd(round_, base, lora, epochs, batch_size, lr, loss, both_bad, aggregate,
                     eval_fraction, max_length, lora_r, seed, checkpoint_every,
                     gradient_checkpointing, compile_, log_with, resume, project_dir):
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
    """
    from rankloop.reward.pairs import RewardDataError

    project = open_project(project_dir)
    cfg = replace(project.config.reward, lora=lora, epochs=epochs, batch_size=batch_size,
                  lr=lr, loss=loss, both_bad=both_bad, aggregate=aggregate,
                  eval_fraction=eval_fraction, max_length=max_length, lora_r=lora_r, seed=seed,
                  checkpoint_every=checkpoint_every,
                  gradient_checkpointing=gradient_checkpointing, compile=compile_,
                  log_with=log_with)
    if round_ is None:
        round_ = next_reward_round(project.store)
    try:
        result = train_round(project, round_, cfg, base=base, resume=resume)
    except RewardDataError as e:
        raise click.ClickException(str(e)) from None
    acc = result.metrics.get("reward/accuracy")
    held = (f"held-out accuracy {acc:.3f}" if acc is not None and not math.isnan(acc)
            else "no held-out split")
    console.print(f"Round {round_}: reward model saved to {result.path}\n"
                  f"  {result.train_examples} training comparisons, {result.eval_examples} "
                  f"held out; {result.steps} steps in {result.seconds:.0f} s"
                  f"{' (compiled)' if result.compiled else ''}; {held}")
    project.close()


@cli.command("score")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="JSONL file to write: the input rows with a `score` field.")
@click.option("--round", "round_", type=int, default=None,
              help="Use this round's reward model (default: the latest).")
@click.option("--model", "model_path", type=click.Path(exists=True, file_okay=False),
              default=None, help="Score with this reward model folder instead.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@project_option
@user_errors
def score_cmd(file, output, round_, model_path, batch_size, project_dir):
    """Score JSONL rows with `prompt` and `response` by a reward model; add a `score` field.

    `prompt` is a string or a conversation (a list of {role, content} turns); `response` is
    a string. Scores are raw rewards; reward_stats.json next to the model holds the mean and
    std over its training data.

    \b
    Example:
      rankloop score samples.jsonl --output scored.jsonl --round 1
    """
    from rankloop.reward.scoring import RewardScorer, latest_reward_model

    rows = read_score_rows(file)
    if model_path is None:
        project = open_project(project_dir)
        if round_ is None:
            model_path = latest_reward_model(project)
        else:
            r = project.store.round(round_)
            if r is None or not r.reward_model:
                raise click.ClickException(f"round {round_} has no reward model: run "
                                           f"`rankloop train-reward --round {round_}` first")
            model_path = project.root / r.reward_model
        project.close()
    scorer = RewardScorer.from_pretrained(model_path, batch_size=batch_size)
    scores = scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows])
    tmp = output.with_name(output.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row, s in zip(rows, scores.tolist()):
            f.write(json.dumps({**row, "score": s}, ensure_ascii=False) + "\n")
    tmp.replace(output)
    console.print(f"Scored {len(rows)} rows with {model_path} -> {output}")


def read_score_rows(path: Path) -> list[dict]:
    """The rows of a JSONL file, each checked for a `prompt` and a string `response`."""
    rows = []
    # split on "\n" only: str.splitlines would also cut at U+0085 / U+2028 inside a JSON string
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise click.ClickException(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or "prompt" not in row or "response" not in row:
            raise click.ClickException(f"{path}:{n}: each row needs `prompt` and `response`")
        p = row["prompt"]
        ok_prompt = isinstance(p, str) or (isinstance(p, list) and all(
            isinstance(m, dict) and "role" in m and "content" in m for m in p))
        if not ok_prompt or not isinstance(row["response"], str):
            raise click.ClickException(
                f"{path}:{n}: `prompt` must be a string or a list of {{role, content}} turns "
                f"and `response` a string")
        rows.append(row)
    if not rows:
        raise click.ClickException(f"{path} has no rows to score")
    return rows
