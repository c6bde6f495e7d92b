"""Rounds: which models belong to round R, and the stages that run a round.

The one place that answers "which reward model / policy belongs to round R" (`start_policy`,
`trained_policy`, `reward_model_of`, `policy_reward_model`, `rto_adapter`, `round_optimizer`,
`round_label_pairs`)
and that runs a stage and records it in the store (`train_reward_stage`, `policy_stage`). The
CLI commands, the app and the tests call these; the trainers themselves know nothing of
projects or rounds.

Round R's two policies, named so that neither can be read as the other:
  start_policy(R)    what round R starts from: it samples round R's candidates, and round R's
                     policy stage starts from it (the base policy for round 0)
  trained_policy(R)  what round R's policy stage trained (rounds/R/policy), the start policy
                     of round R + 1; `Round(R).policy` in the store
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rankloop.data import queue
from rankloop.data.curves import record_curve
from rankloop.data.records import Preference, Prompt, Round
from rankloop.data.store import now as now_iso
from rankloop.lm.checkpoints import checkpoint_dir
from rankloop.lm.loading import ModelLoadError, adapter_base, resolve
from rankloop.settings import ConfigError

from .project import Project, ProjectError

# ---------------------------------------------------------------------------------------------
# which models belong to round R
# ---------------------------------------------------------------------------------------------


def trained_policy(project: Project, round_: int) -> str | None:
    """The policy round R's policy stage trained and recorded (rounds/R/policy), or None; as a
    path to load from (the store keeps it relative to the project: `Project.resolve`)."""
    rec = project.store.round(round_)
    return project.resolve(rec.policy) if rec is not None and rec.policy else None


def start_policy(project: Project, round_: int) -> str:
    """The policy round R starts from: the base policy for round 0, else the policy trained in
    round R - 1. It samples round R's candidates and is where round R's policy stage begins."""
    if round_ == 0:
        return project.config.models.policy
    trained = trained_policy(project, round_ - 1)
    if trained is None:
        raise ProjectError(
            f"round {round_ - 1} has no trained policy yet: run "
            f"`rankloop round` (or `rankloop ppo --round {round_ - 1}`) first, or "
            f"generate for round 0"
        )
    return trained


def round_optimizer(
    project: Project, given: str | None = None, reward_fns: Sequence[str] = ()
) -> str:
    """The optimiser of the policy stage: the one given (`--optimizer`), else [rounds]
    optimizer; 'auto' is PPO against a reward function (`--reward-fn`, trusted) and best-of-n
    against a learned reward model (measured in docs/benchmarks.md: PPO gained twice as much
    on a known-good reward, best-of-n won the loop on learned ones)."""
    from rankloop.ppo.config import OPTIMIZERS

    name = given or project.config.rounds.optimizer
    if name == "auto":
        return "ppo" if reward_fns else "bon"
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer {name!r}: expected 'auto' or one of {', '.join(OPTIMIZERS)}")
    return name


def round_label_pairs(project: Project, round_: int, prompts: Sequence[Prompt]) -> list[Preference]:
    """The labelled pairs of round R's own candidates, for an optimiser that trains on labels
    too (online DPO): the untied pairs of round R's labels (the sources reward training reads,
    `label_sources`) whose two responses round R's start policy sampled, on the training
    `prompts`. Imported responses, older rounds' and the evaluation prompts' are left out:
    DPO's pairs should come from the policy it starts from, and the held-out prompts stay
    unseen."""
    train = {p.id for p in prompts}
    sources = label_sources(project)
    pairs = [
        p
        for p in project.store.preferences(round=round_)
        if p.round == round_ and not p.tie and p.source in sources and p.prompt.id in train
    ]
    ids = sorted({i for p in pairs for i in (p.chosen_id, p.rejected_id)})
    own = {
        r.id
        for r in (project.store.responses(ids=ids) if ids else [])
        if r.source == "generated" and r.round == round_
    }
    return [p for p in pairs if p.chosen_id in own and p.rejected_id in own]


def rto_adapter(project: Project, round_: int, cfg) -> str | None:
    """The DPO adapter RTO's token rewards come from (with [ppo] rto): [ppo] rto_model, else
    rounds/R/dpo from `rankloop train-dpo --round R`; None without rto."""
    if not cfg.rto:
        return None
    dpo = cfg.rto_model or str(project.round_dir(round_, "dpo"))
    if not (Path(dpo) / "adapter_config.json").exists():
        raise ConfigError(
            f"--rto needs a DPO adapter at {dpo}: run `rankloop train-dpo --round {round_}` first"
        )
    return dpo


def reward_model_of(project: Project, round_: int | None = None) -> Path:
    """The reward model recorded for `round_`, or with None the latest round's that has one."""
    if round_ is not None:
        r = project.store.round(round_)
        if r is None or not r.reward_model:
            raise ProjectError(
                f"round {round_} has no reward model: run "
                f"`rankloop train-reward --round {round_}` first"
            )
        return Path(project.resolve(r.reward_model))
    for r in reversed(project.store.rounds()):
        if r.reward_model:
            return Path(project.resolve(r.reward_model))
    raise ProjectError("no round has a reward model yet: run `rankloop train-reward` first")


def policy_reward_model(project: Project, round_: int, given: str | None = None) -> str:
    """The reward model round R's policy stage optimises against: the one given, else round
    R's, else the latest trained one."""
    if given is None:
        rec = project.store.round(round_)
        given = str(
            project.resolve(rec.reward_model)
            if rec is not None and rec.reward_model
            else reward_model_of(project)
        )
    if not Path(given).is_dir():
        raise ConfigError(
            f"reward model {given} is not a folder: train one with "
            f"`rankloop train-reward --round {round_}` or pass --reward-model DIR"
        )
    return given


def train_reward_stage(
    project: Project,
    round_: int,
    cfg,
    *,
    base: str | None = None,
    resume: bool = False,
    progress: bool = True,
    max_steps: int | None = None,
    log: Callable[[str], None] = print,
    on_step: Callable[[dict], None] | None = None,
):
    """Train round `round_`'s reward model on the labels of rounds <= it, record it in the
    store, and score the open comparisons with it for the queue's uncertainty order.
    `on_step(row)`: after each optimizer step (`train_reward`'s)."""
    from rankloop.reward.pairs import check_trainable
    from rankloop.reward.train import train_reward

    cfg.validate()
    data = round_examples(project, round_, cfg)
    check_trainable(data, round_)
    out = project.round_dir(round_, "reward")
    base = base or cfg.base or project.config.models.reward_model
    result = train_reward(
        data.examples,
        cfg,
        out,
        base=base,
        resume=resume,
        progress=progress,
        log_dir=project.root / "logs",
        max_steps=max_steps,
        on_step=on_step,
    )
    result.metrics["reward/disagreement"] = data.disagreement
    clean = {
        k: (None if isinstance(v, float) and math.isnan(v) else v)
        for k, v in result.metrics.items()
    }
    project.store.save_round(Round(round_, reward_model=project.stored(out), metrics=clean))
    n = score_open_comparisons(project, out)
    if n and progress:
        log(
            f"Scored {n} responses of the open comparisons for the labeling queue's "
            f"uncertainty order"
        )
    return result


def score_open_comparisons(project: Project, reward_dir: Path, scorer=None) -> int:
    """Score the responses of every comparison that still needs labels with the new reward
    model, so the labeling queue's 'uncertainty' order puts the comparisons it is least sure
    about first (active learning). Returns how many responses were scored."""
    from rankloop.reward.ensemble import aggregate_scores
    from rankloop.reward.scoring import RewardScorer

    store = project.store
    comps = queue.open_comparisons(store, project.config.labeling.labels_per_comparison)
    rids = sorted({rid for c in comps for rid in c.response_ids})
    if not rids:
        return 0
    responses = store.responses(ids=rids)
    prompts = {pid: store.prompt(pid) for pid in {r.prompt_id for r in responses}}
    scorer = scorer or RewardScorer.from_pretrained(
        str(reward_dir), device=project.config.runtime.device
    )
    texts = ([prompts[r.prompt_id] for r in responses], [r.text for r in responses])
    members = scorer.score_members(*texts)  # (N, M): an ensemble's disagreement orders the queue
    scores = aggregate_scores(members, scorer.aggregate, scorer.k)
    queue.record_scores(
        store,
        project.stored(reward_dir),
        dict(zip(rids, scores.tolist())),
        dict(zip(rids, members.tolist())) if members.shape[1] > 1 else None,
    )
    return len(rids)


# ---------------------------------------------------------------------------------------------
# the current round, and the one rule for every command's --round
# ---------------------------------------------------------------------------------------------

STAGES = ("reward", "ppo", "generate", "compare", "advance")
"""The stages of `rankloop round` for the current round R, in order: train R's reward model on
the labels of rounds <= R; PPO from policy R-1 (or the base) against it, saved as R's policy;
sample round R+1's candidates from it; build R+1's comparisons across rounds; make R+1 current."""


def resolve_round(project: Project, given: int | None = None) -> int:
    """The round a command works on: the one given, else the current round (the round whose
    samples are being labeled). `train-reward` trains on its labels, `ppo` optimises its policy,
    `generate` samples its candidates, `simulate` labels them: every `--round` defaults here."""
    return project.store.current_round() if given is None else given


def is_eval_prompt(prompt: Prompt, fraction: float) -> bool:
    """Whether a prompt is held out from PPO to measure the rounds ([rounds] eval_fraction).

    Decided by the prompt's content hash, so it never changes as prompts are added; about
    `fraction` of the prompts are held out."""
    return int(prompt.hash[:8], 16) < fraction * 16**8


def split_prompts(prompts: Sequence[Prompt], fraction: float) -> tuple[list[Prompt], list[Prompt]]:
    """(PPO's training prompts, the evaluation prompts), each in the given order."""
    held = [is_eval_prompt(p, fraction) for p in prompts]
    return ([p for p, h in zip(prompts, held) if not h], [p for p, h in zip(prompts, held) if h])


def ppo_prompts(project: Project, limit: int | None = None) -> list[Prompt]:
    """The prompts PPO trains on: the project's (the first `limit`), less the evaluation ones."""
    prompts = project.store.prompts(limit=limit)
    if not prompts:
        raise ConfigError("the project has no prompts: run `rankloop import FILE` first")
    train, held = split_prompts(prompts, project.config.rounds.eval_fraction)
    if not train:
        raise ConfigError(
            f"all {len(held)} prompts are held out for evaluation: lower "
            f"[rounds] eval_fraction or import more prompts"
        )
    return train


def next_step(project: Project) -> str:
    """What to run next in the current round, as `rankloop status` says it."""
    store = project.store
    r = store.current_round()
    if not store.prompts(limit=1):
        return "rankloop import FILE (or --bundled): add prompts"
    if not store.comparisons(round=r):
        return (
            f"rankloop generate: sample round {r}'s candidates"
            if r == 0
            else f"rankloop generate --round {r}: sample round {r}'s candidates"
        )
    done = {s.stage for s in store.stages(r)}
    if done:
        todo = next(s for s in STAGES if s not in done)
        return f"rankloop round: round {r} stopped before its '{todo}' stage; this continues it"
    n = project.config.labeling.labels_per_comparison
    open_now = sum(1 for c in queue.open_comparisons(store, n) if c.round == r)
    if open_now:
        return (
            f"label round {r}: {open_now} comparisons still need labels (rankloop serve, "
            f"or rankloop simulate for a dry run); then rankloop round"
        )
    return f"rankloop round: train on round {r}'s labels, then sample round {r + 1}"


# ---------------------------------------------------------------------------------------------
# candidates: sampling a round, cross-round comparisons, scoring them for the queue
# ---------------------------------------------------------------------------------------------


def generate_candidates(
    project: Project,
    round_: int,
    cfg,
    *,
    limit: int | None = None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
):
    """Sample round `round_`'s candidates from its `start_policy` and group them into
    comparisons. Resumable: see `app/generate.py`."""
    from .generate import generate

    policy = start_policy(project, round_)
    return generate(
        project.store,
        policy,
        cfg,
        policy_name=project.stored(policy),
        round=round_,
        k=project.config.labeling.k,
        limit=limit,
        progress=progress,
        on_batch=on_batch,
        device=project.config.runtime.device,
    )


def cross_round_comparisons(project: Project, round_: int, *, limit: int | None = None) -> int:
    """Give each evaluation prompt of round `round_` (> 0) comparisons of a new response
    against a round R-1 response and against a round-0 response, [rounds] eval_comparisons of
    each. Returns how many were created (none twice)."""
    from .generate import make_cross_round_comparisons

    if round_ == 0:
        return 0
    rc = project.config.rounds
    _, held = split_prompts(project.store.prompts(limit=limit), rc.eval_fraction)
    return make_cross_round_comparisons(
        project.store,
        round_,
        (round_ - 1, 0),
        [p.id for p in held],
        rc.eval_comparisons,
        seed=project.config.generate.seed,
    )


def score_new_comparisons(project: Project, scorer=None) -> int:
    """Score the open comparisons with the latest reward model, when there is one, so that the
    queue's 'uncertainty' order covers new comparisons at once. Returns responses scored."""
    try:
        reward_dir = reward_model_of(project)
    except ProjectError:
        return 0
    if not reward_dir.is_dir():
        return 0
    return score_open_comparisons(project, reward_dir, scorer)


def sample_candidates(
    project: Project, round_: int, cfg, *, limit: int | None = None, progress: bool = True
):
    """`rankloop generate`: sample the round's candidates, add the cross-round comparisons of
    its evaluation prompts, score the new comparisons, and make the round current if it is
    newer than the current one. Returns (GenerateReport, cross-round comparisons created)."""
    report = generate_candidates(project, round_, cfg, limit=limit, progress=progress)
    cross = cross_round_comparisons(project, round_, limit=limit)
    score_new_comparisons(project)
    if round_ > project.store.current_round():
        project.store.set_current_round(round_)
    return report, cross


# ---------------------------------------------------------------------------------------------
# PPO's reward, and whether the reward model is worth optimising
# ---------------------------------------------------------------------------------------------


def ppo_reward(
    project: Project,
    round_: int,
    cfg,
    reward_fns: Sequence[str] = (),
    reward_model: str | None = None,
    probe: bool = False,
    mix: bool = False,
):
    """(reward source, reward model folder or None) for PPO of round R: --reward-fn wins,
    else the reward model of `policy_reward_model`, or its frozen-feature probe (`probe`, see
    `optimises_probe`), or the mean of the two normalised scores (`mix`: [rounds] reward =
    'model+probe')."""
    from rankloop.ppo.reward_fns import ScorerReward, WeightedSum, parse_reward_spec

    if reward_fns:
        return parse_reward_spec(reward_fns), reward_model
    reward_model = policy_reward_model(project, round_, reward_model)
    # loaded lazily: with the default critic, scoring shares the critic's frozen weights
    model = ScorerReward(
        None, cfg.normalize_scores, cfg.score_clip, path=reward_model, bf16=cfg.bf16
    )
    if not (probe or mix):
        return model, reward_model
    from rankloop.reward.scoring import ProbeScorer

    try:
        scorer = ProbeScorer.from_pretrained(reward_model, device=project.config.runtime.device)
    except FileNotFoundError as e:
        raise ConfigError(f"{e} (or set [rounds] reward = 'model')") from None
    # no critic shares the probe: a PPO critic starts from the reward model, not from it
    probe_source = ScorerReward(scorer, cfg.normalize_scores, cfg.score_clip)
    probe_source.name = f"probe:{reward_model}"
    if probe:
        return probe_source, reward_model
    source = WeightedSum([(0.5, model), (0.5, probe_source)])
    source.name = f"model+probe:{reward_model}"
    return source, reward_model


def mixes_probe(project: Project, round_: int, reward_model: str | None = None, log=None) -> bool:
    """Does round R's policy stage optimise the mean of its reward model's and its probe's
    normalised scores? [rounds] reward = 'model+probe': yes; 'model': no; 'auto': when the
    probe ranks the round's training labels above chance with 95% confidence, cross-validated,
    and the held-out split does not show the model clearly ahead of it
    (`reward.probe.mix_decision`, from probe.json): a probe at chance, or far behind the model,
    only dilutes the model's score. `log` hears the decision under 'auto'."""
    setting = project.config.rounds.reward
    if setting != "auto":
        return setting == "model+probe"
    from rankloop.reward.probe import mix_decision
    from rankloop.reward.scoring import PROBE_FILE

    f = Path(policy_reward_model(project, round_, reward_model)) / PROBE_FILE
    mix, why = mix_decision(json.loads(f.read_text()) if f.exists() else {})
    if log is not None:
        log(
            f"reward: the model {'and its probe' if mix else 'alone'} "
            f"([rounds] reward = 'auto': the probe {why})"
        )
    return mix


def reward_verdict(metrics: dict) -> str | None:
    """None when the reward model is good enough to optimise, else why not: the one rule of
    `rankloop.reward.metrics.baseline_verdict` (beats its frozen-feature probe, else chance;
    a tie at 1.000 is fine), which `rankloop train-reward`'s summary applies too. A reward
    model that does not beat its baseline teaches PPO nothing real, and optimising it only moves
    the policy away from its reference."""
    from rankloop.reward.metrics import baseline_verdict

    return baseline_verdict(metrics).message


def reward_gate(metrics: dict, weak_reward: str, round_: int, has_probe: bool = True):
    """The verdict on round R's reward model (`baseline_verdict`), or RoundStopped: always
    when it lost to its baseline by more than the standard error (unless [rounds] weak_reward
    = 'run', or 'probe' and the model has its probe saved: then the probe is optimised), and
    when it is merely weak under weak_reward = 'stop'."""
    from rankloop.reward.metrics import baseline_verdict

    verdict = baseline_verdict(metrics)
    redo = "label more comparisons, then run `rankloop round --redo reward`"
    if weak_reward == "probe" and lost_to_probe(metrics):
        if has_probe:
            return verdict
        raise RoundStopped(
            f"{verdict.message}. Round {round_} stops before its policy stage: [rounds] "
            f"weak_reward = 'probe' but the reward model has no saved probe (probe.json; it "
            f"was resumed or trained by an older rankloop): run `rankloop round --redo reward`"
        )
    if verdict.level == "lost" and weak_reward != "run":
        raise RoundStopped(
            f"{verdict.message}. Round {round_} stops before its policy stage: {redo}; or set "
            f"[rounds] weak_reward = 'run' in rankloop.toml to optimise it anyway"
        )
    if verdict.level != "ok" and weak_reward == "stop":
        raise RoundStopped(
            f"{verdict.message}. Round {round_} stops before its policy stage ([rounds] "
            f"weak_reward = 'stop'): {redo}"
        )
    return verdict


def lost_to_probe(metrics: dict) -> bool:
    """The reward model's held-out accuracy lost to its frozen-feature probe (not to chance) by
    more than the standard error: `baseline_verdict`'s "lost" with a probe measured."""
    from rankloop.reward.metrics import baseline_verdict

    return "reward/probe_accuracy" in metrics and baseline_verdict(metrics).level == "lost"


def probe_doubt(probe_file: Path) -> str:
    """What the gate's warning adds when the probe it falls back on knows no more than the
    model: '' when the probe ranks the round's training labels above chance (cross-validated,
    `reward.probe.informative`, the test `[rounds] reward = "auto"` applies), else the
    evidence. Swapping a model at chance for a probe at chance optimises a guess either way
    (measured on the loop benchmark: docs/benchmarks.md)."""
    from rankloop.reward.probe import informative

    spec = json.loads(probe_file.read_text()) if probe_file.exists() else {}
    acc, se = spec.get("cv_accuracy"), spec.get("cv_se")
    if informative(acc, se):
        return ""
    known = (
        f"ranks the training labels at {acc:.3f} +- {se:.3f}, cross-validated, not above chance"
        if acc is not None and se is not None
        else "has no cross-validated accuracy saved"
    )
    return f", though the probe too {known}: neither has learned the labels yet; label more"


def optimises_probe(project: Project, round_: int) -> bool:
    """True when round R's policy stage optimises its reward model's frozen-feature probe
    instead of the model: [rounds] weak_reward = 'probe' and the model, as recorded by the
    round's reward stage, lost to that probe (`lost_to_probe`, the rule `reward_gate` applies)."""
    if project.config.rounds.weak_reward != "probe":
        return False
    stage = next((st for st in project.store.stages(round_) if st.stage == "reward"), None)
    return stage is not None and lost_to_probe(stage.metrics)


def check_loadable(name: str) -> None:
    """Raise ModelLoadError (one line) when the model `name` (a checkpoint, a LoRA adapter
    folder, a hub id or the embedded default) cannot be loaded; reads configs only."""
    from transformers import AutoConfig

    base = adapter_base(name)
    path = base or name
    try:
        AutoConfig.from_pretrained(resolve(path))
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"cannot load policy '{name}': {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e


# ---------------------------------------------------------------------------------------------
# `rankloop round`: the stages of one round, each recorded when it finishes
# ---------------------------------------------------------------------------------------------


class RoundStopped(ProjectError):
    """The round stopped on purpose (a weak reward model with [rounds] weak_reward = 'stop')."""


@dataclass
class RoundSettings:
    """What one `rankloop round` runs with: each stage's config (the project's, with the
    command line's overrides) and, optionally, a Python reward for PPO instead of the model."""

    reward: object  # RewardConfig
    ppo: object  # PPOConfig
    generate: object  # GenerateConfig
    reward_fns: tuple[str, ...] = ()
    optimizer: str | None = None
    """The policy stage's optimiser (`--optimizer`); None: [rounds] optimizer."""

    @classmethod
    def of(
        cls, project: Project, reward_fns: Sequence[str] = (), optimizer: str | None = None
    ) -> RoundSettings:
        c = project.config
        return cls(c.reward, c.ppo, c.generate, tuple(reward_fns), optimizer)


@dataclass
class StagePlan:
    """One line of the plan: a stage, whether it already finished, what it does, and how long
    it should take (from the previous round's timing, scaled by the work; None: no timing)."""

    stage: str
    done: bool
    what: str
    estimate: float | None = None


@dataclass
class RoundPlan:
    round: int
    stages: list[StagePlan]
    labels: dict[str, int]  # labels of rounds <= R by source (those reward training reads)

    @property
    def estimate(self) -> float | None:
        todo = [s.estimate for s in self.stages if not s.done]
        return None if any(e is None for e in todo) else sum(todo)


@dataclass
class RoundSummary:
    """What a finished round reports (also in the store: the stages' records of round R)."""

    round: int
    labels: dict[str, int]
    seconds: dict[str, float]  # per stage, as recorded
    metrics: dict[str, float]  # the stages' metrics, merged
    warnings: list[str] = field(default_factory=list)
    optimizer: str | None = None  # the policy stage's, once it ran


def label_counts(project: Project, round_: int) -> dict[str, int]:
    """Labels of comparisons of rounds <= R by source, as reward training counts them
    (simulated ones only when [rounds] simulated_labels is on)."""
    counts: dict[str, int] = {}
    for lab in project.store.labels(round=round_):
        if lab.source in label_sources(project):
            counts[lab.source] = counts.get(lab.source, 0) + 1
    return counts


def _work(
    project: Project, round_: int, stage: str, s: RoundSettings, labels: dict[str, int]
) -> tuple[float, str]:
    """(amount of work, what the stage does) for the plan and the time estimate."""
    store = project.store
    if stage == "reward":
        if s.reward_fns:
            return 0.0, "skipped: the policy stage optimises --reward-fn " + " + ".join(
                s.reward_fns
            )
        n = sum(labels.values())
        return float(n), (
            f"train rounds/{round_}/reward on {n} labels of rounds <= {round_} "
            f"({', '.join(f'{v} {k}' for k, v in sorted(labels.items())) or 'none'})"
            f", {s.reward.epochs:g} epochs, base "
            f"{s.reward.base or project.config.models.reward_model}"
        )
    if stage == "ppo":
        policy = "the base policy" if round_ == 0 else f"round {round_ - 1}'s policy"
        reward = " + ".join(s.reward_fns) if s.reward_fns else f"rounds/{round_}/reward"
        prompts = len(split_prompts(store.prompts(), project.config.rounds.eval_fraction)[0])
        optimizer = round_optimizer(project, s.optimizer, s.reward_fns)
        k = {"rloo": s.ppo.rloo_k, "bon": s.ppo.bon_n, "odpo": s.ppo.odpo_k}.get(optimizer)
        each = f" x {k} samples" if k else ""
        return float(s.ppo.steps), (
            f"{s.ppo.steps} {optimizer.upper()} steps of {s.ppo.batch_size} prompts{each} "
            f"(of {prompts} training prompts) from {policy} against "
            f"{reward} -> rounds/{round_}/policy"
        )
    if stage == "generate":
        n = len(store.prompts()) * s.generate.n
        return float(n), (
            f"sample {s.generate.n} responses to each of {len(store.prompts())} "
            f"prompts from round {round_}'s new policy (round {round_ + 1}'s "
            f"candidates, <= {s.generate.max_new_tokens} tokens), grouped by "
            f"{project.config.labeling.k}"
        )
    if stage == "compare":
        held = len(split_prompts(store.prompts(), project.config.rounds.eval_fraction)[1])
        vs = f"round {round_} and round 0" if round_ else "round 0"
        return float(held), (
            f"cross-round comparisons for {held} evaluation prompts (a new "
            f"response vs {vs}, {project.config.rounds.eval_comparisons} "
            f"each); score the new comparisons with the latest reward model"
        )
    return 0.0, f"make round {round_ + 1} the current round"


def plan_round(project: Project, s: RoundSettings, redo: str | None = None) -> RoundPlan:
    """The plan of the current round's remaining stages, after the checks that can fail
    before anything is written: labels to train on, a loadable starting policy, prompts.
    Raises a user error (store unchanged) when the round cannot run. `redo`: plan as if that
    stage and the later ones had not run."""
    r = project.store.current_round()
    again = STAGES[STAGES.index(redo) :] if redo else ()
    done = {st.stage: st for st in project.store.stages(r) if st.stage not in again}
    labels = label_counts(project, r)
    if "reward" not in done and not s.reward_fns:
        check_labels(project, r, s.reward)
    if "ppo" not in done:
        check_loadable(start_policy(project, r))
        ppo_prompts(project)
        if "reward" in done and not s.reward_fns:
            policy_reward_model(project, r)
    previous = {st.stage: st for st in project.store.stages(r - 1)} if r > 0 else {}
    prev_labels = sum(label_counts(project, r - 1).values()) if r > 0 else 0
    stages = []
    for stage in STAGES:
        work, what = _work(project, r, stage, s, labels)
        before = previous.get(stage)
        if (
            stage == "ppo"
            and r > 0
            and optimizer_of(project, r - 1) != round_optimizer(project, s.optimizer, s.reward_fns)
        ):
            before = None  # another optimiser's timing says nothing about this one's
        estimate = None
        if before is not None:
            prev_work = {"reward": prev_labels, "ppo": before.metrics.get("ppo/steps", 0.0)}.get(
                stage, work
            )
            estimate = before.seconds * (work / prev_work if prev_work else 1.0)
        elif stage in ("advance",) or (stage == "reward" and s.reward_fns):
            estimate = 0.0
        stages.append(StagePlan(stage, stage in done, what, estimate))
    return RoundPlan(r, stages, labels)


def round_examples(project: Project, round_: int, cfg):
    """The reward trainer's examples for round R (`reward.pairs.build_examples`): the labels of
    rounds <= R from the sources `label_sources` allows, read with the [reward] settings `cfg`."""
    from rankloop.reward.pairs import build_examples

    return build_examples(
        project.store,
        round_,
        both_bad=cfg.both_bad,
        aggregate=cfg.aggregate,
        margin_slightly=cfg.margin_slightly,
        margin_much=cfg.margin_much,
        sources=label_sources(project),
    )


def check_labels(project: Project, round_: int, cfg) -> None:
    """Raise RewardDataError (one line) when the labels of rounds <= R cannot train a reward
    model; writes nothing."""
    from rankloop.reward.pairs import check_trainable

    cfg.validate()
    data = round_examples(project, round_, cfg)
    check_trainable(data, round_)


def label_sources(project: Project) -> tuple[str, ...]:
    """The label sources reward training reads: people's and imported labels, and simulated
    annotators' unless [rounds] simulated_labels = false."""
    return ("human", "external") + (
        ("simulated",) if project.config.rounds.simulated_labels else ()
    )


def run_round(
    project: Project,
    s: RoundSettings,
    *,
    log: Callable[[str], None] = print,
    progress: bool = True,
    on_event: Callable[[str, dict], None] | None = None,
) -> RoundSummary:
    """Run the current round R's unfinished stages (`STAGES`), recording each as it finishes,
    and return the summary. Killed at any point and run again, it continues with the first
    unfinished stage: every stage is idempotent (see docs/rounds.md).

    `on_event(stage, info)` is called as the work goes: each reward-model and PPO step, each
    batch of samples, and each stage's end (a test stops the round there to check the resume).
    """
    import time

    from rankloop.data.records import RoundStage

    plan = plan_round(project, s)
    r = plan.round
    store = project.store
    event = on_event or (lambda stage, info: None)
    warnings: list[str] = []
    for step in plan.stages:
        if step.done:
            continue
        if step.stage == "ppo" and not s.reward_fns:
            from rankloop.reward.scoring import PROBE_FILE

            verdict = reward_gate(
                next(st.metrics for st in store.stages(r) if st.stage == "reward"),
                project.config.rounds.weak_reward,
                r,
                has_probe=(reward_model_of(project, r) / PROBE_FILE).exists(),
            )
            why = verdict.message
            if why:
                setting = project.config.rounds.weak_reward
                what = (
                    "the policy stage optimises its probe instead"
                    + probe_doubt(reward_model_of(project, r) / PROBE_FILE)
                    if optimises_probe(project, r)
                    else "the policy stage runs anyway"
                )
                warnings.append(f"{why}; {what} ([rounds] weak_reward = '{setting}')")
                log(f"Warning: {warnings[-1]}")
        t0 = time.perf_counter()
        if step.stage == "reward":
            metrics = _reward_stage(project, r, s, log=log, progress=progress, event=event)
        elif step.stage == "ppo":
            metrics = _ppo_stage(project, r, s, log=log, progress=progress, event=event)
        elif step.stage == "generate":
            report = generate_candidates(
                project,
                r + 1,
                s.generate,
                progress=progress,
                on_batch=lambda n: event("generate", {"responses": n}),
            )
            metrics = {
                "generate/responses": float(report.generated),
                "generate/unfinished": float(report.unfinished),
                "generate/comparisons": float(report.comparisons_created),
            }
        elif step.stage == "compare":
            cross = cross_round_comparisons(project, r + 1)
            event("compare", {"cross_round": cross})
            metrics = {
                "compare/cross_round": float(cross),
                "compare/scored": float(score_new_comparisons(project)),
            }
        else:
            metrics = {}
        seconds = time.perf_counter() - t0
        with store.transaction():  # the stage's record, and for 'advance' its effect, at once
            if step.stage == "advance":
                store.save_round(Round(r, finished_at=now_iso()))
                store.set_current_round(r + 1)
            store.finish_stage(RoundStage(r, step.stage, seconds, metrics))
        event(step.stage, {"done": True, **metrics})
    return summarize_round(project, r, warnings)


def summarize_round(project: Project, round_: int, warnings=()) -> RoundSummary:
    """The summary of round R from its stage records."""
    stages = project.store.stages(round_)
    metrics: dict = {}
    for st in stages:
        metrics.update(st.metrics)
    return RoundSummary(
        round_,
        label_counts(project, round_),
        {st.stage: st.seconds for st in stages},
        metrics,
        list(warnings),
        optimizer_of(project, round_),
    )


def redo(project: Project, stage: str) -> list[str]:
    """Forget `stage` and the later stages of the current round, so `rankloop round` runs
    them again. Returns the stages forgotten."""
    if stage not in STAGES[:-1]:
        raise ConfigError(f"--redo {stage!r}: choose one of {', '.join(STAGES[:-1])}")
    r = project.store.current_round()
    later = STAGES[STAGES.index(stage) :]
    done = {st.stage for st in project.store.stages(r)}
    with project.store.transaction():
        for name in later:
            project.store.forget_stage(r, name)
    return [name for name in later if name in done]


def _reward_stage(project: Project, r: int, s: RoundSettings, *, log, progress, event) -> dict:
    if s.reward_fns:
        return {"reward/skipped": 1.0}
    ckpts = checkpoint_dir(project.round_dir(r, "reward"))
    result = train_reward_stage(
        project,
        r,
        s.reward,
        resume=ckpts.is_dir(),
        progress=progress,
        log=log,
        on_step=lambda row: event("reward", row),
    )
    labels = label_counts(project, r)
    out = {f"labels/{k}": float(v) for k, v in labels.items()}
    for key in (
        "reward/accuracy",
        "reward/probe_accuracy",
        "reward/eval_pairs",
        "reward/train_accuracy",
        "reward/ece",
        "reward/members",
        "reward/member_accuracy_min",
        "reward/member_accuracy_max",
        "reward/spread",
    ):
        v = result.metrics.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out[key] = float(v)
    out["reward/steps"] = float(result.steps)
    return out


def _ppo_stage(project: Project, r: int, s: RoundSettings, *, log, progress, event) -> dict:
    result = policy_stage(
        project,
        r,
        s.ppo,
        optimizer=s.optimizer,
        reward_fns=s.reward_fns,
        progress=progress,
        log=log,
        on_step=lambda row: event("ppo", row),
    )
    return dict(result.summary)


def policy_stage(
    project: Project,
    r: int,
    cfg,
    *,
    optimizer: str | None = None,
    reward_fns: Sequence[str] = (),
    reward_model: str | None = None,
    limit: int | None = None,
    resume: bool | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_step: Callable[[dict], None] | None = None,
):
    """Round R's policy stage, the one wiring `rankloop round`, `rankloop ppo`, `rankloop
    rloo` and `rankloop bon` share: train from `start_policy(R)` with `optimizer` (default [rounds] optimizer)
    against `reward_fns` or the round's reward model, on the training prompts (the first
    `limit`), and record rounds/R/policy, the optimiser, its summary and its curve. An
    optimiser that trains on labelled pairs too (online DPO) gets `round_label_pairs(R)`.

    The run goes into rounds/R/policy.partial, renamed to rounds/R/policy when finished, so a
    killed run never leaves a policy that looks finished. `resume`: None (the round) continues
    from the partial folder's newest checkpoint ([ppo] checkpoint_every) when there is one;
    True (`--resume`) continues from it, or from the finished policy's checkpoints to run
    longer; False starts over. Returns the trainer's result."""
    import shutil

    from rankloop.ppo.train import latest_checkpoint, optimizer_update, train_policy

    optimizer = round_optimizer(project, optimizer, reward_fns)
    policy = start_policy(project, r)
    prompts = ppo_prompts(project, limit)  # the evaluation prompts are held out
    preferences = []
    if getattr(optimizer_update(optimizer, cfg), "takes_preferences", False):
        preferences = round_label_pairs(project, r, prompts)
    probe = not reward_fns and reward_model is None and optimises_probe(project, r)
    mix = not (reward_fns or probe) and mixes_probe(project, r, reward_model, log)
    reward_fn, rm_path = ppo_reward(project, r, cfg, reward_fns, reward_model, probe=probe, mix=mix)
    dpo = rto_adapter(project, r, cfg)
    out = project.round_dir(r, "policy")
    tmp = out.with_name("policy.partial")
    if resume and latest_checkpoint(tmp) is None and latest_checkpoint(out) is not None:
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(out, tmp)  # run a finished policy longer; it stays until this ends
    if resume is None:
        resume = latest_checkpoint(tmp) is not None
    if not resume and tmp.exists():
        shutil.rmtree(tmp)  # a killed run's leftovers: start over
    log(
        f"{optimizer.upper()} round {r}: policy {policy}, reward "
        f"{getattr(reward_fn, 'name', rm_path)}, {len(prompts)} prompts -> {out}"
        f"{', resuming' if resume else ''}"
    )
    if preferences:
        log(f"{len(preferences)} labelled pairs of round {r}'s candidates join the update")
    try:
        result = train_policy(
            cfg,
            optimizer=optimizer,
            policy=policy,
            prompts=prompts,
            reward_fn=reward_fn,
            out_dir=tmp,
            reward_model=rm_path,
            dpo_model=dpo,
            resume=resume,
            progress=progress,
            log=log,
            on_step=on_step,
            log_dir=project.root / "logs",
            preferences=preferences,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if out.exists():  # a policy from an earlier run of this stage
        shutil.rmtree(out)
    tmp.replace(out)
    result.policy_path = out
    if probe:  # the record says what was optimised
        result.summary["ppo/optimised_probe"] = 1.0
    if mix:
        result.summary["ppo/optimised_mix"] = 1.0
    with project.store.transaction():  # the policy, its optimiser and its curve land together
        project.store.save_round(
            Round(r, policy=project.stored(out), optimizer=optimizer, metrics=result.summary)
        )
        record_curve(project.store, r, "ppo", result.history)
    return result


def optimizer_of(project: Project, round_: int) -> str | None:
    """The optimiser round R's policy stage used, as recorded (None: no policy trained yet)."""
    rec = project.store.round(round_)
    return rec.optimizer if rec is not None else None


def oracle_scores(project: Project, oracle) -> tuple[dict[int, list[tuple]], set[int]]:
    """(round -> [(response, the oracle's score)] of its generated responses, the evaluation
    prompts' ids)."""
    held = {
        p.id for p in split_prompts(project.store.prompts(), project.config.rounds.eval_fraction)[1]
    }
    prompts = {p.id: p for p in project.store.prompts()}
    out = {}
    for r in sorted(project.store.status().responses_per_round):
        resp = [x for x in project.store.responses(round=r) if x.source == "generated"]
        if resp:
            scores = oracle([prompts[x.prompt_id] for x in resp], [x.text for x in resp])
            out[r] = [(x, float(v)) for x, v in zip(resp, scores)]
    return out, held


def oracle_means(project: Project, oracle) -> dict[int, tuple[float, float | None, int]]:
    """round -> (the oracle's mean score of its generated responses, the mean over the
    evaluation prompts only or None, how many responses): did the rounds improve by the
    oracle's own measure?"""
    scored, held = oracle_scores(project, oracle)
    out = {}
    for r, rows in scored.items():
        scores = [v for _, v in rows]
        ev = [v for x, v in rows if x.prompt_id in held]
        out[r] = (sum(scores) / len(scores), sum(ev) / len(ev) if ev else None, len(rows))
    return out


def oracle_win_rates(project: Project, oracle, *, n_boot: int | None = None, seed: int = 0):
    """round R > 0 -> its win-rate over the base (round 0) on the evaluation prompts as the
    oracle itself judges (`leaderboard.WinRate`): every pair of a round-R and a base response
    to the same evaluation prompt, the higher oracle score winning (equal scores tie), with
    the leaderboard's interval (prompts resampled). What the simulated annotators' labels
    estimate, without their noise; rounds with no evaluation prompt in common are left out."""
    from rankloop.data.leaderboard import N_BOOT, win_rate
    from rankloop.data.records import Match

    scored, held = oracle_scores(project, oracle)
    base: dict[int, list[tuple]] = {}
    for y, w in scored.get(0, []):
        base.setdefault(y.prompt_id, []).append((y, w))
    out = {}
    for r, rows in scored.items():
        ms = [
            Match(x.prompt_id, 0, 0, r, 0, x.id, y.id, (v > w) + 0.5 * (v == w), "oracle")
            for x, v in rows
            if r > 0 and x.prompt_id in held
            for y, w in base.get(x.prompt_id, [])
        ]
        if ms:
            out[r] = win_rate(ms, r, 0, n_boot=n_boot or N_BOOT, seed=seed)
    return out


def oracle_reward_accuracy(project: Project, oracle) -> list[dict]:
    """What only a simulation can tell: how well each round's reward model and its probe order
    the responses of the trainer's own held-out comparisons by the hidden oracle, noise-free.
    The held-out accuracy the round reads is against noisy labels, and on an oracle with few
    levels (`tidy`, `format`) most pairs tie on the oracle, so their labels are coin flips that
    dilute it. Per round: the held-out response pairs, how many the oracle does not tie
    (`untied`), and on those the share the model, the probe and the labels order as the oracle
    does."""
    import itertools

    from rankloop.reward.pairs import split_by_prompt
    from rankloop.reward.scoring import ProbeScorer, RewardScorer

    cfg = project.config.reward
    out = []
    for r in range(project.store.current_round() + 1):
        try:
            rm = str(reward_model_of(project, r))
        except ProjectError:  # the round stopped before its reward model, or never ran
            break
        data = round_examples(project, r, cfg)
        held = split_by_prompt(data.examples, cfg.eval_fraction, cfg.seed)[1]  # as the trainer
        prompts = [e.prompt for e in held for _ in e.responses]
        texts = [t for e in held for t in e.responses]
        truth = [float(x) for x in oracle(prompts, texts)]
        scores = {
            name: [
                float(x) for x in scorer.from_pretrained(rm).score([q.text for q in prompts], texts)
            ]
            for name, scorer in (("model", RewardScorer), ("probe", ProbeScorer))
        }
        right = {"model": 0, "probe": 0, "labels": 0}
        pairs = untied = start = 0
        for e in held:
            for a, b in itertools.combinations(range(len(e.responses)), 2):
                i, j = start + a, start + b
                pairs += 1
                if truth[i] == truth[j]:
                    continue
                untied += 1
                better = truth[i] > truth[j]
                for name, s in scores.items():  # a tie in score, or in the label, is half right
                    right[name] += 0.5 if s[i] == s[j] else (s[i] > s[j]) == better
                tiers = e.tiers  # 0 = best
                right["labels"] += 0.5 if tiers[a] == tiers[b] else (tiers[a] < tiers[b]) == better
            start += len(e.responses)
        out.append(
            {"round": r, "pairs": pairs, "untied": untied}
            | {k: (v / untied if untied else None) for k, v in right.items()}
        )
    return out
