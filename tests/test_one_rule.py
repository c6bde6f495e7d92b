"""One rule for each decision (issue 20): places that read the same thing read it one way.

Each test here fails if two of the places that make a decision could disagree again:
the margin of a strength (one setting, `[reward] margin_*`), the pairs and ties of a ranking
(the export, the reward trainer and the leaderboard), and "is this task pairwise".
"""

from __future__ import annotations

import json
import random

import pytest
import sqlite_utils

from rankloop.app.config import LabelingConfig, ProjectConfig
from rankloop.app.labeling import handlers
from rankloop.app.labeling.store_pool import StorePool
from rankloop.data import queue
from rankloop.data.io import preference_dataset
from rankloop.data.migrations import migrate
from rankloop.data.records import Judgment, Label, Prompt, Response, mode_of
from rankloop.data.store import StoreError
from rankloop.reward.pairs import build_examples
from rankloop.settings import ConfigError


def _two_round_comparison(s):
    """One prompt, a response of each of rounds 0, 1, 2, one comparison of all three."""
    (pid,) = s.add_prompts([Prompt.from_text("q")])
    rids = [
        s.add_responses([Response(pid, f"round {r}", round=r, policy=f"p{r}")])[0] for r in range(3)
    ]
    return pid, rids, s.add_comparison(pid, rids, round=2)


def test_a_strength_becomes_a_margin_in_one_place_for_trainer_and_export(fresh_store):
    s = fresh_store
    cid = s.add_comparison_texts("q", ["first", "second"])
    (aid,) = [s.add_annotator("ann")[0].id]
    t = queue.next_task(s, aid, now=0.0, rng=random.Random(0))
    queue.submit(s, aid, cid, t.request_id, Judgment(choice="A", strength="slightly"))
    (stored,) = s.labels()
    assert (stored.strength, stored.margin) == ("slightly", None)  # kept as the person said
    for slightly in (0.25, 0.6):  # the setting changes what every label means, both ways
        (ex,) = build_examples(s, margin_slightly=slightly, margin_much=1.0).examples
        (pair,) = ex.pairs
        (row,) = preference_dataset(s, margins=(slightly, 1.0)).to_list()
        assert pair.margin == row["margin"] == slightly


def test_an_imported_numeric_margin_wins_over_the_strength_everywhere(fresh_store):
    s = fresh_store
    cid = s.add_comparison_texts("q", ["first", "second"])
    aid = s.add_annotator("ext", role="external")[0].id
    order = s.comparison(cid).response_ids
    s.add_label(
        Label.pairwise(cid, aid, order, "A", strength="much", margin=2.5, source="external")
    )
    (pair,) = build_examples(s, margin_slightly=0.3, margin_much=1.0).examples[0].pairs
    (row,) = preference_dataset(s, margins=(0.3, 1.0)).to_list()
    assert pair.margin == row["margin"] == 2.5


def test_migration_0030_drops_the_margin_the_app_baked_in_and_keeps_imported_ones(tmp_path):
    db = sqlite_utils.Database(tmp_path / "old.db")
    migrate(db, upto="0022_comparison_gap_spread")
    rows = [  # (source, strength, margin) as the old app and an import wrote them
        ("human", "slightly", 0.33),
        ("human", None, None),
        ("external", "much", 2.0),
    ]
    for i, (source, strength, margin) in enumerate(rows, start=1):
        db.execute(
            "insert into labels (id, comparison_id, annotator_id, mode, ranking, strength, "
            "margin, source, created_at) values (?, ?, 1, 'pairwise', '[]', ?, ?, ?, 'x')",
            [i, i, strength, margin, source],
        )
    assert migrate(db) == ["0030_strength_not_margin"]
    got = db.execute("select source, strength, margin from labels order by id").fetchall()
    assert got == [("human", "slightly", None), ("human", None, None), ("external", "much", 2.0)]


def test_the_old_labeling_margin_settings_load_at_their_default_and_are_refused_otherwise(
    tmp_path,
):
    path = tmp_path / "rankloop.toml"
    path.write_text("[labeling]\nmargin_slightly = 0.33\nmargin_much = 1.0\n")
    assert ProjectConfig.load(path).reward.margin_slightly == 0.33
    path.write_text("[labeling]\nmargin_slightly = 0.5\n")
    with pytest.raises(ConfigError, match=r"\[labeling\] margin_slightly is now \[reward\]"):
        ProjectConfig.load(path)


def test_export_trainer_and_leaderboard_see_the_same_pairs_and_ties(fresh_store):
    s = fresh_store
    _, (r0, r1, r2), cid = _two_round_comparison(s)
    aid = s.add_annotator("ann")[0].id
    # round 2 best, rounds 0 and 1 tied below it
    s.add_label(Label(cid, aid, ((r2,), (r0, r1)), display_order=(r0, r1, r2)))
    text_id = {f"round {r}": rid for r, rid in enumerate((r0, r1, r2))}

    def outcome(hi, lo, tie):  # one unordered pair -> who won (None: tie)
        return frozenset((hi, lo)), None if tie else hi

    export = {
        outcome(text_id[row["chosen"]], text_id[row["rejected"]], row["tie"])
        for row in preference_dataset(s).to_list()
    }
    (ex,) = build_examples(s).examples
    ids = [text_id[t] for t in ex.responses]
    trainer = {outcome(ids[p.better], ids[p.worse], p.tie) for p in ex.pairs}
    by_round = {0: r0, 1: r1, 2: r2}
    board = {
        outcome(
            by_round[m.model_a if m.outcome >= 0.5 else m.model_b],
            by_round[m.model_b if m.outcome >= 0.5 else m.model_a],
            m.outcome == 0.5,
        )
        for m in s.cross_round_outcomes()
    }
    expected = {
        (frozenset((r2, r0)), r2),
        (frozenset((r2, r1)), r2),
        (frozenset((r0, r1)), None),
    }
    assert export == trainer == board == expected


@pytest.mark.parametrize("k", [2, 3])
def test_is_this_task_pairwise_is_decided_once(fresh_store, k):
    """The queue's task, the page, the API and the queue's check agree on the mode of k."""
    s = fresh_store
    cid = s.add_comparison_texts("q", [f"r{i}" for i in range(k)])
    s.add_annotator("ann")
    ctx = handlers.Ctx(StorePool.shared(s), LabelingConfig(k=k))
    page = handlers.load(ctx, "ann")
    assert page.mode == mode_of(k) == ("pairwise" if k == 2 else "ranking")
    task = queue.next_task(s, s.annotator("ann").id, now=0.0, rng=random.Random(0))
    assert task.mode == mode_of(k)
    if k == 2:
        got = handlers.api_label(ctx, "ann", cid, page.state["request_id"], choice="A")
        assert got["label_id"] == s.labels()[0].id and s.labels()[0].mode == "pairwise"
    else:
        with pytest.raises(StoreError, match="for a comparison of 2 responses"):
            handlers.api_label(ctx, "ann", cid, page.state["request_id"], choice="A")
        with pytest.raises(StoreError, match="choose A better"):
            handlers.judgment_of(2, "", "", "", "", None)
        assert s.labels() == []
        got = handlers.api_label(ctx, "ann", cid, page.state["request_id"], ranking="C > A = B")
        (lab,) = s.labels()
        assert lab.mode == "ranking" and json.loads(json.dumps(lab.ranking)) == [
            [task.display_order[2]],
            list(task.display_order[:2]),
        ]


def test_every_export_reads_a_strength_with_the_reward_trainers_defaults(fresh_store):
    from rankloop.data.rankings import DEFAULT_MARGINS
    from rankloop.reward.config import RewardConfig

    cfg = RewardConfig()
    assert (cfg.margin_slightly, cfg.margin_much) == DEFAULT_MARGINS == (0.33, 1.0)
    assert LabelingConfig() == LabelingConfig()  # no margin setting left in [labeling]
    assert not hasattr(LabelingConfig(), "margin_slightly")
    s = fresh_store
    cid = s.add_comparison_texts("q", ["first", "second"])
    aid = s.add_annotator("ann")[0].id
    t = queue.next_task(s, aid, now=0.0, rng=random.Random(0))
    queue.submit(s, aid, cid, t.request_id, Judgment(choice="B", strength="much"))
    (row,) = preference_dataset(s).to_list()  # no project at hand: the defaults
    assert row["margin"] == 1.0 and row["strength"] == "much"
    ctx = handlers.Ctx(StorePool.shared(s), LabelingConfig())
    assert ctx.margins == DEFAULT_MARGINS  # the admin tab's export, unless serve passes others
