"""`rankloop round`, `rankloop simulate` and `rankloop demo`: a round as one step, and the loop
run without people. What a round does lives in `rankloop.app.rounds`; these only parse options
and print."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from rankloop.app import rounds
from rankloop.app.project import Project
from rankloop.ppo.config import OPTIMIZERS
from rankloop.settings import replace

from .common import console, open_project, project_option, user_errors


def _seconds(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def plain(message: str) -> None:
    """Print a library's message as it is: `[rounds]` is a setting's name, not markup."""
    console.print(message, markup=False, highlight=False)


def print_plan(plan: rounds.RoundPlan) -> None:
    table = Table(title=f"round {plan.round}: plan")
    for col in ("stage", "status", "what", "estimate"):
        table.add_column(col)
    for st in plan.stages:
        table.add_row(
            st.stage,
            "done" if st.done else "to run",
            escape(st.what),
            "-" if st.done else _seconds(st.estimate),
        )
    console.print(table)
    total = plan.estimate
    console.print(
        f"Estimated time: {_seconds(total)}"
        if total is not None
        else "Estimated time: unknown until a round has run (estimates come from the "
        "previous round's timings)"
    )


def print_summary(s: rounds.RoundSummary) -> None:
    m = s.metrics
    table = Table(title=f"round {s.round} done: round {s.round + 1} is current")
    table.add_column("what")
    table.add_column("value")
    table.add_row(
        "labels used", ", ".join(f"{v} {k}" for k, v in sorted(s.labels.items())) or "none"
    )
    if "reward/accuracy" in m:
        base = m.get("reward/probe_accuracy")
        table.add_row(
            "reward model, held-out accuracy",
            f"{m['reward/accuracy']:.3f} on {int(m.get('reward/eval_pairs', 0))} pairs"
            + (f" (frozen-feature probe {base:.3f})" if base is not None else "")
            + (
                f"; ensemble of {int(m['reward/members'])}, spread {m['reward/spread']:.3f}"
                if "reward/members" in m and "reward/spread" in m
                else ""
            ),
        )
    elif m.get("reward/skipped"):
        table.add_row("reward model", "skipped (--reward-fn)")
    if "ppo/score_first" in m:
        name = (s.optimizer or "ppo").upper()
        table.add_row(
            f"{name} mean score",
            f"{m['ppo/score_first']:.3f} -> {m['ppo/score_last']:.3f}"
            f" over {int(m.get('ppo/steps', 0))} steps",
        )
        kl = m.get("ppo/kl_final", m.get("ppo/kl_last"))
        table.add_row(f"{name} KL to the reference", f"{kl:.3f} nats per response")
    if "generate/responses" in m:
        table.add_row(
            f"round {s.round + 1} candidates",
            f"{int(m['generate/responses'])} responses "
            f"({int(m.get('generate/unfinished', 0))} cut at max_new_tokens), "
            f"{int(m.get('generate/comparisons', 0))} comparisons",
        )
    if "compare/cross_round" in m:
        table.add_row("cross-round comparisons", str(int(m["compare/cross_round"])))
    table.add_row("time per stage", ", ".join(f"{k} {_seconds(v)}" for k, v in s.seconds.items()))
    console.print(table)
    for w in s.warnings:
        console.print(f"[yellow]Warning:[/yellow] {escape(w)}")


@click.command("round")
@click.option("--ppo-steps", type=int, default=None, help="Policy steps ([ppo] steps).")
@click.option(
    "--optimizer",
    type=click.Choice(("auto", *OPTIMIZERS)),
    default=None,
    help="The policy stage's optimiser ([rounds] optimizer; auto: PPO with --reward-fn, else "
    "best-of-n).",
)
@click.option(
    "--n",
    "n",
    type=int,
    default=None,
    help="Responses per prompt for the next round ([generate] n).",
)
@click.option(
    "--reward-fn",
    "reward_fns",
    multiple=True,
    help="The policy stage optimises this Python reward `[WEIGHT*]module:function` instead "
    "of a reward model (no reward stage; PPO unless --optimizer says otherwise).",
)
@click.option("--epochs", type=float, default=None, help="Reward model epochs.")
@click.option("--lr", type=float, default=None, help="Reward model learning rate.")
@click.option("--ppo-lr", type=float, default=None, help="Policy learning rate.")
@click.option(
    "--max-new-tokens",
    type=int,
    default=None,
    help="Longest new candidate ([generate] max_new_tokens).",
)
@click.option(
    "--redo",
    type=click.Choice(rounds.STAGES[:-1]),
    default=None,
    help="Run this stage (and the later ones) of the current round again.",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the plan and its estimated time; change nothing."
)
@project_option
@user_errors
def round_cmd(
    ppo_steps,
    optimizer,
    n,
    reward_fns,
    epochs,
    lr,
    ppo_lr,
    max_new_tokens,
    redo,
    dry_run,
    project_dir,
):
    """Run the current round R end to end: reward model -> policy -> round R+1's candidates.

    Trains R's reward model on every label of rounds <= R, optimises the policy of round R-1
    (or the base) against it with [rounds] optimizer (auto: best-of-n fine-tuning against a
    reward model, PPO against --reward-fn; or PPO, RLOO, best-of-n or online DPO; --optimizer),
    samples round R+1's candidates from the new policy, builds their comparisons (with
    cross-round ones on the evaluation prompts), makes R+1 current and prints a summary. Each
    stage is recorded when it finishes: killed and run again, it continues with the unfinished
    stage.

    \b
    Example:
      rankloop round --dry-run
      rankloop round --ppo-steps 20 --n 2
      rankloop round --optimizer rloo
      rankloop round --optimizer odpo   # online DPO, with the round's labelled pairs
      rankloop round --optimizer bon
      rankloop round --reward-fn my_rewards:helpful   # no reward model: PPO on a function
    """
    project = open_project(project_dir)
    c = project.config
    s = rounds.RoundSettings(
        reward=replace(c.reward, epochs=epochs, lr=lr),
        ppo=replace(c.ppo, steps=ppo_steps, lr=ppo_lr),
        generate=replace(c.generate, n=n, max_new_tokens=max_new_tokens),
        reward_fns=tuple(reward_fns),
        optimizer=optimizer,
    )
    if dry_run:
        if redo:
            console.print(f"(--redo {redo}: those stages would run again)")
        print_plan(rounds.plan_round(project, s, redo=redo))
        project.close()
        return
    if redo:
        forgot = rounds.redo(project, redo)
        console.print(f"Running again: {', '.join(forgot) or redo}")
    print_plan(rounds.plan_round(project, s))
    summary = rounds.run_round(project, s, log=plain)
    print_summary(summary)
    console.print(f"Next: {rounds.next_step(project)}")
    project.close()


@click.command("simulate")
@click.option(
    "--oracle",
    default="tidy",
    show_default=True,
    help="A built-in oracle (tidy) "
    "or `module:function(prompts, responses) -> scores`, higher is better.",
)
@click.option(
    "--annotators",
    type=int,
    default=3,
    show_default=True,
    help="Simulated accounts taking turns at the queue (sim-1, sim-2, ...).",
)
@click.option(
    "--noise",
    type=float,
    default=None,
    help="T in P(i over j) = sigmoid((s_i - s_j) / T); 0 always picks the higher score "
    "(default 1.0 unless --agreement is given).",
)
@click.option(
    "--agreement",
    type=float,
    default=None,
    help="Instead of --noise: the share of pairs (the oracle's ties aside) the labels should "
    "order as the oracle does, 0.5 < A < 1; T is solved on the candidates being labeled. "
    "People agree with each other about 0.7 of the time.",
)
@click.option("--limit", type=int, default=None, help="Stop after M labels.")
@click.option(
    "--round",
    "round_",
    type=int,
    default=None,
    help="Label this round's "
    "comparisons only (default: the current round's first, then leftovers, as the "
    "app serves them).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@project_option
@user_errors
def simulate_cmd(oracle, annotators, noise, agreement, limit, round_, seed, project_dir):
    """Label open comparisons with simulated annotators answering for an oracle.

    The accounts take tasks through the same queue as the app (leases, overlap, gold, order)
    and choose with Bradley-Terry noise around the oracle's scores; K-wise comparisons get a
    Plackett-Luce ranking. `--agreement` states the noise as the share of pairs the labels
    should order as the oracle does. Labels are stored with source 'simulated'; it prints the
    agreement they reached and the T used.

    \b
    Example:
      rankloop simulate --oracle tidy --annotators 3 --agreement 0.7
      rankloop simulate --oracle tidy --annotators 3 --noise 0.5
      rankloop simulate --oracle my_oracles:helpful --limit 100 --round 1
    """
    from rankloop.app.simulate import load_oracle, noise_settings, simulate

    noise_settings(noise, agreement)  # a bad setting stops here, before anything opens
    project = open_project(project_dir)
    fn = load_oracle(oracle)
    first = project.store.current_round() if project.config.labeling.current_round_first else None
    report = simulate(
        project.store,
        fn,
        project.config.labeling,
        annotators=annotators,
        noise=noise,
        agreement=agreement,
        limit=limit,
        round_=round_,
        first_round=first,
        seed=seed,
    )
    console.print(report.summary())
    if report.mean_score is not None:
        console.print(f"The oracle's mean score of what they saw: {report.mean_score:.3f}")
    console.print(f"Next: {rounds.next_step(project)}")
    project.close()


# InstructGPT's labelers agreed with each other on about 73% of pairs (Ouyang et al. 2022): the
# demo's simulated annotators err about as often as people do.
DEMO_AGREEMENT = 0.7

DEMO_SETTINGS = {
    # two rounds in under 20 minutes on the 2-core reference machine (docs/rounds.md has the
    # measured time): shorter candidates, 2 reward epochs, 6 policy steps with 3 evaluations
    # (best-of-n samples 4 responses a prompt each step: 10 steps took 23.4 minutes)
    "generate": {"n": 2, "max_new_tokens": 64},
    "reward": {"epochs": 2.0},
    "ppo": {"steps": 6, "max_new_tokens": 48, "eval_every": 3},
    "rounds": {"eval_fraction": 0.25, "eval_comparisons": 2},
}


@click.command("demo")
@click.option("--rounds", "n_rounds", type=int, default=2, show_default=True)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-rounds"),
    show_default=True,
    help="The demo's project folder (created; run again, it continues where it stopped).",
)
@click.option("--oracle", default="tidy", show_default=True)
@click.option("--annotators", type=int, default=3, show_default=True)
@click.option(
    "--agreement",
    type=float,
    default=None,
    help="Share of pairs the simulated labels order as the oracle does "
    "(default 0.7, about as often as people agree; T solved each round on its candidates).",
)
@click.option(
    "--noise",
    type=float,
    default=None,
    help="A fixed T in sigmoid((s_i - s_j) / T) instead of --agreement.",
)
@click.option(
    "--policy",
    default=None,
    help="Policy and reward backbone of a new demo project "
    "(default: the embedded SmolLM2-135M-Instruct).",
)
def demo_cmd(n_rounds, directory, oracle, annotators, agreement, noise, policy):
    """Run whole rounds on the default model with simulated annotators, then the leaderboard.

    Creates a project with the bundled prompts, samples round 0, and for each round: simulated
    annotators label the current round, then `rankloop round`. At the end the last round's
    candidates are labeled too, and it prints the oracle's mean score per round and each round's
    win-rate over the base as the oracle judges it (the evaluation prompts), then the win-rates
    the simulated labels give and the leaderboard.

    \b
    Example:
      rankloop demo --rounds 2 --dir demo-rounds
    """
    from rankloop.app.simulate import load_oracle, noise_settings, simulate

    t0 = time.perf_counter()
    with user_errors_block():
        if noise is None and agreement is None:
            agreement = DEMO_AGREEMENT
        noise, agreement = noise_settings(noise, agreement)  # before the folder is made
        project = demo_project(directory, policy)
        fn = load_oracle(oracle)
        store = project.store
        if not store.comparisons(round=0):
            report, _ = rounds.sample_candidates(project, 0, project.config.generate)
            console.print(f"Round 0: {report.generated} responses from the base policy")
        while True:
            r = store.current_round()
            got = simulate(
                store,
                fn,
                project.config.labeling,
                annotators=annotators,
                noise=noise,
                agreement=agreement,
                round_=r,
                seed=r,
            )
            console.print(f"Round {r}: {got.summary()}")
            if r >= n_rounds:
                break
            summary = rounds.run_round(project, rounds.RoundSettings.of(project), log=plain)
            print_summary(summary)
        print_outcome(project, fn)
        console.print(
            f"Demo finished in {_seconds(time.perf_counter() - t0)}; the project is "
            f"{project.root} (rankloop status --project {directory})"
        )
        project.close()


class user_errors_block:
    """`user_errors` for a block: one `Error:` line instead of a traceback."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        from .common import USER_ERRORS

        if err is not None and isinstance(err, USER_ERRORS):
            raise click.ClickException(str(err)) from None
        return False


def demo_project(directory: Path, policy: str | None = None) -> Project:
    """The demo's project: created with DEMO_SETTINGS and the bundled prompts, or reopened."""
    from rankloop.data.io import Columns, bundled_prompts, import_file

    if (directory / "rankloop.toml").exists():
        return Project.find(directory)
    project = Project.init(directory, policy=policy, reward_model=policy)
    for section, values in DEMO_SETTINGS.items():
        for key, value in values.items():
            setattr(getattr(project.config, section), key, value)
    project.save_config()
    import_file(project.store, bundled_prompts(), Columns(), source="bundled")
    return project


def oracle_cell(w) -> str:
    """A round's win-rate over the base by the oracle, with its interval and what it counts:
    on an oracle with few levels (`tidy`: finished or not) most pairs tie, and a tie counts
    half, so the wins and losses say more than the rate."""
    return (
        f"{100 * w.rate:.0f}% ({100 * w.low:.0f}-{100 * w.high:.0f}%, {w.prompts} prompts: "
        f"{w.wins} won, {w.ties} tied, {w.losses} lost)"
    )


def reward_by_oracle_table(rows: list[dict]) -> Table:
    """`rounds.oracle_reward_accuracy` as the demo prints it: how many of each round's held-out
    pairs the oracle separates, and how many of those the reward model, its probe and the
    labels order as it does; what the round's held-out verdict could not tell."""
    table = Table(
        title="each round's reward model on its held-out pairs, by the oracle "
        "(what a round with people cannot see)"
    )
    for col in (
        "reward model",
        "held-out pairs",
        "the oracle separates",
        "model",
        "probe",
        "labels",
    ):
        table.add_column(col)
    for o in rows:
        table.add_row(
            f"round {o['round']}",
            str(o["pairs"]),
            str(o["untied"]),
            *("-" if o[k] is None else f"{o[k]:.2f}" for k in ("model", "probe", "labels")),
        )
    return table


def print_outcome(project: Project, oracle) -> None:
    """The oracle's mean score of each round's samples and each round's win-rate over the base
    by the oracle (`rounds.oracle_win_rates`); then `rankloop leaderboard` (the leaderboard and
    the win-rates of the labels) and `rankloop report`."""
    from rankloop.data.leaderboard import N_BOOT, policy_name

    from .measure import leaderboard_cmd, report_cmd

    means = rounds.oracle_means(project, oracle)
    wins = rounds.oracle_win_rates(project, oracle)
    table = Table(title="the oracle's mean score of each round's samples")
    cols = (
        "policy",
        "all prompts",
        "evaluation prompts",
        "responses",
        "over the base, by the oracle",
    )
    for col in cols:
        table.add_column(col)
    for r, (all_mean, eval_mean, n) in means.items():
        w = wins.get(r)
        table.add_row(
            policy_name(r),
            f"{all_mean:.3f}",
            f"{eval_mean:.3f}" if eval_mean is not None else "-",
            str(n),
            oracle_cell(w) if w else "-",
        )
    console.print(table)
    console.print(reward_by_oracle_table(rounds.oracle_reward_accuracy(project, oracle)))
    ctx = click.get_current_context()
    common = {"sources": (), "n_boot": N_BOOT, "seed": 0, "project_dir": project.root}
    ctx.invoke(leaderboard_cmd, as_json=False, **common)
    ctx.invoke(report_cmd, output=None, examples=3, **common)
