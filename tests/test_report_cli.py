"""`rankloop leaderboard` and `rankloop report` on a project after two rounds."""

from __future__ import annotations

import json
import math
import re

import pytest
from report_fixture import two_round_store
from test_cli import run

from rankloop.app.project import Project
from rankloop.data import curves


@pytest.fixture
def project(tmp_path):
    run("init", tmp_path / "p")
    return tmp_path / "p"


@pytest.fixture
def two_rounds(project):
    p = Project.find(project)
    two_round_store(p.store)
    p.close()
    return project


def test_leaderboard_json(two_rounds):
    out = json.loads(
        run("leaderboard", "--json", "--bootstrap", 200, "--project", two_rounds).output
    )
    assert (out["matches"], out["prompts"], out["anchor"], out["anchor_elo"], out["sources"]) == (
        24,
        6,
        0,
        1000.0,
        None,
    )
    board = out["leaderboard"]
    assert [(r["rank"], r["round"], r["policy"], r["matches"]) for r in board] == [
        (1, 2, "round 2", 18),
        (2, 1, "round 1", 12),
        (3, 0, "round 0 (base)", 18),
    ]
    assert board[2]["elo"] == board[2]["low"] == board[2]["high"] == 1000.0
    assert board[0]["low"] < board[0]["elo"] < board[0]["high"]
    assert board[0]["score"] == pytest.approx(16.5 / 18)  # 5 + 5.5 + 6 of 18
    first = out["win_rates"][0]
    assert {
        k: first[k]
        for k in (
            "model",
            "opponent",
            "source",
            "rate",
            "n",
            "prompts",
            "wins",
            "ties",
            "losses",
            "policy",
            "opponent_policy",
        )
    } == {
        "model": 1,
        "opponent": 0,
        "source": "all",
        "rate": 0.75,
        "n": 6,
        "prompts": 6,
        "wins": 4,
        "ties": 1,
        "losses": 1,
        "policy": "round 1",
        "opponent_policy": "round 0 (base)",
    }
    # the same seed gives the same intervals; the sources filter reaches the fit
    again = json.loads(
        run("leaderboard", "--json", "--bootstrap", 200, "--project", two_rounds).output
    )
    assert again == out
    sim = json.loads(
        run("leaderboard", "--json", "--source", "simulated", "--project", two_rounds).output
    )
    assert sim["sources"] == ["simulated"] and sim["matches"] == 6
    assert [r["round"] for r in sim["leaderboard"]] == [2, 0]
    assert not any(isinstance(v, float) and math.isnan(v) for r in board for v in r.values())
    # no row of all the labels is degenerate; sim-1's alone: round 2 never lost to the base
    assert [r["flags"] for r in board] == [[], [], []]
    assert [w["flags"] for w in out["win_rates"]] == [[]] * 6 + [["never_lost"]]
    assert [(r["round"], r["elo"], r["high"], r["flags"]) for r in sim["leaderboard"]] == [
        (2, None, None, ["unbounded_above"]),
        (0, 1000.0, 1000.0, []),
    ]
    assert sim["leaderboard"][0]["low"] == pytest.approx(1028.37, abs=0.01)
    assert (sim["win_rates"][0]["low"], sim["win_rates"][0]["flags"]) == (
        pytest.approx(0.025 ** (1 / 6)),
        ["never_lost"],
    )


def test_leaderboard_tables(two_rounds):
    out = run("leaderboard", "--bootstrap", 100, "--project", two_rounds).output
    assert "24 matches on 6 prompts, all label sources" in out
    assert re.search(r"│\s+3 │ round 0 \(base\)\s+│\s+1000 │\s+1000–1000 │\s+18 │\s+11% │", out)
    assert re.search(r"│ round 2\s+│ base\s+│ simulated │\s+100% │\s+54–100% ⚠ │\s+6 │\s+6 │", out)
    assert "⚠ round 2 vs base (simulated): never lost\n⚠ marks a flagged row" in out
    assert out.count("⚠") == 3  # the row, its note, the explanation
    sim = run("leaderboard", "--source", "simulated", "--project", two_rounds).output
    assert re.search(r"│\s+1 │ round 2\s+│ ≥ 1028 │\s+1028–∞ ⚠ │\s+6 │\s+100% │", sim)
    assert "⚠ round 2: unbounded: never lost" in sim
    assert re.search(
        r"│ round 1\s+│ base\s+│ all\s+│\s+75% │\s+\d+–100% │\s+6 │\s+6 │\s+4/1/1 │", out
    )


def test_leaderboard_without_cross_round_labels_says_what_to_do(project):
    out = run("leaderboard", "--project", project).output
    assert "No labeled cross-round comparisons yet" in out and "rankloop simulate" in out
    empty = json.loads(run("leaderboard", "--json", "--project", project).output)
    assert empty["leaderboard"] == [] and empty["win_rates"] == [] and empty["matches"] == 0


def test_bad_options_are_refused_in_one_line(project):
    result = run("leaderboard", "--source", "robots", "--project", project, ok=False)
    assert result.exit_code == 2 and "'robots' is not one of" in result.output
    result = run("report", "--bootstrap", 3, "--project", project, ok=False)
    assert result.exit_code == 2 and "--bootstrap" in result.output


def test_report_writes_one_page(two_rounds, tmp_path):
    out = run("report", "--bootstrap", 100, "--project", two_rounds).output
    page = (two_rounds / "report.html").read_text(encoding="utf-8")
    assert f"Wrote {two_rounds / 'report.html'}" in out
    assert "round 2 beats round 1 83% of the time" in out
    assert "<title>rankloop report: p</title>" in page and page.count("<svg") == 5
    target = tmp_path / "elsewhere" / "r.html"
    run("report", "-o", target, "--examples", 0, "--source", "human", "--project", two_rounds)
    other = target.read_text(encoding="utf-8")
    assert "labels from human" in other and "Examples:" not in other


def test_rankloop_ppo_records_its_curve_for_the_report(tmp_path, tiny_lm_dir, monkeypatch):
    (tmp_path / "curve_rewards.py").write_text(
        "def brevity(prompts, responses):\n    return [-len(r) / 10.0 for r in responses]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(8))
    )
    root = tmp_path / "proj"
    run("init", root, "--policy", tiny_lm_dir, "--reward-model", tiny_lm_dir)
    run("import", tmp_path / "prompts.jsonl", "--project", root)
    run(
        "ppo",
        "--round",
        "0",
        "--steps",
        "2",
        "--reward-fn",
        "curve_rewards:brevity",
        "--batch-size",
        "4",
        "--mini-batch-size",
        "2",
        "--ppo-epochs",
        "1",
        "--max-new-tokens",
        "6",
        "--project",
        root,
    )
    history = json.loads((root / "rounds/0/policy/ppo_history.json").read_text())
    p = Project.find(root)
    got = {c.metric: c for c in curves.curves(p.store, metrics=list(curves.PPO_CURVES))}
    p.close()
    assert history and set(got) == set(curves.PPO_CURVES)
    for metric, c in got.items():
        assert c.round == 0 and c.steps == tuple(h["step"] for h in history)
        assert c.values == pytest.approx([h[metric] for h in history])
