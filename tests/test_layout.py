"""The package graph of README's "What is where": imports point one way, read with `ast`.

README's table of imports is the rule: a package may import exactly what its row lists, and
every edge listed must be used (so the drawing and the table cannot drift from the code). ppo may
use the reward package's public scorer (`rankloop.reward.scoring` and the text format of
`rankloop.reward.model` it scores); nothing imports upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "reward", "ppo", "lm", "data", "settings")


def readme_edges() -> dict[str, set[str]]:
    """README's "| package | imports |" table as {package: what it may import}."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| package | imports") :].split("\n\n")[0].splitlines()[2:]
    edges = {}
    for row in table:
        package, imports = (c.strip() for c in row.strip("|").split("|"))
        edges[package.strip("`")] = {t.strip().strip("`") for t in imports.split(",")} - {"nothing"}
    return edges


ALLOWED = readme_edges()


def rankloop_imports(path: Path) -> set[str]:
    """The `rankloop.*` modules a file imports (anywhere in it, lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n.removeprefix("rankloop.") for n in names if n.startswith("rankloop.")}
    return out


def violations(package: str, allowed: set[str]) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for target in sorted(rankloop_imports(path)):
            top = target.split(".")[0]
            if top == package or top not in PACKAGES:
                continue
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                bad.append(f"{path.relative_to(ROOT)} imports rankloop.{target}")
    return bad


def test_every_package_imports_only_downward():
    assert sorted(ALLOWED) == sorted(PACKAGES)
    found = {p: violations(p, ALLOWED[p]) for p in PACKAGES}
    assert {p: v for p, v in found.items() if v} == {}


def test_every_edge_the_readme_lists_is_used():
    used = {p: set() for p in PACKAGES}
    for p in PACKAGES:
        for path in (ROOT / p).rglob("*.py"):
            used[p] |= rankloop_imports(path)
    unused = {
        (p, a)
        for p, allowed in ALLOWED.items()
        for a in allowed
        if not any(t == a or t.startswith(a + ".") for t in used[p])
    }
    assert unused == set(), "README's import table lists edges no code uses: redraw it"


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The test above would pass vacuously if the reader missed imports: plant one of each
    kind (top-level, lazy inside a function, `from rankloop.x import y`) and see them caught."""
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "bad.py").write_text(
        "import rankloop.app.cli\n"
        "def f():\n    from rankloop.ppo import core\n"
        "from rankloop.data import store\n"
    )
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert violations("lm", ALLOWED["lm"]) == [
        "lm/bad.py imports rankloop.app.cli",
        "lm/bad.py imports rankloop.ppo.core",
    ]


def raw_sql(path: Path) -> list[int]:
    """Lines where a file reaches into the store's database (`x.db.execute(...)`, `x.db[...]`,
    `x.db.query(...)`) instead of calling the store's API."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        target = node.value if isinstance(node, (ast.Attribute, ast.Subscript)) else None
        if (
            isinstance(target, ast.Attribute)
            and target.attr == "db"
            and (
                isinstance(node, ast.Subscript)
                or node.attr in ("execute", "executescript", "query")
            )
        ):
            out.append(node.lineno)
    return sorted(set(out))


def test_the_app_calls_the_store_api_not_sql():
    """Handlers and commands ask the store (`data.store.Store`), which keeps the SQL, the
    transactions and the write order in one place."""
    found = {str(p.relative_to(ROOT)): raw_sql(p) for p in sorted((ROOT / "app").rglob("*.py"))}
    assert {p: lines for p, lines in found.items() if lines} == {}


def test_the_sql_checker_sees_raw_sql(tmp_path):
    f = tmp_path / "h.py"
    f.write_text(
        "def h(store):\n    store.db.execute('select 1')\n"
        "    store.db['labels'].insert({})\n    store.labels()\n"
    )
    assert raw_sql(f) == [2, 3]


# One helper each (issue 20, point 6): code outside lm/ may not choose a dtype, autocast or seed
# the global generators by itself; it calls lm.device / lm.seeds / lm.checkpoints.
BYPASSES = {
    "torch.autocast(": "lm.device.autocast",
    "torch.manual_seed(": "lm.seeds.seed_everything",
    "set_seed(": "lm.seeds.seed_everything",
    "torch.bfloat16 if": "lm.device.weights_dtype",
    '"-checkpoints"': "lm.checkpoints.checkpoint_dir",
    '/ "checkpoints"': "lm.checkpoints.checkpoint_dir",
}


def bypasses(root: Path) -> list[str]:
    found = []
    for package in ("app", "reward", "ppo", "data"):
        for path in sorted((root / package).rglob("*.py")):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                for text, helper in BYPASSES.items():
                    if text in line and not line.lstrip().startswith("#"):
                        found.append(f"{path.relative_to(root)}:{n} uses {text} (use {helper})")
    return found


def test_dtype_autocast_seeds_and_checkpoints_go_through_one_helper_each(tmp_path):
    assert bypasses(ROOT) == []
    (tmp_path / "reward").mkdir()
    (tmp_path / "reward" / "bad.py").write_text(
        "with torch.autocast('cpu'):\n    torch.manual_seed(0)\n"
        'ckpt = out.with_name(out.name + "-checkpoints")\n'
    )
    assert [b.split(" uses ")[1] for b in bypasses(tmp_path)] == [
        "torch.autocast( (use lm.device.autocast)",
        "torch.manual_seed( (use lm.seeds.seed_everything)",
        '"-checkpoints" (use lm.checkpoints.checkpoint_dir)',
    ]
