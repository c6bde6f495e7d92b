"""Simulated annotators (app/simulate.py), the built-in oracle (app/oracles.py), and the queue's
current-round order they and the app share."""

from __future__ import annotations

import math
import random

import pytest
from click.testing import CliRunner

from rankloop.app.cli import cli
from rankloop.app.config import LabelingConfig
from rankloop.app.oracles import ends_cleanly, repetition, tidy
from rankloop.app.simulate import load_oracle, plackett_luce_order, simulate
from rankloop.data import agreement, queue
from rankloop.data.records import Judgment, Prompt
from rankloop.data.store import StoreError
from rankloop.settings import ConfigError


def by_number(prompts, responses):
    """Oracle for tests: the number the response ends with."""
    return [float(r.split()[-1]) for r in responses]


def test_tidy_scores_endings_and_repetition():
    assert ends_cleanly("Paris is the capital of France.")
    assert ends_cleanly('He said "stop!"') and ends_cleanly("```python\nx = 1\n```")
    assert not ends_cleanly("The capital of France is") and not ends_cleanly("")
    assert repetition("a b c d e f") == 0.0
    # "x y z w" looped: 12 words, 9 four-grams, 4 distinct: 1 - 4/9 of them repeat
    assert repetition("x y z w " * 3) == pytest.approx(1 - 4 / 9)
    assert tidy([], ["It is blue.", "It is blue and", "", "x y z w " * 3 + "."]) == pytest.approx(
        [2.0, 1.0, 0.0, 1.0 + 4 / 9]
    )


def test_plackett_luce_draws_match_bradley_terry():
    rng = random.Random(0)
    n, noise = 20000, 0.5
    wins = sum(plackett_luce_order([1.0, 0.6], noise, rng)[0] == 0 for _ in range(n))
    p = 1 / (1 + math.exp(-(1.0 - 0.6) / noise))  # sigma(0.8) = 0.690
    assert abs(wins / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert plackett_luce_order([0.1, 0.9, 0.5], 0.0, rng) == [1, 2, 0]  # no noise: by score
    # a full ranking of 3: the best first most often, the worst last most often
    firsts = [plackett_luce_order([3.0, 0.0, -3.0], 1.0, rng) for _ in range(2000)]
    assert sum(o[0] == 0 for o in firsts) > 1800 and sum(o[2] == 2 for o in firsts) > 1800


def comparisons(store, n: int, k: int = 2, round_: int = 0) -> list[int]:
    return [
        store.add_comparison_texts(
            Prompt.from_text(f"q{round_}-{i}"), [f"answer {j}" for j in range(k)], round=round_
        )
        for i in range(n)
    ]


def test_simulated_annotators_label_through_the_queue(fresh_store):
    s = fresh_store
    cids = comparisons(s, 6) + comparisons(s, 4, k=3, round_=1)
    human, _ = s.add_annotator("alice")
    cfg = LabelingConfig(labels_per_comparison=2)
    rep = simulate(s, by_number, cfg, annotators=3, noise=0.0, progress=False)
    assert rep.labels == 20 and rep.annotators == ("sim-1", "sim-2", "sim-3")
    labels = s.labels()
    assert {lab.source for lab in labels} == {"simulated"}
    # overlap as the queue hands it out: two labels per comparison, from two accounts
    for cid in cids:
        mine = [lab for lab in labels if lab.comparison_id == cid]
        assert len(mine) == 2 and len({lab.annotator_id for lab in mine}) == 2
        ids = s.comparison(cid).response_ids
        # noise 0: the oracle's order, best ("answer 2" / "answer 1") first
        assert all(lab.ranking == tuple((i,) for i in reversed(ids)) for lab in mine)
        assert all(sorted(lab.display_order) == sorted(ids) for lab in mine)
    assert {a.role for a in s.annotators() if a.name.startswith("sim-")} == {"simulated"}
    assert s.authenticate("sim-1", "") is None  # nobody logs in as a simulated account
    assert s.status().annotators == 1  # alice only
    # statistics keep them apart from people
    assert [st.name for st in agreement.annotator_stats(s)] == ["alice"]
    sims = agreement.annotator_stats(s, source="simulated")
    assert [st.labels for st in sims] == [7, 7, 6]
    assert agreement.pairwise_kappa(s) == []
    shared = agreement.pairwise_kappa(s, source="simulated")
    assert sum(n for _, _, n, _ in shared) == 6 + 4 * 3  # every pair of every comparison
    assert queue.next_task(s, human.id, n=2, now=0.0, rng=random.Random(0)) is None


def test_simulate_round_limit_and_accounts(fresh_store):
    s = fresh_store
    comparisons(s, 5, round_=0)
    new = comparisons(s, 3, round_=1)
    cfg = LabelingConfig()
    rep = simulate(s, by_number, cfg, annotators=2, round_=1, progress=False)
    assert rep.labels == 3 and {lab.comparison_id for lab in s.labels()} == set(new)
    rep = simulate(s, by_number, cfg, annotators=2, limit=2, progress=False)
    assert rep.labels == 2 and len(s.labels()) == 5
    s.add_annotator("sim-9")
    with pytest.raises(StoreError, match="exists and is not simulated"):
        simulate(s, by_number, cfg, annotators=9, progress=False)
    with pytest.raises(ConfigError, match="--noise"):
        simulate(s, by_number, cfg, noise=-1, progress=False)
    with pytest.raises(ConfigError, match="built-in oracle"):
        load_oracle("nonsense")
    assert load_oracle("tidy")(["q"], ["Done."]).tolist() == [2.0]


def test_an_oracle_that_cannot_load_is_named_by_the_option_the_user_gave(tmp_path):
    # simulate shares PPO's loader of user code; its errors must say --oracle, not --reward-fn
    (tmp_path / "judge.py").write_text("CONSTANT = 1\n")
    for spec, why in [
        ("no_such_module_xyz:score", "cannot import 'no_such_module_xyz'"),
        (f"{tmp_path / 'judge.py'}:CONSTANT", "has no function 'CONSTANT'"),
        (f"{tmp_path / 'absent.py'}:score", "cannot import"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_oracle(spec)
        assert str(err.value).startswith(f"--oracle {spec!r}: ") and why in str(err.value)
        assert "--reward-fn" not in str(err.value)


def test_the_queue_serves_the_current_round_first(fresh_store):
    s = fresh_store
    old = comparisons(s, 2, round_=0)
    new = comparisons(s, 2, round_=1)
    a, _ = s.add_annotator("ann")
    rng = random.Random(0)
    order = []
    for _ in range(4):
        t = queue.next_task(s, a.id, now=0.0, rng=rng, first_round=1)
        order.append(t.comparison.id)
        queue.submit(s, a.id, t.comparison.id, t.request_id, Judgment(choice="A"))
    assert order == new + old  # then the leftovers, oldest first
    b, _ = s.add_annotator("bob")  # a second label each (n = 2)
    t = queue.next_task(s, b.id, n=2, now=0.0, rng=rng)
    assert t.comparison.id == old[0]  # without first_round: oldest first
    queue.submit(s, b.id, t.comparison.id, t.request_id, Judgment(choice="A"))
    t = queue.next_task(s, b.id, n=2, now=0.0, rng=rng, only_round=0)
    assert t.comparison.id == old[1]
    queue.submit(s, b.id, t.comparison.id, t.request_id, Judgment(choice="A"))
    assert queue.next_task(s, b.id, n=2, now=0.0, rng=rng, only_round=0) is None


def test_simulate_command(tmp_path, tiny_lm_dir):
    from rankloop.app.project import Project

    p = Project.init(tmp_path / "p", policy=str(tiny_lm_dir))
    comparisons(p.store, 3)
    p.close()
    res = CliRunner().invoke(
        cli,
        [
            "simulate",
            "--oracle",
            "tidy",
            "--annotators",
            "2",
            "--noise",
            "0.5",
            "--project",
            str(tmp_path / "p"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "3 simulated labels (0 gold) by sim-1, sim-2" in res.output
    assert "Next: rankloop round" in res.output
