"""`rankloop leaderboard` and `rankloop report`: did each round help?"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import click
from rich.table import Table

from rankloop.app import report as rounds_report
from rankloop.data import leaderboard as lb
from rankloop.data.records import LABEL_SOURCES

from .common import console, open_project, project_option, user_errors

source_option = click.option(
    "--source",
    "sources",
    multiple=True,
    type=click.Choice(LABEL_SOURCES),
    help="Count only labels from this source (repeat for several; default: all).",
)
bootstrap_option = click.option(
    "--bootstrap",
    "n_boot",
    type=click.IntRange(min=10),
    default=lb.N_BOOT,
    show_default=True,
    help="Bootstrap resamples of the prompts for the 95% intervals.",
)
seed_option = click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the bootstrap (the same seed gives the same intervals).",
)


def _num(x: float) -> float | None:
    """JSON has no NaN or infinity: an interval no resample could compute, an unbounded rating
    or the open end of its interval is null (its `flags` say which)."""
    return x if math.isfinite(x) else None


#: Under the tables when a row is flagged.
FLAGGED = (
    "⚠ marks a flagged row: the data show no spread there (every outcome alike, or one prompt), so "
    "the interval is the exact Clopper–Pearson one; an unbounded Elo is shown as its one-sided "
    "exact bound. See docs/rounds.md (When the data say nothing)."
)


@click.command("leaderboard")
@source_option
@bootstrap_option
@seed_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@project_option
@user_errors
def leaderboard_cmd(sources, n_boot, seed, as_json, project_dir):
    """Rank every policy (base, round 1, 2, ...) on the labeled cross-round comparisons.

    A Bradley–Terry fit on every match between two rounds' responses, in Elo points (400
    points = 10:1 odds, the base at 1000), ties counted half, as Chatbot Arena computes its
    leaderboard; then each round's win-rate over the round before it and over the base. The
    95% intervals resample prompts and contain the exact (Clopper–Pearson) interval; rows
    where the data show no spread (a policy that never lost, all ties, one prompt) are flagged
    ("flags" in the JSON), an unbounded Elo is given as its one-sided bound. See
    docs/rounds.md ("Measuring the rounds").

    \b
    Example:
      rankloop leaderboard
      rankloop leaderboard --source human --json > leaderboard.json
    """
    project = open_project(project_dir)
    ms = project.store.cross_round_outcomes(list(sources) or None)
    by = lb.trained_by(project.store.rounds())
    project.close()
    board = lb.leaderboard(ms, n_boot=n_boot, seed=seed)
    rates = lb.round_win_rates(ms, n_boot=n_boot, seed=seed)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "sources": list(sources) or None,
                    "matches": board.matches,
                    "prompts": board.prompts,
                    "anchor": board.anchor,
                    "anchor_elo": lb.ANCHOR_ELO,
                    "leaderboard": [
                        {
                            "rank": k,
                            "round": r.model,
                            "policy": lb.policy_name(r.model),
                            "trained_by": by.get(r.model),
                            "elo": _num(r.elo),
                            "low": _num(r.low),
                            "high": _num(r.high),
                            "matches": r.matches,
                            "score": r.score,
                            "flags": list(r.flags),
                        }
                        for k, r in enumerate(board.ratings, 1)
                    ],
                    "unconnected": board.unconnected,
                    "win_rates": [
                        {
                            **{
                                k: _num(v) if isinstance(v, float) else v
                                for k, v in dataclasses.asdict(w).items()
                            },
                            "policy": lb.policy_name(w.model),
                            "opponent_policy": lb.policy_name(w.opponent),
                        }
                        for w in rates
                    ],
                },
                indent=1,
            )
        )
        return
    if not ms:
        console.print(
            "No labeled cross-round comparisons yet: from round 1 on, each evaluation "
            "prompt gets a new response against a round R-1 and a round-0 response "
            "(rankloop round, or rankloop generate --round R); label them in the app "
            "(rankloop serve) or simulate labels (rankloop simulate)."
        )
        return
    which = "all label sources" if not sources else "labels from " + ", ".join(sources)
    table = Table(
        title=f"Leaderboard: Bradley–Terry in Elo, {board.matches} matches on "
        f"{board.prompts} prompts, {which}"
    )
    for col in ("rank", "policy", "Elo", "95% interval", "matches", "score", "trained by"):
        table.add_column(col, justify="left" if col in ("policy", "trained by") else "right")
    flagged = []  # the notes of the flagged rows, printed under their table
    for k, r in enumerate(board.ratings, 1):
        elo, interval = lb.elo_cells(r)
        table.add_row(
            str(k),
            lb.policy_name(r.model),
            elo,
            interval + " ⚠" * bool(r.flags),
            str(r.matches),
            f"{100 * r.score:.0f}%",
            by.get(r.model, "base" if r.model == 0 else "-"),
        )
        if r.flags:
            flagged.append(f"⚠ {lb.policy_name(r.model)}: {lb.flag_notes(r.flags)}")
    console.print(table)
    for note in flagged:
        console.print(note, markup=False)
    if board.unconnected:
        console.print(
            "Not rated (no chain of matches to the base): "
            + ", ".join(lb.policy_name(r) for r in board.unconnected)
        )
    table = Table(title="Win-rates (ties count half; W/T/L: wins, ties, losses)")
    for col in ("policy", "vs", "labels", "win-rate", "95% CI", "n", "prompts", "W/T/L"):
        table.add_column(col, justify="left" if col in ("policy", "vs", "labels") else "right")
    notes = []
    for w in rates:
        vs = "base" if w.opponent == 0 else lb.policy_name(w.opponent)
        table.add_row(
            lb.policy_name(w.model),
            vs,
            w.source,
            f"{100 * w.rate:.0f}%",
            f"{100 * w.low:.0f}–{100 * w.high:.0f}%" + " ⚠" * bool(w.flags),
            str(w.n),
            str(w.prompts),
            f"{w.wins}/{w.ties}/{w.losses}",
        )
        if w.flags:
            notes.append(
                f"⚠ {lb.policy_name(w.model)} vs {vs} ({w.source}): {lb.flag_notes(w.flags)}"
            )
    console.print(table)
    for note in notes:
        console.print(note, markup=False)
    if flagged or notes:
        console.print(FLAGGED, markup=False)


@click.command("report")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="HTML file to write (default: report.html in the project folder).",
)
@source_option
@bootstrap_option
@seed_option
@click.option(
    "--examples",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Evaluation prompts to show with the newest round's and the previous round's responses.",
)
@project_option
@user_errors
def report_cmd(output, sources, n_boot, seed, examples, project_dir):
    """Write the rounds as one static HTML page: win-rates, leaderboard, per-round numbers,
    PPO curves, example responses.

    The page is one file with inline SVG plots and no script: it opens offline, to share a run
    without the server. It shows what the admin tab's Rounds view shows. Model text in it is
    escaped. See docs/rounds.md ("Measuring the rounds").

    \b
    Example:
      rankloop report
      rankloop report --output /tmp/round2.html --source human
    """
    project = open_project(project_dir)
    got = rounds_report.collect(
        project.store,
        sources=list(sources) or None,
        n_boot=n_boot,
        seed=seed,
        examples=examples,
        title=f"rankloop report: {project.root.name}",
    )
    path = rounds_report.write_report(got, output or project.root / "report.html")
    project.close()
    console.print(f"Wrote {path}\n  {rounds_report.headline(got)}", markup=False)
