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
from rankloop.app.simulate import (
    calibrate_noise,
    expected_agreement,
    load_oracle,
    order_agreement,
    plackett_luce_order,
    simulate,
    untied_gaps,
)
from rankloop.data import agreement, queue
from rankloop.data.records import Judgment, Prompt
from rankloop.data.store import Store, StoreError
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
    # tidy scores "answer 0" and "answer 1" alike: no pair to agree on
    assert (
        "simulated 3 labels by sim-1, sim-2: the oracle ties every pair they ordered (T = 0.5)"
        in res.output
    )
    assert "Next: rankloop round" in res.output


# -- simulated labels stated as agreement (--agreement) -------------------------------------


def test_calibrated_noise_by_hand():
    # two responses a gap d apart: sigma(d / T) = A, so T = d / logit(A) = 1 / ln(7 / 3)
    assert calibrate_noise([1.0], 0.7) == pytest.approx(1.1802225011438285, rel=1e-12)
    assert calibrate_noise([2.0, 2.0], 0.7) == pytest.approx(2 * 1.1802225011438285, rel=1e-12)
    # a ranking of three scored 0, 1, 3: gaps 1, 3, 2; at T = 1 the mean of sigma(1), sigma(2),
    # sigma(3) is (0.731059 + 0.880797 + 0.952574) / 3 = 0.854810
    gaps = untied_gaps([[0.0, 1.0, 3.0]])
    assert sorted(gaps) == [1.0, 2.0, 3.0]
    assert expected_agreement(gaps, 1.0) == pytest.approx(0.854810, abs=1e-6)
    assert calibrate_noise(gaps, 0.8548099278101069) == pytest.approx(1.0, abs=1e-9)
    # more agreement asks for less noise; T = 0 agrees on every pair
    assert calibrate_noise(gaps, 0.9) < 1.0 < calibrate_noise(gaps, 0.6)
    assert expected_agreement(gaps, 0.0) == 1.0
    # ties in the oracle count nowhere: [0, 0, 1] leaves two gaps of 1, [2, 2] none
    assert untied_gaps([[0.0, 0.0, 1.0], [2.0, 2.0]]) == [1.0, 1.0]
    assert calibrate_noise(untied_gaps([[0.0, 0.0, 1.0]]), 0.7) == pytest.approx(1.18022250114)
    with pytest.raises(ValueError, match="no oracle-untied pair"):
        calibrate_noise([], 0.7)


def test_order_agreement_counts_untied_pairs_of_a_drawn_order():
    # scores best-first as drawn: 3 > 1 = 1 > 0 agrees on all 5 untied pairs (1 = 1 is a tie)
    assert order_agreement([3.0, 1.0, 1.0, 0.0]) == (5, 5)
    # 0 placed above two 1s: both pairs disagree, the tie counts nowhere
    assert order_agreement([0.0, 1.0, 1.0]) == (0, 2)
    assert order_agreement([2.0, 5.0]) == (0, 1) and order_agreement([5.0, 5.0]) == (0, 0)


def rankings_of_four(store, n: int) -> None:
    """n comparisons of 4 responses; by_number scores them 0..10 (some pairs tied)."""
    for i in range(n):
        texts = [f"r{j} answer {(i * 7 + j * 3 + (i * j) % 5) % 11}" for j in range(4)]
        store.add_comparison_texts(Prompt.from_text(f"p{i}"), texts)


def test_simulate_asked_for_an_agreement_reaches_it(fresh_store):
    s = fresh_store
    rankings_of_four(s, 100)
    rep = simulate(
        s, by_number, LabelingConfig(k=4), annotators=3, agreement=0.7, seed=2, progress=False
    )
    assert rep.labels == 100 and rep.asked == 0.7
    # T solves the expected agreement over exactly these candidates (560 untied pairs)
    score = {r.id: by_number([], [r.text])[0] for r in s.responses()}
    gaps = untied_gaps([score[r] for r in c.response_ids] for c in s.comparisons())
    assert len(gaps) == 560
    assert expected_agreement(gaps, rep.noise) == pytest.approx(0.7, abs=1e-9)
    assert rep.noise == pytest.approx(4.790134310, abs=1e-8)
    # the labels as stored: their untied pairs counted again from the rankings in the store
    agree = untied = 0
    for lab in s.labels():
        a, u = order_agreement([score[r] for tier in lab.ranking for r in tier])
        agree, untied = agree + a, untied + u
    assert (rep.agreeing, rep.pairs) == (agree, untied) == (391, 560)
    assert abs(rep.agreement - 0.7) < 0.03  # 560 pairs: a standard error of 0.019
    assert rep.summary() == (
        "simulated 100 labels by sim-1, sim-2, sim-3: labels agree with the oracle on 69.8% of "
        "560 pairs (asked 70%, T = 4.79)"
    )
    # asked for more or less, the labels follow (the same draws, another T)
    for asked, agreeing in [(0.6, 342), (0.9, 498)]:
        other = Store.memory()
        rankings_of_four(other, 100)
        rep = simulate(
            other, by_number, LabelingConfig(k=4), agreement=asked, seed=2, progress=False
        )
        assert (rep.agreeing, rep.pairs) == (agreeing, 560)
        other.close()


def test_an_oracle_that_ties_every_pair_needs_no_noise(fresh_store):
    s = fresh_store
    comparisons(s, 3)
    rep = simulate(s, lambda p, r: [1.0] * len(r), LabelingConfig(), agreement=0.7, progress=False)
    assert rep.labels == 3 and rep.noise is None and rep.pairs == 0
    assert rep.summary().endswith(
        ": the oracle ties every pair they ordered (asked 70%, no untied pair to solve T on)"
    )


def snapshot(store) -> tuple:
    return (
        [a.name for a in store.annotators()],
        [(lab.comparison_id, lab.ranking) for lab in store.labels()],
        store.db.execute("select count(*) from leases").fetchone()[0],
    )


@pytest.mark.parametrize(
    "noise, agreement, why",
    [
        (None, 0.5, "--agreement must lie strictly between 0.5 and 1 (got 0.5)"),
        (None, 0.3, "--agreement must lie strictly between 0.5 and 1 (got 0.3)"),
        (None, 1.0, "--agreement must lie strictly between 0.5 and 1 (got 1.0)"),
        (None, float("nan"), "--agreement must lie strictly between 0.5 and 1 (got nan)"),
        (0.5, 0.7, "give --noise or --agreement, not both"),
        (-1.0, None, "--noise must be >= 0 (got -1.0)"),
    ],
)
def test_bad_noise_settings_are_refused_before_anything_is_written(
    fresh_store, noise, agreement, why
):
    s = fresh_store
    comparisons(s, 3)
    before = snapshot(s)
    with pytest.raises(ConfigError) as err:
        simulate(s, by_number, LabelingConfig(), noise=noise, agreement=agreement, progress=False)
    assert str(err.value).startswith(why)
    assert snapshot(s) == before


def test_simulate_command_refuses_both_and_bad_agreement(tmp_path, tiny_lm_dir):
    from rankloop.app.project import Project

    p = Project.init(tmp_path / "p", policy=str(tiny_lm_dir))
    comparisons(p.store, 3)
    before = snapshot(p.store)
    p.close()
    for extra, why in [
        (["--noise", "0.5", "--agreement", "0.7"], "Error: give --noise or --agreement, not both"),
        (["--agreement", "1"], "Error: --agreement must lie strictly between 0.5 and 1 (got 1.0)"),
    ]:
        res = CliRunner().invoke(cli, ["simulate", *extra, "--project", str(tmp_path / "p")])
        assert res.exit_code == 1
        assert res.output.strip().splitlines() == [
            why + (": 0.5 is a coin toss, 1 never errs (that is --noise 0)" if "1.0" in why else "")
        ]
    p = Project.find(tmp_path / "p")
    assert snapshot(p.store) == before
    res = CliRunner().invoke(
        cli,
        ["simulate", "--oracle", f"{__file__}:by_number", "--agreement", "0.7"]
        + ["--project", str(tmp_path / "p")],
    )
    assert res.exit_code == 0, res.output
    assert "simulated 3 labels by sim-1, sim-2, sim-3: labels agree with the oracle" in res.output
    assert "(asked 70%, T = " in res.output
    p.close()


def test_demo_refuses_a_bad_agreement_before_making_its_folder(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--agreement", "0.5", "--dir", str(out)])
    assert res.exit_code == 1 and "--agreement must lie strictly between 0.5 and 1" in res.output
    res = CliRunner().invoke(cli, ["demo", "--noise", "1", "--agreement", "0.7", "--dir", str(out)])
    assert res.exit_code == 1 and "give --noise or --agreement, not both" in res.output
    assert not out.exists()
