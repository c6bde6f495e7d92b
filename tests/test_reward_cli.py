"""`rankloop train-reward` and `rankloop score` on a tiny project, through click's CliRunner."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rankloop.app.cli import cli
from rankloop.app.project import Project
from rankloop.reward.scoring import RewardScorer, latest_reward_model
from rankloop.reward.simulate import simulate_labels


@pytest.fixture
def project(tmp_path, tiny_lm_dir):
    p = Project.init(tmp_path / "proj", reward_model=str(tiny_lm_dir))
    yield p
    p.close()


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def test_train_reward_records_the_round_and_score_uses_it(project, tmp_path):
    root = project.root
    out = run("train-reward", "--project", root)
    assert out.exit_code == 1 and "no labels up to round 0" in out.output
    assert project.store.rounds() == []

    simulate_labels(project.store, 24, seed=5)
    out = run("train-reward", "--project", root, "--full", "--lr", "1e-3", "--eval-fraction",
              "0.25", "--batch-size", "4")
    assert out.exit_code == 0, out.output
    assert "Round 0: reward model saved to" in out.output
    r0 = project.store.round(0)
    assert r0.reward_model == "rounds/0/reward"
    assert (root / "rounds/0/reward/reward_stats.json").exists()
    for name in ("reward/accuracy", "reward/accuracy_tie_aware", "reward/margin", "reward/ece",
                 "reward/disagreement", "reward/accuracy/simulator", "reward/mean",
                 "reward/std"):
        assert name in r0.metrics
    assert r0.metrics["reward/eval_pairs"] == 6.0
    assert r0.metrics["reward/disagreement"] is None  # one annotator: undefined, stored as null

    # the next run defaults to the next round; --round picks one
    out = run("train-reward", "--project", root, "--epochs", "0.5", "--eval-fraction", "0")
    assert out.exit_code == 0, out.output
    assert project.store.round(1).reward_model == "rounds/1/reward"
    assert latest_reward_model(Project.find(root)) == root / "rounds/1/reward"

    rows = [{"prompt": "say something good", "response": "good fox", "id": 1},
            {"prompt": [{"role": "user", "content": "hi"}], "response": "lazy dog", "id": 2}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run("score", src, "--output", tmp_path / "out.jsonl", "--round", 0, "--project", root)
    assert out.exit_code == 0, out.output
    scored = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "score"} for r in scored] == rows
    expect = RewardScorer.from_pretrained(root / "rounds/0/reward").score(
        [r["prompt"] for r in rows], [r["response"] for r in rows]).tolist()
    assert [r["score"] for r in scored] == pytest.approx(expect, abs=1e-5)


def test_score_rejects_bad_rows_and_missing_models(project, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p"}\n')
    out = run("score", bad, "--output", tmp_path / "o.jsonl", "--project", project.root)
    assert out.exit_code == 1 and "bad.jsonl:2: each row needs `prompt` and `response`" in out.output
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "p", "response": "r"}\n')
    out = run("score", good, "--output", tmp_path / "o.jsonl", "--project", project.root)
    assert out.exit_code == 1 and "no round has a reward model yet" in out.output
    out = run("score", good, "--output", tmp_path / "o.jsonl", "--round", 3,
              "--project", project.root)
    assert out.exit_code == 1 and "round 3 has no reward model" in out.output
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_option_names_the_setting(project):
    out = run("train-reward", "--project", project.root, "--batch-size", "0")
    assert out.exit_code == 1 and "[reward] batch_size must be at least 1" in out.output
