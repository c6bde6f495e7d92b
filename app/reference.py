"""Reference docs generated from the code, so they cannot drift from it.

`docs/cli.md` ends with every command's options, read from the click commands; `docs/config.md`
lists every `rankloop.toml` setting, read from the config dataclasses (their field docstrings).
Each generated part sits between `<!-- BEGIN GENERATED: NAME -->` and `<!-- END GENERATED:
NAME -->`; `make docs` (`python -m rankloop.app.reference`) rewrites them, and
`tests/test_docs.py` fails when a commit changes the code without them.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import click

from rankloop.settings import field_docs

from .cli import cli
from .config import ProjectConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name in sorted(group.commands):
        cmd = group.commands[name]
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def _default(p: click.Parameter) -> str:
    if isinstance(p, click.Option) and (p.is_flag and not p.secondary_opts):
        return "off" if not p.default else "on"
    if p.default is None or p.default == () or callable(p.default):
        return ""
    return f"`{p.default}`"


def cli_reference() -> str:
    """Every command's arguments and options, with defaults and help, as Markdown tables
    (`--project DIR`, which every command takes, is left out)."""
    out = []
    for path, cmd in _commands(cli):
        ctx = click.Context(cmd, info_name=" ".join(("rankloop", *path)))
        summary = (cmd.help or "").strip().split("\n\n")[0]
        out.append(f"### `rankloop {' '.join(path)}`\n\n{_cell(summary)}\n")
        rows = []
        for p in cmd.params:
            if isinstance(p, click.Argument):
                rows.append((f"`{p.human_readable_name}` (argument)", "", ""))
            elif isinstance(p, click.Option) and not p.hidden and p.name != "project_dir":
                names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
                rows.append((names, _default(p), _cell(p.help or "")))
        if rows:
            out.append("| option | default | what it does |\n| --- | --- | --- |")
            out.extend(f"| {a} | {b} | {c} |" for a, b, c in rows)
        out.append(f"\nUsage: `{_cell(' '.join(cmd.collect_usage_pieces(ctx)))}`\n")
    return "\n".join(out).rstrip() + "\n"


def config_reference() -> str:
    """Every section and setting of `rankloop.toml`: default and meaning (the field docstrings
    the commented file that `rankloop init` writes also carries)."""
    config = ProjectConfig()
    out = []
    for section in ProjectConfig.SECTIONS:
        obj = getattr(config, section)
        doc = (type(obj).__doc__ or "").strip().splitlines()[0]
        docs = field_docs(type(obj))
        out.append(f"## `[{section}]`\n\n{_cell(doc)}\n")
        out.append("| setting | default | meaning |\n| --- | --- | --- |")
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            default = "(unset)" if value is None else f"`{value!r}`".replace("'", '"')
            out.append(f"| `{f.name}` | {default} | {_cell(docs.get(f.name, ''))} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


GENERATED = {"cli.md": ("options", cli_reference), "config.md": ("settings", config_reference)}


def _block(name: str, text: str) -> str:
    return f"<!-- BEGIN GENERATED: {name} -->\n{text}<!-- END GENERATED: {name} -->"


def generated_part(doc: str, name: str) -> str | None:
    """The text between the markers `name` in `doc` (None without them)."""
    m = re.search(
        rf"<!-- BEGIN GENERATED: {name} -->\n(.*?)<!-- END GENERATED: {name} -->", doc, re.DOTALL
    )
    return m.group(1) if m else None


def write(docs: Path = DOCS) -> list[str]:
    """Rewrite each generated part in place; returns the files that changed."""
    changed = []
    for file, (name, make) in GENERATED.items():
        path = docs / file
        doc = path.read_text(encoding="utf-8")
        if generated_part(doc, name) is None:
            raise SystemExit(f"{path}: no <!-- BEGIN GENERATED: {name} --> marker")
        block = _block(name, make())
        new = re.sub(
            rf"<!-- BEGIN GENERATED: {name} -->\n.*?<!-- END GENERATED: {name} -->",
            lambda _, block=block: block,
            doc,
            flags=re.DOTALL,
        )
        if new != doc:
            path.write_text(new, encoding="utf-8")
            changed.append(str(path))
    return changed


if __name__ == "__main__":
    for p in write():
        print(f"rewrote {p}")
    sys.exit(0)
