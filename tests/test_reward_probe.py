"""The frozen-feature probe's cross-validated accuracy: whether it is worth mixing into the
round's reward ([rounds] reward = 'auto')."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rankloop.reward.probe import (
    ahead_of_cross_validation,
    clearly_ahead,
    cross_validated_accuracy,
    informative,
    mix_decision,
    paired_sign_test,
)


def test_cross_validated_accuracy_and_its_cluster_standard_error_by_hand():
    """10 comparisons of 2 pairs each; every pair's feature difference points along +e0 except
    comparison 0's two, which point against it (its labels disagree with the rest). Every fold's
    probe learns w0 > 0 from the others, so 18 of 20 rows are right: p = 0.9, and the
    cluster-robust SE is sqrt((0 - 0.9 * 2)^2 + 9 (2 - 0.9 * 2)^2) / 20 = sqrt(3.6) / 20."""
    x = np.zeros((20, 2))
    x[:, 0] = 1.0
    x[:2, 0] = -1.0
    groups = np.repeat(np.arange(10), 2)
    acc, se = cross_validated_accuracy(x, None, groups, seed=0)
    assert acc == pytest.approx(0.9)
    assert se == pytest.approx(math.sqrt(3.6) / 20)
    # weights count rows: comparison 0 weighted 3x is 6 wrong of 24
    w = np.where(groups == 0, 3.0, 1.0)
    acc_w, se_w = cross_validated_accuracy(x, w, groups, seed=0)
    assert acc_w == pytest.approx(18 / 24)
    assert se_w == pytest.approx(math.sqrt((0 - 0.75 * 6) ** 2 + 9 * (2 - 0.75 * 2) ** 2) / 24)


def test_too_few_comparisons_to_cross_validate_give_nan():
    acc, se = cross_validated_accuracy(np.ones((8, 3)), None, np.arange(8) // 2)  # 4 groups
    assert math.isnan(acc) and math.isnan(se)


def test_informative_means_above_chance_with_one_sided_95_percent_confidence():
    assert informative(0.6, 0.05)  # 0.6 - 1.645 * 0.05 = 0.518
    assert not informative(0.58, 0.05)  # 0.498
    assert not informative(None, None) and not informative(float("nan"), 0.1)


def test_a_probe_with_signal_is_informative_and_one_on_random_labels_is_not():
    """Feature differences with a direction the labels follow (90 pairs, 30 comparisons) against
    the same features with labels drawn at random."""
    rng = np.random.default_rng(0)
    d = rng.normal(size=(90, 16))
    d[:, 3] += 1.0  # the better response is higher along feature 3
    groups = np.repeat(np.arange(30), 3)
    acc, se = cross_validated_accuracy(d, None, groups, seed=0)
    assert acc > 0.75 and informative(acc, se)
    flip = np.where(rng.random(90) < 0.5, 1.0, -1.0)[:, None]  # labels that ignore feature 3
    acc0, se0 = cross_validated_accuracy(d * flip, None, groups, seed=0)
    assert abs(acc0 - 0.5) < 0.15 and not informative(acc0, se0)


def test_clearly_ahead_is_a_sign_test_at_the_most_disagreement_the_accuracies_allow():
    # 10 pairs, 10 right against 3: the 7 the probe missed are the only disagreements,
    # all the model's: P(X >= 7 | 7) = 1/128
    assert clearly_ahead(1.0, 0.3, 10) == (True, 1 / 128)
    # 10 against 8: 2 disagreements at most, P(X >= 2 | 2) = 1/4
    assert clearly_ahead(1.0, 0.8, 10) == (False, 0.25)
    # 28 pairs, 24 right against 14: at most min(38, 18) = 18 disagreements, 14 for the model,
    # P(X >= 14 | 18) = (3060 + 816 + 153 + 18 + 1) / 2^18
    ahead, p = clearly_ahead(24 / 28, 14 / 28, 28)
    assert ahead and p == pytest.approx(4048 / 2**18)
    # 22 against 14: min(36, 20) = 20, 14 for the model: (38760 + ... + 1) / 2^20 = 0.0577
    ahead, p = clearly_ahead(22 / 28, 14 / 28, 28)
    assert not ahead and p == pytest.approx(60460 / 2**20)
    assert clearly_ahead(0.6, 0.7, 10) == (False, 1.0) and clearly_ahead(1.0, 1.0, 10)[0] is False


def test_paired_sign_test_counts_only_the_pairs_one_gets_right_and_the_other_wrong():
    # 12 pairs: both right on 4, both wrong on 1 (a zero gap counts wrong), the model alone
    # right on 6, the probe alone on 1: P(X >= 6 | 7) = (7 + 1) / 2^7 = 1/16
    model = [1, 2, 3, 4, -1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, -2]
    probe = [1, 1, 1, 1, 0.0, -1, -1, -1, -1, -1, -1, 3]
    assert paired_sign_test(model, probe) == (False, 1 / 16, 7)
    # one more pair only the model gets right: P(X >= 7 | 8) = 9 / 256
    assert paired_sign_test(model + [1], probe + [-1]) == (True, 9 / 256, 8)
    # the other way round, or even: not ahead
    assert paired_sign_test(probe, model) == (False, 1.0, 7)
    assert paired_sign_test([1, -1], [-1, 1]) == (False, 1.0, 2)
    # the worst case the accuracies alone allow is weaker on the same pairs: 8 right against 5
    # of 13 leaves min(13, 13) = 13 disagreements, 8 for the model: P(X >= 8 | 13) = 0.29
    assert clearly_ahead(8 / 13, 5 / 13, 13)[1] == pytest.approx(2380 / 2**13)


def test_auto_mixes_a_probe_that_knows_something_unless_the_model_is_clearly_ahead():
    cv = {"cv_accuracy": 0.7, "cv_se": 0.05}  # 0.7 - 1.645 * 0.05 = 0.618 > 0.5
    ahead = {**cv, "model_accuracy": 1.0, "accuracy": 0.3, "eval_pairs": 10}
    why = (
        "ranks the training labels at 0.700 +- 0.050, cross-validated, above chance, but "
        "0.300 on 10 held-out pairs against the model's 1.000: clearly behind (sign test "
        "p = 0.008)"
    )
    assert mix_decision(ahead) == (False, why)
    # 10 of 10 against the probe's 8 on the same pairs: not clear (at most 2 disagreements);
    # but against its cross-validated 0.700 +- 0.050 the model's 11/12 (one right and one
    # wrong added) is (11/12 - 0.7) / sqrt(11/12 * 1/12 / 12 + 0.05^2) = 2.30 above: clear
    why = (
        "ranks the training labels at 0.700 +- 0.050, cross-validated, above chance, but the "
        "model's 1.000 on 10 held-out pairs is clearly above that (z = 2.30)"
    )
    assert mix_decision({**ahead, "accuracy": 0.8}) == (False, why)
    assert ahead_of_cross_validation(1.0, 10, 0.7, 0.05)[1] == pytest.approx(
        (11 / 12 - 0.7) / math.sqrt(11 / 12 / 12 / 12 + 0.05**2)
    )
    # a probe that cross-validates at 0.850 +- 0.050: 0.71 standard errors, mixed
    why = (
        "ranks the training labels at 0.850 +- 0.050, cross-validated, above chance, and "
        "0.800 on 10 held-out pairs against the model's 1.000: not clearly behind"
    )
    assert mix_decision({**ahead, "accuracy": 0.8, "cv_accuracy": 0.85}) == (True, why)
    # the probe ahead: mixed; no held-out split saved: the cross-validation alone decides
    assert mix_decision({**ahead, "model_accuracy": 0.7, "accuracy": 1.0})[0]
    assert mix_decision(cv) == (
        True, "ranks the training labels at 0.700 +- 0.050, cross-validated, above chance"
    )  # fmt: skip
    assert mix_decision({"cv_accuracy": 0.55, "cv_se": 0.05, "model_accuracy": 0.5}) == (
        False, "ranks the training labels at 0.550 +- 0.050, cross-validated, not above chance"
    )  # fmt: skip
    assert mix_decision({}) == (False, "has no cross-validated accuracy saved")
    # with each held-out pair's gaps saved, the paired test decides: 20 pairs, the probe right
    # on 10 the model also gets right, the model on 5 more: P(X >= 5 | 5) = 1/32, where the
    # accuracies alone (0.75 against 0.5: up to 15 disagreements, 10-5) give 4944 / 2^15
    gaps = {"model": [1] * 15 + [-1] * 5, "probe": [1] * 10 + [-1] * 10}
    paired = {**cv, "model_accuracy": 0.75, "accuracy": 0.5, "eval_pairs": 20}
    why = (
        "ranks the training labels at 0.700 +- 0.050, cross-validated, above chance, but "
        "0.500 on 20 held-out pairs against the model's 0.750: clearly behind (sign test on "
        "the 5 pairs they order differently, p = 0.031)"
    )
    assert mix_decision({**paired, "held_out_gaps": gaps}) == (False, why)
    assert clearly_ahead(0.75, 0.5, 20) == (False, pytest.approx(4944 / 2**15))
    assert mix_decision(paired)[0]  # the same accuracies without the gaps: mixed
