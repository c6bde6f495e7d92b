"""The rounds report (app/report.py): what it collects from the store and the static page it
writes. The page in a real browser: tests/test_rounds_browser.py."""

from __future__ import annotations

import dataclasses
import html
import math
import os
import re

import krippendorff
import numpy as np
import pytest
from report_fixture import HOSTILE, two_round_store

from rankloop.app import report
from rankloop.data import agreement
from rankloop.data.store import Store


@pytest.fixture
def two_rounds(fresh_store):
    ids = two_round_store(fresh_store)
    return fresh_store, ids


def test_collect_gathers_each_round(two_rounds):
    store, ids = two_rounds
    got = report.collect(store, n_boot=200)
    r0, r1, r2 = got.rounds
    # ann [+1, -1, +1, +1] and bob [+1, -1, +1, -1] on round 0's four same-round comparisons
    alpha = krippendorff.alpha(
        reliability_data=np.array([[1, -1, 1, 1], [1, -1, 1, -1]], float),
        value_domain=[-1, 0, 1],
        level_of_measurement="ordinal",
    )
    assert r0 == report.RoundRow(
        number=0,
        labels={"human": 8},
        alpha={"human": pytest.approx(alpha), "simulated": None},
        reward_accuracy=0.7,
        reward_baseline=0.6,
        reward_ece=0.05,
        reward_eval_pairs=20,
        ppo_steps=3,
        ppo_kept_step=None,
        ppo_score_first=0.1,
        ppo_score_last=0.4,
        ppo_kl=1.5,
        ppo_length=40.0,
        seconds=None,
    )
    assert 0 < alpha < 1
    # the kept policy's KL (kl_final) before the last steps' (kl_last); early stopping kept step 1
    assert (r1.labels, r1.ppo_kl, r1.ppo_steps, r1.ppo_kept_step) == ({"human": 6}, 1.25, 2, 1)
    # round 1's reward model is an ensemble: its members and mean spread, as stored
    assert (r0.reward_members, r0.reward_spread) == (None, None)
    assert (r1.reward_members, r1.reward_spread) == (4, 0.125)
    assert r2.labels == {"human": 12, "simulated": 6}
    assert r2.alpha == {"human": None, "simulated": None}  # one annotator each: no overlap
    assert r2.reward_accuracy is None and r2.ppo_score_first is None
    assert got.current_round == 2 and got.match_sources == {"human": 18, "simulated": 6}
    assert [(w.model, w.opponent, w.source, w.rate) for w in got.win_rates] == [
        (1, 0, "all", 0.75),
        (1, 0, "human", 0.75),
        (2, 1, "all", pytest.approx(5 / 6)),
        (2, 1, "human", pytest.approx(5 / 6)),
        (2, 0, "all", pytest.approx(11.5 / 12)),
        (2, 0, "human", pytest.approx(5.5 / 6)),
        (2, 0, "simulated", 1.0),
    ]
    assert [r.model for r in got.leaderboard.ratings] == [2, 1, 0]
    assert [(c.round, c.metric, c.values) for c in got.curves] == [
        (0, "objective/kl", (0.0, 0.8, 1.5)),
        (0, "objective/response_length", (50, 45, 40)),
        (0, "objective/scores", (0.1, 0.2, 0.4)),
        (1, "objective/kl", (0.0, 2.0)),
        (1, "objective/response_length", (38, 35)),
        (1, "objective/scores", (0.3, 0.9)),
    ]
    # examples: the newest round against the one before, newest comparisons first
    assert [(e.prompt.id, e.newer, e.older, e.wins, e.ties, e.losses) for e in got.examples] == [
        (ids["prompts"][5], 2, 1, 0, 0, 1),
        (ids["prompts"][4], 2, 1, 1, 0, 0),
        (ids["prompts"][3], 2, 1, 1, 0, 0),
    ]


def test_collect_counts_only_the_sources_asked_for(two_rounds):
    store, _ = two_rounds
    got = report.collect(store, sources=["simulated"], n_boot=100)
    assert [(w.model, w.opponent, w.source, w.rate) for w in got.win_rates] == [(2, 0, "all", 1.0)]
    assert [r.model for r in got.leaderboard.ratings] == [2, 0]
    assert got.match_sources == {"simulated": 6} and got.sources == ("simulated",)
    assert "labels from simulated" in report.render_body(got)


def test_the_page_flags_a_policy_that_never_lost(two_rounds):
    """Counting sim-1's labels only, round 2 won all 6 of its matches against the base: its
    win-rate's interval is the exact one, its Elo has only a lower bound, both flagged (in the
    table, the headline, the rounds table and the plot, which draws no estimate for it)."""
    store, _ = two_rounds
    got = report.collect(store, sources=["simulated"], n_boot=100)
    ((w,), (r2, r0)) = got.win_rates, got.leaderboard.ratings
    assert (w.rate, w.low, w.high, w.flags) == (
        1.0,
        pytest.approx(0.025 ** (1 / 6)),
        1.0,
        ("never_lost",),
    )
    assert (r2.model, r2.flags, r2.high) == (2, ("unbounded_above",), math.inf) and math.isnan(
        r2.elo
    )
    # P(win) >= 0.5407 against the base at 1000: 1000 + 400 log10(0.5407 / 0.4593) = 1028.4
    assert r2.low == pytest.approx(
        1000 + 400 * math.log10(0.025 ** (1 / 6) / (1 - 0.025 ** (1 / 6)))
    )
    assert (r0.model, r0.elo, r0.flags) == (0, 1000.0, ())
    page = report.render_body(got)
    text = re.sub(r"(<[^>]+>)+", "|", page)
    assert "|1|round 2|≥ 1028|1028–∞|6|100%|⚠ unbounded: never lost|" in text
    assert "|round 2 vs round 0 (base)|all|100%|54%–100%|6|6|6 / 0 / 0|⚠ never lost|" in text
    assert "n = 6 on 6 prompts; ⚠ never lost)" in report.headline(got)
    assert "|100% (54%–100%) ⚠|" in text  # round 1's row: R+1 vs 0
    assert "<title>round 2:" not in page  # no dot for an estimate that does not exist


def test_alpha_of_labels_counts_only_items_rated_twice(two_rounds):
    """ann and bob overlap only on round 0's comparisons: all human labels give round 0's alpha
    (an item with one rating is not pairable), and the simulated one changes it."""
    store, _ = two_rounds
    labels = store.labels()
    round0 = [lab for lab in labels if store.comparison(lab.comparison_id).round == 0]
    human = [lab for lab in labels if lab.source == "human"]
    assert agreement.alpha_of_labels(human) == pytest.approx(agreement.alpha_of_labels(round0))
    assert agreement.alpha_of_labels(labels) != pytest.approx(agreement.alpha_of_labels(human))
    assert agreement.alpha_of_labels([]) is None


def test_the_page_shows_the_numbers_and_escapes_model_text(two_rounds):
    store, _ = two_rounds
    page = report.render_html(report.collect(store, n_boot=200, title="demo <project>"))
    assert page.startswith("<!DOCTYPE html>") and "<title>demo &lt;project&gt;</title>" in page
    text = re.sub(r"(<[^>]+>)+", "|", page)
    # 6 of 6 by sim-1: the exact interval [0.025^(1/6), 1] = [54%, 100%], flagged
    assert "|round 2 vs round 0 (base)|simulated|100%|54%–100%|6|6|6 / 0 / 0|⚠ never lost|" in text
    assert "|round 2 vs round 0 (base)|human|92%|44%–100%|6|6|5 / 1 / 0|round 2" in text  # none
    assert text.count("⚠") == 2  # that row, and the note under the leaderboard
    assert "⚠ Flagged rows: the data show no spread there" in text
    assert "|round 1 vs round 0 (base)|all|75%|" in text
    assert "|1|round 2|" in text and "|3|round 0 (base)|1000|1000–1000|18|11%|" in text
    assert "|0|8 / 0|0.533|–|0.700|0.600|–|0.050|3|0.100 → 0.400|1.50|40.0|75% (" in text
    assert (
        "|1|6 / 0|–|–|0.800|0.650|4 members, spread 0.125|0.040|2 (kept 1)|0.300 → 0.900|1.25|"
        "35.0|" in text
    )
    assert page.count("<svg") == 5  # win-rates, Elo, and 3 PPO curves
    got = report.collect(store, n_boot=200)
    budget = dataclasses.replace(got.rounds[1], over_kl_budget=True)
    assert report._steps(budget) == "2 (KL budget, kept 1)"
    # model text (prompt 5 and round 2's answer to it are hostile) only ever as text
    assert (
        "<script" not in page
        and "<img" not in page
        and "onerror=" not in page.replace("onerror=&quot;", "")
    )
    assert page.count(html.escape(HOSTILE)) == 2  # the prompt, and round 2's answer
    # one file: nothing fetched (the only URL is the SVG namespace)
    assert set(re.findall(r"https?://[^\"' )]+", page)) == {"http://www.w3.org/2000/svg"}
    assert re.findall(r"<[^>]*\b(?:src|href)=", page) == []


def test_an_empty_project_gets_a_page_that_says_what_to_do(fresh_store):
    got = report.collect(fresh_store, n_boot=10)
    assert got.rounds == [] and got.win_rates == [] and got.leaderboard.ratings == []
    page = report.render_html(got)
    assert "No cross-round comparison has a label yet" in page
    assert page.count("no data") == 5


def test_write_report_replaces_the_file_whole(two_rounds, tmp_path, monkeypatch):
    store, _ = two_rounds
    out = tmp_path / "out" / "report.html"
    got = report.collect(store, n_boot=50)
    assert report.write_report(got, out) == out
    first = out.read_text(encoding="utf-8")
    assert "round 2 vs round 1" in first
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as any new file: readable to share

    def broken(_):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "render_html", broken)
    with pytest.raises(RuntimeError):
        report.write_report(got, out)
    assert out.read_text(encoding="utf-8") == first  # the old page, whole
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary left


def test_nice_ticks():
    assert report.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert report.nice_ticks(0.37, 0.92) == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert report.nice_ticks(1000, 1279.6) == [1000, 1100, 1200, 1300]
    assert report.nice_ticks(1, 3, integer=True) == [1, 2, 3]  # PPO steps: no 1.5
    assert report.nice_ticks(1, 200, integer=True) == [0, 50, 100, 150, 200]
    assert report.nice_ticks(5, 5) == [4.4, 4.6, 4.8, 5.0, 5.2, 5.4, 5.6]
    assert report.nice_ticks(0, 0) == [-0.6, -0.4, -0.2, 0, 0.2, 0.4, 0.6]


def test_a_file_database_reports_like_a_memory_one(tmp_path):
    store = Store.open(tmp_path / "r.db")
    two_round_store(store)
    assert report.collect(store, n_boot=20).win_rates[0].rate == 0.75
    store.close()


def test_the_rounds_view_is_the_reports_body_for_admins_only(two_rounds):
    from rankloop.app.config import LabelingConfig
    from rankloop.app.labeling.handlers import AccessDenied, Ctx
    from rankloop.app.labeling.rounds_view import rounds_html
    from rankloop.app.labeling.store_pool import StorePool

    store, _ = two_rounds
    store.add_annotator("lead", role="admin")
    ctx = Ctx(stores=StorePool.shared(store), config=LabelingConfig())
    view = rounds_html(ctx, "lead")
    assert view.startswith('<div class="rl-report">') and view.count("<svg") == 5
    assert "round 2 beats round 1 83% of the time" in view
    assert "labels from simulated" in rounds_html(ctx, "lead", "simulated")
    assert "all label sources" in rounds_html(ctx, "lead", "nonsense")  # falls back to all
    for who in ("ann", None, "nobody"):
        with pytest.raises(AccessDenied):
            rounds_html(ctx, who)
