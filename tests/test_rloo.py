"""RLOO: its math against hand-computed numbers, then the update inside the scaffold on the toy
task of tests/test_ppo_train.py (a known optimum), exact resume, and no critic anywhere."""

from __future__ import annotations

import math

import pytest
import test_ppo_train as toy
import torch

from rankloop.ppo.core import rloo_advantages, rloo_policy_loss
from rankloop.ppo.train import train_rloo
from rankloop.settings import ConfigError

D = torch.float64
PROMPTS, cfg, count_reward = toy.PROMPTS, toy.cfg, toy.count_reward
peaked_lm = toy.peaked_lm  # the toy task's policy (a module-scoped fixture)


def test_rloo_advantages_by_hand():
    # prompt 1: rewards 1 2 3 6 (sum 12): 1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3
    # prompt 2: rewards 0 0 4 0 (sum 4): 0 - 4/3, 0 - 4/3, 4 - 0, 0 - 4/3
    r = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 4.0, 0.0], dtype=D)
    a = rloo_advantages(r, 4)
    want = [-8 / 3, -4 / 3, 0.0, 4.0, -4 / 3, -4 / 3, 4.0, -4 / 3]
    assert a.tolist() == pytest.approx(want, abs=1e-12)
    assert a.view(2, 4).sum(-1).tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    # k = 2: each sample's baseline is the other one
    assert rloo_advantages(torch.tensor([1.0, 3.0], dtype=D), 2).tolist() == [-2.0, 2.0]
    # the closed form k/(k-1) * (R - mean)
    assert a[:4].tolist() == pytest.approx(((r[:4] - 3.0) * 4 / 3).tolist(), abs=1e-12)


def test_rloo_advantages_refuse_what_has_no_baseline():
    with pytest.raises(ValueError, match="at least 2 samples"):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="not groups of k = 4"):
        rloo_advantages(torch.zeros(6), 4)


def test_rloo_policy_loss_by_hand():
    """Two sequences, the second with a padded last token holding garbage. Both have the
    sequence log-ratio 0.3; the first (A = +1) is clipped at 1.2, the second (A = -1) not."""
    old = torch.zeros(2, 2, dtype=D)
    new = torch.tensor([[0.1, 0.2], [0.3, float("nan")]], dtype=D)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0], dtype=D)
    loss, stats = rloo_policy_loss(new, old, adv, mask, 0.2)
    r = math.exp(0.3)  # 1.3499
    assert float(loss) == pytest.approx((-1.2 + r) / 2, abs=1e-12)
    assert float(stats["policy/clipfrac"]) == 0.5
    assert float(stats["policy/approxkl"]) == pytest.approx(0.5 * 0.09, abs=1e-12)
    assert float(stats["policy/ratio_mean"]) == pytest.approx(r, abs=1e-12)


def test_rloo_policy_loss_on_policy_is_reinforce():
    """At ratio 1 the gradient is -A_i / B on every real token of sequence i, 0 on padding."""
    new = torch.zeros(2, 3, dtype=D, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    loss, stats = rloo_policy_loss(
        new, torch.zeros(2, 3, dtype=D), torch.tensor([2.0, -1.0], dtype=D), mask, 0.2
    )
    loss.backward()
    assert new.grad.tolist() == [[-1.0, -1.0, -1.0], [0.5, 0.5, 0.0]]
    assert float(stats["policy/clipfrac"]) == 0.0 and float(stats["policy/approxkl"]) == 0.0


def rloo_cfg(**kw):
    return cfg(**{"batch_size": 4, "mini_batch_size": 4, "rloo_k": 4, "ppo_epochs": 1, **kw})


def run(config, lm, target, out, **kw):
    return toy.run(config, lm, target, out, train=train_rloo, **kw)


def test_rloo_raises_the_known_reward_without_a_critic(peaked_lm, tmp_path):
    """The toy reward counts a token the start policy emits a few percent of the time: RLOO's
    score rises well above its start, with a bounded KL, and no critic is built or saved."""
    lm, target = peaked_lm
    res = run(rloo_cfg(steps=10, lr=1e-2), lm, target, tmp_path / "policy")
    scores = [r["objective/scores"] for r in res.history]
    kls = [r["objective/kl"] for r in res.history]
    assert len(res.history) == 10 and res.optimizer == "rloo"
    assert sum(scores[:2]) / 2 < 1.5
    assert sum(scores[-3:]) / 3 > sum(scores[:2]) / 2 + 1.5
    assert kls[0] == pytest.approx(0.0, abs=1e-4)  # the fresh adapter is the reference
    assert max(kls) < 20.0
    for r in res.history:
        # one epoch, one mini-batch: on-policy, ratio 1, REINFORCE
        assert r["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-4)
        assert r["policy/clipfrac"] == 0.0
        # a prompt's leave-one-out advantages sum to 0; whitening rescales them to std 1
        assert r["policy/advantages_mean"] == pytest.approx(0.0, abs=1e-5)
        assert r["policy/advantages_std"] == pytest.approx(1.0, abs=1e-3)
        assert r["time/step"] == pytest.approx(
            sum(r[f"time/{p}"] for p in ("rollout", "score", "reference", "update"))
        )
        assert not any(k.startswith("val/") for k in r)
    toy.assert_critic_free(res, tmp_path / "policy", "none (leave-one-out baseline)")
    assert res.summary["ppo/score_last"] > res.summary["ppo/score_first"]


def test_rloo_samples_k_responses_per_prompt(peaked_lm, tmp_path):
    """Each step sees batch_size prompts x rloo_k responses, a prompt's k side by side."""
    lm, target = peaked_lm
    seen = []

    def reward(prompts, responses):
        seen.append([p.text for p in prompts])
        return count_reward(target)(prompts, responses)

    train_rloo(
        rloo_cfg(steps=1, batch_size=2, mini_batch_size=2, rloo_k=3),
        policy=str(lm),
        prompts=PROMPTS,
        reward_fn=reward,
        out_dir=tmp_path / "p",
        progress=False,
        log=None,
    )
    (texts,) = seen
    assert len(texts) == 6
    assert texts[0] == texts[1] == texts[2] != texts[3] == texts[4] == texts[5]


def test_rloo_resume_continues_exactly(peaked_lm, tmp_path):
    """Killed after step 2 (its checkpoint written) and resumed: step 3, the evaluations and
    the saved tensors equal the uninterrupted run's, with the adaptive KL and several epochs."""
    lm, target = peaked_lm
    levers = {
        **toy.RESUME_LEVERS,
        "ppo_epochs": 2,
        "mini_batch_size": 2,  # two mini-batches of 2 prompts x 4 responses
    }
    _, state = toy.check_resume(
        lambda steps: rloo_cfg(steps=steps, **levers), lm, target, tmp_path, train=train_rloo
    )
    assert state["critic"] is None and state["optimizer_name"] == "rloo"


def test_resume_with_another_optimizer_is_a_clear_error(peaked_lm, tmp_path):
    from rankloop.ppo.train import train_ppo

    lm, target = peaked_lm
    run(rloo_cfg(steps=1), lm, target, tmp_path / "p")
    with pytest.raises(ValueError, match="written by rloo, not ppo"):
        train_ppo(
            cfg(steps=2),
            policy=str(lm),
            prompts=PROMPTS,
            reward_fn=count_reward(target),
            out_dir=tmp_path / "p",
            progress=False,
            log=None,
            resume=True,
        )


@pytest.mark.parametrize(("field", "value"), [("value_pretrain_steps", 2), ("ptx_coef", 0.1)])
def test_rloo_refuses_ppo_only_settings(peaked_lm, tmp_path, field, value):
    lm, target = peaked_lm
    extra = {"ptx_dataset": "x.txt"} if field == "ptx_coef" else {}
    with pytest.raises(ConfigError, match=f"{field} = .*not used by rloo"):
        run(rloo_cfg(**{field: value}, **extra), lm, target, tmp_path / "p")


def test_reference_pass_and_update_run_each_prompt_once(peaked_lm, tmp_path, monkeypatch):
    """With k samples per prompt, the reference pass and the update run a prompt once for its
    k rows (`lm.prefix.SharedPrefixCache`): the decoder's first block sees the prompts' calls
    (P rows) and the responses' (P * k rows of max_new_tokens)."""
    from rankloop.lm.blocks import decoder_layers
    from rankloop.lm.prefix import SharedPrefixCache
    from rankloop.ppo import actor_critic

    lm, target = peaked_lm
    seen: list[tuple[int, int]] = []  # (rows, tokens) of the shared-prompt calls of block 0
    real_init = actor_critic.Actor.__init__

    def record(_module, args, kwargs):
        if isinstance(kwargs.get("cache"), SharedPrefixCache):
            seen.append(tuple(args[0].shape[:2]))

    def init(self, lm_, value_head):
        real_init(self, lm_, value_head)
        decoder_layers(lm_)[0].register_forward_pre_hook(record, with_kwargs=True)

    monkeypatch.setattr(actor_critic.Actor, "__init__", init)
    config = toy.cfg(steps=1, rloo_k=2, batch_size=4, mini_batch_size=2, ppo_epochs=1)
    toy.run(config, lm, target, tmp_path / "r", train=train_rloo)
    T = config.max_new_tokens
    # reference pass in chunks of 2 prompts x 2 samples (policy, then the reference), then the
    # update's 2 mini-batches of 2 prompts: each a prompts' call and a responses' call
    responses = [s for s in seen if s == (4, T)]
    prompts = [s for s in seen if s[0] == 2 and s[1] != T]
    assert len(responses) == 6 and len(prompts) == 6, seen
