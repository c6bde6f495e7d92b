"""Reward-model evaluation metrics: plain tensors or arrays in, Python floats out.

Inputs may be torch tensors (any device, any float dtype; they are detached and copied to
CPU float64), numpy arrays, or sequences. A metric over an empty set of rows (e.g. accuracy
on a batch of ties only) returns float('nan') rather than raising, so a round with no such
rows still logs. See docs/reward-losses.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Verdict",
    "baseline_verdict",
    "best_achievable_accuracy",
    "expected_calibration_error",
    "mean_margin",
    "pairwise_accuracy",
    "tie_aware_accuracy",
]


def _np(x, name: str) -> np.ndarray:
    """A 1-D float64 numpy array from a tensor / array / sequence."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def _ties(tie, n: int) -> np.ndarray:
    """A 1-D bool array (all False when `tie` is None)."""
    if tie is None:
        return np.zeros(n, dtype=bool)
    if isinstance(tie, torch.Tensor):
        tie = tie.detach().cpu().numpy()
    t = np.asarray(tie).astype(bool)
    if t.shape != (n,):
        raise ValueError(f"tie must have shape ({n},), got {t.shape}")
    return t


def _pair(r_chosen, r_rejected, tie):
    c = _np(r_chosen, "r_chosen")
    r = _np(r_rejected, "r_rejected")
    if c.shape != r.shape:
        raise ValueError(f"r_chosen and r_rejected differ in shape: {c.shape} vs {r.shape}")
    return c, r, _ties(tie, c.shape[0])


def pairwise_accuracy(r_chosen, r_rejected, tie=None) -> float:
    """Fraction of non-tie pairs with r_chosen > r_rejected (strictly; equal rewards count as
    wrong). Tie rows are excluded; NaN when there is no non-tie row.

    Args: r_chosen, r_rejected: (N,) rewards; tie: (N,) bool or None (no ties).
    """
    c, r, t = _pair(r_chosen, r_rejected, tie)
    keep = ~t
    if not keep.any():
        return float("nan")
    return float(np.mean(c[keep] > r[keep]))


def tie_aware_accuracy(r_chosen, r_rejected, tie, threshold: float) -> float:
    """Three-way accuracy over all pairs, ties included.

    The prediction for a pair with d = r_chosen - r_rejected is "tie" if |d| <= threshold,
    "chosen wins" if d > threshold and "rejected wins" if d < -threshold; it is correct when it
    equals the observed outcome ("tie" for tie rows, "chosen wins" otherwise). threshold = 0
    predicts a tie only for exactly equal rewards (then this is `pairwise_accuracy` with every
    tie row counted wrong unless d == 0). A natural threshold is the Rao-Kupper eps, or the
    |d| at which a tie model's P(tie) equals P(win). NaN for an empty input.
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    c, r, t = _pair(r_chosen, r_rejected, tie)
    if c.size == 0:
        return float("nan")
    d = c - r
    pred_tie = np.abs(d) <= threshold
    correct = np.where(t, pred_tie, (~pred_tie) & (d > 0))
    return float(np.mean(correct))


def mean_margin(r_chosen, r_rejected, tie=None) -> float:
    """Mean of r_chosen - r_rejected over non-tie pairs; NaN when there is none."""
    c, r, t = _pair(r_chosen, r_rejected, tie)
    keep = ~t
    if not keep.any():
        return float("nan")
    return float(np.mean(c[keep] - r[keep]))


def expected_calibration_error(probs, outcomes, n_bins: int = 10) -> float:
    """Expected calibration error with equal-width bins (Guo et al. 2017, "On Calibration of
    Modern Neural Networks", ICML, eq. 3):

        ECE = sum_b |B_b| / n * | mean(outcomes in B_b) - mean(probs in B_b) |,

    bins B_b = ((b-1)/M, b/M] for b = 1..M (p = 0 goes to the first bin), empty bins skipped.

    Here `probs` is a predicted probability of an event, e.g. P(chosen wins) =
    sigma(r_c - r_r), and `outcomes` the observed 0/1 of that event. Caution: if "chosen" is
    always the annotator's winner, every outcome is 1 and ECE only measures under-confidence;
    present each pair in a random orientation (or both orientations, p with 1 and 1 - p with 0)
    to measure calibration. NaN for an empty input.
    """
    p = _np(probs, "probs")
    y = _np(outcomes, "outcomes")
    if p.shape != y.shape:
        raise ValueError(f"probs and outcomes differ in shape: {p.shape} vs {y.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if p.size == 0:
        return float("nan")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("probs must lie in [0, 1]")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("outcomes must be 0 or 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" on the inner edges: p in (edge[b-1], edge[b]] -> bin b-1, and p = 0 -> bin 0
    idx = np.searchsorted(edges[1:-1], p, side="left")
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    nz = count > 0
    gap = np.abs(sum_y[nz] - sum_p[nz])  # = count_b * |acc_b - conf_b|
    return float(gap.sum() / p.size)


def best_achievable_accuracy(true_diffs) -> float:
    """Bayes-optimal pairwise accuracy on simulated Bradley-Terry preferences.

    If a pair's label is drawn with P(first wins) = sigma(d) for a true reward difference d, no
    predictor beats always picking the side with the higher true reward, which is right with
    probability sigma(|d|). So the best expected accuracy is mean(sigma(|d|)): 0.5 for d = 0,
    -> 1 as |d| grows. A trained reward model's held-out accuracy should approach, not exceed
    (beyond noise), this number.
    """
    d = np.abs(_np(true_diffs, "true_diffs"))
    if d.size == 0:
        return float("nan")
    # sigma(|d|) = 1 / (1 + exp(-|d|)): exp of a non-positive number, no overflow
    return float(np.mean(1.0 / (1.0 + np.exp(-d))))


MIN_PAIRS_TO_STOP = 30
"""Held-out pairs below which `baseline_verdict` never says 'lost': with fewer the standard
error of an accuracy is above 0.09 (0.25 at 4 pairs) and one split's luck decides."""


@dataclass(frozen=True)
class Verdict:
    """Whether a reward model is good enough to optimise: `baseline_verdict`'s answer."""

    level: str
    """'ok' (it beats its baseline, or ties it at the ceiling of 1.000), 'weak' (it does not beat
    it, or nothing shows either way), or 'lost' (it is below its baseline by more than the
    held-out standard error: the policy stage must not optimise it unasked)."""
    message: str | None
    """Why it is not 'ok' (None when it is), one sentence without a final period."""
    baseline: float = float("nan")
    """The baseline's held-out accuracy: the frozen-feature probe's, else chance (0.5)."""
    standard_error: float = float("nan")
    """sqrt(p (1 - p) / n) at p = the mean of the two accuracies, n held-out pairs."""


def baseline_verdict(m: dict) -> Verdict:
    """Is the reward model good enough? The one rule that `rankloop train-reward`'s summary and
    the round (`app/rounds.py`) both apply, from a training run's metrics:

    * the baseline is the frozen-feature probe on the same held-out pairs
      (`reward/probe_accuracy`), else chance (0.5);
    * 'ok' when the held-out accuracy `reward/accuracy` beats the baseline, or when both are
      1.000 (a tie at the ceiling says nothing against the model);
    * 'lost' when the baseline is ahead by more than one standard error of an accuracy on the
      n = `reward/eval_pairs` held-out pairs, SE = sqrt(p (1 - p) / n) at p = the mean of the
      two accuracies (36 pairs at p = 0.5: SE = 0.083), by more than one pair (1 / n), and
      n >= MIN_PAIRS_TO_STOP (30). Less than that is within the noise of the split: 'weak'
      (near the ceiling the SE shrinks below one pair: 399 of 400 against 400 of 400 is
      SE 0.0018, yet one pair decides nothing);
    * 'weak' also when there is no held-out accuracy at all.
    """
    acc = m.get("reward/accuracy")
    if acc is None or math.isnan(acc):
        return Verdict(
            "weak",
            "the reward model has no held-out accuracy (no held-out split): nothing shows "
            "that it learned the labels; set [reward] eval_fraction > 0",
        )
    base = m.get("reward/probe_accuracy")
    name = "a linear probe on frozen features"
    if base is None or math.isnan(base):
        base, name = 0.5, "chance"
    n = m.get("reward/eval_pairs") or 0
    p = (acc + base) / 2
    se = math.sqrt(p * (1 - p) / n) if n else float("nan")
    if acc > base or min(acc, base) >= 1.0 - 1e-9:  # both perfect (float noise aside)
        return Verdict("ok", None, base, se)
    on = f" on {int(n)} held-out pairs" if n else ""
    lost = n >= MIN_PAIRS_TO_STOP and base - acc > max(se, 1.0 / n + 1e-9)
    why = (
        f"the reward model's held-out accuracy {acc:.3f} "
        f"{'loses to' if lost else 'does not beat'} its baseline ({name}: {base:.3f}){on}"
    )
    if lost:
        why += f", by more than the standard error {se:.3f}"
    return Verdict("lost" if lost else "weak", why, base, se)
