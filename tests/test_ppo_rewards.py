"""Reward sources: a reward model normalised and clipped, Python callables, weighted sums."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from rankloop.data.records import Prompt
from rankloop.ppo.reward_fns import (
    CallableReward,
    ScorerReward,
    WeightedSum,
    load_callable,
    missing_eos_penalty,
    parse_reward_spec,
)
from rankloop.settings import ConfigError

PROMPTS = [Prompt.from_text("a"), Prompt.from_text("b"), Prompt.from_text("c")]


class FakeScorer:
    mean, std = 1.0, 2.0

    def score(self, prompts, responses):
        return torch.tensor([-20.0, 1.0, 4.0])


def test_scorer_reward_normalises_with_saved_stats_and_clips():
    r = ScorerReward(FakeScorer(), normalize=True, clip=1.0)
    # (s - 1) / 2 = [-10.5, 0, 1.5] -> clipped to [-1, 0, 1]
    assert r(PROMPTS, ["x", "y", "z"]).tolist() == [-1.0, 0.0, 1.0]
    r = ScorerReward(FakeScorer(), normalize=True, clip=0.0)  # 0 = no clip
    assert r(PROMPTS, ["x", "y", "z"]).tolist() == [-10.5, 0.0, 1.5]
    r = ScorerReward(FakeScorer(), normalize=False, clip=5.0)
    assert r(PROMPTS, ["x", "y", "z"]).tolist() == [-5.0, 1.0, 4.0]


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent("""
        def length(prompts, responses):
            return [float(len(r)) for r in responses]

        def has_a(prompts, responses):
            return [1.0 if "a" in r else 0.0 for r in responses]

        def wrong_count(prompts, responses):
            return [1.0]

        def not_finite(prompts, responses):
            return [float("nan")] * len(responses)

        CONSTANT = 3
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("my_rewards",):
        sys.modules.pop(name, None)


def test_callable_and_weighted_sum(reward_module):
    responses = ["aaa", "b", "ab"]
    length = load_callable("my_rewards:length")
    assert length(PROMPTS, responses).tolist() == [3.0, 1.0, 2.0]
    total = parse_reward_spec(["my_rewards:length", "-2*my_rewards:has_a"])
    assert isinstance(total, WeightedSum)
    assert total(PROMPTS, responses).tolist() == [1.0, 1.0, 0.0]
    # a file path works too
    by_file = load_callable(f"{reward_module / 'my_rewards.py'}:has_a")
    assert by_file(PROMPTS, responses).tolist() == [1.0, 0.0, 1.0]


def test_bad_reward_specs_are_clear_errors(reward_module):
    with pytest.raises(ConfigError, match="expected module:function"):
        load_callable("my_rewards")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        load_callable("no_such_module:f")
    with pytest.raises(ConfigError, match="has no function 'CONSTANT'"):
        load_callable("my_rewards:CONSTANT")
    with pytest.raises(ConfigError, match="weight before"):
        parse_reward_spec(["x*my_rewards:length"])
    with pytest.raises(ValueError, match="returned 1 scores for 3 responses"):
        load_callable("my_rewards:wrong_count")(PROMPTS, ["a", "b", "c"])
    with pytest.raises(ValueError, match="non-finite"):
        load_callable("my_rewards:not_finite")(PROMPTS, ["a", "b", "c"])


def test_missing_eos_penalty():
    scores = torch.tensor([1.0, 2.0, 3.0])
    finished = torch.tensor([True, False, True])
    assert missing_eos_penalty(scores, finished, 0.5).tolist() == [1.0, 1.5, 3.0]


def test_callable_reward_accepts_tensors_and_lists():
    r = CallableReward(lambda p, x: torch.tensor([[1.0], [2.0], [3.0]]), "t")
    assert r(PROMPTS, ["a", "b", "c"]).shape == (3,)
