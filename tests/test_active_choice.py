"""bench/active_choice.py's choosing rules and table, on hand-made pools (no model)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import active_choice as ac  # bench/ is a script folder, not a package

from rankloop.data.queue import gap_spread


def test_disagreement_is_the_queues_gap_spread():
    gaps = np.array([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 0.5]])  # (P, M)
    got = ac.disagreement(gaps)
    want = [gap_spread(row, np.zeros(3)) for row in gaps]
    np.testing.assert_allclose(got, want)
    assert got[0] == pytest.approx(np.sqrt(2 / 3)) and got[1] == 0.0


def test_uncertainty_takes_the_largest_spread_and_balanced_spreads_over_prompts():
    # pool indices 0-5: prompts p, p, p, q, q, r; prompt r already has one label
    spread = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 1.0])
    prompt_of = ["p", "p", "p", "q", "q", "r"]
    free = [0, 1, 2, 3, 4, 5]
    assert ac.pick_uncertain(spread, free, 3) == [5, 0, 1]
    # balanced: p (0.9) then q (0.3), the prompts without a label, before r's 1.0; then all
    # three have one: r's 1.0 beats p's next 0.8
    held = Counter({"r": 1})
    assert ac.pick_balanced(spread, free, 3, prompt_of, held) == [0, 3, 5]
    assert held == Counter({"r": 1})  # the caller's counts are not changed
    assert ac.pick_balanced(spread, free, 9, prompt_of, held) == [0, 3, 5, 1, 4, 2]


def test_batches_split_the_budget_evenly():
    assert ac.batches(100, 4) == [25, 25, 25, 25]
    assert ac.batches(10, 4) == [3, 3, 2, 2]


def test_table_reports_each_seed_and_the_paired_gain_over_random():
    def row(rule, seed, acc):
        return {
            "task": "format",
            "pairs": 100,
            "final": "probe",
            "rule": rule,
            "seed": seed,
            "accuracy": acc,
            "ceiling": 0.9,
            "against_oracle": 0.1,
            "prompts": 50,
        }

    rows = [row("random", s, a) for s, a in ((0, 0.6), (1, 0.7))]
    rows += [row("balanced", s, a) for s, a in ((1, 0.75), (0, 0.7))]
    lines = ac.table(rows).splitlines()
    assert lines[0] == (
        "| task | pairs | final | ceiling | random | balanced | balanced - random "
        "| against oracle / prompts |"
    )
    assert lines[2] == (
        "| format | 100 | probe | 0.900 | 0.650 ± 0.050 (0.600, 0.700) | 0.725 ± 0.025 "
        "(0.700, 0.750) | +0.075 (n=2) | random 0.10 / 50, balanced 0.10 / 50 |"
    )
    assert lines[3] == "| **all** | 100 | probe | |  |  | +0.075 (n=2) | |"
