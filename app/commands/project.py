"""The project's commands: `init`, `import`, `generate`, `export`, `status`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from rankloop.app import rounds
from rankloop.app.project import Project
from rankloop.data.io import (
    EXPORT_FORMATS,
    Columns,
    bundled_prompts,
    export_preferences,
    import_file,
)
from rankloop.settings import replace

from .common import console, open_project, project_option, user_errors
from .interop import TOOLS, describe, import_from_tool


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--policy",
    default=None,
    help="Base policy: local folder, hub id, or 'smollm2-135m-instruct' (default, embedded).",
)
@click.option(
    "--reward-model", default=None, help="Reward model backbone (default: the same embedded model)."
)
@user_errors
def init(directory: Path, policy: str | None, reward_model: str | None):
    """Create a project: rankloop.toml (every setting, commented), rankloop.db and rounds/.

    \b
    Example:
      rankloop init myproject --policy ./my-sft-checkpoint
    """
    project = Project.init(directory, policy=policy, reward_model=reward_model)
    console.print(
        f"Created project in {project.root}\n"
        f"  settings: {project.root / 'rankloop.toml'}\n"
        f"  database: {project.root / 'rankloop.db'}\n"
        f"Next: rankloop import FILE (or --bundled), then rankloop generate."
    )
    project.close()


@click.command("import")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--bundled", is_flag=True, help="Import the prompts bundled with rankloop.")
@click.option("--prompt-column", default="prompt", show_default=True)
@click.option(
    "--response-column",
    default="response",
    show_default=True,
    help="Column holding one existing response.",
)
@click.option(
    "--responses-column",
    default="responses",
    show_default=True,
    help="Column holding a list of existing responses.",
)
@click.option("--chosen-column", default="chosen", show_default=True)
@click.option("--rejected-column", default="rejected", show_default=True)
@click.option("--tie-column", default="tie", show_default=True)
@click.option("--margin-column", default="margin", show_default=True)
@click.option(
    "--source", default=None, help="Name recorded as the rows' source (default: import:FILENAME)."
)
@click.option(
    "--from",
    "tool",
    type=click.Choice(("rankloop", *TOOLS)),
    default="rankloop",
    show_default=True,
    help="Whose export FILE is: rankloop's rows, a Label Studio JSON export, or an Argilla v2 "
    "dataset (docs/interop.md).",
)
@click.option(
    "--ls-config",
    type=click.Path(path_type=Path),
    default=None,
    help="Label Studio: the project's labeling configuration (XML), naming its fields.",
)
@click.option(
    "--question", default=None, help="Argilla: the RankingQuestion (default: the only one)."
)
@project_option
@user_errors
def import_(
    file: Path | None,
    bundled: bool,
    prompt_column,
    response_column,
    responses_column,
    chosen_column,
    rejected_column,
    tie_column,
    margin_column,
    source,
    tool,
    ls_config,
    question,
    project_dir,
):
    """Import prompts, existing responses, or preference data (TRL's prompt/chosen/rejected).

    FILE is JSONL, CSV, Parquet, or a folder written by datasets' save_to_disk. A prompt is a
    string or a conversation (a list of {role, content} turns). The whole file is checked
    first and imported in one transaction; importing the same rows again adds nothing.

    \b
    Examples:
      rankloop import prompts.jsonl
      rankloop import questions.csv --prompt-column question
      rankloop import ./hh-rlhf-sample --source hh-rlhf     # prompt/chosen/rejected rows
      rankloop import export.json --from label-studio --ls-config labeling.xml
      rankloop import ./argilla-prefs --from argilla
    """
    if bundled == (file is not None):
        raise click.UsageError("give a FILE to import, or --bundled (not both)")
    if bundled and tool != "rankloop":
        raise click.UsageError("--bundled imports rankloop's own prompts: drop --from")
    path = bundled_prompts() if bundled else file
    project = open_project(project_dir)
    if tool != "rankloop":
        given = click.get_current_context().get_parameter_source("responses_column")
        fields = (
            tuple(f.strip() for f in responses_column.split(",") if f.strip())
            if given is not click.core.ParameterSource.DEFAULT
            else None
        )
        report = import_from_tool(
            project,
            tool,
            path,
            ls_config=ls_config,
            prompt_field=prompt_column,
            responses=fields,
            question=question,
            source=source,
        )
        console.print(describe(path, report))
        project.close()
        return
    cols = Columns(
        prompt=prompt_column,
        response=response_column,
        responses=responses_column,
        chosen=chosen_column,
        rejected=rejected_column,
        tie=tie_column,
        margin=margin_column,
    )
    report = import_file(project.store, path, cols, source="bundled" if bundled else source)
    console.print(
        f"Imported {path.name}: {report.rows} rows -> {report.prompts_added} new "
        f"prompts, {report.responses_added} responses, {report.comparisons_added} "
        f"comparisons, {report.labels_added} labels"
    )
    project.close()


@click.command()
@click.option(
    "--n", "n", type=int, default=None, help="Responses per prompt ([generate] n, default 2)."
)
@click.option(
    "--round",
    "round_",
    type=int,
    default=None,
    help="Round to generate for (default: the current round); round R samples from "
    "the policy trained in R-1.",
)
@click.option("--limit", type=int, default=None, help="Only the first N prompts.")
@click.option("--batch-size", type=int, default=None, help="Prompts per batched forward.")
@click.option("--max-new-tokens", type=int, default=None)
@click.option("--temperature", type=float, default=None)
@click.option("--top-p", type=float, default=None)
@click.option("--seed", type=int, default=None)
@project_option
@user_errors
def generate(n, round_, limit, batch_size, max_new_tokens, temperature, top_p, seed, project_dir):
    """Sample candidate responses from the round's policy and create comparisons to label.

    Killed midway and run again, it samples only what is missing. From round 1 on, the
    evaluation prompts also get cross-round comparisons (a new response against one of the
    previous round and one of round 0); with a reward model, the new comparisons are scored
    for the queue's uncertainty order. A round newer than the current one becomes current.

    \b
    Example:
      rankloop generate --n 4 --limit 20
    """
    project = open_project(project_dir)
    cfg = replace(
        project.config.generate,
        n=n,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    report, cross = rounds.sample_candidates(
        project, rounds.resolve_round(project, round_), cfg, limit=limit
    )
    console.print(
        f"Round {report.round}, policy {report.policy}: {report.generated} new "
        f"responses for {report.prompts} prompts ({report.skipped_existing} already "
        f"there, {report.unfinished} cut at max_new_tokens); "
        f"{report.comparisons_created} new comparisons"
        + (f", {cross} across rounds" if cross else "")
    )
    project.close()


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(EXPORT_FORMATS)),
    default="trl",
    show_default=True,
    help="; ".join(f"{f.name}: {f.help}" for f in EXPORT_FORMATS.values()) + ".",
)
@click.option("--round", "round_", type=int, default=None, help="Only labels up to this round.")
@click.option(
    "--drop-ties", is_flag=True, help="Leave out tied pairs (for trainers that do not model ties)."
)
@project_option
@user_errors
def export(out, fmt, round_, drop_ties, project_dir):
    """Export the preferences in TRL's format (prompt, chosen, rejected + metadata columns),
    or the comparisons and their labels for Label Studio or Argilla.

    TRL's RewardTrainer and DPOTrainer load the TRL export unchanged; its folder holds a
    dataset card (README.md).

    \b
    Examples:
      rankloop export prefs                       # then datasets.load_from_disk("prefs")
      rankloop export prefs.jsonl --format jsonl --drop-ties
      rankloop export ls-tasks --format label-studio   # tasks.json + labeling.xml
      rankloop export argilla-ds --format argilla
    """
    project = open_project(project_dir)
    r = project.config.reward  # a strength's margin as the reward trainer reads it
    rows = export_preferences(
        project.store,
        out,
        fmt,
        round=round_,
        drop_ties=drop_ties,
        margins=(r.margin_slightly, r.margin_much),
    )
    console.print(f"Wrote {rows} {EXPORT_FORMATS[fmt].unit} to {out} ({fmt})")
    project.close()


@click.command()
@project_option
@user_errors
def status(project_dir):
    """Show the current round, prompts, responses per round, comparisons, annotators, rounds
    and their metrics, and the next step to run.

    \b
    Example:
      rankloop status --project myproject
    """
    project = open_project(project_dir)
    s = project.store.status()
    table = Table(title=f"rankloop project {project.root}")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("current round", str(s.current_round))
    table.add_row("prompts", str(s.prompts))
    for rnd, count in s.responses_per_round.items():
        table.add_row(f"responses, round {rnd}", str(count))
    table.add_row("comparisons", str(s.comparisons))
    table.add_row("  pending", str(s.comparisons_pending))
    table.add_row("  labeled", str(s.comparisons_labeled))
    table.add_row("labels", str(s.labels))
    table.add_row("annotators", str(s.annotators))
    console.print(table)
    if s.rounds:
        table = Table(title="rounds")
        for col in ("round", "policy", "optimizer", "reward model", "metrics"):
            table.add_column(col)
        for r in s.rounds:
            metrics = ", ".join(f"{k}={format_metric(v)}" for k, v in sorted(r.metrics.items()))
            table.add_row(
                str(r.number),
                r.policy or "-",
                r.optimizer or "-",
                r.reward_model or "-",
                metrics or "-",
            )
        console.print(table)
    console.print(f"Next: {rounds.next_step(project)}")
    project.close()


def format_metric(value) -> str:
    """A round's metric for one cell: numbers to 4 significant digits; a per-step list (such as
    `ppo/kl_per_step`) as its length, first and last value, not the whole list."""
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        if len(value) <= 3:
            return "[" + ", ".join(format_metric(v) for v in value) + "]"
        return f"[{len(value)} steps: {format_metric(value[0])} .. {format_metric(value[-1])}]"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
