"""Win-rates and the Bradley–Terry leaderboard over cross-round comparisons (data/leaderboard.py).

The leaderboard is checked against a second implementation (scikit-learn's LogisticRegression
on the same matches, once as the plain logistic regression and once exactly as Chatbot Arena's
`compute_mle_elo` sets it up) and against a case computed by hand; the win-rate's interval
against its known coverage. The matches themselves (`Store.cross_round_outcomes`) are tested in
tests/test_rounds_store.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.linear_model import LogisticRegression

from rankloop.data import leaderboard as lb
from rankloop.data.records import Match


def m(prompt, a, b, outcome, source="human"):
    return Match(prompt, 0, 0, a, b, 0, 0, outcome, source)


def test_win_rate_counts_ties_half_and_reports_n():
    ms = [m(1, 1, 0, 1.0), m(1, 1, 0, 0.5), m(2, 1, 0, 0.0), m(3, 1, 0, 1.0), m(3, 2, 0, 1.0)]
    wr = lb.win_rate(ms, 1, 0, n_boot=2000)
    assert (wr.rate, wr.n, wr.prompts, wr.wins, wr.ties, wr.losses) == (2.5 / 4, 4, 3, 2, 1, 1)
    assert wr.low < wr.rate < wr.high and 0 <= wr.low and wr.high <= 1
    # the other side's view: 1 - rate, the interval mirrored
    back = lb.win_rate(ms, 0, 1, n_boot=2000)
    assert back.rate == pytest.approx(1 - wr.rate)
    assert (back.low, back.high) == pytest.approx((1 - wr.high, 1 - wr.low))
    assert lb.win_rate(ms, 2, 1) is None
    # 5 of 5: the bootstrap alone would say [1, 1]; the exact floor is [0.025^(1/5), 1]
    everything = lb.win_rate([m(p, 1, 0, 1.0) for p in range(5)], 1, 0)
    assert (everything.rate, everything.high, everything.flags) == (1.0, 1.0, ("never_lost",))
    assert everything.low == pytest.approx(0.025 ** (1 / 5)) == pytest.approx(0.4782, abs=1e-4)


def test_win_rate_interval_covers_the_true_rate_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(300):
        wins = rng.random(80) < 0.7  # 80 prompts, one match each, P(win) = 0.7
        ms = [m(p, 1, 0, float(w)) for p, w in enumerate(wins)]
        wr = lb.win_rate(ms, 1, 0, n_boot=500, seed=trial)
        covered += wr.low <= 0.7 <= wr.high
    assert 0.90 <= covered / 300 <= 0.99


def test_win_rate_interval_resamples_prompts_not_matches():
    """Two matches per prompt that always agree carry the information of one: the interval is
    ~sqrt(2) wider than for the same outcomes on prompts of their own (it would be as narrow if
    the bootstrap resampled matches)."""
    rng = np.random.default_rng(0)
    wins = rng.random(100) < 0.6
    clustered = [m(p, 1, 0, float(w)) for p, w in enumerate(wins) for _ in range(2)]
    spread = [m(2 * p + k, 1, 0, float(w)) for p, w in enumerate(wins) for k in range(2)]
    a, b = lb.win_rate(clustered, 1, 0, n_boot=4000), lb.win_rate(spread, 1, 0, n_boot=4000)
    assert a.rate == b.rate and a.n == b.n == 200 and (a.prompts, b.prompts) == (100, 200)
    ratio = (a.high - a.low) / (b.high - b.low)
    assert 1.25 < ratio < 1.6


def test_round_win_rates_over_the_previous_round_and_the_base_per_source():
    ms = [m(1, 1, 0, 1.0), m(1, 2, 1, 1.0), m(1, 2, 0, 0.5, "simulated"), m(2, 2, 0, 0.0)]
    rows = lb.round_win_rates(ms, n_boot=200)
    assert [(w.model, w.opponent, w.source, w.rate, w.n) for w in rows] == [
        (1, 0, "all", 1.0, 1),
        (1, 0, "human", 1.0, 1),
        (2, 1, "all", 1.0, 1),
        (2, 1, "human", 1.0, 1),
        (2, 0, "all", 0.25, 2),
        (2, 0, "human", 0.0, 1),
        (2, 0, "simulated", 0.5, 1),
    ]
    assert [w.source for w in lb.round_win_rates(ms, n_boot=10, by_source=False)] == ["all"] * 3


# ---- Bradley–Terry ---------------------------------------------------------------------------


def random_matches(seed, n_models=4, n=300, separated=False):
    rng = np.random.default_rng(seed)
    strength = rng.normal(0, 1, n_models)
    out = []
    for k in range(n):
        a, b = sorted(rng.choice(n_models, 2, replace=False), reverse=True)
        if separated and b == 0:  # model 0 (always side b: a > b) loses every match it plays
            o = 1.0
        else:
            p = 1 / (1 + math.exp(-(strength[a] - strength[b])))
            u = rng.random()
            o = 1.0 if u < p - 0.1 else 0.5 if u < p + 0.1 else 0.0  # some ties
        out.append(m(k % 50, int(a), int(b), o))
    return out


def sklearn_strengths(ms, n_models, C):
    """The same fit as scikit-learn's logistic regression: one row per match outcome side,
    feature +1 for model a and -1 for model b, a tie as half a row of each label."""
    X, y, w = [], [], []
    for x in ms:
        row = np.zeros(n_models)
        row[x.model_a], row[x.model_b] = 1, -1
        for label, weight in ((1, x.outcome), (0, 1 - x.outcome)):
            if weight:
                X.append(row), y.append(label), w.append(weight)
    fit = LogisticRegression(fit_intercept=False, C=C, tol=1e-12, max_iter=10_000)
    fit.fit(np.array(X), np.array(y), sample_weight=np.array(w))
    return fit.coef_[0]


def fit(ms, n_models, reg):
    keys = sorted({(x.model_a, x.model_b) for x in ms})
    s = np.array([sum(x.outcome for x in ms if (x.model_a, x.model_b) == k) for k in keys])
    n = np.array([sum(1 for x in ms if (x.model_a, x.model_b) == k) for k in keys], float)
    return lb.bradley_terry(np.array(keys), s, n, n_models, reg=reg)


@pytest.mark.parametrize("reg", [0.0, 0.5])
def test_bradley_terry_matches_sklearn_logistic_regression(reg):
    ms = random_matches(3)
    ours = fit(ms, 4, reg)
    theirs = sklearn_strengths(ms, 4, C=1 / reg if reg else np.inf)
    assert ours.sum() == pytest.approx(0, abs=1e-9)
    assert ours == pytest.approx(theirs - theirs.mean(), abs=1e-5)


def test_bradley_terry_fits_a_batch_like_one_at_a_time():
    """The bootstrap fits every resample at once: (B, K) scores give the B single fits."""
    rng = np.random.default_rng(6)
    pairs = np.array([[1, 0], [2, 1], [2, 0], [3, 2]])
    counts = rng.integers(0, 12, size=(5, 4)).astype(float)  # some rows unplayed (0)
    scores = np.floor(counts * rng.random((5, 4)) * 2) / 2
    batch = lb.bradley_terry(pairs, scores, counts, 4, reg=0.1)
    assert batch.shape == (5, 4)
    for b in range(5):
        one = lb.bradley_terry(pairs, scores[b], counts[b], 4, reg=0.1)
        assert batch[b] == pytest.approx(one, abs=1e-8)


def test_prompt_resamples_draw_each_prompt_once_on_average():
    counts = lb.prompt_resamples(50, 4000, seed=1)
    assert counts.shape == (4000, 50) and (counts.sum(1) == 50).all()
    assert counts.mean() == 1.0 and abs(counts.var() - 49 / 50) < 0.02  # binomial(50, 1/50)
    assert (lb.prompt_resamples(50, 4000, seed=1) == counts).all()  # the seed fixes them
    with pytest.raises(ValueError):
        lb.prompt_resamples(5, 0, seed=0)


def test_bradley_terry_stays_finite_when_a_model_lost_everything():
    ms = random_matches(4, separated=True)
    ours = fit(ms, 4, lb.DEFAULT_REG)
    assert ours == pytest.approx(sklearn_strengths(ms, 4, C=1 / lb.DEFAULT_REG), abs=1e-5)
    assert np.isfinite(ours).all() and ours[0] == ours.min()


def test_leaderboard_matches_chatbot_arena_setup():
    """Arena's `compute_mle_elo`: a vote table (a win counts 2, a tie 1 each way), features
    ±ln(10), no penalty, Elo = 400 · coef + 1000; here shifted so the base is at 1000."""
    ms = random_matches(5)
    models = 4
    win = np.zeros((models, models))
    for x in ms:
        win[x.model_a, x.model_b] += 2 * x.outcome
        win[x.model_b, x.model_a] += 2 * (1 - x.outcome)
    X, y, w = [], [], []
    for a in range(models):
        for b in range(models):
            if a != b and (win[a, b] or win[b, a]):
                row = np.zeros(models)
                row[a], row[b] = math.log(10), -math.log(10)
                X += [row, row]
                y += [1, 0]
                w += [win[a, b], win[b, a]]
    arena = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-12, max_iter=10_000)
    arena.fit(np.array(X), np.array(y), sample_weight=np.array(w))
    arena_elo = 400 * arena.coef_[0] + 1000
    arena_elo += 1000 - arena_elo[0]
    board = lb.leaderboard(ms, reg=0.0, n_boot=20)
    assert {r.model: r.elo for r in board.ratings} == pytest.approx(
        dict(enumerate(arena_elo)), abs=1e-3
    )


def chain():
    """Round 1 vs base: 2 wins, 1 loss, 1 tie (2.5 of 4); round 2 vs round 1: 3 wins, 1 loss.
    With only these two links the MLE is exact: θ1 − θ0 = logit(5/8) = ln(5/3) and
    θ2 − θ1 = logit(3/4) = ln 3, i.e. 400·log10(5/3) = 88.74 and 400·log10(3) = 190.85 Elo."""
    return [m(p, 1, 0, o) for p, o in enumerate([1.0, 1.0, 0.0, 0.5])] + [
        m(10 + p, 2, 1, o) for p, o in enumerate([1.0, 1.0, 1.0, 0.0])
    ]


def test_leaderboard_hand_computed_elo():
    board = lb.leaderboard(chain(), reg=0.0, n_boot=200)
    expected = {
        0: 1000.0,
        1: 1000 + 400 * math.log10(5 / 3),
        2: 1000 + 400 * math.log10(5 / 3) + 400 * math.log10(3),
    }
    assert {r.model: r.elo for r in board.ratings} == pytest.approx(expected, abs=1e-6)
    assert [r.model for r in board.ratings] == [2, 1, 0]  # best first
    assert expected[1] == pytest.approx(1088.74, abs=0.01)
    assert expected[2] == pytest.approx(1279.59, abs=0.01)
    assert [(r.matches, r.score) for r in board.ratings] == [(4, 0.75), (8, 3.5 / 8), (4, 1.5 / 4)]
    assert (board.anchor, board.matches, board.prompts, board.unconnected) == (0, 8, 8, [])
    # the default penalty shrinks the gaps by ~1% with 4 matches per pair, ~0.1% with 40
    few, many = lb.leaderboard(chain(), n_boot=10), lb.leaderboard(chain() * 10, n_boot=10)
    assert {r.model: r.elo for r in few.ratings} == pytest.approx(expected, abs=4)
    assert {r.model: r.elo for r in many.ratings} == pytest.approx(expected, abs=0.5)


def test_leaderboard_ties_count_half_each_way():
    """Two ties weigh as one win and one loss (a tie is not dropped)."""
    ties = [m(0, 1, 0, 0.5), m(1, 1, 0, 0.5), m(2, 1, 0, 1.0)]
    split = [m(0, 1, 0, 1.0), m(1, 1, 0, 0.0), m(2, 1, 0, 1.0)]

    def elo(ms):
        return {r.model: r.elo for r in lb.leaderboard(ms, reg=0, n_boot=10).ratings}

    assert elo(ties) == pytest.approx(elo(split))
    assert elo(ties)[1] == pytest.approx(1000 + 400 * math.log10(2))  # 2 of 3: odds 2:1


def test_leaderboard_intervals_and_unconnected_policies():
    rng = np.random.default_rng(2)
    ms = [m(p, 1, 0, float(rng.random() < 0.75)) for p in range(60)]
    ms += [m(100 + p, 2, 1, float(rng.random() < 0.5)) for p in range(60)]
    ms += [m(200, 4, 3, 1.0)]  # rounds 3 and 4 met only each other
    board = lb.leaderboard(ms, n_boot=500)
    ratings = {r.model: r for r in board.ratings}
    assert board.unconnected == [3, 4] and sorted(ratings) == [0, 1, 2]
    assert (ratings[0].elo, ratings[0].low, ratings[0].high) == (1000.0, 1000.0, 1000.0)
    for r in (ratings[1], ratings[2]):
        assert r.low < r.elo < r.high
    assert ratings[1].low > 1000  # 75% wins over 60 prompts: clearly better than the base
    # round 2's interval adds round 1's uncertainty to its own link's
    assert ratings[2].high - ratings[2].low > ratings[1].high - ratings[1].low
    assert lb.leaderboard([]) == lb.Leaderboard([], anchor=0, matches=0, prompts=0)


# ---- when the data say nothing: exact floors and flags ---------------------------------------


def test_clopper_pearson_is_scipys_exact_interval_and_ten_of_ten_is_69_to_100():
    # 10 of 10: low = (α/2)^(1/n) = 0.025^(1/10) = 0.6915, high = 1
    assert lb.clopper_pearson(10, 10) == (pytest.approx(0.6915029, abs=1e-7), 1.0)
    assert lb.clopper_pearson(0, 10) == (0.0, pytest.approx(1 - 0.6915029, abs=1e-7))
    for x, n in [(0, 3), (3, 17), (9, 17), (16, 17), (40, 50)]:
        ci = binomtest(x, n).proportion_ci(0.95, method="exact")
        assert lb.clopper_pearson(x, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    # a half success (a tie) falls between its whole neighbours
    low, high = lb.clopper_pearson(7.5, 10)
    assert lb.clopper_pearson(7, 10)[0] < low < lb.clopper_pearson(8, 10)[0]
    assert lb.clopper_pearson(7, 10)[1] < high < lb.clopper_pearson(8, 10)[1]
    with pytest.raises(ValueError):
        lb.clopper_pearson(11, 10)


def test_effective_trials_between_the_prompts_and_the_matches():
    one_each = np.ones(10)
    assert lb.effective_trials(np.array([1, 0] * 5, float), one_each) == 10  # = N
    # every prompt's two matches agree, all won: nothing shows them independent -> the prompts
    assert lb.effective_trials(np.full(5, 2.0), np.full(5, 2.0)) == 5
    assert lb.effective_trials(np.array([4.0]), np.array([4.0])) == 1  # one prompt
    assert lb.effective_trials(np.full(6, 1.0), np.full(6, 2.0)) == 12  # the same rate everywhere
    # by hand: s = (2, 0, 1, 2) of n = 2 each; r = 5/8, Σ(s - r n)² = 2.75,
    # v = 4/3 · 2.75 / 64, n_eff = r (1 - r) / v = 45/11 (between P = 4 and N = 8)
    s, n = np.array([2.0, 0, 1, 2]), np.full(4, 2.0)
    assert lb.effective_trials(s, n) == pytest.approx(45 / 11)
    assert lb.exact_interval(s, n) == pytest.approx(lb.clopper_pearson(5 / 8 * 45 / 11, 45 / 11))


def test_win_rate_of_ten_wins_of_ten_is_the_exact_interval_and_flagged():
    ten = lb.win_rate([m(p, 1, 0, 1.0) for p in range(10)], 1, 0)
    assert (ten.rate, ten.high, ten.n_eff, ten.flags) == (1.0, 1.0, 10, ("never_lost",))
    assert round(100 * ten.low, 1) == 69.2
    lost = lb.win_rate([m(p, 1, 0, 0.0) for p in range(10)], 1, 0)
    assert (lost.low, lost.flags) == (0.0, ("never_won",))
    assert round(100 * lost.high, 1) == 30.8


@pytest.mark.parametrize(
    "outcomes, flags",
    [
        ({0: [1.0], 1: [1.0], 2: [1.0]}, ("never_lost",)),
        ({0: [0.0], 1: [0.0, 0.0]}, ("never_won",)),
        ({0: [0.5], 1: [0.5], 2: [0.5]}, ("all_ties",)),
        ({0: [1.0, 0.0, 1.0]}, ("one_prompt",)),
        ({0: [1.0, 1.0]}, ("one_prompt", "never_lost")),
        ({0: [1.0, 0.0], 1: [0.5, 0.5], 2: [0.0, 1.0]}, ("no_spread",)),
        ({0: [1.0], 1: [0.5], 2: [1.0]}, ()),  # a tie: the prompts differ
        ({0: [1.0, 0.0], 1: [1.0, 1.0]}, ()),
    ],
)
def test_win_rate_flags_exactly_where_the_bootstrap_has_no_spread(outcomes, flags):
    ms = [m(p, 1, 0, o) for p, os_ in outcomes.items() for o in os_]
    wr = lb.win_rate(ms, 1, 0, n_boot=300)
    assert wr.flags == flags
    # flagged: the exact interval alone, around the rate
    s = np.array([sum(v) for v in outcomes.values()])
    n = np.array([len(v) for v in outcomes.values()], float)
    low, high = lb.exact_interval(s, n)
    assert wr.low <= low and high <= wr.high and wr.low <= wr.rate <= wr.high
    if flags:
        assert (wr.low, wr.high) == pytest.approx((low, high))


def test_win_rate_never_narrower_than_the_exact_interval_nor_the_bootstrap():
    rng = np.random.default_rng(3)
    for trial in range(20):
        ms = [m(p, 1, 0, float(rng.random() < 0.8)) for p in range(17)]
        wr = lb.win_rate(ms, 1, 0, n_boot=300, seed=trial)
        s = np.array([x.outcome for x in ms])
        boot = lb.bootstrap_interval(s, np.ones(17), n_boot=300, seed=trial, level=0.95)
        exact = lb.clopper_pearson(s.sum(), 17)
        assert (wr.low, wr.high) == (min(boot[0], exact[0]), max(boot[1], exact[1]))


def test_leaderboard_flags_nothing_where_the_data_bound_every_rating():
    for seed in (3, 5):
        board = lb.leaderboard(random_matches(seed), n_boot=50)
        assert [r.flags for r in board.ratings] == [()] * 4
        assert all(math.isfinite(x) for r in board.ratings for x in (r.elo, r.low, r.high))


def test_a_policy_that_never_lost_gets_a_lower_bound_and_no_elo():
    """10 wins of 10 over the base: P(win) >= 0.6915 (exact), so Elo >= 1000 + 400 log10(
    0.6915 / 0.3085) = 1140.2; no upper bound; no point (the penalty's would be ~1400)."""
    ms = [m(p, 1, 0, 1.0) for p in range(10)]
    one, base = lb.leaderboard(ms, n_boot=100).ratings
    q = 0.025 ** (1 / 10)
    assert (one.model, one.flags, one.high, one.matches, one.score) == (
        1,
        ("unbounded_above",),
        math.inf,
        10,
        1.0,
    )
    assert math.isnan(one.elo) and one.low == pytest.approx(1000 + 400 * math.log10(q / (1 - q)))
    assert round(one.low, 1) == 1140.2
    assert (base.elo, base.low, base.high, base.flags) == (1000.0, 1000.0, 1000.0, ())
    assert lb.elo_cells(one) == ("≥ 1140", "1140–∞") and lb.elo_cells(base) == ("1000", "1000–1000")
    # never won: the mirror image
    lost, _ = lb.leaderboard([m(p, 1, 0, 0.0) for p in range(10)], n_boot=100).ratings[::-1]
    assert (lost.flags, lost.low) == (("unbounded_below",), -math.inf)
    assert lost.high == pytest.approx(2000 - one.low)
    assert lb.elo_cells(lost) == ("≤ 860", "−∞–860")


def test_a_group_that_never_lost_to_the_base_is_unbounded_as_a_whole():
    """Round 1 won all 6 against the base; round 2 traded wins with round 1 only: neither
    never lost, but both are unbounded above (the base never scored against either). Round 1
    keeps the lower bound of its 6 wins over the base; round 2 has none (it never met a bounded
    policy)."""
    ms = [m(p, 1, 0, 1.0) for p in range(6)]
    ms += [m(10 + p, 2, 1, o) for p, o in enumerate([1.0, 0.0, 1.0, 0.5, 1.0, 0.0])]
    ratings = {r.model: r for r in lb.leaderboard(ms, n_boot=100).ratings}
    assert {k: r.flags for k, r in ratings.items()} == {
        0: (),
        1: ("unbounded_group",),
        2: ("unbounded_group",),
    }
    assert math.isnan(ratings[2].low) and ratings[2].high == math.inf
    assert lb.elo_cells(ratings[2]) == ("unbounded", "–")
    assert ratings[1].low == pytest.approx(1028.37, abs=0.01)  # 6 of 6: q = 0.025^(1/6)
    # the random separated case: model 0 (the anchor) lost every match; the others traded
    board = lb.leaderboard(random_matches(4, separated=True), n_boot=50)
    assert [r.model for r in board.ratings][-1] == 0
    assert {r.model: r.flags for r in board.ratings} == {
        0: (),
        1: ("unbounded_group",),
        2: ("unbounded_group",),
        3: ("unbounded_group",),
    }


def test_one_prompt_and_all_ties_ratings_are_flagged_and_widened():
    ties = lb.leaderboard([m(p, 1, 0, 0.5) for p in range(6)], n_boot=100).ratings
    one = next(r for r in ties if r.model == 1)
    assert (one.elo, one.flags) == (pytest.approx(1000.0), ("all_ties",))
    # 3 of 6 on its exact interval [0.118, 0.882], around the base at 1000
    low, high = lb.clopper_pearson(3, 6)
    assert (one.low, one.high) == pytest.approx(
        (1000 + 400 * math.log10(low / (1 - low)), 1000 + 400 * math.log10(high / (1 - high)))
    )
    single = lb.leaderboard([m(7, 1, 0, o) for o in (1.0, 0.0, 1.0, 1.0)], n_boot=100).ratings
    assert [r.flags for r in single] == [("one_prompt",), ()]
    assert single[0].low < 1000 < single[0].elo < single[0].high  # one prompt: it could be worse
