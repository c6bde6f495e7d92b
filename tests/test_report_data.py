"""What the Rounds view and `rankloop report` read: per-step curves (migration 0020,
data/curves.py)."""

from __future__ import annotations

import math

import pytest
import sqlite_utils

from rankloop.data import curves
from rankloop.data.migrations import migrate


def test_migration_0020_adds_the_curve_table_to_an_older_project(tmp_path):
    db = sqlite_utils.Database(tmp_path / "old.db")
    migrate(db, upto="0010_rounds_state")
    assert "round_curves" not in db.table_names()
    assert "0020_round_curves" in migrate(db)
    assert db["round_curves"].pks == ["round", "stage", "metric", "step"]
    assert migrate(db) == []  # never twice


def test_record_curve_keeps_numbers_per_step_and_a_rerun_replaces_it(fresh_store):
    history = [
        {
            "step": 1,
            "objective/scores": 0.5,
            "objective/kl": 0.0,
            "note": "text",
            "flag": True,
            "bad": math.nan,
        },
        {"step": 2, "objective/scores": 0.75, "objective/kl": 0.25, "bad": 1.0},
    ]
    assert curves.record_curve(fresh_store, 0, "ppo", history) == 2
    curves.record_curve(fresh_store, 1, "ppo", [{"objective/scores": 2.0}])  # no step: 1
    got = curves.curves(fresh_store)
    assert got == [
        curves.Curve(0, "ppo", "bad", (2,), (1.0,)),
        curves.Curve(0, "ppo", "objective/kl", (1, 2), (0.0, 0.25)),
        curves.Curve(0, "ppo", "objective/scores", (1, 2), (0.5, 0.75)),
        curves.Curve(1, "ppo", "objective/scores", (1,), (2.0,)),
    ]
    assert [c.metric for c in curves.curves(fresh_store, metrics=["objective/kl"])] == [
        "objective/kl"
    ]
    # a resumed or repeated run of the stage replaces the round's curve, nothing doubled
    curves.record_curve(fresh_store, 0, "ppo", [{"step": 1, "objective/scores": 0.1}])
    assert [(c.round, c.metric, c.values) for c in curves.curves(fresh_store)] == [
        (0, "objective/scores", (0.1,)),
        (1, "objective/scores", (2.0,)),
    ]
    assert curves.curves(fresh_store, stage="reward") == []


def test_a_failed_record_leaves_the_old_curve(fresh_store, monkeypatch):
    curves.record_curve(fresh_store, 0, "ppo", [{"step": 1, "objective/kl": 0.5}])
    table = fresh_store.db["round_curves"]

    def broken(rows, **kw):
        list(rows)
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(table), "insert_all", lambda self, rows, **kw: broken(rows))
    with pytest.raises(RuntimeError, match="disk full"):
        curves.record_curve(fresh_store, 0, "ppo", [{"step": 1, "objective/kl": 9.0}])
    monkeypatch.undo()
    assert [c.values for c in curves.curves(fresh_store)] == [(0.5,)]
