"""Label Studio and Argilla import and export speed, against rankloop's own preference import.

Setting: N simulated pairwise labels (the keyword task of tests/simulate.py, one annotator) in
a store; exported as TRL rows (`rankloop export --format jsonl`), as Label Studio tasks and as
an Argilla dataset; each export imported into a fresh on-disk store (WAL, synchronous=FULL, as
a project's). The anchor is `import_file` of the TRL rows (the same labels through rankloop's
own path); reported: seconds per export and import, labels/s, and each import's time over the
anchor's (a ratio, since the machine is shared). Every import is checked to hold N labels.

    flock /tmp/rankloop-cpu.lock .venv/bin/python bench/interop.py [--labels 5000]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rankloop.data.interop import argilla, labelstudio
from rankloop.data.interop.common import write_items
from rankloop.data.io import export_preferences, import_file
from rankloop.data.store import Store

from simulate import simulate_labels


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", type=int, default=5000)
    args = ap.parse_args()
    n = args.labels
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        native = Store.memory()
        simulate_labels(native, n, seed=0, annotator="sim@example.org")
        rows = {}
        exports = {
            "trl-jsonl (anchor)": ("jsonl", tmp / "prefs.jsonl"),
            "label-studio": ("label-studio", tmp / "ls"),
            "argilla": ("argilla", tmp / "ag"),
        }
        for name, (fmt, out) in exports.items():
            _, secs = timed(lambda fmt=fmt, out=out: export_preferences(native, out, fmt))
            rows[name] = {"export_s": secs}

        def into(name, fn):
            store = Store.open(tmp / f"{name.split()[0]}.db")
            _, secs = timed(lambda: fn(store))
            assert len(store.labels()) == n, name
            store.close()
            rows[name]["import_s"] = secs

        into("trl-jsonl (anchor)", lambda s: import_file(s, tmp / "prefs.jsonl", source="trl"))
        cfg = labelstudio.parse_config((tmp / "ls" / "labeling.xml").read_text())
        into(
            "label-studio",
            lambda s: write_items(
                s, labelstudio.parse_export(tmp / "ls" / "tasks.json", cfg), "ls", "Label Studio"
            ),
        )
        into(
            "argilla",
            lambda s: write_items(s, argilla.parse_dataset(tmp / "ag"), "argilla", "Argilla"),
        )
    anchor = rows["trl-jsonl (anchor)"]["import_s"]
    print(f"{n} labels, {platform.machine()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"{'format':22} {'export s':>9} {'import s':>9} {'labels/s':>9} {'x anchor':>9}")
    for name, r in rows.items():
        print(
            f"{name:22} {r['export_s']:9.2f} {r['import_s']:9.2f} "
            f"{n / r['import_s']:9.0f} {r['import_s'] / anchor:9.2f}"
        )
    print(json.dumps({"labels": n, "rows": rows}))


if __name__ == "__main__":
    main()
