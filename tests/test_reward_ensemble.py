"""Reward ensembles: the aggregation math by hand, one checkpoint loaded both ways, members."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rankloop.reward.config import RewardConfig
from rankloop.reward.ensemble import CONFIG_KEY, aggregate_scores, bootstrap_weights, gap_spread
from rankloop.reward.model import format_text
from rankloop.reward.pairs import pairwise_example
from rankloop.reward.scoring import RewardScorer
from rankloop.reward.train import train_reward
from rankloop.settings import ConfigError

from simulate import keyword_examples, simulate_pairs

FAST = {"batch_size": 16, "warmup_ratio": 0.0, "eval_fraction": 0.25, "bf16": "no", "compile": "no"}


def test_aggregates_by_hand():
    # row 0: members 1, 2, 3 -> mean 2, population std sqrt(2/3) = 0.8165, min 1
    # row 1: members 4, 4, 4 -> mean 4, std 0, min 4
    members = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]])
    assert aggregate_scores(members, "mean").tolist() == [2.0, 4.0]
    got = aggregate_scores(members, "mean_minus_std", k=2.0)
    torch.testing.assert_close(got, torch.tensor([2.0 - 2 * math.sqrt(2 / 3), 4.0]))
    assert aggregate_scores(members, "min").tolist() == [1.0, 4.0]
    one = torch.tensor([[0.5], [-1.0]])  # one member: every aggregate is that member
    for how in ("mean", "mean_minus_std", "min"):
        assert aggregate_scores(one, how, k=3.0).tolist() == [0.5, -1.0]
    with pytest.raises(ValueError, match="unknown aggregate"):
        aggregate_scores(members, "max")


def test_gap_spread_by_hand():
    # gaps a - b per member: 1, 3 -> population std 1; a shared offset cancels
    assert gap_spread([2.0, 5.0], [1.0, 2.0]) == pytest.approx(1.0)
    assert gap_spread([1.0, 11.0], [0.0, 10.0]) == 0.0


def test_bootstrap_weights_resample_each_member():
    w = bootstrap_weights(50, 4, seed=0)
    assert w.shape == (4, 50) and (w.sum(1) == 50).all()  # n draws each
    assert not (w == w[0]).all()  # members differ
    assert ((w == 0).mean(1) > 0.2).all()  # about 37% of comparisons left out of each
    assert (bootstrap_weights(50, 4, seed=0) == w).all()  # deterministic
    assert (bootstrap_weights(7, 1, seed=3) == np.ones((1, 7))).all()  # one member: the data


def test_config_validates_the_ensemble_fields():
    for bad, match in (
        ({"ensemble": 0}, "ensemble must be at least 1"),
        ({"ensemble_aggregate": "max"}, "ensemble_aggregate must be one of"),
        ({"ensemble_k": -1.0}, "ensemble_k must be >= 0"),
        ({"ensemble": 3, "merge_lora": False}, "needs merge_lora = true"),
    ):
        with pytest.raises(ConfigError, match=match):
            RewardConfig(**bad).validate()


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, tiny_lm_dir):
    """A 3-member LoRA ensemble on simulated keyword preferences, mean - 1 std for the scorer."""
    out = tmp_path_factory.mktemp("ens") / "reward"
    cfg = RewardConfig(
        lora=True,
        lora_r=4,
        lr=1e-2,
        epochs=2,
        ensemble=3,
        ensemble_aggregate="mean_minus_std",
        ensemble_k=1.0,
        **FAST,
    )
    train, held = keyword_examples(120, seed=3), keyword_examples(40, seed=4)
    result = train_reward(train, cfg, out, base=str(tiny_lm_dir), held_out=held, progress=False)
    return result


def test_ensemble_saved_loads_both_ways_with_the_same_mean(ensemble_run):
    from transformers import AutoModelForSequenceClassification, pipeline

    path = ensemble_run.path
    pairs = simulate_pairs(5, seed=11)
    prompts = [p for p, *_ in pairs]
    responses = [a for _, a, *_ in pairs]

    scorer = RewardScorer.from_pretrained(path, bf16="no", batch_size=2)
    assert (scorer.members, scorer.aggregate, scorer.k) == (3, "mean_minus_std", 1.0)
    members = scorer.score_members(prompts, responses)  # (5, 3)
    assert members.shape == (5, 3)
    # the members differ: bootstrap resamples and their own warm starts
    assert (members.std(1) > 1e-3).all()

    # a plain transformers load: a standard one-output head, the members' mean
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert model.config.num_labels == 1 and model.score.out_features == 1
    texts = [format_text(scorer.tokenizer, p, r) for p, r in zip(prompts, responses)]
    with torch.no_grad():
        plain = torch.stack(
            [model(**scorer.tokenizer(t, return_tensors="pt")).logits[0, 0] for t in texts]
        )
    torch.testing.assert_close(plain, members.mean(1), atol=1e-4, rtol=1e-4)
    pipe = pipeline("text-classification", model=str(path), function_to_apply="none")
    piped = torch.tensor([out["score"] for out in pipe(texts)])
    torch.testing.assert_close(piped, members.mean(1), atol=1e-4, rtol=1e-4)

    # rankloop's score is the saved aggregate: mean - 1 * std of the members
    expected = members.mean(1) - members.std(1, correction=0)
    torch.testing.assert_close(scorer.score(prompts, responses), expected)
    # ... and its statistics are the aggregate's on the training responses
    stats = json.loads((path / "reward_stats.json").read_text())
    assert (scorer.mean, scorer.std) == (stats["mean"], stats["std"])
    assert stats["mean"] == pytest.approx(ensemble_run.metrics["reward/mean"])


def test_ensemble_reports_members_and_spread(ensemble_run):
    m = ensemble_run.metrics
    assert m["reward/eval_pairs"] == 40.0
    assert m["reward/members"] == 3.0
    assert m["reward/member_accuracy_min"] <= m["reward/member_accuracy_max"]
    assert m["reward/spread"] > 0
    # the keyword task is learnable: the mean of the members ranks it well
    assert m["reward/accuracy"] >= 0.8
    assert set(ensemble_run.phases) == {"load", "probe", "ensemble", "loop", "scoring", "saving"}


def test_members_are_in_the_config_and_a_single_model_has_none(ensemble_run, tmp_path, tiny_lm_dir):
    cfg_json = json.loads((ensemble_run.path / "config.json").read_text())
    entry = cfg_json[CONFIG_KEY]
    assert entry["members"] == 3 and np.array(entry["weight"]).shape[0] == 3
    single = train_reward(
        keyword_examples(40, seed=5),
        RewardConfig(lora=False, lr=1e-3, epochs=1, **FAST),
        tmp_path / "single",
        base=str(tiny_lm_dir),
        progress=False,
    )
    assert CONFIG_KEY not in json.loads((single.path / "config.json").read_text())
    scorer = RewardScorer.from_pretrained(single.path, bf16="no")
    assert scorer.members == 1
    assert "reward/spread" not in single.metrics and "reward/members" not in single.metrics
    assert set(single.phases) == {"load", "probe", "loop", "scoring", "saving"}


def test_a_scorer_around_a_wrapped_model_still_finds_the_members(ensemble_run):
    """PPO's shared critic hands RewardScorer a wrapper holding the loaded model as `.model`
    (ppo/reward_fns.py): the members come from that model's config all the same."""
    from transformers import AutoModelForSequenceClassification

    from rankloop.reward.model import load_reward_tokenizer

    class Wrapper(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, **kwargs):
            return self.model(**kwargs)

    path = ensemble_run.path
    plain = AutoModelForSequenceClassification.from_pretrained(path)
    wrapped = RewardScorer(Wrapper(plain), load_reward_tokenizer(str(path)), torch.device("cpu"))
    direct = RewardScorer.from_pretrained(path, bf16="no")
    texts = (["a prompt", "another"], ["good words", "the sea"])
    assert wrapped.members == 3 and wrapped.aggregate == "mean_minus_std"
    torch.testing.assert_close(wrapped.score_members(*texts), direct.score_members(*texts))


def test_ensemble_loss_is_the_members_mean_of_their_resampled_losses(tiny_lm_dir):
    """Two comparisons (a > b, c > d), two members. Member 0 drew the first comparison twice and
    the second never: its loss is softplus(-(r_a - r_b)) alone; member 1 drew each once: the
    plain mean. The ensemble's loss is the mean of the two, computed by hand."""
    from rankloop.reward.model import load_reward_tokenizer
    from rankloop.reward.train import batch_loss, collate, encode, ensemble_loss

    tok = load_reward_tokenizer(str(tiny_lm_dir), 64)
    items = encode(tok, [pairwise_example("p", "a", "b"), pairwise_example("q", "c", "d")], 64)
    batch = collate(items, tok.pad_token_id)
    r = torch.tensor([[2.0, 1.0], [1.0, 1.5], [0.5, 0.0], [1.0, 1.0]])  # (S, M): a, b, c, d
    boot = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # (M, E)
    loss, stats = ensemble_loss(RewardConfig(), r, batch, torch.tensor(0.0), boot)
    sp = torch.nn.functional.softplus
    member0 = sp(-torch.tensor(1.0))  # r_a - r_b = 1 on member 0; c > d dropped
    member1 = (sp(-torch.tensor(-0.5)) + sp(-torch.tensor(-1.0))) / 2  # gaps -0.5, -1
    assert float(loss) == pytest.approx(float(member0 + member1) / 2, rel=1e-6)
    # the progress bar's accuracy is over every pair of the batch: member 0 orders 1 of 2
    assert float(stats["reward/accuracy"]) == pytest.approx((0.5 + 0.0) / 2)
    # one member, no resampling: exactly batch_loss
    one, _ = ensemble_loss(RewardConfig(), r[:, :1], batch, torch.tensor(0.0))
    assert torch.equal(one, batch_loss(RewardConfig(), r[:, 0], batch, torch.tensor(0.0))[0])
