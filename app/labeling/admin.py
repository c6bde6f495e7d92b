"""The admin view's handlers (admins only): statistics, plots, flags, gold, guidelines,
accounts, upload and export. Plain functions like the annotator's, each checking the role of the
logged-in account first: hiding the admin tab in the page is a convenience, this is the check.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rankloop.data import agreement, archive, queue
from rankloop.data.io import (
    EXPORT_FORMATS,
    Columns,
    ImportFileError,
    export_preferences,
    import_file,
)
from rankloop.data.records import PERSON_ROLES
from rankloop.data.store import Store, StoreError, new_secret

from .handlers import AccessDenied, Ctx, annotator, guidelines_markdown
from .render import conversation_html, markdown_html

STATS_COLUMNS = [
    "annotator",
    "role",
    "labels",
    "labels/hour",
    "median s/label",
    "gold labels",
    "gold accuracy",
    "first-pick rate",
    "first-pick expected",
    "skips",
    "flags",
    "mean kappa",
]


@dataclass(frozen=True)
class Dashboard:
    """What the admin view shows; tables are pandas DataFrames (Gradio's Dataframe and plots
    take them as they are)."""

    annotators: pd.DataFrame  # STATS_COLUMNS
    kappa: pd.DataFrame  # pair, a, b, items, kappa
    alpha: float | None
    per_day: pd.DataFrame  # day, annotator, labels
    rounds: pd.DataFrame  # round, metric, value
    flags: pd.DataFrame  # id, comparison_id, annotator, kind, note, created_at
    summary: str


def is_admin(ctx: Ctx, username: str | None) -> bool:
    with ctx.stores() as store:
        try:
            return annotator(store, username).role == "admin"
        except AccessDenied:
            return False


def _admin(store: Store, username: str | None):
    a = annotator(store, username)
    if a.role != "admin":
        raise AccessDenied("only an admin can do this")
    return a


def _r(x, digits=3):
    return None if x is None else round(x, digits)


def dashboard(ctx: Ctx, username: str | None) -> Dashboard:
    with ctx.stores() as store:
        _admin(store, username)
        stats = agreement.annotator_stats(store)
        kappas = agreement.pairwise_kappa(store)
        alpha = agreement.krippendorff_alpha(store)
        per_day = agreement.labels_per_day(store)
        rounds = [
            (r.number, k, float(v))
            for r in store.rounds()
            for k, v in sorted(r.metrics.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        flags = queue.open_flags(store)
        status = store.status()
    table = pd.DataFrame(
        [
            [
                s.name,
                s.role,
                s.labels,
                _r(s.labels_per_hour, 1),
                _r(s.median_seconds, 1),
                s.gold_labels,
                _r(s.gold_accuracy),
                _r(s.first_pick_rate),
                _r(s.first_pick_expected),
                s.skips,
                s.flags,
                _r(s.mean_kappa),
            ]
            for s in stats
        ],
        columns=STATS_COLUMNS,
    )
    kappa = pd.DataFrame(
        [[f"{a} / {b}", a, b, n, _r(k)] for a, b, n, k in kappas],
        columns=["pair", "a", "b", "items", "kappa"],
    )
    summary = (
        f"**{status.labels}** labels on **{status.comparisons_labeled}** of "
        f"**{status.comparisons}** comparisons · **{len(flags)}** open flags · "
        f"Krippendorff's alpha (ordinal, all annotators): "
        f"**{'n/a' if alpha is None else f'{alpha:.3f}'}**"
    )
    return Dashboard(
        annotators=table,
        kappa=kappa,
        alpha=alpha,
        per_day=pd.DataFrame(per_day, columns=["day", "annotator", "labels"]),
        rounds=pd.DataFrame(rounds, columns=["round", "metric", "value"]),
        flags=pd.DataFrame(
            flags, columns=["id", "comparison_id", "annotator", "kind", "note", "created_at"]
        ),
        summary=summary,
    )


def resolve_flag(ctx: Ctx, username: str | None, flag_id: float | None) -> str:
    with ctx.stores() as store:
        a = _admin(store, username)
        if flag_id is None:
            return "Give the id of the flag to resolve."
        try:
            queue.resolve_flag(store, int(flag_id), a.id)
        except StoreError as e:
            return f"Not resolved: {e}"
    return f"Flag {int(flag_id)} resolved: its comparison is back in the queue."


def comparison_html(ctx: Ctx, username: str | None, comparison_id: float | None) -> str:
    """A comparison as the admin needs it to set gold: its prompt and each response under its
    id (rendered safely, like the annotator's page)."""
    with ctx.stores() as store:
        _admin(store, username)
        if comparison_id is None:
            return "<p>Give a comparison id.</p>"
        try:
            comp = store.comparison(int(comparison_id))
        except StoreError as e:
            return f"<p>{html.escape(str(e))}</p>"
        prompt = store.prompt(comp.prompt_id)
        responses = store.responses(ids=list(comp.response_ids))
        n_labels = len(store.labels(comparison_id=comp.id))
    gold = (
        " > ".join(" = ".join(str(r) for r in tier) for tier in comp.gold)
        if comp.gold
        else "not gold"
    )
    parts = [
        (
            f"<p>Comparison {comp.id}, round {comp.round}, {n_labels} label(s), gold: "
            f"{html.escape(gold)}</p>"
        ),
        conversation_html(prompt.messages),
    ]
    parts += [
        f'<div class="rl-response"><div class="rl-letter">Response id {r.id}</div>'
        f"{markdown_html(r.text)}</div>"
        for r in responses
    ]
    return "".join(parts)


def set_gold(ctx: Ctx, username: str | None, comparison_id: float | None, ranking: str) -> str:
    """`ranking` in response ids, best first: '12 > 13', ties with '=' ('12 = 13'); an empty
    ranking makes the comparison regular again."""
    with ctx.stores() as store:
        _admin(store, username)
        if comparison_id is None:
            return "Give the id of the comparison."
        cid = int(comparison_id)
        try:
            tiers = None
            if (ranking or "").strip():
                tiers = [
                    [int(x) for x in part.replace("=", " ").split()] for part in ranking.split(">")
                ]
            queue.set_gold(store, cid, tiers)
            ids = store.comparison(cid).response_ids
        except ValueError as e:  # StoreError is a ValueError; so is a non-number
            return f"Not set: {e} (the comparison's responses are listed by id in the export)"
    return (
        f"Comparison {cid} is gold: {ranking.strip()}."
        if tiers
        else f"Comparison {cid} is a regular comparison again (responses {list(ids)})."
    )


def save_guidelines(ctx: Ctx, username: str | None, text: str) -> str:
    with ctx.stores() as store:
        _admin(store, username)
    if ctx.guidelines_path is None:
        return "This app was started without a guidelines file; nothing saved."
    if not (text or "").strip():
        return "The guidelines cannot be empty."
    # Write a temporary file and rename it over the old one: a crash leaves old or new, whole.
    path = ctx.guidelines_path
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".guidelines-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return f"Guidelines saved to {path.name}."


def current_guidelines(ctx: Ctx, username: str | None) -> str:
    with ctx.stores() as store:
        _admin(store, username)
    return guidelines_markdown(ctx)


def add_account(ctx: Ctx, username: str | None, name: str, role: str) -> str:
    """Create an account; the message shows its secret once."""
    if role not in PERSON_ROLES:
        return "Role must be 'annotator' or 'admin'."
    secret, hashed = new_secret()  # hashing takes ~0.1 s of CPU: not while holding the store
    with ctx.stores() as store:
        _admin(store, username)
        try:
            a, _ = store.add_annotator(name or "", role=role, secret_hash=hashed)
        except StoreError as e:
            return f"Not created: {e}"
    return f"Created {a.role} **{a.name}**; secret (shown once): `{secret}`"


ACCOUNT_COLUMNS = ["name", "role", "status"]


def accounts(ctx: Ctx, username: str | None) -> pd.DataFrame:
    """The people's accounts: name, role, active or disabled (secrets are never shown)."""
    with ctx.stores() as store:
        _admin(store, username)
        rows = [
            [a.name, a.role, "disabled" if a.disabled else "active"]
            for a in store.annotators()
            if a.role in PERSON_ROLES
        ]
    return pd.DataFrame(rows, columns=ACCOUNT_COLUMNS)


def _account_change(ctx: Ctx, username: str | None, name: str, change, done: str) -> str:
    """Apply `change(store, name)` as an admin; its sessions end when it loses access."""
    name = (name or "").strip()
    if not name:
        return "Give the name of the account."
    with ctx.stores() as store:
        _admin(store, username)
        try:
            result = change(store, name)
        except StoreError as e:
            return f"Not changed: {e}"
    ctx.sessions.end(name)  # logged out everywhere: it logs in again with what it may do now
    return done.format(name=name, result=result)


def disable_account(ctx: Ctx, username: str | None, name: str) -> str:
    """Disable an account: it cannot log in, label or administer; its labels stay."""
    return _account_change(
        ctx,
        username,
        name,
        lambda s, n: s.set_disabled(n, True),
        "Disabled **{name}** (logged out everywhere; its labels stay).",
    )


def enable_account(ctx: Ctx, username: str | None, name: str) -> str:
    return _account_change(
        ctx,
        username,
        name,
        lambda s, n: s.set_disabled(n, False),
        "Enabled **{name}**: it can log in again.",
    )


def set_role(ctx: Ctx, username: str | None, name: str, role: str) -> str:
    return _account_change(
        ctx,
        username,
        name,
        lambda s, n: s.set_role(n, role),
        f"**{{name}}** is now an {role} (logged out everywhere).",
    )


def reset_secret(ctx: Ctx, username: str | None, name: str) -> str:
    """A new secret for an account (the old one stops working); the message shows it once."""
    secret, hashed = new_secret()
    return _account_change(
        ctx,
        username,
        name,
        lambda s, n: s.set_secret(n, secret_hash=hashed),
        f"New secret for **{{name}}** (shown once; its sessions ended): `{secret}`",
    )


def upload(ctx: Ctx, username: str | None, path: str | None) -> str:
    """Import a prompt file with `rankloop import`'s validation (whole file or nothing),
    holding the store only one short transaction at a time (annotators label meanwhile)."""
    if not path:
        return "Choose a file to upload."
    with ctx.stores() as store:
        _admin(store, username)
    try:
        report = import_file(ctx.stores, Path(path), Columns(), source=f"upload:{Path(path).name}")
    except (ImportFileError, StoreError) as e:
        return f"Nothing imported: {e}"
    return (
        f"Imported {report.rows} rows: {report.prompts_added} new prompts, "
        f"{report.responses_added} responses, {report.comparisons_added} comparisons, "
        f"{report.labels_added} labels."
    )


#: The admin tab's export formats: the preference pairs (as `rankloop export`), or everything
#: the team collected (as `rankloop export-all`, zipped).
ADMIN_EXPORTS = (*EXPORT_FORMATS, "everything")


def export(ctx: Ctx, username: str | None, fmt: str, out_dir: Path) -> tuple[Path | None, str]:
    """Export the preferences as `rankloop export` does, or everything as `rankloop export-all`
    does, to a file in `out_dir` (a folder is zipped so the browser can download it)."""
    if fmt not in ADMIN_EXPORTS:
        return None, f"Format must be one of {', '.join(ADMIN_EXPORTS)}."
    with ctx.stores() as store:
        _admin(store, username)
        out_dir.mkdir(parents=True, exist_ok=True)
        if fmt == "everything":
            summary = archive.export_all(store, out_dir / "rankloop-everything")
            r = summary.rows
            message = (
                f"Exported everything: {r['labels']} labels, {r['skips']} skips, "
                f"{r['flags']} flags, {r['label_revisions']} undone labels, "
                f"{r['comparisons']} comparisons (one JSONL file per table)."
            )
            target = summary.path
        else:
            target = out_dir / EXPORT_FORMATS[fmt].default_name
            try:
                rows = export_preferences(store, target, fmt, margins=ctx.margins)
            except StoreError as e:
                return None, f"Nothing exported: {e}"
            message = f"Exported {rows} {EXPORT_FORMATS[fmt].unit} ({fmt})."
    if target.is_dir():
        target = Path(shutil.make_archive(str(target), "zip", root_dir=target))
    return target, message
