"""The store's round state: migration 0010, the current round, stage records, cross-round
matches (the input of win-rates and the leaderboard)."""

from __future__ import annotations

import sqlite_utils

from rankloop.data.migrations import migrate
from rankloop.data.records import Label, Match, Prompt, Response, RoundStage
from rankloop.data.store import Store


def test_migration_0010_sets_the_current_round_of_an_older_project(tmp_path):
    db = sqlite_utils.Database(tmp_path / "old.db")
    migrate(db, upto="0003_queue_counts")
    old = Store.__new__(Store)  # a store at schema 3, as an older rankloop left it
    old.db = db
    old.add_comparison_texts("p0", ["x", "y"], round=0)
    old.add_comparison_texts("p1", ["x", "y"], round=2)
    assert "0010_rounds_state" in migrate(db)
    store = Store(db)
    assert store.current_round() == 2  # the newest round with comparisons
    assert store.stages() == []
    assert Store.memory().current_round() == 0  # a new project starts at round 0


def test_current_round_and_stage_records(fresh_store):
    s = fresh_store
    s.set_current_round(3)
    assert s.current_round() == 3 and s.status().current_round == 3
    at = "2026-01-01T00:00:0{}.000+00:00".format
    s.finish_stage(RoundStage(3, "reward", 12.5, {"reward/accuracy": 0.75}, at(1)))
    s.finish_stage(RoundStage(3, "ppo", 40.0, {"ppo/kl_last": 1.5}, at(2)))
    s.finish_stage(RoundStage(2, "advance", 0.1, finished_at=at(3)))
    got = [(st.round, st.stage, st.seconds, st.metrics) for st in s.stages(3)]
    assert got == [
        (3, "reward", 12.5, {"reward/accuracy": 0.75}),
        (3, "ppo", 40.0, {"ppo/kl_last": 1.5}),
    ]
    s.finish_stage(RoundStage(3, "reward", 20.0, {"reward/accuracy": 0.8}, at(4)))  # replaces
    assert [(st.stage, st.seconds) for st in s.stages(3)] == [("ppo", 40.0), ("reward", 20.0)]
    s.forget_stage(3, "ppo")
    assert [st.stage for st in s.stages(3)] == ["reward"]
    assert [(st.round, st.stage) for st in s.stages()] == [(2, "advance"), (3, "reward")]


def _responses(store, pid, texts_by_round):
    """{round: response id} for one generated response per round."""
    return {
        rnd: store.add_responses(
            [Response(pid, text, round=rnd, policy=f"policy-{rnd}", sample_index=0)]
        )[0]
        for rnd, text in texts_by_round.items()
    }


def test_cross_round_outcomes_one_match_per_label_and_pair(fresh_store):
    s = fresh_store
    p1, p2 = s.add_prompts([Prompt.from_text("q1"), Prompt.from_text("q2")])
    r = _responses(s, p1, {0: "old", 1: "mid", 2: "new"})
    other = s.add_responses([Response(p1, "new too", round=2, policy="policy-2", sample_index=1)])[
        0
    ]
    imported = s.add_responses([Response(p1, "from a file", round=1, source="import:x")])[0]
    r2 = _responses(s, p2, {0: "a", 2: "b"})
    ann, _ = s.add_annotator("ann")
    sim = s.external_annotator("sim")
    c_win = s.add_comparison(p1, [r[0], r[2]], round=2)  # old shown first, new wins (B)
    c_same = s.add_comparison(p1, [r[2], other], round=2)  # one round only: no match
    c_three = s.add_comparison(p1, [r[0], r[1], r[2]], round=2)
    c_tie = s.add_comparison(p2, [r2[2], r2[0]], round=2)
    c_bad = s.add_comparison(p1, [r[1], r[2]], round=2)
    c_import = s.add_comparison(p1, [imported, r[2]], round=2)  # imported: no round's policy
    s.add_labels(
        [
            Label.pairwise(c_win, ann.id, (r[0], r[2]), "B"),
            Label.pairwise(c_same, ann.id, (r[2], other), "A"),
            # mid best; old and new tied below it
            Label(c_three, ann.id, ranking=((r[1],), (r[0], r[2]))),
            Label.pairwise(c_tie, sim.id, (r2[2], r2[0]), "tie", source="simulated"),
            Label.pairwise(c_bad, ann.id, (r[1], r[2]), "both_bad"),
            Label.pairwise(c_import, ann.id, (imported, r[2]), "A"),
        ]
    )
    lab = {label.comparison_id: label.id for label in s.labels()}
    got = s.cross_round_outcomes()
    assert got == [
        Match(p1, c_win, lab[c_win], 2, 0, r[2], r[0], 1.0, "human"),
        Match(p1, c_three, lab[c_three], 1, 0, r[1], r[0], 1.0, "human"),
        Match(p1, c_three, lab[c_three], 2, 0, r[2], r[0], 0.5, "human"),
        Match(p1, c_three, lab[c_three], 2, 1, r[2], r[1], 0.0, "human"),
        Match(p2, c_tie, lab[c_tie], 2, 0, r2[2], r2[0], 0.5, "simulated"),
        Match(p1, c_bad, lab[c_bad], 2, 1, r[2], r[1], 0.5, "human"),
    ]
    assert got[3].score(2) == 0.0 and got[3].score(1) == 1.0
    assert [m.comparison_id for m in s.cross_round_outcomes(["simulated"])] == [c_tie]
    assert len(s.cross_round_outcomes(["human", "simulated"])) == 6
    assert s.cross_round_outcomes(["external"]) == []
