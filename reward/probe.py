"""Linear probes on frozen features: the baseline a reward model must beat, and its warm start.

A probe is a logistic regression on the difference of two responses' frozen features,
P(a better than b) = sigma(w . (f_a - f_b)): a Bradley-Terry model whose reward is linear in
the features, r = w . f. Two poolings of the backbone's last hidden states:
* "last": the hidden state of each response's last token, what the reward model's scalar head
  reads, so the fitted w can start that head (LP-FT: Kumar et al. 2022, "Fine-Tuning can
  Distort Pretrained Features and Underperform Out-of-Distribution", ICLR: fit the head on
  frozen features first, then fine-tune; better than a random head with little data);
* "mean": the mean over the tokens a response sees (its prompt and itself), the baseline that
  `rankloop train-reward` reports beside the trained model.
Fitting takes a fraction of a second; the features cost one forward pass without gradients.
"""

from __future__ import annotations

import numpy as np


def pair_differences(
    features: list[np.ndarray], pairs: list[list]
) -> tuple[np.ndarray, np.ndarray]:
    """(X, weight): one row f_better - f_worse per strict pair, weighted as in training.

    `features[i]` is (K_i, H) for example i; `pairs[i]` its `Pair`s (ties are left out: they
    carry no direction).
    """
    rows, weights = [], []
    for f, ps in zip(features, pairs):
        for p in ps:
            if not p.tie:
                rows.append(f[p.better] - f[p.worse])
                weights.append(p.weight)
    return np.asarray(rows, dtype=np.float64), np.asarray(weights, dtype=np.float64)


def fit_probe(x: np.ndarray, weight: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """w (H,) of the Bradley-Terry probe sigma(w . d) fitted on rows d = f_better - f_worse.

    Each row is given a random orientation (d with outcome 1 or -d with outcome 0) so both
    classes occur; no intercept (the model is antisymmetric: swapping a and b flips the
    prediction). Features are scaled by the root mean square of each column (hidden states have
    a few huge dimensions); the L2 strength C is chosen by 5-fold cross-validated log-loss
    (3-fold, or a fixed C = 0.1 under 10 rows). w is returned in the raw feature units.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    n = len(x)
    if n == 0:
        raise ValueError("no strict pair to fit a probe on")
    rng = np.random.default_rng(seed)
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    if n >= 2:  # both classes, whatever the draw
        sign[0], sign[1] = 1.0, -1.0
    scale = np.sqrt(np.mean(x**2, axis=0)) + 1e-6
    xs = x * sign[:, None] / scale
    y = (sign > 0).astype(int)
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    if n < 10 or min(y.sum(), n - y.sum()) < 3:
        clf = LogisticRegression(C=0.1, fit_intercept=False, max_iter=2000)
    else:
        clf = LogisticRegressionCV(
            Cs=[0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
            cv=min(5, n // 10 + 2),
            fit_intercept=False,
            scoring="neg_log_loss",
            max_iter=2000,
            l1_ratios=(0.0,),
            use_legacy_attributes=False,
        )
    clf.fit(xs, y, sample_weight=w * len(w) / w.sum())
    return clf.coef_[0] / scale


def cross_validated_accuracy(
    x: np.ndarray,
    weight: np.ndarray | None,
    groups: np.ndarray,
    seed: int = 0,
    folds: int = 5,
) -> tuple[float, float]:
    """(accuracy, standard error) of the probe on rows it was not fitted on: `folds`-fold
    cross-validation over the training rows, whole groups (a comparison's pairs share their
    responses) in one fold. Accuracy is the weighted share of rows d = f_better - f_worse with
    w . d > 0 (a zero counts a half); the standard error is cluster-robust over the groups,
    sqrt(sum_g (c_g - p n_g)^2) / N with c_g, n_g group g's weighted correct and count. With
    fewer than `folds` groups: (nan, nan), nothing to hold out."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    w = np.ones(len(x)) if weight is None else np.asarray(weight, dtype=np.float64)
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        return float("nan"), float("nan")
    correct = np.zeros(len(x))
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(x, groups=groups):
        margin = x[test] @ fit_probe(x[train], w[train], seed)
        correct[test] = (margin > 0) + 0.5 * (margin == 0)
    total = w.sum()
    p = float((w * correct).sum() / total)
    _, g = np.unique(groups, return_inverse=True)
    c_g = np.bincount(g, weights=w * correct)
    n_g = np.bincount(g, weights=w)
    se = float(np.sqrt(((c_g - p * n_g) ** 2).sum()) / total)
    return p, se


def informative(cv_accuracy: float | None, cv_se: float | None, z: float = 1.645) -> bool:
    """Does the probe rank the training labels better than chance, with one-sided 95%
    confidence: cv_accuracy - z * cv_se > 0.5? A probe that does not adds only noise to a mix
    (`[rounds] reward = "auto"`); unknown (no cross-validation) counts as no."""
    if cv_accuracy is None or cv_se is None or np.isnan(cv_accuracy) or np.isnan(cv_se):
        return False
    return bool(cv_accuracy - z * cv_se > 0.5)


def clearly_ahead(a: float, b: float, n: float, alpha: float = 0.05) -> tuple[bool, float]:
    """(is accuracy `a` clearly above accuracy `b` on the same `n` pairs?, the p-value): a
    one-sided exact sign test (McNemar's) on the pairs the two order differently. Only the
    accuracies are saved, not which pairs each got right, so it takes the most disagreement
    they allow, the case least favourable to a clear answer: with A = n a and B = n b pairs
    right, D = min(A + B, 2n - A - B) pairs where one is right and the other wrong, of which
    (D + A - B) / 2 go to `a` (a tie, counted half in an accuracy, is rounded)."""
    from scipy.stats import binomtest

    if not n or a <= b:
        return False, 1.0
    right_a, right_b = a * n, b * n
    discordant = round(min(right_a + right_b, 2 * n - right_a - right_b))
    wins = min(round((discordant + right_a - right_b) / 2), discordant)
    if discordant == 0:
        return False, 1.0
    p = float(binomtest(wins, discordant, 0.5, alternative="greater").pvalue)
    return p < alpha, p


def paired_sign_test(gaps_a, gaps_b, alpha: float = 0.05) -> tuple[bool, float, int]:
    """(does scorer `a` order the same held-out pairs clearly better than `b`?, the p-value, the
    number of pairs they order differently): McNemar's exact one-sided test. `gaps_a[i]` is
    r_better - r_worse of strict pair i under `a` (right when > 0, as `metrics.pairwise_accuracy`
    counts), `gaps_b[i]` the same pair under `b`; of the pairs exactly one of them gets right,
    `a`'s share is tested against a fair coin. Sharper than `clearly_ahead`, which does not know
    which pairs each got right and must assume the most disagreement."""
    from scipy.stats import binomtest

    right_a, right_b = np.asarray(gaps_a) > 0, np.asarray(gaps_b) > 0
    wins, losses = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    if wins <= losses:
        return False, 1.0, wins + losses
    p = float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)
    return p < alpha, p, wins + losses


def ahead_of_cross_validation(
    model: float, n: int, cv_accuracy: float, cv_se: float, z: float = 1.645
) -> tuple[bool, float]:
    """(is the model's held-out accuracy `model` on `n` pairs clearly above the probe's
    cross-validated accuracy?, the test statistic): a one-sided adjusted Wald test at z. The
    probe's accuracy is estimated on every training label (standard error `cv_se`), the model's
    only on the held-out split, so the model's count gets one right and one wrong pair added
    (Agresti and Caffo 2000): 10 of 10 is 11/12 with a spread, not a certainty. The two
    estimates come from different pairs: their variances add."""
    k = round(model * n)
    p = (k + 1) / (n + 2)
    stat = (p - cv_accuracy) / float(np.sqrt(p * (1 - p) / (n + 2) + cv_se**2))
    return bool(stat > z), stat


def mix_decision(spec: dict, z: float = 1.645) -> tuple[bool, str]:
    """(mix?, why) for `[rounds] reward = "auto"`, from a reward model's probe.json: optimise
    the mean of the model's and the probe's normalised scores only when both can add something:

    * the probe ranks the training labels above chance (`informative`: its cross-validated
      accuracy `cv_accuracy` clears 0.5 by z standard errors `cv_se`), and
    * the held-out split does not show the model clearly ahead of the probe: the model's
      accuracy `model_accuracy` above the probe's `accuracy` on the `eval_pairs` held-out pairs
      with one-sided p < 0.05: McNemar's exact test on the pairs the two order differently
      (`paired_sign_test`) when the per-pair score gaps are saved (`held_out_gaps`: "model" and
      "probe"), else the test at the most disagreement the two accuracies allow
      (`clearly_ahead`), and
    * the model's held-out accuracy is not clearly above the probe's cross-validated one
      (`ahead_of_cross_validation`): the probe's accuracy measured on every training label, far
      more pairs than the split holds (at 300 labels ~30 held-out pairs; measured: the held-out
      test alone let a probe near chance into the mix on `format`).

    A probe far behind the model only dilutes it (measured: docs/benchmarks.md, "`auto`").

    Missing values count against the mix for the first test (no evidence the probe knows
    anything) and for it in the second (no evidence the model is ahead). `why` completes the
    sentence "the probe ...".
    """
    acc, se = spec.get("cv_accuracy"), spec.get("cv_se")
    if acc is None or se is None or np.isnan(acc) or np.isnan(se):
        return False, "has no cross-validated accuracy saved"
    cv = f"ranks the training labels at {acc:.3f} +- {se:.3f}, cross-validated"
    if not informative(acc, se, z):
        return False, f"{cv}, not above chance"
    model, probe, n = spec.get("model_accuracy"), spec.get("accuracy"), spec.get("eval_pairs")
    if model is None or probe is None or not n or np.isnan(model) or np.isnan(probe):
        return True, f"{cv}, above chance"
    held = f"{probe:.3f} on {int(n)} held-out pairs against the model's {model:.3f}"
    gaps = spec.get("held_out_gaps") or {}
    if len(gaps.get("model") or ()) and len(gaps["model"]) == len(gaps.get("probe") or ()):
        ahead, p, differ = paired_sign_test(gaps["model"], gaps["probe"])
        test = f"sign test on the {differ} pairs they order differently, p = {p:.3f}"
    else:
        ahead, p = clearly_ahead(model, probe, n)
        test = f"sign test p = {p:.3f}"
    if ahead:
        return False, f"{cv}, above chance, but {held}: clearly behind ({test})"
    strict = len(gaps.get("model") or ()) or int(n)
    ahead, stat = ahead_of_cross_validation(model, strict, acc, se, z)
    if ahead:
        return False, (
            f"{cv}, above chance, but the model's {model:.3f} on {strict} held-out pairs is "
            f"clearly above that (z = {stat:.2f})"
        )
    return True, f"{cv}, above chance, and {held}: not clearly behind"
