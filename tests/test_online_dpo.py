"""Online DPO: its pair selection against hand-computed rows, the labelled pairs' layout, then
the update inside the scaffold on the toy task of tests/test_ppo_train.py (a known optimum),
exact resume, and people's labelled pairs reaching the loss with no reward signal at all."""

from __future__ import annotations

import pytest
import test_ppo_train as toy
import torch

from rankloop.data.records import Preference
from rankloop.ppo.core import best_worst_pairs
from rankloop.ppo.dpo import response_logps
from rankloop.ppo.online_dpo import LabelPairs, pairs_rollout, sequence_logps
from rankloop.ppo.train import train_online_dpo, train_rloo
from rankloop.settings import ConfigError

PROMPTS, cfg, count_reward = toy.PROMPTS, toy.cfg, toy.count_reward
peaked_lm = toy.peaked_lm  # the toy task's policy (a module-scoped fixture)


def test_best_worst_pairs_by_hand():
    # prompt 0: 1 3 2 3 -> best the first 3 (row 1), worst row 0, gap 2: kept
    # prompt 1: all 0 -> rows 4 and 4, gap 0: never kept, even at margin 0
    # prompt 2: 5 4.6 4.8 4.7 -> best row 8, worst row 9, gap 0.4: below the margin 0.5
    s = torch.tensor([1.0, 3.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 5.0, 4.6, 4.8, 4.7])
    chosen, rejected, gap, kept = best_worst_pairs(s, 4, 0.5)
    assert chosen.tolist() == [1, 4, 8]
    assert rejected.tolist() == [0, 4, 9]
    assert gap.tolist() == pytest.approx([2.0, 0.0, 0.4], abs=1e-6)
    assert kept.tolist() == [True, False, False]
    assert best_worst_pairs(s, 4, 0.0)[3].tolist() == [True, False, True]
    assert best_worst_pairs(s, 4, 2.0)[3].tolist() == [True, False, False]  # >= margin
    # k = 2: the pair is the two samples, best first
    c, r, g, k = best_worst_pairs(torch.tensor([0.5, -1.0]), 2, 1.0)
    assert (c.tolist(), r.tolist(), g.tolist(), k.tolist()) == ([0], [1], [1.5], [True])


def test_best_worst_pairs_refuse_what_makes_no_pair():
    with pytest.raises(ValueError, match="at least 2 samples"):
        best_worst_pairs(torch.zeros(4), 1, 0.0)
    with pytest.raises(ValueError, match="not groups of k = 4"):
        best_worst_pairs(torch.zeros(6), 4, 0.0)


def test_labelled_pairs_are_laid_out_as_rollout_rows():
    """Chosen rows first, then rejected: left-padded prompts, right-padded responses, the
    mask over the response tokens only, and summed log-probs that skip padding."""
    pairs = LabelPairs(queries=[[5, 6], [7]], chosen=[[1, 2, 3], [4]], rejected=[[8], [9, 9]])
    b = pairs_rollout(pairs, [1, 0], pad_id=0, device="cpu")
    assert b.input_ids.tolist() == [
        [0, 7, 4, 0, 0],
        [5, 6, 1, 2, 3],
        [0, 7, 9, 9, 0],
        [5, 6, 8, 0, 0],
    ]
    assert b.attention_mask.tolist() == [
        [0, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 0, 0],
    ]
    assert b.response.tolist() == [[4, 0, 0], [1, 2, 3], [9, 9, 0], [8, 0, 0]]
    assert b.mask.int().tolist() == [[1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]]
    logps = torch.tensor([[-1.0, float("nan"), 7.0], [-1.0, -2.0, -3.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    assert sequence_logps(logps, mask).tolist() == [-1.0, -6.0]


def odpo_cfg(**kw):
    base = {
        "batch_size": 4,
        "mini_batch_size": 4,
        "odpo_k": 4,
        "ppo_epochs": 1,
        "odpo_beta": 0.1,
        "odpo_margin": 1.0,
    }
    return cfg(**{**base, **kw})


def run(config, lm, target, out, **kw):
    return toy.run(config, lm, target, out, train=train_online_dpo, **kw)


def test_online_dpo_raises_the_known_reward(peaked_lm, tmp_path):
    """The toy reward counts a token the start policy emits a few percent of the time: DPO on
    each prompt's best-versus-worst pair raises the score well above its start, KL bounded,
    no critic built or saved."""
    lm, target = peaked_lm
    res = run(odpo_cfg(steps=10, lr=1e-2), lm, target, tmp_path / "policy")
    scores = [r["objective/scores"] for r in res.history]
    kls = [r["objective/kl"] for r in res.history]
    assert len(res.history) == 10 and res.optimizer == "odpo"
    assert sum(scores[:2]) / 2 < 1.5
    assert sum(scores[-3:]) / 3 > sum(scores[:2]) / 2 + 1.5
    assert kls[0] == pytest.approx(0.0, abs=1e-4)  # the fresh adapter is the reference
    assert max(kls) < 20.0
    first = res.history[0]  # policy = reference: every implicit reward is 0, loss log 2
    assert first["policy/pairs_kept"] > 0
    assert first["policy/dpo_loss"] == pytest.approx(0.6931472, abs=1e-5)
    assert first["policy/dpo_margin"] == pytest.approx(0.0, abs=1e-6)
    for r in res.history:
        assert 0.0 <= r["policy/pairs_kept"] <= 1.0 and r["policy/label_pairs"] == 0.0
        assert r["policy/score_gap"] >= 0.0
        assert r["time/step"] == pytest.approx(
            sum(r[f"time/{p}"] for p in ("rollout", "score", "reference", "update"))
        )
        assert not any(k.startswith("val/") for k in r)
    assert sum(r["policy/pairs_kept"] for r in res.history) > 0
    toy.assert_critic_free(res, tmp_path / "policy")


def label_pairs(target: str, n: int = 3) -> list[Preference]:
    """People's verdicts on the toy task: the target token repeated beats plain text; one
    tied pair, which DPO must leave out."""
    out = []
    for i in range(n + 1):
        out.append(
            Preference(
                label_id=i,
                comparison_id=i,
                prompt=PROMPTS[i],
                chosen=target * 6,
                rejected="plain words" if i % 2 else "no",
                chosen_id=2 * i,
                rejected_id=2 * i + 1,
                tie=i == n,
                both_bad=False,
                strength=None,
                margin=None,
                annotator="ann",
                round=0,
                source="human",
                pairs_in_label=1,
            )
        )
    return out


def test_labelled_pairs_reach_the_loss_without_any_reward(peaked_lm, tmp_path):
    """A constant reward gives no pair a gap, so every reward-model pair is dropped: what the
    policy learns comes from people's pairs alone. Their chosen response (the target token
    repeated) gains log-probability over the rejected one against the reference, and the
    policy's own samples hold more target tokens than at the start. Dropping the labels
    leaves the adapter exactly where it started."""
    lm, target = peaked_lm
    counts = []

    def constant(prompts, responses):
        counts.append(sum(r.count(target) for r in responses) / len(responses))
        return torch.zeros(len(responses))

    prefs = label_pairs(target)
    res = train_online_dpo(
        odpo_cfg(steps=8, lr=1e-2, odpo_label_pairs=2, ppo_epochs=2),
        policy=str(lm),
        prompts=PROMPTS,
        reward_fn=constant,
        out_dir=tmp_path / "p",
        progress=False,
        log=None,
        preferences=prefs,
    )
    for r in res.history:
        assert r["policy/pairs_kept"] == 0.0 and r["policy/label_pairs"] == 2.0
        assert r["policy/dpo_loss"] == r["policy/dpo_loss"]  # a number: pairs were trained
    assert res.history[0]["policy/dpo_loss"] < 0.6931472  # the first step already moved
    assert sum(counts[-3:]) / 3 > sum(counts[:2]) / 2 + 1.0
    # the implicit reward margin beta * [(pi_c - ref_c) - (pi_r - ref_r)] on the labels
    from rankloop.lm.loading import load_tokenizer
    from rankloop.lm.sampling import encode_chats

    tok = load_tokenizer(str(lm), padding_side="right")
    untied = [p for p in prefs if not p.tie]
    q = encode_chats(tok, [p.prompt.as_chat() for p in untied]) * 2
    eos = [tok.eos_token_id]
    resp = [tok(p.chosen, add_special_tokens=False)["input_ids"] + eos for p in untied] + [
        tok(p.rejected, add_special_tokens=False)["input_ids"] + eos for p in untied
    ]
    actor = res.actor
    with torch.no_grad():
        pol = response_logps(actor, q, resp, tok.pad_token_id)
        with actor.lm.disable_adapter():
            ref = response_logps(actor, q, resp, tok.pad_token_id)
    n = len(untied)
    margin = (pol[:n] - ref[:n]) - (pol[n:] - ref[n:])
    assert (margin > 1.0).all(), margin

    dropped = train_online_dpo(
        odpo_cfg(steps=2, lr=1e-2, odpo_label_pairs=0),
        policy=str(lm),
        prompts=PROMPTS,
        reward_fn=constant,
        out_dir=tmp_path / "q",
        progress=False,
        log=None,
        preferences=prefs,
    )
    assert all(r["policy/label_pairs"] == 0.0 for r in dropped.history)
    lora_b = [v for k, v in dropped.actor.named_parameters() if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(v) == 0 for v in lora_b)  # never stepped


def test_online_dpo_resume_continues_exactly(peaked_lm, tmp_path):
    """Killed after step 2 (its checkpoint written) and resumed: step 3, the evaluations and
    the saved tensors equal the uninterrupted run's, with labelled pairs, several epochs and
    two mini-batches a step."""
    lm, target = peaked_lm
    levers = {
        "checkpoint_every": 1,
        "eval_every": 1,
        "early_stop_patience": 0,
        "ppo_epochs": 2,
        "mini_batch_size": 2,
        "odpo_margin": 0.0,
        "odpo_label_pairs": 2,
        "lr": 1e-2,
    }
    prefs = label_pairs(target)
    full = run(odpo_cfg(steps=3, **levers), lm, target, tmp_path / "a", preferences=prefs)
    run(odpo_cfg(steps=2, **levers), lm, target, tmp_path / "b", preferences=prefs)
    resumed = run(
        odpo_cfg(steps=3, **levers), lm, target, tmp_path / "b", preferences=prefs, resume=True
    )
    assert [r["step"] for r in resumed.history] == [1, 2, 3]
    a, b = full.history[2], resumed.history[2]
    for k in a:
        if not k.startswith("time/"):
            assert a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]), k
    assert a["policy/label_pairs"] == 2.0
    assert resumed.evaluations == full.evaluations
    sa = torch.load(tmp_path / "a/checkpoints/step-3/state.pt", weights_only=False)
    sb = torch.load(tmp_path / "b/checkpoints/step-3/state.pt", weights_only=False)
    assert sa["critic"] is None and sa["optimizer_name"] == "odpo"
    for part in ("actor", "best_actor"):
        for n in sa[part]:
            assert torch.equal(sa[part][n], sb[part][n]), n
    assert any(torch.count_nonzero(v) for n, v in sa["actor"].items() if "lora_B" in n)


@pytest.mark.parametrize(("field", "value"), [("value_pretrain_steps", 2), ("ptx_coef", 0.1)])
def test_online_dpo_refuses_settings_its_loss_ignores(peaked_lm, tmp_path, field, value):
    lm, target = peaked_lm
    extra = {"ptx_dataset": "x.txt"} if field == "ptx_coef" else {}
    with pytest.raises(ConfigError, match=f"{field} = .*not used by odpo"):
        run(odpo_cfg(**{field: value}, **extra), lm, target, tmp_path / "p")


def test_an_optimizer_without_labels_refuses_them(peaked_lm, tmp_path):
    lm, target = peaked_lm
    with pytest.raises(ValueError, match="rloo trains on no labelled pairs"):
        toy.run(
            cfg(steps=1, batch_size=4, mini_batch_size=4),
            lm,
            target,
            tmp_path / "p",
            train=train_rloo,
            preferences=label_pairs(target),
        )
