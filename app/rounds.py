"""Rounds: which models belong to round R, and the stages that run a round.

The one place that answers "which reward model / policy belongs to round R" and that runs a
stage and records it in the store. The CLI commands, the app and the tests call these; the
trainers themselves know nothing of projects or rounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from rankloop.data import queue
from rankloop.data.records import Round
from rankloop.settings import ConfigError

from .project import Project, ProjectError


def next_reward_round(project: Project) -> int:
    """One after the last round that has a reward model, or 0."""
    done = [r.number for r in project.store.rounds() if r.reward_model]
    return max(done) + 1 if done else 0


def reward_model_of(project: Project, round_: int | None = None) -> Path:
    """The reward model recorded for `round_`, or with None the latest round's that has one."""
    if round_ is not None:
        r = project.store.round(round_)
        if r is None or not r.reward_model:
            raise ProjectError(f"round {round_} has no reward model: run "
                               f"`rankloop train-reward --round {round_}` first")
        return project.root / r.reward_model
    for r in reversed(project.store.rounds()):
        if r.reward_model:
            return project.root / r.reward_model
    raise ProjectError("no round has a reward model yet: run `rankloop train-reward` first")


def ppo_reward_model(project: Project, round_: int, given: str | None = None) -> str:
    """The reward model PPO of round R optimises against: the one given, else round R's, else
    the latest trained one."""
    if given is None:
        rec = project.store.round(round_)
        given = str(project.root / rec.reward_model if rec is not None and rec.reward_model
                    else reward_model_of(project))
    if not Path(given).is_dir():
        raise ConfigError(f"reward model {given} is not a folder: train one with "
                          f"`rankloop train-reward --round {round_}` or pass --reward-model DIR")
    return given


def train_reward_stage(project: Project, round_: int, cfg, *, base: str | None = None,
                       resume: bool = False, progress: bool = True,
                       max_steps: int | None = None, log: Callable[[str], None] = print):
    """Train round `round_`'s reward model on the labels of rounds <= it, record it in the
    store, and score the open comparisons with it for the queue's uncertainty order."""
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
    n = score_open_comparisons(project, out)
    if n and progress:
        log(f"Scored {n} responses of the open comparisons for the labeling queue's "
            f"uncertainty order")
    return result


def score_open_comparisons(project: Project, reward_dir: Path, scorer=None) -> int:
    """Score the responses of every comparison that still needs labels with the new reward
    model, so the labeling queue's 'uncertainty' order puts the comparisons it is least sure
    about first (active learning). Returns how many responses were scored."""
    from rankloop.reward.scoring import RewardScorer

    store = project.store
    comps = queue.open_comparisons(store, project.config.labeling.labels_per_comparison)
    rids = sorted({rid for c in comps for rid in c.response_ids})
    if not rids:
        return 0
    responses = store.responses(ids=rids)
    prompts = {pid: store.prompt(pid) for pid in {r.prompt_id for r in responses}}
    scorer = scorer or RewardScorer.from_pretrained(str(reward_dir))
    scores = scorer.score([prompts[r.prompt_id] for r in responses], [r.text for r in responses])
    queue.record_scores(store, str(reward_dir.relative_to(project.root)),
                        dict(zip(rids, scores.tolist())))
    return len(rids)
