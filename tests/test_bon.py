"""Best-of-n: the selection and the supervised loss against hand-computed numbers, the update
inside the scaffold on the toy task of tests/test_ppo_train.py (a known optimum), the margin
rule, exact resume, and best-of-n at inference on a reward whose best is known."""

from __future__ import annotations

import math

import pytest
import test_ppo_train as toy
import torch

from rankloop.ppo.best_of_n import best_of_n, scored_samples
from rankloop.ppo.config import PPOConfig
from rankloop.ppo.core import bon_select, sft_loss
from rankloop.ppo.train import train_bon
from rankloop.settings import ConfigError

D = torch.float64
PROMPTS, cfg, count_reward = toy.PROMPTS, toy.cfg, toy.count_reward
peaked_lm = toy.peaked_lm  # the toy task's policy (a module-scoped fixture)


def test_bon_select_by_hand():
    # prompt 0: 1 4 1 -> best row 1, gap 4 - 1 = 3
    # prompt 1: 2 2 2 -> gap 0: teaches nothing, never kept
    # prompt 2: 0 1 2 -> best row 8, gap 2 - 0.5 = 1.5
    # all nine: mean 5/3, squared deviations sum to 10, sample std sqrt(10 / 8) = 1.118
    r = torch.tensor([1.0, 4.0, 1.0, 2.0, 2.0, 2.0, 0.0, 1.0, 2.0], dtype=D)
    assert float(r.std()) == pytest.approx(math.sqrt(1.25), abs=1e-12)
    assert bon_select(r, 3, 0.5).tolist() == [1, 8]  # both gaps >= 0.559
    assert bon_select(r, 3, 1.5 / math.sqrt(1.25)).tolist() == [1, 8]  # 1.5 >= 1.5: kept
    assert bon_select(r, 3, 2.0).tolist() == [1]  # 1.5 < 2.236 <= 3
    assert bon_select(r, 3, 3.0).tolist() == []  # 3 < 3.354
    assert bon_select(r, 3, 0.0).tolist() == [1, 8]  # no margin: still no tied prompt
    # a tie for the best keeps the first; its gap counts the other tied sample: 3 - 1.5,
    # against a std of sqrt((1 + 1 + 4) / 2) = 1.732
    tied = torch.tensor([3.0, 3.0, 0.0], dtype=D)
    assert bon_select(tied, 3, 0.5).tolist() == [0]
    assert bon_select(tied, 3, 1.0).tolist() == []
    # every sample alike: std 0, every gap 0, nothing kept even at margin 0
    assert bon_select(torch.full((4,), 2.0, dtype=D), 2, 0.0).tolist() == []


def test_bon_select_refuses_what_has_no_others():
    with pytest.raises(ValueError, match="at least 2 samples"):
        bon_select(torch.zeros(4), 1, 0.5)
    with pytest.raises(ValueError, match="not groups of n = 4"):
        bon_select(torch.zeros(6), 4, 0.5)


def test_sft_loss_by_hand():
    """Mean NLL over the real tokens (three of them); the padded one holds garbage and gets no
    gradient; each real token's gradient is -1/3."""
    logprobs = torch.tensor([[-1.0, -2.0], [-3.0, float("nan")]], dtype=D, requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    loss, stats = sft_loss(logprobs, mask)
    assert float(loss.detach()) == pytest.approx(2.0, abs=1e-12)
    assert float(stats["policy/sft_loss"]) == pytest.approx(2.0, abs=1e-12)
    loss.backward()
    assert logprobs.grad.flatten().tolist() == pytest.approx(
        [-1 / 3, -1 / 3, -1 / 3, 0.0], abs=1e-12
    )
    # nothing kept in a mini-batch: loss 0, no nan
    empty, _ = sft_loss(torch.full((1, 2), -5.0, dtype=D), torch.zeros(1, 2, dtype=torch.bool))
    assert float(empty) == 0.0


def bon_cfg(**kw):
    return cfg(**{"batch_size": 4, "mini_batch_size": 4, "bon_n": 4, "ppo_epochs": 1, **kw})


def run(config, lm, target, out, **kw):
    return toy.run(config, lm, target, out, train=train_bon, **kw)


def test_bon_raises_the_known_reward_without_a_critic(peaked_lm, tmp_path):
    """The toy reward counts a token the start policy emits a few percent of the time: fine-
    tuning on the best of 4 samples raises the score well above its start, with a bounded KL,
    and no critic is built or saved."""
    lm, target = peaked_lm
    res = run(bon_cfg(steps=10, lr=1e-2, ppo_epochs=2), lm, target, tmp_path / "policy")
    scores = [r["objective/scores"] for r in res.history]
    kls = [r["objective/kl"] for r in res.history]
    assert len(res.history) == 10 and res.optimizer == "bon"
    assert sum(scores[:2]) / 2 < 1.5
    assert sum(scores[-3:]) / 3 > sum(scores[:2]) / 2 + 1.5
    assert kls[0] == pytest.approx(0.0, abs=1e-4)  # the fresh adapter is the reference
    assert max(kls) < 20.0
    for r in res.history:
        assert 0.0 < r["policy/kept_fraction"] <= 1.0  # in quarters: 4 prompts a step
        assert r["policy/kept_fraction"] * 4 == pytest.approx(round(r["policy/kept_fraction"] * 4))
        assert r["policy/sft_loss"] > 0.0 and r["policy/epochs"] == 2.0
        assert not any(k.startswith("val/") for k in r)
    toy.assert_critic_free(res, tmp_path / "policy", "none (supervised on the best of n)")
    assert res.summary["ppo/score_last"] > res.summary["ppo/score_first"]


def test_bon_trains_on_the_prompts_best_sample_when_it_clears_the_margin(peaked_lm, tmp_path):
    """Step 1 (KL 0, so the shaped reward is the score): the kept fraction and the kept reward
    are bon_select's on the scores the reward gave; one epoch of one mini-batch starts on the
    rollout's policy, so its approximate KL is 0."""
    lm, target = peaked_lm
    seen = []

    def reward(prompts, responses):
        scores = count_reward(target)(prompts, responses)
        seen.append(scores)
        return scores

    res = train_bon(
        bon_cfg(steps=1, bon_n=3, bon_margin=0.3, max_new_tokens=16),
        policy=str(lm),
        prompts=PROMPTS,
        reward_fn=reward,
        out_dir=tmp_path / "p",
        progress=False,
        log=None,
    )
    (scores,) = seen
    assert scores.shape == (12,)  # 4 prompts x 3 samples
    kept = bon_select(scores, 3, 0.3)
    assert len(kept) > 0  # the toy task gives the rule something to keep
    (row,) = res.history
    assert row["policy/kept_fraction"] == len(kept) / 4
    assert row["policy/kept_reward"] == pytest.approx(float(scores[kept].mean()), abs=1e-5)
    assert row["policy/rewards_std"] == pytest.approx(float(scores.std()), abs=1e-5)
    assert row["policy/approxkl"] == pytest.approx(0.0, abs=1e-6)


def test_a_margin_nothing_clears_keeps_nothing_and_moves_nothing(peaked_lm, tmp_path):
    """No sample beats its prompt's others by 100 standard deviations: no supervised step,
    so the policy stays the reference (KL exactly 0) and the stats say why."""
    lm, target = peaked_lm
    res = run(bon_cfg(steps=3, bon_margin=100.0), lm, target, tmp_path / "p")
    for r in res.history:
        assert r["policy/kept_fraction"] == 0.0 and r["policy/epochs"] == 0.0
        assert r["policy/sft_loss"] == 0.0 and r["policy/kept_reward"] == 0.0
        assert r["objective/kl"] == pytest.approx(0.0, abs=1e-6)


def test_bon_resume_continues_exactly(peaked_lm, tmp_path):
    """Killed after step 2 (its checkpoint written) and resumed: step 3, the evaluations and
    the saved tensors equal the uninterrupted run's, with the adaptive KL, several epochs
    and mini-batches of kept samples."""
    lm, target = peaked_lm
    levers = {
        **toy.RESUME_LEVERS,
        "ppo_epochs": 2,
        "mini_batch_size": 2,  # mini-batches of two kept responses
        "bon_margin": 0.0,
    }
    full, state = toy.check_resume(
        lambda steps: bon_cfg(steps=steps, **levers), lm, target, tmp_path, train=train_bon
    )
    assert full.history[2]["policy/kept_fraction"] > 0.5  # the resumed step did train
    assert full.history[2]["policy/epochs"] == 2.0
    assert state["critic"] is None and state["optimizer_name"] == "bon"


@pytest.mark.parametrize(("field", "value"), [("value_pretrain_steps", 2), ("ptx_coef", 0.1)])
def test_bon_refuses_ppo_only_settings(peaked_lm, tmp_path, field, value):
    lm, target = peaked_lm
    extra = {"ptx_dataset": "x.txt"} if field == "ptx_coef" else {}
    with pytest.raises(
        ConfigError, match=f"{field} = .*not used by bon; turn it off \\(0\\) to train with bon"
    ):
        run(bon_cfg(**{field: value}, **extra), lm, target, tmp_path / "p")


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [("bon_n", 1, "must be at least 2"), ("bon_margin", -0.1, "must be >= 0")],
)
def test_bon_settings_are_validated(field, value, what):
    with pytest.raises(ConfigError, match=rf"\[ppo\] {field} = {value}: {what}"):
        PPOConfig(**{field: value}).validate()


def test_best_of_n_at_inference_returns_each_prompts_best_sample(peaked_lm):
    """On the toy reward every sample's score is recorded, so each prompt's best is known:
    best_of_n returns it (the first of ties), in prompt order, and beats the samples' mean."""
    lm, target = peaked_lm
    seen: list[tuple[str, str, float]] = []

    def reward(prompts, responses):
        scores = count_reward(target)(prompts, responses)
        seen.extend(zip([p.text for p in prompts], responses, scores.tolist()))
        return scores

    config = cfg(batch_size=4, max_new_tokens=16)
    got = best_of_n(str(lm), PROMPTS, reward, 4, config, seed=3, device="cpu")
    assert len(seen) == 6 * 4 and len(got) == 6  # two rollouts: 4 prompts, then 2
    for i, p in enumerate(PROMPTS):
        mine = [(t, s) for q, t, s in seen if q == p.text]
        assert len(mine) == 4
        best = max(s for _, s in mine)
        assert got[i] == next((t, s) for t, s in mine if s == best)
    mean_all = sum(s for *_, s in seen) / len(seen)
    mean_best = sum(s for _, s in got) / len(got)
    assert mean_best > mean_all  # on this task the samples differ: the best is above the mean
    # the same seed draws the same samples; n = 1 is plain sampling, never above best-of-4
    assert best_of_n(str(lm), PROMPTS, count_reward(target), 4, config, seed=3) == got
    one = best_of_n(str(lm), PROMPTS, count_reward(target), 1, config, seed=3)
    assert len(one) == 6 and sum(s for _, s in one) / 6 <= mean_best
    # every sample, in sampling order: what the choice was made from
    every = scored_samples(str(lm), PROMPTS, count_reward(target), 4, config, seed=3)
    assert every == [[(t, s) for q, t, s in seen if q == p.text] for p in PROMPTS]
