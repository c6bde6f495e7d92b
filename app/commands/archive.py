"""`rankloop backup`, `rankloop restore` and `rankloop export-all`: the team's data kept safe."""

from __future__ import annotations

from pathlib import Path

import click

from rankloop.data import archive

from .common import console, open_project, project_option, user_errors


def _rows(summary: archive.Summary) -> str:
    r = summary.rows
    return (
        f"{r.get('labels', 0)} labels, {r.get('comparisons', 0)} comparisons, "
        f"{r.get('prompts', 0)} prompts"
    )


@click.command()
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@project_option
@user_errors
def backup(dest: Path, project_dir):
    """Copy the project's database to DEST while the app keeps serving.

    SQLite's online backup API takes one consistent snapshot (annotators keep labeling), the
    copy is checked and renamed into place: DEST is a whole database or nothing. It never
    overwrites a file. Put it on another disk; `rankloop restore DEST` brings it back.

    \b
    Example:
      rankloop backup /mnt/backups/rankloop-$(date +%F).db
    """
    project = open_project(project_dir)
    try:
        s = archive.backup(project.store, dest)
    finally:
        project.close()
    console.print(
        f"Backed up {_rows(s)} to {s.path} ({s.bytes / 1e6:.1f} MB, "
        f"{s.seconds:.1f} s); integrity check ok."
    )


@click.command()
@click.argument("backup_file", type=click.Path(dir_okay=False, path_type=Path))
@project_option
@user_errors
def restore(backup_file: Path, project_dir):
    """Replace the project's database with a backup made by `rankloop backup`.

    The backup is checked first; the database as it was is saved beside it
    (rankloop.db.before-restore-TIME). Stop `rankloop serve` first: annotators' open tasks
    would refer to the database as it was.

    \b
    Example:
      rankloop restore /mnt/backups/rankloop-2026-11-20.db
    """
    project = open_project(project_dir)
    db_path = project.root / "rankloop.db"
    project.close()
    s, saved = archive.restore(db_path, backup_file)
    console.print(f"Restored {_rows(s)} from {backup_file}; the database as it was is in {saved}.")


@click.command("export-all")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@project_option
@user_errors
def export_all(out_dir: Path, project_dir):
    """Write everything the team collected as JSONL, one file per table, into OUT_DIR.

    Labels with their rationales, timing and display order; undone labels; skips; flags; gold
    answers; prompts, responses, comparisons, accounts (never their secrets), rounds; and
    manifest.json. For preference pairs to train on, use `rankloop export`.

    \b
    Example:
      rankloop export-all ./everything && head -n 2 everything/labels.jsonl
    """
    project = open_project(project_dir)
    try:
        s = archive.export_all(project.store, out_dir)
    finally:
        project.close()
    console.print(
        f"Exported {_rows(s)} (and every other table) to {s.path}/ as JSONL "
        f"({s.bytes / 1e6:.1f} MB)."
    )
