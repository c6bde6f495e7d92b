"""Reward losses and metrics against hand-computed values (reward/losses.py, reward/metrics.py).

Notation in the comments: sp(x) = softplus(x) = log(1 + e^x), so -log sigma(x) = sp(-x);
lse(...) = log-sum-exp. Everything is tiny; the file runs in about a second on one CPU core.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rankloop.reward.losses import (
    bradley_terry_loss,
    centering_loss,
    davidson_log_probs,
    davidson_loss,
    plackett_luce_loss,
    rao_kupper_log_probs,
    rao_kupper_loss,
)
from rankloop.reward.metrics import (
    best_achievable_accuracy,
    expected_calibration_error,
    mean_margin,
    pairwise_accuracy,
    tie_aware_accuracy,
)

D = torch.float64


def t(*xs, dtype=D, **kw):
    return torch.tensor(xs, dtype=dtype, **kw)


def close(a, b, tol=1e-9):
    a, b = (x.detach() if isinstance(x, torch.Tensor) else x for x in (a, b))
    return abs(float(a) - float(b)) <= tol


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------
# Bradley-Terry
# ------------------------------------------------------------------------------------------


def test_bt_hand_value():
    # r_c = 1, r_r = 0, m = 0: -log sigma(1) = log(1 + e^-1) = 0.3132616875...
    loss, stats = bradley_terry_loss(t(1.0), t(0.0))
    assert close(loss, 0.31326168751822286)
    assert close(stats["reward/accuracy"], 1.0)
    assert close(stats["reward/margin"], 1.0)


def test_bt_margin_shifts_the_logit():
    # m = 0.5: -log sigma(1 - 0.5) = log(1 + e^-0.5) = 0.4740769841...
    loss, _ = bradley_terry_loss(t(1.0), t(0.0), margin=t(0.5))
    assert close(loss, 0.4740769841801067)
    # m = 1 (scalar float): -log sigma(0) = log 2
    loss, stats = bradley_terry_loss(t(1.0), t(0.0), margin=1.0)
    assert close(loss, math.log(2))
    # the stat is the achieved gap r_c - r_r, not the target margin
    assert close(stats["reward/margin"], 1.0)
    # per-row margins: rows (d=1, m=0) and (d=1, m=1) -> (0.31326... + log 2) / 2
    loss, _ = bradley_terry_loss(t(1.0, 1.0), t(0.0, 0.0), margin=t(0.0, 1.0))
    assert close(loss, (0.31326168751822286 + math.log(2)) / 2)


def test_bt_kwise_weights_make_one_ranking_one_comparison():
    # A K=3 ranking a > b > c with rewards (2, 1, -1) -> pairs with d = 1, 3, 2:
    #   sp(-1) = 0.313261688, sp(-3) = 0.048587352, sp(-2) = 0.126928011; mean = 0.162925683
    r_c, r_r = t(2.0, 2.0, 1.0), t(1.0, -1.0, -1.0)
    mean3 = (0.31326168751822286 + 0.04858735157374206 + 0.1269280110429725) / 3
    loss, _ = bradley_terry_loss(r_c, r_r, weight=t(1 / 3, 1 / 3, 1 / 3))
    assert close(loss, mean3)
    # ... plus a single pairwise label with d = 0 (loss log 2) at weight 1: the ranking and the
    # pair count equally: (0.162925683 + 0.693147181) / 2 = 0.428036432
    r_c4, r_r4 = torch.cat([r_c, t(0.0)]), torch.cat([r_r, t(0.0)])
    w = t(1 / 3, 1 / 3, 1 / 3, 1.0)
    loss, stats = bradley_terry_loss(r_c4, r_r4, weight=w)
    assert close(loss, 0.4280364319691289)
    unweighted, ustats = bradley_terry_loss(r_c4, r_r4)
    assert close(unweighted, 0.2954810576737207)  # (3 * 0.162925683 + 0.693147181) / 4
    # accuracy is weighted too: ranking all right (total weight 1), the d = 0 pair wrong
    assert close(stats["reward/accuracy"], 0.5)
    assert close(ustats["reward/accuracy"], 0.75)
    # weighted mean gap: (mean(1, 3, 2) * 1 + 0 * 1) / 2 = 1
    assert close(stats["reward/margin"], 1.0)


def test_bt_stats_are_detached_and_fixed():
    r_c = t(0.3, -0.2, requires_grad=True)
    loss, stats = bradley_terry_loss(r_c, t(0.0, 0.0))
    assert set(stats) == {"reward/loss", "reward/accuracy", "reward/margin"}
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())
    loss.backward()
    # d/dr_c of mean sp(-(r_c - r_r)) = -sigma(-d) / N
    assert torch.allclose(r_c.grad, t(-sigmoid(-0.3) / 2, -sigmoid(0.2) / 2))


def test_bt_is_stable_and_rejects_bad_weights():
    loss, _ = bradley_terry_loss(torch.tensor([0.0, 200.0]), torch.tensor([200.0, 0.0]))
    # float32: (200 + 0) / 2; log(sigmoid(-200)) would be log(0) = -inf
    assert torch.isfinite(loss) and close(loss, 100.0, 1e-4)
    with pytest.raises(ValueError):
        bradley_terry_loss(t(1.0, 2.0), t(0.0, 0.0), weight=t(1.0, -1.0))
    with pytest.raises(ValueError):
        bradley_terry_loss(t(1.0, 2.0), t(0.0, 0.0), weight=t(0.0, 0.0))
    with pytest.raises(ValueError):
        bradley_terry_loss(t(1.0, 2.0), t(0.0))


# ------------------------------------------------------------------------------------------
# Rao-Kupper
# ------------------------------------------------------------------------------------------


def test_rk_hand_value():
    # eps = exp(0) = 1. Win row x = 2: -log sigma(2 - 1) = sp(-1) = 0.313261688
    # Tie row x = 0: P(tie) = sigma(1) - sigma(-1) = tanh(1/2) = 0.462117157 -> 0.771936833
    # mean = 0.542599260
    loss, stats = rao_kupper_loss(
        t(2.0, 0.5), t(0.0, 0.5), tie=torch.tensor([False, True]), log_eps=t(0.0)
    )
    assert close(loss, 0.5425992602117639)
    assert close(stats["reward/epsilon"], 1.0)
    assert close(stats["reward/accuracy"], 1.0)  # the one non-tie row, 2 > 0
    assert close(stats["reward/margin"], 2.0)
    assert close(stats["reward/tie_prob_on_ties"], math.tanh(0.5))
    # weights: only the tie row counts
    loss, _ = rao_kupper_loss(
        t(2.0, 0.5),
        t(0.0, 0.5),
        tie=torch.tensor([False, True]),
        log_eps=t(0.0),
        weight=t(0.0, 1.0),
    )
    assert close(loss, 0.7719368329053048)


def test_rk_probabilities_sum_to_one_and_match_definition():
    g = torch.Generator().manual_seed(0)
    r_a = torch.randn(200, generator=g, dtype=D) * 3
    r_b = torch.randn(200, generator=g, dtype=D) * 3
    for log_eps in (-2.0, 0.0, 1.5):
        la, lb, lt = rao_kupper_log_probs(r_a, r_b, t(log_eps).squeeze())
        total = la.exp() + lb.exp() + lt.exp()
        assert torch.allclose(total, torch.ones_like(total), atol=1e-12)
        eps, x = math.exp(log_eps), r_a - r_b
        naive_tie = 1 - torch.sigmoid(x - eps) - torch.sigmoid(-x - eps)  # fine in float64 here
        assert torch.allclose(lt.exp(), naive_tie, atol=1e-12)
        assert torch.allclose(la.exp(), torch.sigmoid(x - eps), atol=1e-12)


def test_rk_eps_zero_is_bradley_terry():
    r_a, r_b = t(1.0, -0.3, 2.5), t(0.0, 0.4, -1.0)
    no_tie = torch.zeros(3, dtype=torch.bool)
    bt, _ = bradley_terry_loss(r_a, r_b)
    rk, _ = rao_kupper_loss(r_a, r_b, no_tie, log_eps=t(float("-inf")).squeeze())  # eps = 0
    assert close(rk, bt, 1e-12)
    la, _, lt = rao_kupper_log_probs(r_a, r_b, -30.0)  # eps = 9e-14
    assert torch.allclose(la, torch.nn.functional.logsigmoid(r_a - r_b), atol=1e-12)
    assert (lt < -28).all()  # P(tie) ~ eps / (1 + cosh x) -> 0


def test_rk_tie_probability_stable_for_large_gap():
    # |x| = 50, eps = 1, float32: P(tie) = sinh(1) / (cosh(50) + cosh(1)) ~ 2 sinh(1) e^-50,
    # log P(tie) = log(2 sinh 1) - 50 = 0.854586542 - 50 = -49.145413458
    x = torch.tensor([50.0, -50.0], requires_grad=True)
    _, _, lt = rao_kupper_log_probs(x, torch.zeros(2), torch.tensor(0.0))
    assert torch.allclose(lt, torch.tensor([-49.14541345786886] * 2), rtol=1e-6)
    assert (lt.exp() > 0).all()
    # the textbook form loses it: 1 - sigma(49) - sigma(-51) is <= 0 in float32 (log: -inf/NaN)
    naive = 1 - torch.sigmoid(torch.tensor(49.0)) - torch.sigmoid(torch.tensor(-51.0))
    assert naive <= 0
    loss, _ = rao_kupper_loss(x, torch.zeros(2), torch.tensor([True, True]), torch.tensor(0.0))
    loss.backward()
    # d(-log P(tie))/dx -> tanh-like: ~ +1 for x = 50 (shrink the gap), -1 for x = -50
    assert torch.isfinite(loss) and torch.allclose(x.grad, torch.tensor([0.5, -0.5]), atol=1e-4)


def test_rk_learnable_log_eps_gradient_and_tiny_eps():
    log_eps = torch.tensor(0.0, dtype=D, requires_grad=True)
    # only ties at x = 0: a wider dead zone (bigger eps) explains them better
    loss, _ = rao_kupper_loss(t(0.0, 0.0), t(0.0, 0.0), torch.tensor([True, True]), log_eps)
    loss.backward()
    assert log_eps.grad < 0
    log_eps = torch.tensor(0.0, dtype=D, requires_grad=True)
    loss, _ = rao_kupper_loss(t(1.0, 2.0), t(0.0, 0.0), torch.tensor([False, False]), log_eps)
    loss.backward()
    assert log_eps.grad > 0
    # eps underflowing to 0 (log_eps = -200 in float32) still gives a finite tie loss and grad:
    # log P(tie) ~ log eps + log 2 - lse(0, 0, 0, 0) = -200 + log 2 - log 4 = -200.693147
    log_eps = torch.tensor(-200.0, requires_grad=True)
    loss, _ = rao_kupper_loss(torch.zeros(1), torch.zeros(1), torch.tensor([True]), log_eps)
    loss.backward()
    assert close(loss, 200 + math.log(2), 1e-3) and close(log_eps.grad, -1.0, 1e-5)


# ------------------------------------------------------------------------------------------
# Davidson
# ------------------------------------------------------------------------------------------


def test_davidson_hand_value():
    # nu = 1. Win row r_a = 2, r_b = 0: e^2 / (e^2 + 1 + e^1) = e / (e + e^-1 + 1) = 0.665241
    #   -> -log = 0.407605964. Tie row r_a = r_b: each outcome 1/3 -> log 3 = 1.098612289.
    # mean = 0.753109127
    loss, stats = davidson_loss(t(2.0, 0.7), t(0.0, 0.7), torch.tensor([False, True]), t(0.0))
    assert close(loss, 0.7531091265562451)
    assert close(stats["reward/nu"], 1.0)
    assert close(stats["reward/tie_prob_on_ties"], 1 / 3)


def test_davidson_matches_the_original_parametrisation():
    # P(a > b) = pi_a / (pi_a + pi_b + nu sqrt(pi_a pi_b)) with pi = e^r, on raw rewards
    r_a, r_b, nu = 1.3, -0.4, 0.7
    pa, pb = math.exp(r_a), math.exp(r_b)
    z = pa + pb + nu * math.sqrt(pa * pb)
    la, lb, lt = davidson_log_probs(t(r_a), t(r_b), math.log(nu))
    assert close(la.exp(), pa / z, 1e-12)
    assert close(lb.exp(), pb / z, 1e-12)
    assert close(lt.exp(), nu * math.sqrt(pa * pb) / z, 1e-12)


def test_davidson_probabilities_sum_to_one():
    g = torch.Generator().manual_seed(1)
    r_a = torch.randn(200, generator=g, dtype=D) * 5
    r_b = torch.randn(200, generator=g, dtype=D) * 5
    for log_nu in (-3.0, 0.0, 2.0):
        la, lb, lt = davidson_log_probs(r_a, r_b, t(log_nu).squeeze())
        assert torch.allclose(la.exp() + lb.exp() + lt.exp(), torch.ones(200, dtype=D), atol=1e-12)


def test_davidson_small_nu_is_bradley_terry():
    r_a, r_b = t(1.0, -0.3, 2.5), t(0.0, 0.4, -1.0)
    bt, _ = bradley_terry_loss(r_a, r_b)
    dv, _ = davidson_loss(r_a, r_b, torch.zeros(3, dtype=torch.bool), log_nu=t(-30.0).squeeze())
    assert close(dv, bt, 1e-10)
    assert not close(davidson_loss(r_a, r_b, torch.zeros(3, dtype=torch.bool), 0.0)[0], bt, 1e-3)


# ------------------------------------------------------------------------------------------
# Plackett-Luce
# ------------------------------------------------------------------------------------------


def test_pl_k2_strict_is_bradley_terry():
    g = torch.Generator().manual_seed(2)
    r = torch.randn(16, 2, generator=g, dtype=D)
    tiers = torch.tensor([[0, 1]] * 16)
    pl, pl_stats = plackett_luce_loss(r, tiers)
    bt, bt_stats = bradley_terry_loss(r[:, 0], r[:, 1])
    assert close(pl, bt, 1e-12)
    assert close(pl_stats["reward/accuracy"], bt_stats["reward/accuracy"])
    assert close(pl_stats["reward/margin"], bt_stats["reward/margin"], 1e-12)
    # and the hand value for a single pair (1, 0): sp(-1) = 0.313261688
    assert close(
        plackett_luce_loss(t(1.0, 0.0)[None], torch.tensor([[0, 1]]))[0], 0.31326168751822286
    )


def test_pl_k3_hand_value():
    # a > b > c, rewards (2, 1, -1):
    #   log P = [2 - lse(2, 1, -1)] + [1 - lse(1, -1)] + [-1 - lse(-1)]
    #         = (2 - 2.349012217) + (1 - 1.126928011) + 0 = -0.349012217 - 0.126928011
    #   loss  = 0.475940228 / (3 - 1) = 0.237970114
    loss, stats = plackett_luce_loss(t(2.0, 1.0, -1.0)[None], torch.tensor([[0, 1, 2]]))
    assert close(loss, 0.23797011390557954)
    assert close(stats["reward/accuracy"], 1.0)
    assert close(stats["reward/margin"], (1 + 3 + 2) / 3)
    # the item order in the tensor does not matter, only the tiers
    loss2, _ = plackett_luce_loss(t(-1.0, 2.0, 1.0)[None], torch.tensor([[2, 0, 1]]))
    assert close(loss2, 0.23797011390557954)
    # a misordered ranking: rewards (1, 2, -1) for tiers (0, 1, 2): 2 of 3 pairs right
    _, stats = plackett_luce_loss(t(1.0, 2.0, -1.0)[None], torch.tensor([[0, 1, 2]]))
    assert close(stats["reward/accuracy"], 2 / 3)


def test_pl_padding_is_ignored_and_gets_no_gradient():
    r = torch.tensor(
        [[2.0, 1.0, -1.0, float("nan")], [1.0, 0.0, 1e4, 5.0]], dtype=D, requires_grad=True
    )
    tiers = torch.tensor([[0, 1, 2, -1], [0, 1, -1, -1]])
    loss, stats = plackett_luce_loss(r, tiers)
    # mean of the K=3 hand value and sp(-1) for the K=2 row
    assert close(loss, (0.23797011390557954 + 0.31326168751822286) / 2)
    assert all(torch.isfinite(v) for v in stats.values())
    loss.backward()
    assert torch.isfinite(r.grad).all()
    assert (r.grad[0, 3] == 0) and (r.grad[1, 2:] == 0).all()


def test_pl_ties_breslow_hand_values():
    lse_all = math.log(math.exp(2) + math.exp(1) + math.exp(-1))  # 2.349012217
    # a ~ b > c, rewards (2, 1, -1): a and b both get the denominator of {a, b, c}:
    #   log P = (2 - 2.349012217) + (1 - 2.349012217) + (-1 - (-1)) = -1.698024433 -> / 2
    loss, stats = plackett_luce_loss(t(2.0, 1.0, -1.0)[None], torch.tensor([[0, 0, 1]]))
    assert close(loss, -((2 - lse_all) + (1 - lse_all)) / 2)
    assert close(loss, 0.8490122167681866)
    assert close(stats["reward/accuracy"], 1.0)  # pairs (a, c), (b, c) only
    # a > b ~ c: b and c both get the denominator of {b, c}:
    #   log P = (2 - 2.349012217) + (1 - 1.126928011) + (-1 - 1.126928011) -> 1.301434119
    loss, _ = plackett_luce_loss(t(2.0, 1.0, -1.0)[None], torch.tensor([[0, 1, 1]]))
    assert close(loss, 1.3014341194270655)
    # a 2-item tie: log sigma(x) + log sigma(-x); at x = 1: -(log sigma(1) + log sigma(-1))
    loss, stats = plackett_luce_loss(t(1.0, 0.0)[None], torch.tensor([[0, 0]]))
    assert close(loss, 0.31326168751822286 + 1.3132616875182228)
    assert math.isnan(stats["reward/accuracy"])  # no strictly ordered pair


def test_pl_weights_and_gradients():
    r = torch.tensor([[2.0, 1.0, -1.0], [1.0, 0.0, 0.0]], dtype=D, requires_grad=True)
    tiers = torch.tensor([[0, 1, 2], [0, 1, -1]])
    loss, _ = plackett_luce_loss(r, tiers, weight=t(3.0, 1.0))
    # (3 * 0.237970114 + 1 * 0.313261688) / 4
    assert close(loss, (3 * 0.23797011390557954 + 0.31326168751822286) / 4)
    loss.backward()
    g = r.grad
    assert torch.isfinite(g).all() and g[1, 2] == 0
    # raising the best item's reward lowers the loss, raising the worst's raises it
    assert g[0, 0] < 0 and g[0, 2] > 0 and g[1, 0] < 0 and g[1, 1] > 0
    # gradient of a ranking's loss sums to zero over its items (only differences matter)
    assert close(g[0].sum(), 0.0, 1e-12)


def test_pl_rejects_bad_input():
    with pytest.raises(ValueError):
        plackett_luce_loss(t(1.0, 0.0)[None], torch.tensor([[0, -1]]))  # one real item
    with pytest.raises(ValueError):
        plackett_luce_loss(t(1.0, 0.0), torch.tensor([0, 1]))  # not (N, K)


# ------------------------------------------------------------------------------------------
# centering
# ------------------------------------------------------------------------------------------


def test_centering_hand_value():
    # sums r_c + r_r = (1.5, 3): squares (2.25, 9), mean 5.625, * 0.1 = 0.5625
    loss, stats = centering_loss(t(1.0, 2.0), t(0.5, 1.0), coef=0.1)
    assert close(loss, 0.5625)
    assert close(stats["reward/centering_loss"], 0.5625)
    assert close(stats["reward/mean_reward"], (0.75 + 1.5) / 2)
    # weighted: only the second pair -> 0.1 * 9
    loss, _ = centering_loss(t(1.0, 2.0), t(0.5, 1.0), coef=0.1, weight=t(0.0, 1.0))
    assert close(loss, 0.9)
    # centred pairs cost nothing
    assert close(centering_loss(t(1.0, 2.0), t(-1.0, -2.0), coef=0.1)[0], 0.0)


# ------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------


def test_pairwise_accuracy_excludes_ties():
    r_c, r_r = [1.0, 0.0, 2.0, 3.0], [0.0, 1.0, 5.0, 3.0]
    tie = [False, False, True, False]
    # non-tie rows: 1 > 0 yes, 0 > 1 no, 3 > 3 no (strict) -> 1/3; the tie row (2 < 5) is out
    assert close(pairwise_accuracy(r_c, r_r, tie), 1 / 3, 1e-12)
    assert close(
        pairwise_accuracy(torch.tensor(r_c), torch.tensor(r_r), torch.tensor(tie)), 1 / 3, 1e-12
    )
    assert close(pairwise_accuracy(r_c, r_r, None), 1 / 4, 1e-12)
    assert math.isnan(pairwise_accuracy([1.0], [0.0], [True]))
    # mean margin over non-tie rows: (1 - 1 + 0) / 3 = 0
    assert close(mean_margin(r_c, r_r, tie), 0.0, 1e-12)
    assert close(mean_margin(np.array(r_c), np.array(r_r), np.array([0, 0, 1, 0])), 0.0, 1e-12)
    assert close(mean_margin(r_c, r_r, [True, True, False, True]), -3.0, 1e-12)
    assert math.isnan(mean_margin([1.0], [0.0], [True]))


def test_tie_aware_accuracy():
    # d = (1, -1, -3, 0, 0.2), threshold 0.5 -> predicted (win, lose, lose, tie, tie)
    # observed (win, win, tie, tie, win) -> right, wrong, wrong, right, wrong = 2/5
    r_c = torch.tensor([1.0, 0.0, 0.0, 4.0, 1.2])
    r_r = torch.tensor([0.0, 1.0, 3.0, 4.0, 1.0])
    tie = torch.tensor([False, False, True, True, False])
    assert close(tie_aware_accuracy(r_c, r_r, tie, threshold=0.5), 0.4, 1e-7)
    # threshold 0.1: the last row (d = 0.2) becomes a predicted win -> 3/5
    assert close(tie_aware_accuracy(r_c, r_r, tie, threshold=0.1), 0.6, 1e-7)
    # threshold 5: everything predicted tie -> the 2 tie rows right
    assert close(tie_aware_accuracy(r_c, r_r, tie, threshold=5.0), 0.4, 1e-7)
    with pytest.raises(ValueError):
        tie_aware_accuracy(r_c, r_r, tie, threshold=-1.0)


def test_ece_calibrated_and_miscalibrated():
    # calibrated: p = 0.25 four times with one success, p = 0.75 four times with three -> 0
    probs = [0.25] * 4 + [0.75] * 4
    outcomes = [1, 0, 0, 0] + [1, 1, 1, 0]
    assert close(expected_calibration_error(probs, outcomes), 0.0, 1e-12)
    # overconfident: p = 0.9 five times, one success: |0.2 - 0.9| = 0.7
    assert close(expected_calibration_error([0.9] * 5, [1, 0, 0, 0, 0]), 0.7, 1e-12)
    # two bins of weight 1/2: |0.5 - 0.95| / 2 + |1 - 0.15| / 2 = 0.225 + 0.425 = 0.65
    assert close(
        expected_calibration_error(torch.tensor([0.95, 0.95, 0.15, 0.15]), np.array([0, 1, 1, 1])),
        0.65,
        1e-7,
    )
    # bins are right-closed as in Guo et al.: with 2 bins, 0.5 goes to (0, 0.5], 1.0 to (0.5, 1]
    #   |1 - 0.5| / 2 + |0 - 1| / 2 = 0.75  (one bin [0.5, 1] would give |0.5 - 0.75| = 0.25)
    assert close(expected_calibration_error([0.5, 1.0], [1, 0], n_bins=2), 0.75, 1e-12)
    # large calibrated sample: outcomes drawn from the probabilities -> ECE near 0
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=20000) < p).astype(float)
    assert expected_calibration_error(p, y) < 0.02
    assert expected_calibration_error(p, 1 - y) > 0.3
    assert math.isnan(expected_calibration_error([], []))
    with pytest.raises(ValueError):
        expected_calibration_error([1.2], [1])


def test_best_achievable_accuracy():
    assert close(best_achievable_accuracy([0.0]), 0.5, 1e-12)
    assert best_achievable_accuracy(torch.tensor([60.0])) > 1 - 1e-12
    assert close(best_achievable_accuracy(np.array([0.0, 60.0])), 0.75, 1e-12)
    # symmetric in the sign of d: sigma(2) = 0.880797078
    assert close(best_achievable_accuracy([-2.0]), 0.8807970779778823, 1e-12)
    # the bound is what predicting sign(d) achieves on labels drawn from sigma(d)
    rng = np.random.default_rng(1)
    d = rng.normal(scale=2.0, size=40000)
    first_wins = rng.uniform(size=d.size) < 1 / (1 + np.exp(-d))
    empirical = np.mean((d > 0) == first_wins)
    assert abs(empirical - best_achievable_accuracy(d)) < 0.01
