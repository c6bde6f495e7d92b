"""`rankloop train-reward` and `rankloop score` on a tiny project, through click's CliRunner."""

from __future__ import annotations

import json
import math
import re

import pytest
from click.testing import CliRunner

from rankloop.app import rounds
from rankloop.app.cli import cli
from rankloop.app.project import Project
from rankloop.app.rounds import reward_model_of
from rankloop.reward.scoring import RewardScorer

from simulate import simulate_labels


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
    open_cid = project.store.add_comparison_texts("an open question", ["good sea", "lazy sea"])
    out = run(
        "train-reward",
        "--project",
        root,
        "--full",
        "--lr",
        "1e-3",
        "--eval-fraction",
        "0.25",
        "--batch-size",
        "4",
    )
    assert out.exit_code == 0, out.output
    # the open comparison's responses were scored by the new model for the uncertainty order
    rids = project.store.comparison(open_cid).response_ids
    stored = dict(
        project.store.db.execute(
            "select response_id, score from response_scores where reward_model = 'rounds/0/reward'"
        ).fetchall()
    )
    assert sorted(stored) == sorted(rids)
    fresh = (
        RewardScorer.from_pretrained(root / "rounds/0/reward")
        .score(["an open question"] * 2, ["good sea", "lazy sea"])
        .tolist()
    )
    assert [stored[r] for r in rids] == pytest.approx(fresh, abs=1e-4)
    assert "Scored 2 responses of the open comparisons" in out.output
    assert "Round 0: reward model saved to" in out.output
    assert "held-out accuracy" in out.output and "frozen-feature probe baseline" in out.output
    r0 = project.store.round(0)
    assert r0.reward_model == "rounds/0/reward"
    assert (root / "rounds/0/reward/reward_stats.json").exists()
    for name in (
        "reward/accuracy",
        "reward/accuracy_tie_aware",
        "reward/margin",
        "reward/ece",
        "reward/disagreement",
        "reward/accuracy/simulator",
        "reward/mean",
        "reward/std",
    ):
        assert name in r0.metrics
    assert r0.metrics["reward/eval_pairs"] == 6.0
    assert r0.metrics["reward/disagreement"] is None  # one annotator: undefined, stored as null

    # --round defaults to the current round (rankloop round or generate moves it on)
    project.store.set_current_round(1)
    out = run("train-reward", "--project", root, "--epochs", "0.5", "--eval-fraction", "0")
    assert out.exit_code == 0, out.output
    assert project.store.round(1).reward_model == "rounds/1/reward"
    assert reward_model_of(Project.find(root)) == root / "rounds/1/reward"

    rows = [
        {"prompt": "say something good", "response": "good fox", "id": 1},
        {"prompt": [{"role": "user", "content": "hi"}], "response": "lazy dog", "id": 2},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run("score", src, "--output", tmp_path / "out.jsonl", "--round", 0, "--project", root)
    assert out.exit_code == 0, out.output
    scored = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "score"} for r in scored] == rows
    expect = (
        RewardScorer.from_pretrained(root / "rounds/0/reward")
        .score([r["prompt"] for r in rows], [r["response"] for r in rows])
        .tolist()
    )
    assert [r["score"] for r in scored] == pytest.approx(expect, abs=1e-5)


def test_score_rejects_bad_rows_and_missing_models(project, tmp_path):
    bad = tmp_path / "bad.jsonl"
    from rankloop.app.commands.reward import read_score_rows

    # a row whose text holds U+0085 / U+2028 is one row (they are not JSONL line breaks)
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"prompt": "p\u0085q", "response": "r\u2028s"}\n', encoding="utf-8")
    assert read_score_rows(odd) == [{"prompt": "p\x85q", "response": "r\u2028s"}]
    bad.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p"}\n')
    out = run("score", bad, "--output", tmp_path / "o.jsonl", "--project", project.root)
    assert (
        out.exit_code == 1
        and "bad.jsonl: line 2: each row needs `prompt` and `response`" in out.output
    )
    bad.write_text(
        '{"prompt": [{"role": "user", "content": "p"}, {"role": "assistant", '
        '"content": "a"}], "response": "r"}\n'
    )
    out = run("score", bad, "--output", tmp_path / "o.jsonl", "--project", project.root)
    assert (
        out.exit_code == 1
        and "bad.jsonl: line 1: the conversation in 'prompt' must end with a user turn"
        in out.output
    )
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "p", "response": "r"}\n')
    out = run("score", good, "--output", tmp_path / "o.jsonl", "--project", project.root)
    assert out.exit_code == 1 and "no round has a reward model yet" in out.output
    out = run(
        "score", good, "--output", tmp_path / "o.jsonl", "--round", 3, "--project", project.root
    )
    assert out.exit_code == 1 and "round 3 has no reward model" in out.output
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_option_names_the_setting(project):
    out = run("train-reward", "--project", project.root, "--batch-size", "0")
    assert out.exit_code == 1 and "[reward] batch_size must be at least 1" in out.output
    from rankloop.reward.config import RewardConfig
    from rankloop.settings import ConfigError, from_table

    with pytest.raises(ConfigError, match=r"\[reward\] pad_to_multiple_of must be at least 1"):
        RewardConfig(pad_to_multiple_of=0).validate()
    with pytest.raises(ConfigError, match=r"\[reward\] compile must be 'auto', 'yes' or 'no'"):
        from_table(RewardConfig, {"compile": "sometimes"}, "reward")
    assert [
        from_table(RewardConfig, {"compile": v}, "reward").compile for v in (True, False, "no")
    ] == ["yes", "no", "no"]


def test_train_reward_scores_open_comparisons_for_the_uncertainty_order(project):
    """After training, the comparisons the reward model is least sure about are labeled first."""

    from rankloop.app.rounds import score_open_comparisons

    store = project.store
    sure = store.add_comparison_texts("Q1", ["great", "awful"])  # gap 5.0
    unsure = store.add_comparison_texts("Q2", ["fine", "okay"])  # gap 0.1
    middle = store.add_comparison_texts("Q3", ["good", "meh"])  # gap 1.0
    fake = {"great": 3.0, "awful": -2.0, "fine": 0.6, "okay": 0.5, "good": 1.0, "meh": 0.0}

    reward_dir = project.round_dir(0, "reward")
    assert score_open_comparisons(project, reward_dir, scorer=FakeScorer(fake)) == 6
    assert served_in_uncertainty_order(store, 3) == [unsure, middle, sure]


def served_in_uncertainty_order(store, n: int) -> list[int]:
    """The comparisons a new annotator is served, one after the other, in 'uncertainty' order."""
    import random

    from rankloop.data.queue import next_task
    from rankloop.data.records import Label

    ann, _ = store.add_annotator("ann")
    order = []
    for _ in range(n):
        task = next_task(store, ann.id, order="uncertainty", now=0.0, rng=random.Random(0))
        order.append(task.comparison.id)
        store.add_label(
            Label.pairwise(task.comparison.id, ann.id, task.comparison.response_ids, "A")
        )
        store.db.execute("delete from leases")
    return order


class FakeScorer:
    """What score_open_comparisons asks of a RewardScorer: each member's score of a text."""

    def __init__(self, table: dict[str, float | list[float]]):
        self.table = {k: v if isinstance(v, list) else [v] for k, v in table.items()}
        self.aggregate, self.k = "mean", 1.0

    def score_members(self, prompts, responses):
        import torch

        return torch.tensor([self.table[r] for r in responses])  # (N, M)


def test_with_an_ensemble_the_queue_serves_what_its_members_disagree_on_most(project):
    """The members' std of the score gap orders the queue, not the mean's gap: Q1's mean gap
    is the largest, but its members disagree most about it (gaps 4 and -2: std 3)."""

    from rankloop.app.rounds import score_open_comparisons

    store = project.store
    split = store.add_comparison_texts("Q1", ["bold", "plain"])  # gaps 4, -2: mean 1, std 3
    close = store.add_comparison_texts("Q2", ["fine", "okay"])  # gaps 0.2, 0: mean 0.1, std 0.1
    agreed = store.add_comparison_texts("Q3", ["good", "meh"])  # gaps 1, 1: std 0
    members = {
        "bold": [4.0, -1.0],
        "plain": [0.0, 1.0],
        "fine": [0.7, 0.5],
        "okay": [0.5, 0.5],
        "good": [1.0, 2.0],
        "meh": [0.0, 1.0],
    }
    reward_dir = project.round_dir(0, "reward")
    assert score_open_comparisons(project, reward_dir, scorer=FakeScorer(members)) == 6
    spread = dict(store.db.execute("select comparison_id, spread from comparison_gaps").fetchall())
    assert spread == {split: pytest.approx(3.0), close: pytest.approx(0.1), agreed: 0.0}
    assert served_in_uncertainty_order(store, 3) == [split, close, agreed]


def test_speed_and_memory_switches_reach_the_config(project, monkeypatch):
    from rankloop.app import rounds

    seen = []

    def stop(project, round_, cfg, **kwargs):
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(rounds, "train_reward_stage", stop)
    run("train-reward", "--project", project.root, "--compile", "--gradient-checkpointing")
    run("train-reward", "--project", project.root)
    run("train-reward", "--project", project.root, "--no-compile")
    assert (seen[0].compile, seen[0].gradient_checkpointing) == ("yes", True)
    assert (seen[1].compile, seen[1].gradient_checkpointing) == ("auto", False)  # the defaults
    assert seen[2].compile == "no"


def test_heldout_summary_warns_when_the_probe_baseline_is_not_beaten():
    from rankloop.app.commands.reward import heldout_summary

    m = {"reward/accuracy": 0.75, "reward/eval_pairs": 40.0, "reward/probe_accuracy": 0.7}
    assert heldout_summary(m) == (
        "held-out accuracy 0.750 (40 pairs); frozen-feature probe baseline 0.700"
    )
    low = heldout_summary({**m, "reward/probe_accuracy": 0.75})
    assert low.splitlines()[1] == (
        "  warning: the reward model's held-out accuracy 0.750 does not beat its baseline (a "
        "linear probe on frozen features: 0.750) on 40 held-out pairs; label more comparisons, "
        "or try more --epochs or another --lr"
    )
    assert heldout_summary({"reward/accuracy": float("nan")}).startswith("no held-out split")
    # a tie at the ceiling is no reason to warn
    top = {"reward/accuracy": 1.0, "reward/eval_pairs": 30.0, "reward/probe_accuracy": 1.0}
    assert "warning" not in heldout_summary(top)
    ens = {**m, "reward/member_accuracy_min": 0.65, "reward/member_accuracy_max": 0.8}
    assert heldout_summary({**ens, "reward/spread": 0.21}) == (
        "held-out accuracy 0.750 (40 pairs), ensemble mean; members 0.650-0.800, spread 0.210; "
        "frozen-feature probe baseline 0.700"
    )
    cv = {**m, "reward/probe_cv_accuracy": 0.6125, "reward/probe_cv_se": 0.04}
    assert heldout_summary(cv) == (
        "held-out accuracy 0.750 (40 pairs); frozen-feature probe baseline 0.700 (0.613 +- "
        "0.040 cross-validated on the training labels)"
    )


def test_train_reward_summary_and_the_round_never_disagree():
    """The summary warns exactly when the round would warn or stop: one rule, every case."""
    import itertools

    from rankloop.app.commands.reward import heldout_summary

    nan = float("nan")
    for acc, probe, pairs in itertools.product(
        (nan, 0.3, 0.5, 0.62, 0.7, 1.0), (None, nan, 0.5, 0.7, 1.0), (None, 8.0, 36.0, 400.0)
    ):
        m = {"reward/accuracy": acc}
        if probe is not None:
            m["reward/probe_accuracy"] = probe
        if pairs is not None:
            m["reward/eval_pairs"] = pairs
        if not math.isnan(acc) and pairs is None:
            continue  # the trainer always reports the pairs with an accuracy
        warns = "warning:" in heldout_summary(m)
        assert warns == (rounds.reward_verdict(m) is not None), m


def test_phase_line_lists_the_phases_in_run_order():
    from rankloop.app.commands.reward import phase_line

    phases = {"saving": 1.25, "load": 2.0, "probe": 3.0, "loop": 40.0, "scoring": 4.04}
    assert phase_line(phases) == (
        "time: load 2.0 s, probe 3.0 s, loop 40.0 s, scoring 4.0 s, saving 1.2 s"
    )
    assert phase_line({**phases, "ensemble": 0.5}) == (
        "time: load 2.0 s, probe 3.0 s, ensemble 0.5 s, loop 40.0 s, scoring 4.0 s, saving 1.2 s"
    )


def test_train_reward_with_an_ensemble_prints_members_spread_and_phases(project):
    simulate_labels(project.store, 40, seed=6)
    open_cid = project.store.add_comparison_texts("an open question", ["good sea", "lazy sea"])
    out = run(
        "train-reward",
        "--project",
        project.root,
        "--full",
        "--lr",
        "1e-3",
        "--eval-fraction",
        "0.25",
        "--ensemble",
        "3",
        "--ensemble-aggregate",
        "min",
    )
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())  # the console wraps long lines
    assert re.search(
        r"held-out accuracy [\d.]+ \(10 pairs\), ensemble mean; members [\d.]+-[\d.]+, "
        r"spread [\d.]+; frozen-feature probe baseline [\d.]+",
        text,
    )
    assert re.search(
        r"time: load [\d.]+ s, probe [\d.]+ s, ensemble [\d.]+ s, loop [\d.]+ s, "
        r"scoring [\d.]+ s, saving [\d.]+ s$",
        text,
    )
    scorer = RewardScorer.from_pretrained(project.round_dir(0, "reward"), bf16="no")
    assert (scorer.members, scorer.aggregate) == (3, "min")
    # the queue got the members' disagreement on the open comparison
    spread = project.store.db.execute(
        "select spread from comparison_gaps where comparison_id = ?", [open_cid]
    ).fetchone()[0]
    assert spread > 0
