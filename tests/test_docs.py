"""Docs the code keeps true: what the docs say about options, settings and metrics is read from
the code (generated) or checked against it here, so the two cannot drift apart."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from rankloop.app import reference
from rankloop.app.config import ProjectConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
METRIC = re.compile(r"^(objective|policy|val|time|eval|ppo|ptx|rloo|charts|losses)/[a-z0-9_]+$")


@pytest.mark.parametrize("file", sorted(reference.GENERATED))
def test_the_generated_reference_matches_the_code(file):
    name, make = reference.GENERATED[file]
    got = reference.generated_part((DOCS / file).read_text(encoding="utf-8"), name)
    assert got == make(), f"docs/{file} is out of date with the code: run `make docs`"


def test_the_generator_rewrites_a_stale_part(tmp_path):
    for file, (name, _) in reference.GENERATED.items():
        (tmp_path / file).write_text(
            f"x\n<!-- BEGIN GENERATED: {name} -->\nold\n<!-- END GENERATED: {name} -->\ny\n"
        )
    assert sorted(Path(p).name for p in reference.write(tmp_path)) == sorted(reference.GENERATED)
    doc = (tmp_path / "config.md").read_text()
    assert doc.startswith("x\n") and doc.endswith("y\n") and "| `margin_much` | `1.0` |" in doc
    assert reference.write(tmp_path) == []  # a second run changes nothing


def _string_literals(folder: Path) -> set[str]:
    out = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.add(node.value)
    return out


def _table_names(doc: str, heading: str) -> set[str]:
    """The backticked names in the first column of the tables under `heading`."""
    part = doc[doc.index(heading) :]
    part = part[: part.find("\n## ", len(heading)) if "\n## " in part[len(heading) :] else None]
    names = set()
    for line in part.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def test_the_metric_table_of_docs_ppo_lists_exactly_the_metrics_the_code_logs():
    logged = {s for s in _string_literals(ROOT / "ppo") if METRIC.match(s)}
    documented = _table_names((DOCS / "ppo.md").read_text(encoding="utf-8"), "## Metrics")
    assert logged - documented == set(), "metrics the code logs that docs/ppo.md does not list"
    assert documented - logged == set(), "metrics docs/ppo.md lists that the code never logs"


def _literal(text: str):
    """A default as a doc table writes it (`true`, 0.33, "oldest", k1) -> a Python value."""
    text = text.strip().strip("`").strip('"')
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return text


# (doc, the settings section its tables describe, the heading those tables are under)
HAND_TABLES = [
    ("ppo.md", "ppo", "## Options"),
    ("ppo.md", "dpo", "### `[dpo]`"),
    ("reward.md", "reward", "## Every option"),
    ("labeling.md", "labeling", "## Settings"),
]


def _matches(want, text: str) -> bool:
    got = _literal(text)
    if isinstance(want, bool):
        return got == want
    if isinstance(want, (int, float)):
        return isinstance(got, float) and got == want
    if want is None:
        return text.strip() in ("", "(unset)", "none", "None")
    return got == want


@pytest.mark.parametrize(("file", "section", "heading"), HAND_TABLES)
def test_hand_written_setting_tables_give_the_code_defaults(file, section, heading):
    obj = getattr(ProjectConfig(), section)
    fields = {f.name for f in dataclasses.fields(obj)}
    doc = (DOCS / file).read_text(encoding="utf-8")
    part = doc[doc.index(heading) :]
    part = part[: re.search(r"\n#{1,3} ", part[len(heading) :]).start() + len(heading)]
    checked, column = 0, None
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| setting"):
            column = cells.index("default")
            continue
        names = re.findall(r"`([^`]+)`", cells[0]) if line.startswith("| `") else []
        if column is None or not names or not set(names) <= fields:
            continue
        values = cells[column].split(",") if len(names) > 1 else [cells[column]]
        if len(values) != len(names):
            values = values[:1] * len(names)
        for name, text in zip(names, values, strict=True):
            if " " in text.strip().strip('`"') and not _matches(getattr(obj, name), text):
                continue  # a description ("0 = auto", "attention + MLP projections")
            want = getattr(obj, name)
            assert _matches(want, text), (
                f"docs/{file}: [{section}] {name} default is {want!r}, the table says {text}"
            )
            checked += 1
    assert checked >= 3, f"docs/{file}: no table of [{section}] settings under {heading!r}"
