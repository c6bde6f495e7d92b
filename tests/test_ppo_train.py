"""The PPO loop on tiny random-weight models: a toy task with a known optimum, exact resume,
value pretraining, RTO wiring, the critic initialised from a reward model, saving, and the
levers that bound the drift (adaptive KL, early stopping on held-out prompts)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rankloop.data.records import Prompt
from rankloop.ppo.config import PPOConfig
from rankloop.ppo.train import train_ppo

from tiny import build_causal_lm, build_tokenizer

PROMPTS = [
    Prompt.from_text(t)
    for t in ("hello", "write a poem", "explain gears", "good or bad", "yes no maybe", "the fox")
]


@pytest.fixture(scope="module")
def peaked_lm(tmp_path_factory) -> tuple[Path, str]:
    """A tiny policy whose next-token distribution is peaked (scaled embeddings), and a target
    token it emits a few percent of the time: the toy task's reward counts that token, so the
    optimum (every token = target) is known and the start is far from it."""
    folder = tmp_path_factory.mktemp("peaked-lm")
    tok = build_tokenizer()
    model = build_causal_lm(tok, seed=1)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(8)  # sharper softmax: p(target) ~ 5%, not 0.3%
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hello"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1], -1)  # (V,)
    target = tok.decode([int(probs.topk(2).indices[1])])  # 2nd most likely: not the optimum yet
    assert 0.01 < float(probs.topk(2).values[1]) < 0.2
    return folder, target


def count_reward(target: str):
    def reward(prompts, responses):
        return torch.tensor([float(r.count(target)) for r in responses])

    return reward


def cfg(**kw) -> PPOConfig:
    """Small runs; the drift levers (adaptive KL, held-out evaluation, the KL budget) are off
    unless a test turns them on, so every other test trains on all prompts with a fixed KL
    coefficient, and a toy policy that moves many nats is stopped by what the test is about."""
    base = {
        "steps": 3,
        "batch_size": 8,
        "mini_batch_size": 4,
        "ppo_epochs": 2,
        "max_new_tokens": 8,
        "lr": 5e-3,
        "critic_lr": 5e-3,
        "kl_coef": 0.01,
        "log_samples": 0,
        "bf16": "no",
        "seed": 0,
        "kl_target": 0.0,
        "eval_every": 0,
        "kl_budget": 0.0,
    }
    base.update(kw)
    return PPOConfig(**base)


def run(config, lm, target, out, train=train_ppo, **kw):
    """One toy-task run of `train` (PPO here; tests/test_rloo.py passes train_rloo)."""
    return train(
        config,
        policy=str(lm),
        prompts=PROMPTS,
        reward_fn=count_reward(target),
        out_dir=out,
        progress=False,
        log=None,
        **kw,
    )


def assert_critic_free(res, folder: Path, origin: str | None = None) -> None:
    """A critic-free optimiser's run built no critic or value head and saved none."""
    assert res.critic is None and res.actor.value_head is None
    if origin is not None:
        assert res.critic_origin == origin
    assert (folder / "adapter_model.safetensors").exists() and not (folder / "critic.pt").exists()


def test_toy_task_reward_rises_and_kl_stays_bounded(peaked_lm, tmp_path):
    lm, target = peaked_lm
    res = run(cfg(steps=10, lr=1e-2, ppo_epochs=4), lm, target, tmp_path / "policy")
    scores = [r["objective/scores"] for r in res.history]
    kls = [r["objective/kl"] for r in res.history]
    assert len(res.history) == 10
    # start: ~0.5 target tokens per 8-token response; after 10 steps several per response
    assert sum(scores[:2]) / 2 < 1.5
    assert sum(scores[-3:]) / 3 > sum(scores[:2]) / 2 + 1.5
    assert kls[0] == pytest.approx(0.0, abs=1e-4)  # the fresh adapter is the reference
    assert max(kls) < 20.0  # 8 tokens: bounded, no blow-up
    for r in res.history:
        assert 0.0 <= r["policy/clipfrac"] <= 1.0 and r["policy/approxkl"] >= 0.0
        assert r["objective/response_length"] <= 8
    assert res.summary["ppo/score_last"] > res.summary["ppo/score_first"]
    for r in res.history:  # the logged metrics hold the relations that define them
        assert r["objective/non_score_reward"] == pytest.approx(
            -0.01 * r["objective/kl"], rel=1e-4, abs=1e-7
        )
        assert r["objective/rlhf_reward"] == pytest.approx(
            r["objective/scores"] + r["objective/non_score_reward"], rel=1e-5, abs=1e-6
        )
        assert r["objective/kl_coef"] == pytest.approx(0.01)  # kl_target = 0: fixed
        assert r["time/step"] == pytest.approx(
            sum(r[f"time/{p}"] for p in ("rollout", "score", "reference", "update"))
        )
        assert r["objective/entropy"] > 0 and r["objective/perplexity"] > 1
        assert r["val/var_explained"] <= 1.0 and r["val/clipfrac"] >= 0.0
        # advantages are whitened over each rollout batch inside the loop
        assert r["policy/advantages_mean"] == pytest.approx(0.0, abs=1e-5)
        assert r["policy/advantages_std"] == pytest.approx(1.0, abs=1e-3)
    assert res.summary["ppo/kl_per_step"] == pytest.approx(kls, abs=1e-5)
    assert res.summary["ppo/kl_final"] == res.summary["ppo/kl_last"] == kls[-1]


def test_whitening_and_value_clipping_act_inside_the_loop(peaked_lm, tmp_path):
    """Scores offset by +10: unwhitened advantages carry the offset; a tiny value clip range
    with a fast critic clips most value updates, and no clip range clips none."""
    lm, target = peaked_lm

    def offset(prompts, responses):
        return count_reward(target)(prompts, responses) + 10.0

    def go(name, **kw):
        return train_ppo(
            cfg(steps=2, critic_lr=5e-2, **kw),
            policy=str(lm),
            prompts=PROMPTS,
            reward_fn=offset,
            out_dir=tmp_path / name,
            progress=False,
            log=None,
        )

    raw = go("raw", whiten_advantages=False, cliprange_value=1e-4)
    white = go("white", whiten_advantages=True, cliprange_value=0.0)
    # the fresh critic predicts ~0, so the first step's raw advantages are ~ the returns (~10)
    assert raw.history[0]["policy/advantages_mean"] > 5.0
    assert white.history[0]["policy/advantages_mean"] == pytest.approx(0.0, abs=1e-5)
    assert white.history[0]["policy/advantages_std"] == pytest.approx(1.0, abs=1e-3)
    assert raw.history[0]["val/clipfrac"] > 0.3  # the clipped loss is the larger one
    assert white.history[0]["val/clipfrac"] == 0.0


RESUME_LEVERS = {
    "checkpoint_every": 1,
    "kl_target": 0.05,
    "kl_horizon": 16.0,
    "eval_every": 1,
    "early_stop_patience": 0,
}
"""What an exact resume must carry: the adaptive KL, an evaluation every step (one held-out
prompt of six), early stopping's state, a checkpoint every step."""


def check_resume(make_cfg, lm, target, tmp_path, train=train_ppo, parts=("actor", "critic")):
    """Run 3 steps; run 2 (as if killed after step 2's checkpoint), then resume to 3: step 3's
    metrics, the evaluations and the saved tensors (`parts` and the best policy) must equal
    the uninterrupted run's. Returns (uninterrupted run, its step-3 state)."""
    full = run(make_cfg(steps=3), lm, target, tmp_path / "a", train=train)
    run(make_cfg(steps=2), lm, target, tmp_path / "b", train=train)
    resumed = run(make_cfg(steps=3), lm, target, tmp_path / "b", train=train, resume=True)
    assert [r["step"] for r in resumed.history] == [1, 2, 3]
    a, b = full.history[2], resumed.history[2]
    for k in a:
        if not k.startswith("time/"):
            assert a[k] == b[k], k
    assert [e["step"] for e in full.evaluations] == [0, 1, 2, 3]
    assert resumed.evaluations == full.evaluations
    assert full.history[1]["objective/kl_coef"] != 0.01  # the controller moved
    sa = torch.load(tmp_path / "a/checkpoints/step-3/state.pt", weights_only=False)
    sb = torch.load(tmp_path / "b/checkpoints/step-3/state.pt", weights_only=False)
    for part in (*parts, "best_actor"):
        if sa[part] is None:
            assert sb[part] is None, part
            continue
        assert sa[part].keys() == sb[part].keys()
        for n in sa[part]:
            assert torch.equal(sa[part][n], sb[part][n]), n
    assert sa["kl_ctl"] == sb["kl_ctl"] and sa["early_stop"] == sb["early_stop"]
    return full, sa


def test_resume_continues_exactly(peaked_lm, tmp_path):
    """A run resumed after step 2 computes what the uninterrupted run did, evaluations
    included."""
    lm, target = peaked_lm
    check_resume(lambda steps: cfg(steps=steps, **RESUME_LEVERS), lm, target, tmp_path)


def test_adaptive_kl_bounds_the_drift_a_reward_pays_for(peaked_lm, tmp_path):
    """The toy reward pays for moving away from the reference. With the fixed coefficient the
    KL keeps growing; with kl_target the coefficient rises with the excess and pulls the
    policy back below the target."""
    lm, target = peaked_lm
    levers = {"steps": 12, "lr": 3e-3, "critic_lr": 1e-2, "ppo_epochs": 4, "kl_coef": 0.05}
    fixed = run(cfg(**levers), lm, target, tmp_path / "fixed")
    adaptive = run(cfg(**levers, kl_target=0.5, kl_horizon=8.0), lm, target, tmp_path / "ada")
    kl_fixed = [r["objective/kl"] for r in fixed.history]
    kl_ada = [r["objective/kl"] for r in adaptive.history]
    assert max(kl_fixed[-5:]) > 2.5  # ~3 nats over the last 5 steps and rising
    assert sum(kl_ada[-5:]) < 0.3 * sum(kl_fixed[-5:])  # ~0.4
    assert max(kl_ada[-5:]) < 1.5
    # each step the coefficient moved by (KL - target) * samples / horizon, floored at kl_coef
    coefs = [r["objective/kl_coef"] for r in adaptive.history]
    for kl, coef, nxt in zip(kl_ada, coefs, coefs[1:]):
        assert nxt == pytest.approx(max(0.05, coef + (kl - 0.5) * 8 / 8.0), rel=1e-5)
    assert max(coefs) > 1.0 and {r["objective/kl_coef"] for r in fixed.history} == {
        fixed.history[0]["objective/kl_coef"]
    }


def test_split_prompts_holds_out_a_seeded_share():
    from rankloop.ppo.train import split_prompts

    train, held = split_prompts(10, cfg(eval_every=5, eval_prompts=16), world=1)
    assert len(held) == 2  # at most a quarter of the prompts
    assert sorted(train + held) == list(range(10)) and not set(train) & set(held)
    assert split_prompts(10, cfg(eval_every=5, eval_prompts=16), world=1) == (train, held)
    assert split_prompts(10, cfg(eval_every=5, eval_prompts=16, seed=1), world=1)[1] != held
    assert len(split_prompts(100, cfg(eval_every=5, eval_prompts=16), world=3)[1]) == 15
    assert split_prompts(10, cfg(eval_every=5), world=3)[1] == []  # too few for 3 shares
    assert split_prompts(10, cfg(eval_every=0), world=1) == (list(range(10)), [])


def test_a_held_out_score_that_falls_for_sure_stops_the_run_and_keeps_the_best(peaked_lm, tmp_path):
    """A reward that pays for the target token on the training prompts and charges for it on
    the held-out ones, as a reward that does not carry over to new prompts: training raises
    the token's share, the held-out score falls by more than `early_stop_drop` standard errors
    of the difference in `early_stop_patience` evaluations in a row, the run stops and saves
    the best evaluated policy, here the start."""
    from rankloop.ppo.train import split_prompts

    lm, target = peaked_lm
    prompts = PROMPTS + [Prompt.from_text(t) for t in ("one more", "and two")]  # 2 held out
    levers = {"steps": 20, "lr": 1e-2, "eval_every": 1, "eval_prompts": 2, "early_stop_patience": 2}
    held = {prompts[i].text for i in split_prompts(len(prompts), cfg(**levers), world=1)[1]}

    def overfit(ps, responses):
        sign = [-1.0 if p.text in held else 1.0 for p in ps]
        return torch.tensor([s * r.count(target) for s, r in zip(sign, responses)])

    said = []
    res = train_ppo(
        cfg(**levers),
        policy=str(lm),
        prompts=prompts,
        reward_fn=overfit,
        out_dir=tmp_path / "best",
        progress=False,
        log=said.append,
    )
    scores = [e["eval/scores"] for e in res.evaluations]
    stopped = int(res.summary["ppo/steps"])
    assert res.summary["ppo/stopped_early"] == 1.0 and stopped < 20
    assert [e["step"] for e in res.evaluations] == list(range(stopped + 1))
    assert max(scores) == scores[0]  # the start is the best held-out score ...
    for e in res.evaluations[-2:]:  # ... and the last two fell below it for sure
        fall = scores[0] - e["eval/scores"]
        assert (
            fall > 2.0 * (res.evaluations[0]["eval/score_se"] ** 2 + e["eval/score_se"] ** 2) ** 0.5
        )
    assert res.summary["ppo/kept_step"] == 0.0 and res.summary["ppo/kl_final"] == 0.0
    assert res.evaluations[-1]["eval/kl"] > 0.01  # the policy did drift, but is not saved
    assert any(f"stopped early after step {stopped}" in m for m in said)
    assert any("keeping the policy of step 0" in m for m in said)
    lora_b = [p for n, p in res.actor.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.detach().abs().max()) == 0.0 for p in lora_b)  # fresh adapter
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "best/adapter_model.safetensors")
    assert all(float(t.abs().max()) == 0.0 for n, t in saved.items() if "lora_B" in n)
    # keep_policy = 'last' saves the policy that drifted; patience 0 never stops
    last = train_ppo(
        cfg(**{**levers, "steps": 3, "early_stop_patience": 0}, keep_policy="last"),
        policy=str(lm),
        prompts=prompts,
        reward_fn=overfit,
        out_dir=tmp_path / "last",
        progress=False,
        log=None,
    )
    assert len(last.history) == 3 and last.summary["ppo/stopped_early"] == 0.0
    assert last.summary["ppo/kept_step"] == 3.0
    assert last.summary["ppo/kl_final"] == last.evaluations[-1]["eval/kl"] > 0.01


@pytest.mark.parametrize("held_out", ["rising", "peaked"])
def test_a_kl_budget_stops_a_run_the_reward_keeps_pushing_and_keeps_the_step_within(
    peaked_lm, tmp_path, held_out
):
    """The training reward counts the target, so nothing but the KL budget stops the run: at
    the first evaluation past kl_budget it stops, and the saved policy is the last one within
    the budget, the same weights as a run that stopped there; a resumed run stays stopped with
    the same choice. "rising": the held-out score counts the target too, so the kept step is
    also the best; "peaked": it peaks at one target a response, so the best is an earlier step
    and the kept weights come from the snapshot of the last step within the budget."""
    from safetensors.torch import load_file

    from rankloop.ppo.train import split_prompts

    lm, target = peaked_lm
    prompts = PROMPTS + [Prompt.from_text(t) for t in ("one more", "and two")]
    levers = {
        "steps": 12,
        "lr": 1e-2,
        "eval_every": 1,
        "eval_prompts": 2,
        "early_stop_patience": 0,
        "early_stop_drop": 100.0,  # no evaluation "fell": the guarded rule keeps the last
        "kl_budget": 2.5,
        "checkpoint_every": 1,
    }
    held = {prompts[i].text for i in split_prompts(len(prompts), cfg(**levers), 1)[1]}

    def reward(batch, responses):
        counts = count_reward(target)(batch, responses)
        if held_out == "rising":
            return counts
        peak = torch.tensor([p.text in held for p in batch])
        return torch.where(peak, -(counts - 1).abs(), counts)

    def go(out: str, log=None, resume=False, **over):
        res = train_ppo(
            cfg(**{**levers, **over}),
            policy=str(lm),
            prompts=prompts,
            reward_fn=reward,
            out_dir=tmp_path / out,
            resume=resume,
            progress=False,
            log=log,
        )
        return res, load_file(tmp_path / out / "adapter_model.safetensors")

    said = []
    res, saved = go("budget", log=said.append)
    kls = [e["eval/kl"] for e in res.evaluations]
    stopped = int(res.summary["ppo/steps"])
    assert stopped < 12 and kls[-1] - kls[0] > 2.5  # stopped at the first one past the budget
    assert all(k - kls[0] <= 2.5 for k in kls[:-1])
    kept = stopped - 1  # every step is evaluated: the last within is the one before
    assert res.summary["ppo/over_kl_budget"] == 1.0 and res.summary["ppo/stopped_early"] == 1.0
    assert res.summary["ppo/kept_step"] == kept and res.summary["ppo/kl_final"] == kls[kept]
    assert any(f"stopped after step {stopped}: the held-out KL" in m for m in said)
    assert any(f"keeping the policy of step {kept}" in m for m in said)
    best = int(res.evaluations[-1]["eval/best_step"])
    assert best == kept if held_out == "rising" else best < kept
    there, same = go("there", steps=kept, kl_budget=0.0)  # the same run, told to stop there
    assert there.summary["ppo/kept_step"] == kept and saved.keys() == same.keys()
    assert all(torch.equal(saved[k], same[k]) for k in saved)
    again, resaved = go("budget", resume=True)
    assert len(again.history) == stopped and again.summary["ppo/kept_step"] == kept
    assert all(torch.equal(saved[k], resaved[k]) for k in saved)


def test_a_reward_the_policy_cannot_move_runs_every_step_and_keeps_the_last(peaked_lm, tmp_path):
    """A reward of the prompt only: the held-out score never rises nor falls, so nothing says
    the policy got worse; the run goes on to its last step and keeps it (the old rule stopped
    here and kept the start, and with a real reward that rule stopped real gains)."""
    lm, _ = peaked_lm

    def flat(prompts, responses):
        return torch.tensor([len(p.text) / 4.0 for p in prompts])

    prompts = PROMPTS + [Prompt.from_text(t) for t in ("one more", "and two")]
    levers = {"steps": 4, "lr": 1e-2, "eval_every": 1, "eval_prompts": 2, "early_stop_patience": 2}
    res = train_ppo(
        cfg(**levers),
        policy=str(lm),
        prompts=prompts,
        reward_fn=flat,
        out_dir=tmp_path / "flat",
        progress=False,
        log=None,
    )
    assert len({e["eval/scores"] for e in res.evaluations}) == 1
    assert res.summary["ppo/stopped_early"] == 0.0 and res.summary["ppo/kept_step"] == 4.0


def test_each_evaluation_scores_eval_samples_responses_per_held_out_prompt(peaked_lm, tmp_path):
    """Two held-out prompts, 5 samples each, in rollouts of batch_size (1) prompts with their
    samples: the reward sees every prompt 5 times, in one rollout each, the samples differ,
    and the evaluation's mean and standard error are those of the 10 scores."""
    lm, _target = peaked_lm
    prompts = PROMPTS + [Prompt.from_text(t) for t in ("one more", "and two")]  # 2 held out
    calls = []

    def length(prompts, responses):
        calls.append((tuple(p.text for p in prompts), tuple(responses)))
        return torch.tensor([float(len(r)) for r in responses])

    res = train_ppo(
        cfg(
            steps=1,
            batch_size=1,
            mini_batch_size=1,
            eval_every=1,
            eval_prompts=2,
            eval_samples=5,
            max_new_tokens=12,
        ),
        policy=str(lm),
        prompts=prompts,
        reward_fn=length,
        out_dir=tmp_path / "p",
        progress=False,
        log=None,
    )
    first = calls[:2]  # the evaluation before training: one rollout per held-out prompt
    assert [len(c[0]) for c in first] == [5, 5]
    assert all(len(set(c[0])) == 1 for c in first)  # a prompt's samples side by side
    asked = [t for c in first for t in c[0]]
    held = sorted(set(asked))
    assert len(held) == 2 and all(asked.count(t) == 5 for t in held)
    responses = [r for c in first for r in c[1]]
    assert len(set(responses)) > 2  # not one response repeated per prompt
    scores = torch.tensor([float(len(r)) for r in responses], dtype=torch.float64)
    ev = res.evaluations[0]
    assert ev["eval/scores"] == pytest.approx(float(scores.mean()))
    assert ev["eval/score_se"] == pytest.approx(float(scores.std() / 10**0.5))
    assert [e["step"] for e in res.evaluations] == [0, 1]


def test_resume_without_checkpoint_is_a_clear_error(peaked_lm, tmp_path):
    lm, target = peaked_lm
    with pytest.raises(ValueError, match="no checkpoint"):
        run(cfg(steps=1), lm, target, tmp_path / "none", resume=True)


def test_value_pretraining_moves_explained_variance_up_and_keeps_policy(peaked_lm, tmp_path):
    lm, _ = peaked_lm

    def by_prompt(prompts, responses):  # learnable from the state: the prompt fixes the return
        return torch.tensor([len(p.text) / 4.0 for p in prompts])

    # no value clipping: the clip caps how far values move per step, slowing pretraining
    res = train_ppo(
        cfg(
            steps=1,
            value_pretrain_steps=8,
            critic_lr=1e-2,
            lam_critic=1.0,
            ppo_epochs=8,
            cliprange_value=0.0,
            max_grad_norm=0.0,
        ),
        policy=str(lm),
        prompts=PROMPTS,
        reward_fn=by_prompt,
        out_dir=tmp_path / "v",
        progress=False,
        log=None,
    )
    ev = [r["val/var_explained"] for r in res.history]
    assert ev[0] == pytest.approx(0.0, abs=1e-6)  # fresh zero head: V = 0 everywhere
    assert sum(ev[6:8]) / 2 > 0.3
    assert res.history[7]["val/error"] < 0.5 * res.history[0]["val/error"]
    # the policy did not move while the critic pretrained: KL to the reference stays 0
    for r in res.history[:8]:
        assert r["objective/kl"] == pytest.approx(0.0, abs=1e-5)
        assert "policy/clipfrac" not in r


def _dpo_adapter(lm: Path, out: Path, perturb: bool) -> Path:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from rankloop.ppo.actor_critic import lora_config

    torch.manual_seed(3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(lm), lora_config(4, 8, 0.0))
    if perturb:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
    model.save_pretrained(out)
    return out


def test_rto_token_rewards_are_wired_in(peaked_lm, tmp_path):
    lm, target = peaked_lm
    # a DPO model identical to the reference gives zero token rewards ...
    same = _dpo_adapter(lm, tmp_path / "dpo-same", perturb=False)
    res = run(
        cfg(steps=1, rto=True, rto_beta=1.0), lm, target, tmp_path / "p1", dpo_model=str(same)
    )
    assert res.history[0]["objective/rto_reward"] == pytest.approx(0.0, abs=1e-6)
    # ... a different one does, and they change the reward the policy sees
    other = _dpo_adapter(lm, tmp_path / "dpo-other", perturb=True)
    res2 = run(
        cfg(steps=1, rto=True, rto_beta=1.0), lm, target, tmp_path / "p2", dpo_model=str(other)
    )
    assert abs(res2.history[0]["objective/rto_reward"]) > 1e-2
    with pytest.raises(ValueError, match="DPO model"):
        run(cfg(steps=1, rto=True), lm, target, tmp_path / "p3")


def _reward_model(lm: Path, out: Path) -> Path:
    """The tiny LM's backbone with a seeded random score head, saved as a reward model."""
    from rankloop.reward.model import load_backbone, load_reward_tokenizer

    tok = load_reward_tokenizer(str(lm))
    torch.manual_seed(7)
    load_backbone(str(lm), tok).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "reward_stats.json").write_text(json.dumps({"mean": 0.5, "std": 2.0}))
    return out


def test_critic_initialised_from_reward_model_matches_its_scores(peaked_lm, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rankloop.ppo.actor_critic import build_critic

    lm, _ = peaked_lm
    rm_dir = _reward_model(lm, tmp_path / "rm")
    tok = AutoTokenizer.from_pretrained(lm)
    critic = build_critic(
        reward_model=str(rm_dir),
        policy_path=str(lm),
        policy_tokenizer=tok,
        r=4,
        alpha=8,
        dropout=0.0,
        dtype=torch.float32,
    )
    assert critic.origin == "reward model"
    ids = torch.tensor([tok("hello there, good dog")["input_ids"]])  # (1, L)
    with torch.no_grad():
        values = critic(ids, torch.ones_like(ids), n_last=ids.shape[1])  # (1, L)
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    with torch.no_grad():
        score = rm(input_ids=ids).logits[0, 0]
    # PPO-max: the critic starts as the reward model's head applied at every token
    assert float(values[0, -1]) == pytest.approx(float(score), abs=1e-5)
    # a reward model with another tokenizer cannot initialise the critic: fresh head instead
    other = build_tokenizer(vocab_size=300)
    fallback = build_critic(
        reward_model=str(rm_dir),
        policy_path=str(lm),
        policy_tokenizer=other,
        r=4,
        alpha=8,
        dropout=0.0,
        dtype=torch.float32,
    )
    assert "tokenizer differs" in fallback.origin


def test_ppo_with_reward_model_scorer_sharing_the_critics_weights(peaked_lm, tmp_path):
    from transformers import AutoTokenizer

    from rankloop.ppo.actor_critic import build_critic
    from rankloop.ppo.reward_fns import ScorerReward
    from rankloop.reward.scoring import RewardScorer

    lm, _ = peaked_lm
    rm_dir = _reward_model(lm, tmp_path / "rm")
    own = ScorerReward(
        RewardScorer.from_pretrained(rm_dir, device="cpu", bf16="no"), normalize=True, clip=5.0
    )
    shared = ScorerReward(path=str(rm_dir), normalize=True, clip=5.0, bf16="no")
    critic = build_critic(
        reward_model=str(rm_dir),
        policy_path=str(lm),
        policy_tokenizer=AutoTokenizer.from_pretrained(lm),
        r=4,
        alpha=8,
        dropout=0.0,
        dtype=torch.float32,
    )
    with torch.no_grad():  # a trained critic adapter must not change the reward
        for n, p in critic.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1.0)
    assert shared.share_critic(critic) and shared.shared
    prompts, responses = PROMPTS[:3], ["good dog", "the quick fox", "no"]
    torch.testing.assert_close(shared(prompts, responses), own(prompts, responses))
    # normalised with reward_stats.json: (s - 0.5) / 2
    raw = own.scorer.score(prompts, responses)
    torch.testing.assert_close(own(prompts, responses), ((raw - 0.5) / 2).clamp(-5, 5))
    res = train_ppo(
        cfg(steps=1),
        policy=str(lm),
        prompts=PROMPTS,
        reward_fn=ScorerReward(path=str(rm_dir), bf16="no"),
        out_dir=tmp_path / "p",
        reward_model=str(rm_dir),
        progress=False,
        log=None,
    )
    assert res.critic_origin == "reward model"
    assert abs(res.history[0]["objective/scores"]) <= 5.0


def test_saved_policy_loads_with_from_pretrained_and_load_causal_lm(peaked_lm, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rankloop.lm.loading import load_causal_lm

    lm, target = peaked_lm
    out = tmp_path / "policy"
    run(cfg(steps=2, lr=2e-2), lm, target, out)
    assert (out / "adapter_config.json").exists() and (out / "critic.pt").exists()
    ids = torch.tensor([[5, 17, 42, 99]])
    merged = load_causal_lm(str(out))  # base + adapter, merged for sampling
    via_peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lm), out).eval()
    via_hf = AutoModelForCausalLM.from_pretrained(out).eval()  # transformers' peft integration
    base = AutoModelForCausalLM.from_pretrained(lm).eval()
    with torch.no_grad():
        a, b, c, d = (m(ids).logits for m in (merged, via_peft, via_hf, base))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(c, b, atol=1e-4, rtol=1e-4)
    assert (a - d).abs().max() > 1e-3  # the policy really changed
    # merge_on_save writes plain full weights that compute what the trained adapter does
    out2 = tmp_path / "merged"
    res = run(cfg(steps=1, lr=2e-2, merge_on_save=True), lm, target, out2)
    assert not (out2 / "adapter_config.json").exists()
    full = AutoModelForCausalLM.from_pretrained(out2).eval()
    with torch.no_grad():
        e, f = full(ids).logits, res.actor.lm(input_ids=ids).logits
    torch.testing.assert_close(e, f, atol=1e-4, rtol=1e-4)
    assert (e - d).abs().max() > 1e-3


def test_critic_lora_on_top_layers_only(peaked_lm, tmp_path):
    from transformers import AutoTokenizer

    from rankloop.ppo.actor_critic import build_critic

    lm, target = peaked_lm
    critic = build_critic(
        reward_model=None,
        policy_path=str(lm),
        policy_tokenizer=AutoTokenizer.from_pretrained(lm),
        r=4,
        alpha=8,
        dropout=0.0,
        dtype=torch.float32,
        top_layers=1,
    )
    trained = [n for n, p in critic.named_parameters() if p.requires_grad]
    lora = [n for n in trained if "lora_" in n]
    assert lora and all(".layers.1." in n for n in lora)  # the tiny model has layers 0 and 1
    assert {"head.weight", "head.bias"} <= set(trained)
    res = run(cfg(steps=1, critic_lora_layers=1), lm, target, tmp_path / "p")
    # the run trained that critic: its top block's adapter and its head left their start
    lora_b = [p for n, p in res.critic.named_parameters() if "lora_B" in n]
    assert lora_b and all(
        ".layers.1." in n for n, _ in res.critic.named_parameters() if "lora_" in n
    )
    assert all(p.abs().max() > 0 for p in lora_b)  # peft starts lora_B at 0
    assert res.critic.head.weight.abs().max() > 0  # the fresh head starts at 0


def test_switches_ptx_entropy_early_stop_adaptive_kl(peaked_lm, tmp_path):
    lm, target = peaked_lm
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog.\nWrite a short poem.\n")
    res = run(
        cfg(
            steps=3,
            ppo_epochs=4,
            ptx_coef=0.5,
            ptx_dataset=str(corpus),
            ptx_batch_size=2,
            entropy_coef=0.01,
            target_approxkl=1e-12,
            kl_target=0.01,
            kl_horizon=100.0,
            kl_coef=0.1,
        ),
        lm,
        target,
        tmp_path / "p",
    )
    first, second, third = res.history
    # PPO-ptx: the LM loss of a random 400-token model on real text is about ln(400) = 6
    assert 3.0 < first["ptx/loss"] < 9.0 and first["ptx/tokens"] > 0
    assert first["policy/entropy"] > 0
    # early stop: the first epoch moves the policy past the (tiny) approx-KL target
    assert first["policy/epochs"] == 1.0
    # adaptive KL: after each step the coefficient moves by (KL - target) * samples / horizon,
    # never below kl_coef (step 1 samples the reference itself: KL 0, the floor holds)
    assert first["objective/kl"] == pytest.approx(0.0, abs=1e-6)
    assert second["objective/kl_coef"] == pytest.approx(0.1)
    assert second["objective/kl"] > 0.01
    assert third["objective/kl_coef"] == pytest.approx(
        0.1 + (second["objective/kl"] - 0.01) * 8 / 100.0, rel=1e-5
    )


def test_missing_tracker_package_is_a_clear_error(peaked_lm, tmp_path, monkeypatch):
    import importlib.util

    lm, target = peaked_lm
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ValueError, match=r"pip install 'rankloop\[wandb\]'"):
        run(cfg(steps=1, log_with="wandb"), lm, target, tmp_path / "p")


def test_critic_with_cached_lower_blocks_matches_the_full_forward(peaked_lm):
    from transformers import AutoTokenizer

    from rankloop.ppo.actor_critic import build_critic

    lm, _ = peaked_lm
    critic = build_critic(
        reward_model=None,
        policy_path=str(lm),
        policy_tokenizer=AutoTokenizer.from_pretrained(lm),
        r=4,
        alpha=8,
        dropout=0.0,
        dtype=torch.float32,
        top_layers=1,
    )
    from rankloop.ppo.actor_critic import decoder_layers, first_adapted_block

    assert first_adapted_block(decoder_layers(critic.backbone)) == 1
    with torch.no_grad():
        for n, p in critic.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    ids = torch.randint(5, 300, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    with torch.no_grad():
        full, lower = critic(ids, mask, n_last=5, keep_lower=True)
    assert lower.shape == (3, 9, 32)
    fast = critic(ids, mask, n_last=5, lower=lower)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    fast.sum().backward()  # gradients reach the top block's adapter and the head only
    grads = {n for n, p in critic.named_parameters() if p.grad is not None}
    assert "head.weight" in grads and any(".layers.1." in n for n in grads)
    # the skipped blocks are back in place afterwards
    torch.testing.assert_close(critic(ids, mask, n_last=5).detach(), full)


def test_policy_lora_on_top_blocks_reuses_the_lower_blocks_exactly(peaked_lm, tmp_path):
    from rankloop.ppo.actor_critic import Actor, decoder_layers, first_adapted_block, load_policy

    lm, target = peaked_lm
    policy = load_policy(str(lm), r=4, alpha=8, dropout=0.0, dtype=torch.float32, top_layers=1)
    assert first_adapted_block(decoder_layers(policy)) == 1
    assert not any("lm_head" in n for n, p in policy.named_parameters() if p.requires_grad)
    actor = Actor(policy, value_head=False)
    with torch.no_grad():
        for n, p in actor.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    ids = torch.randint(5, 300, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        full, _, lower = actor(ids, mask, n_last=4, keep_lower=True)
        with policy.disable_adapter():
            ref_full, _ = actor(ids, mask, n_last=4)
            ref_fast, _ = actor(ids, mask, n_last=4, lower=lower)
    fast, _ = actor(ids, mask, n_last=4, lower=lower)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref_fast, ref_full, atol=1e-5, rtol=1e-5)
    assert (full - ref_full).abs().max() > 1e-3
    res = run(cfg(steps=4, lora_layers=1, lr=1e-2, ppo_epochs=4), lm, target, tmp_path / "p")
    assert res.history[-1]["objective/kl"] > 0.0  # the policy moved


def test_bf16_run_keeps_the_reference_weights_bit_for_bit(peaked_lm, tmp_path):
    """In bf16 every rollout samples with the adapter merged into the base weights; the
    reference (adapter disabled) must come out exactly as loaded, and the run must learn as
    in fp32 (the fp32 attention and peft-input paths of rankloop.lm.kernels run here)."""
    from transformers import AutoModelForCausalLM

    lm, target = peaked_lm
    res = run(cfg(steps=3, bf16="yes"), lm, target, tmp_path / "bf16")
    loaded = AutoModelForCausalLM.from_pretrained(lm, dtype=torch.bfloat16).state_dict()
    base = res.actor.lm.get_base_model()
    adapted = 0
    for name, p in base.named_parameters():
        key = name.replace(".base_layer", "")
        if "lora_" in name:
            continue
        adapted += ".base_layer" in name
        assert torch.equal(p, loaded[key]), name
    assert adapted > 0  # the adapted projections were among those compared
    # the adapter did move (so a merge/unmerge round trip would have rounded them)
    assert any(p.abs().max() > 0 for n, p in base.named_parameters() if "lora_B" in n)
    assert all(torch.isfinite(torch.tensor(h["objective/scores"])) for h in res.history)


@pytest.mark.parametrize("top_layers", [0, 1])
def test_gradient_checkpointing_recomputes_the_adapted_blocks_same_gradients(peaked_lm, top_layers):
    from rankloop.ppo.actor_critic import Actor, decoder_layers, load_policy

    lm, _ = peaked_lm
    policy = load_policy(
        str(lm), r=4, alpha=8, dropout=0.0, dtype=torch.float32, top_layers=top_layers
    )
    actor = Actor(policy, value_head=True)
    with torch.no_grad():
        for n, p in actor.named_parameters():
            if "lora_B" in n or "value_head" in n:
                p.normal_(0, 0.3)
    layers = decoder_layers(policy)
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):  # a pre-hook: the recomputation stops early, mid-block
        layer.register_forward_pre_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))
    ids = torch.randint(5, 300, (2, 7))
    mask = torch.ones_like(ids)

    def grads(checkpoint: bool):
        actor.checkpoint = checkpoint
        calls[:] = [0] * len(layers)
        actor.zero_grad(set_to_none=True)
        logits, values = actor(ids, mask, n_last=4)
        (logits.float().logsumexp(-1).mean() + values.pow(2).mean()).backward()
        return {n: p.grad.clone() for n, p in actor.named_parameters() if p.requires_grad}, calls[:]

    plain, plain_calls = grads(False)
    ckpt, ckpt_calls = grads(True)
    assert plain_calls == [1] * len(layers)
    # each adapted block ran again in the backward; the frozen ones below did not
    split = len(layers) - top_layers if top_layers else 0
    assert ckpt_calls == [1] * split + [2] * (len(layers) - split)
    assert plain.keys() == ckpt.keys() and len(plain) > 2
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-7)
    assert all(isinstance(layer, type(layers[0])) for layer in layers)  # the swap was undone
    with torch.no_grad():  # no gradients: nothing to recompute, nothing swapped
        calls[:] = [0] * len(layers)
        actor(ids, mask, n_last=4)
    assert calls == [1] * len(layers)


@pytest.mark.parametrize("lora_layers", [0, 1])
def test_reference_pass_in_row_chunks_gives_the_same_numbers(peaked_lm, lora_layers):
    """The scaffold runs phase 3 in chunks of the update's mini-batch: every output (log-probs,
    entropy, values, the kept lower blocks) equals the whole batch's (to the last bits of a
    float sum: a matmul may block its sums differently for fewer rows)."""
    from rankloop.lm.loading import load_tokenizer
    from rankloop.lm.sampling import encode_chats
    from rankloop.ppo.actor_critic import Actor, build_critic, load_policy
    from rankloop.ppo.train import reference_pass, rollout

    lm, _ = peaked_lm
    config = cfg(lora_layers=lora_layers, critic_lora_layers=1)
    tok = load_tokenizer(str(lm), padding_side="left")
    policy = load_policy(
        str(lm), r=4, alpha=8, dropout=0.0, dtype=torch.float32, top_layers=lora_layers
    )
    actor = Actor(policy, value_head=False)
    critic = build_critic(
        reward_model=None, policy_path=str(lm), policy_tokenizer=tok, r=4, alpha=8,
        dropout=0.0, dtype=torch.float32, top_layers=1,
    )  # fmt: skip
    with torch.no_grad():
        for n, p in [*actor.named_parameters(), *critic.named_parameters()]:
            if "lora_B" in n or "head" in n:
                p.normal_(0, 0.3)
    queries = encode_chats(tok, [p.as_chat() for p in PROMPTS + PROMPTS[:1]])  # 7 rows
    batch = rollout(actor.lm, tok, queries, config, "cpu", False, seed=3)
    whole = reference_pass(actor, critic, batch, config, "cpu", False, False)
    chunked = reference_pass(actor, critic, batch, config, "cpu", False, False, rows=3)
    for f in ("logprobs", "ref_logprobs", "entropy", "values", "critic_lower"):
        torch.testing.assert_close(getattr(chunked, f), getattr(whole, f), rtol=1e-6, atol=1e-6)
    assert whole.values.shape == batch.response.shape and whole.critic_lower is not None
    if lora_layers:
        torch.testing.assert_close(chunked.policy_lower, whole.policy_lower, rtol=1e-6, atol=1e-6)
    else:
        assert whole.policy_lower is None and chunked.policy_lower is None
    assert whole.token_rewards is None and chunked.token_rewards is None


def test_gradient_checkpointing_run_matches_the_plain_run(peaked_lm, tmp_path):
    lm, target = peaked_lm
    plain = run(cfg(steps=2), lm, target, tmp_path / "a")
    ckpt = run(cfg(steps=2, gradient_checkpointing=True), lm, target, tmp_path / "b")
    assert plain.actor.checkpoint is False and ckpt.actor.checkpoint is True
    assert ckpt.critic.checkpoint is True
    for a, b in zip(plain.history, ckpt.history):
        for key in ("objective/scores", "objective/kl", "policy/approxkl", "val/loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("lora_layers", [0, 1])
def test_update_on_trimmed_mini_batches_sees_the_rollouts_log_probs_and_values(
    peaked_lm, tmp_path, lora_layers
):
    """Prompts of very different lengths share a batch; each mini-batch drops the left padding
    it does not need. With a negligible learning rate the update must see exactly the rollout's
    log-probs (approximate KL ~ 0, ratio 1) and values (none outside a 1e-4 clip range)."""
    lm, target = peaked_lm
    long = " ".join(["explain the gears of a bicycle and why they matter"] * 4)
    prompts = [Prompt.from_text(t) for t in ("hi", long, "ok", "yes", "no", long, "a", "b")]
    rows = []
    res = train_ppo(
        cfg(
            steps=2,
            lr=1e-9,
            critic_lr=1e-9,
            lora_layers=lora_layers,
            cliprange_value=1e-4,
            kl_coef=0.0,
        ),
        policy=str(lm),
        prompts=prompts,
        reward_fn=count_reward(target),
        out_dir=tmp_path / "p",
        progress=False,
        log=None,
        on_step=rows.append,
    )
    assert rows == res.history  # on_step saw every step's metrics
    for r in res.history:
        assert r["policy/approxkl"] < 1e-9
        assert r["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
        assert r["policy/clipfrac"] == 0.0
        assert r["val/clipfrac"] == 0.0


def test_policy_and_critic_reach_accelerate_as_one_model_and_both_train(peaked_lm, tmp_path):
    """DeepSpeed and FSDP2 take one model per `accelerator.prepare` (accelerate raises
    otherwise): PPO hands over the policy and critic as one module with one optimizer, and
    both still train."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    prepared, before = [], {}

    class OneModelPerPrepare(Accelerator):  # accelerate's rule under DeepSpeed and FSDP2
        def prepare(self, *args, **kwargs):
            models = [a for a in args if isinstance(a, torch.nn.Module)]
            assert len(models) <= 1, f"{len(models)} models in one prepare"
            for m in models:
                prepared.append(m)
                before.update(
                    {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
                )
            return super().prepare(*args, **kwargs)

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    lm, target = peaked_lm
    res = run(cfg(steps=1), lm, target, tmp_path / "one", accelerator=OneModelPerPrepare(cpu=True))
    assert len(prepared) == 1
    (model,) = prepared
    assert model.actor is res.actor and model.critic is res.critic
    after = dict(model.named_parameters())
    moved = {n for n, p in before.items() if not torch.equal(p, after[n])}
    assert any(n.startswith("actor.") for n in moved)
    assert any(n.startswith("critic.") for n in moved)


@pytest.mark.parametrize("top_layers, checkpoint", [(0, False), (1, False), (1, True)])
def test_shared_prompt_forward_gives_the_whole_rows_numbers_and_gradients(
    peaked_lm, top_layers, checkpoint
):
    """Rows in runs of 3 samples of one prompt (left-padded prompts of different lengths,
    responses padded after EOS): the forward that runs each prompt once gives the logits, the
    kept lower blocks and the adapters' gradients of the whole rows' forward; rows whose
    prompts differ within a run take the whole-row forward."""
    from rankloop.lm.loading import load_tokenizer
    from rankloop.lm.sampling import encode_chats
    from rankloop.ppo.actor_critic import Actor, decoder_layers, load_policy
    from rankloop.ppo.train import reference_pass, rollout

    lm, _ = peaked_lm
    config = cfg(max_new_tokens=6)
    tok = load_tokenizer(str(lm), padding_side="left")
    policy = load_policy(
        str(lm), r=4, alpha=8, dropout=0.0, dtype=torch.float32, top_layers=top_layers
    )
    actor = Actor(policy, value_head=False)
    actor.checkpoint = checkpoint
    with torch.no_grad():
        for n, p in actor.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    queries = encode_chats(tok, [p.as_chat() for p in PROMPTS[:3] for _ in range(3)])  # (9,)
    batch = rollout(actor.lm, tok, queries, config, "cpu", False, seed=4)
    T = batch.response.shape[1]
    # two responses end early (as after an EOS): padding after them as well as before prompts
    ended = batch.mask.clone()
    ended[1, 2:], ended[5, 4:] = False, False
    pad = torch.full_like(batch.response, tok.pad_token_id)
    response = torch.where(ended, batch.response, pad)
    Q = batch.input_ids.shape[1] - T
    batch = dataclasses.replace(
        batch,
        input_ids=torch.cat([batch.input_ids[:, :Q], response], 1),
        attention_mask=torch.cat([batch.attention_mask[:, :Q], ended.long()], 1),
        response=response,
        mask=ended,
    )
    ids, mask = batch.input_ids, batch.attention_mask
    assert len({len(q) for q in queries}) > 1  # left padding of different widths
    layers = decoder_layers(policy)
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))

    def forward(runs: int):
        calls[:] = [0] * len(layers)
        actor.zero_grad(set_to_none=True)
        logits, _ = actor(ids, mask, n_last=T + 1, runs=runs)
        picked = logits[:, :-1].log_softmax(-1).gather(-1, batch.response[..., None])[..., 0]
        (picked * batch.mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in actor.named_parameters() if p.requires_grad}
        return logits.detach(), grads, calls[:]

    whole, whole_grads, whole_calls = forward(1)
    shared, shared_grads, shared_calls = forward(3)
    torch.testing.assert_close(shared, whole, rtol=1e-5, atol=1e-5)
    assert whole_grads.keys() == shared_grads.keys() and len(whole_grads) > 2
    for n in whole_grads:
        torch.testing.assert_close(shared_grads[n], whole_grads[n], rtol=1e-4, atol=1e-6)
    per_pass = 2 if checkpoint else 1  # an adapted block runs again in the backward
    split = len(layers) - top_layers if top_layers else 0
    assert whole_calls == [1] * split + [per_pass] * (len(layers) - split)
    assert shared_calls == [2] * split + [2 * per_pass] * (len(layers) - split)  # two calls
    mixed = torch.cat([ids[1:], ids[:1]])  # runs that straddle two prompts
    mixed_mask = torch.cat([mask[1:], mask[:1]])
    with torch.no_grad():
        calls[:] = [0] * len(layers)
        actor(mixed, mixed_mask, n_last=T + 1, runs=3)
    assert calls == [1] * len(layers)  # the whole-row forward

    whole_ref = reference_pass(actor, None, batch, config, "cpu", False, False, rows=6)
    shared_ref = reference_pass(actor, None, batch, config, "cpu", False, False, rows=6, runs=3)
    for f in ("logprobs", "ref_logprobs", "entropy"):
        torch.testing.assert_close(
            getattr(shared_ref, f), getattr(whole_ref, f), rtol=1e-5, atol=1e-5
        )
    if top_layers:  # the kept lower blocks, laid out as the whole rows', feed the update
        torch.testing.assert_close(
            shared_ref.policy_lower, whole_ref.policy_lower, rtol=1e-5, atol=1e-5
        )
        with torch.no_grad():
            again, _ = actor(ids, mask, n_last=T + 1, lower=shared_ref.policy_lower, runs=3)
        torch.testing.assert_close(again, whole, rtol=1e-5, atol=1e-5)
