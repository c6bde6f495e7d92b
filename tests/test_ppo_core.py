"""Tests for rankloop.ppo.core: every test checks numbers, not just shapes."""

import math

import pytest
import torch

from rankloop.ppo.core import (
    EarlyStopping,
    FixedKLController,
    KLConstraintController,
    compute_rewards,
    decoupled_gae,
    dpo_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_penalty,
    lm_loss,
    logprobs_and_entropy,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    normalize_scores,
    policy_loss,
    rto_token_rewards,
    sampled_logprobs,
    value_loss,
)

D = torch.float64


def _mask(lengths, T):
    """(B, T) bool mask with right padding."""
    return torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def _fill_padding(x, mask, value):
    return torch.where(mask.bool(), x, torch.full_like(x, value))


# --------------------------------------------------------------------------- #
# masked statistics
# --------------------------------------------------------------------------- #
def test_masked_mean_and_var_hand_computed():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 999.0, -5.0, 7.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    # masked elements 1, 2, 3, 4: mean 2.5; sum sq dev = 2.25+0.25+0.25+2.25 = 5
    assert masked_mean(x, mask).item() == pytest.approx(2.5)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(5 / 4)
    assert masked_var(x, mask, unbiased=True).item() == pytest.approx(5 / 3)
    # per row: [2, 4]
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([2.0, 4.0], dtype=D))
    # an empty row gives 0, not nan
    empty = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(masked_mean(x, empty, dim=1), torch.tensor([2.0, 0.0], dtype=D))
    with pytest.raises(ValueError):
        masked_var(x, torch.zeros_like(mask))


def test_masked_whiten_mean0_var1_and_padding_invariant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, generator=g, dtype=D) * 3 + 2
    mask = _mask([9, 5, 2, 7], 9)
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-6)
    assert (w[~mask] == 0).all()
    # garbage (even nan) in padding changes nothing
    w2 = masked_whiten(_fill_padding(x, mask, float("nan")), mask)
    torch.testing.assert_close(w2, w)
    # shift_mean=False keeps the mean, still unit variance
    w3 = masked_whiten(x, mask, shift_mean=False)
    assert masked_mean(w3, mask).item() == pytest.approx(masked_mean(x, mask).item())
    assert masked_var(w3, mask).item() == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------- #
# logprobs / entropy
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logprobs_and_entropy_match_categorical(dtype):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 5, 11, generator=g) * 4).to(dtype)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    dist = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(logprobs_from_logits(logits, labels), dist.log_prob(labels))
    torch.testing.assert_close(entropy_from_logits(logits), dist.entropy())


def test_logprobs_bf16_path_close_to_fp32():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 7, generator=g)
    labels = torch.randint(0, 7, (2, 4), generator=g)
    ref = torch.log_softmax(logits.bfloat16().float(), -1).gather(-1, labels[..., None])[..., 0]
    out = logprobs_from_logits(logits.bfloat16(), labels)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_the_autograd_expression_bit_for_bit(dtype, temperature):
    """The update's lean path gives the very numbers of the expression it replaces, forward
    and backward (so PPO's results did not move when it came in)."""
    torch.manual_seed(0)
    base = (torch.randn(3, 6, 50) * 3).to(dtype)  # (B, T+1, V), as the actor returns them
    labels = torch.randint(0, 50, (3, 5))  # (B, T)
    weights = torch.randn(3, 5)  # a loss that weighs every position differently

    a = base.clone().requires_grad_()
    logits = a[:, :-1].float()
    expected = logprobs_from_logits(logits / temperature if temperature != 1.0 else logits, labels)
    (expected * weights).sum().backward()

    b = base.clone().requires_grad_()
    out = sampled_logprobs(b[:, :-1], labels, temperature)
    (out * weights).sum().backward()

    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert b.grad.dtype == dtype and torch.equal(b.grad, a.grad)
    # and what they are: log-softmax at the sampled token; gradient onehot - softmax
    x = base[:, :-1].float() / temperature
    torch.testing.assert_close(out, torch.log_softmax(x, -1).gather(-1, labels[..., None])[..., 0])
    onehot = torch.nn.functional.one_hot(labels, 50).float()
    hand = weights[..., None] * (onehot - torch.softmax(x, -1)) / temperature
    torch.testing.assert_close(b.grad[:, :-1].float(), hand, atol=2e-2, rtol=2e-2)
    assert torch.equal(b.grad[:, -1], torch.zeros_like(b.grad[:, -1]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_reference_pass_log_probs_and_entropy_in_one_pass(dtype, temperature):
    """The reference pass's fused path: the update's log-probs bit for bit (the ratio starts
    at exactly 1), the entropy of the tempered distribution, -inf logits included."""
    torch.manual_seed(3)
    logits = (torch.randn(3, 5, 40) * 3).to(dtype)
    logits[0, 1, :38] = -math.inf  # two tokens left: entropy log 2 at equal logits
    logits[0, 1, 38:] = 1.0
    labels = torch.randint(38, 40, (3, 5))
    logp, entropy = logprobs_and_entropy(logits, labels, temperature)
    assert logp.dtype == entropy.dtype == torch.float32
    assert torch.equal(logp, sampled_logprobs(logits, labels, temperature))
    x = logits.float() / temperature
    dist = torch.distributions.Categorical(logits=x)
    torch.testing.assert_close(logp, dist.log_prob(labels))
    torch.testing.assert_close(entropy, entropy_from_logits(x))
    assert entropy[0, 1].item() == pytest.approx(math.log(2))
    assert torch.isfinite(entropy).all()


def test_entropy_with_minus_inf_logits():
    # two allowed tokens with equal logits -> entropy log 2, no nan from 0 * -inf
    logits = torch.tensor([[[0.0, 0.0, -math.inf, -math.inf]]])
    assert entropy_from_logits(logits).item() == pytest.approx(math.log(2))


# --------------------------------------------------------------------------- #
# KL estimators
# --------------------------------------------------------------------------- #
def test_kl_estimators_hand_computed():
    lp = torch.tensor([-1.0], dtype=D)
    ref = torch.tensor([-1.5], dtype=D)
    # log r = ref - lp = -0.5
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(0.5)
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.125)  # 0.25 / 2
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(math.exp(-0.5) - 1 + 0.5)
    # opposite sign of log r: k1 flips sign, k2 and k3 stay positive
    assert kl_penalty(ref, lp, "k1").item() == pytest.approx(-0.5)
    assert kl_penalty(ref, lp, "k2").item() == pytest.approx(0.125)
    assert kl_penalty(ref, lp, "k3").item() == pytest.approx(math.exp(0.5) - 1 - 0.5)


def test_k3_nonnegative_and_unbiased_on_average():
    g = torch.Generator().manual_seed(3)
    lp = torch.randn(2000, generator=g, dtype=D) * 5
    ref = torch.randn(2000, generator=g, dtype=D) * 5
    assert (kl_penalty(lp, ref, "k3") >= 0).all()
    assert (kl_penalty(lp, ref, "k2") >= 0).all()
    # E_{x~p}[k1] = E[k3] = KL(p||q) exactly for a small categorical
    p = torch.tensor([0.5, 0.3, 0.2], dtype=D)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=D)
    kl = (p * (p / q).log()).sum()
    for est in ("k1", "k3"):
        assert (p * kl_penalty(p.log(), q.log(), est)).sum().item() == pytest.approx(kl.item())


def test_unknown_estimator_raises():
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")


# --------------------------------------------------------------------------- #
# compute_rewards
# --------------------------------------------------------------------------- #
def test_compute_rewards_exact_2x4():
    scores = torch.tensor([1.0, -2.0], dtype=D)
    lp = torch.tensor([[-1.0, -2.0, -0.5, 7.0], [-1.0, -1.0, -1.0, -1.0]], dtype=D)
    ref = torch.tensor([[-1.5, -1.0, -0.5, -3.0], [-2.0, -1.0, -1.0, -0.5]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    # k1 = lp - ref: row0 [0.5, -1, 0, (pad)], row1 [1, 0, 0, -0.5]
    # non_score = -0.1 * kl; score added at index 2 (row0) and 3 (row1)
    rewards, non_score, kl = compute_rewards(scores, lp, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(
        kl, torch.tensor([[0.5, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, -0.5]], dtype=D)
    )
    torch.testing.assert_close(
        non_score, torch.tensor([[-0.05, 0.1, 0.0, 0.0], [-0.1, 0.0, 0.0, 0.05]], dtype=D)
    )
    torch.testing.assert_close(
        rewards, torch.tensor([[-0.05, 0.1, 1.0, 0.0], [-0.1, 0.0, 0.0, -1.95]], dtype=D)
    )
    # token rewards are added (and masked); k2 estimator is honoured
    tok = torch.tensor([[0.1, 0.2, 0.3, 50.0], [0.0, 0.0, 0.0, 1.0]], dtype=D)
    rewards, _, kl2 = compute_rewards(scores, lp, ref, mask, 0.1, "k2", token_rewards=tok)
    # k2 = 0.5 * kl^2: row0 [0.125, 0.5, 0, 0], row1 [0.5, 0, 0, 0.125]
    torch.testing.assert_close(
        kl2, torch.tensor([[0.125, 0.5, 0.0, 0.0], [0.5, 0.0, 0.0, 0.125]], dtype=D)
    )
    torch.testing.assert_close(
        rewards,
        torch.tensor(
            [[-0.0125 + 0.1, -0.05 + 0.2, 0.3 + 1.0, 0.0], [-0.05, 0.0, 0.0, -0.0125 + 1.0 - 2.0]],
            dtype=D,
        ),
    )


# --------------------------------------------------------------------------- #
# GAE
# --------------------------------------------------------------------------- #
def _naive_gae(values, rewards, lengths, gamma, lam):
    """Per sequence, in Python floats: delta_t directly, then the explicit sum
    A_t = sum_l (gamma*lam)^l delta_{t+l}; V after the last token is 0."""
    B, T = values.shape
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        n = lengths[b]
        v = [float(values[b, t]) for t in range(n)] + [0.0]
        r = [float(rewards[b, t]) for t in range(n)]
        delta = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            adv[b][t] = sum((gamma * lam) ** l * delta[t + l] for l in range(n - t))
    return torch.tensor(adv, dtype=D)


LENGTHS = [7, 3, 5, 1]


def _random_rollout(seed, T=7):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(len(LENGTHS), T, generator=g, dtype=D)
    rewards = torch.randn(len(LENGTHS), T, generator=g, dtype=D)
    mask = _mask(LENGTHS, T)
    # padding holds garbage; it must be ignored
    return _fill_padding(values, mask, 123.0), _fill_padding(rewards, mask, -77.0), mask


@pytest.mark.parametrize(
    "gamma,lam", [(1.0, 0.95), (0.99, 0.95), (0.9, 1.0), (1.0, 1.0), (0.9, 0.0)]
)
def test_gae_matches_naive(gamma, lam):
    values, rewards, mask = _random_rollout(4)
    adv, ret = gae(values, rewards, mask, gamma, lam)
    expected = _naive_gae(values, rewards, LENGTHS, gamma, lam)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + torch.where(mask, values, 0.0))
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


def test_gae_lam1_is_return_to_go_minus_value_and_lam0_is_td():
    gamma = 0.9
    values, rewards, mask = _random_rollout(5)
    adv1, ret1 = gae(values, rewards, mask, gamma, 1.0)
    adv0, _ = gae(values, rewards, mask, gamma, 0.0)
    for b, n in enumerate(LENGTHS):
        for t in range(n):
            rtg = sum(gamma**k * rewards[b, t + k].item() for k in range(n - t))
            assert adv1[b, t].item() == pytest.approx(rtg - values[b, t].item())
            assert ret1[b, t].item() == pytest.approx(rtg)  # Monte-Carlo target
            v_next = values[b, t + 1].item() if t + 1 < n else 0.0
            td = rewards[b, t].item() + gamma * v_next - values[b, t].item()
            assert adv0[b, t].item() == pytest.approx(td)


def test_gae_left_padding_equals_right_padding():
    # padding resets lastgaelam: nothing may leak from a padded slot into the
    # episode (or out of it), wherever the padding sits
    values, rewards, mask = _random_rollout(9)
    adv_r, ret_r = gae(values, rewards, mask, 0.99, 0.95)
    # roll each row so its padding comes first
    shifts = [7 - n for n in LENGTHS]
    roll = lambda x: torch.stack([torch.roll(row, s) for row, s in zip(x, shifts)])
    adv_l, ret_l = gae(roll(values), roll(rewards), roll(mask), 0.99, 0.95)
    torch.testing.assert_close(adv_l, roll(adv_r))
    torch.testing.assert_close(ret_l, roll(ret_r))


def test_decoupled_gae():
    values, rewards, mask = _random_rollout(6)
    adv, ret = decoupled_gae(values, rewards, mask, 1.0, lam_actor=0.95, lam_critic=1.0)
    torch.testing.assert_close(adv, gae(values, rewards, mask, 1.0, 0.95)[0])
    torch.testing.assert_close(ret, gae(values, rewards, mask, 1.0, 1.0)[1])
    # and the two lambdas really differ here
    assert not torch.allclose(ret, gae(values, rewards, mask, 1.0, 0.95)[1])


# --------------------------------------------------------------------------- #
# policy / value loss
# --------------------------------------------------------------------------- #
def _policy_case():
    # cliprange 0.2; four real tokens, then two padded ones
    #   t  ratio  A   pg_losses  pg_losses2          max    clipped?
    #   0  1.5   +1   -1.5       -1*1.2 = -1.2       -1.2   yes
    #   1  0.5   +1   -0.5       -1*0.8 = -0.8       -0.5   no
    #   2  0.5   -1   +0.5       +1*0.8 = +0.8       +0.8   yes
    #   3  1.0   +2   -2.0       -2.0                -2.0   no (equal)
    # loss = (-1.2 - 0.5 + 0.8 - 2.0) / 4 = -0.725, clipfrac = 2/4 = 0.5
    # approxkl = 0.5 * (ln1.5^2 + 2 ln0.5^2 + 0) / 4
    old = torch.tensor([[-2.0, -1.0, -3.0, -0.5, 0.0, 0.0]], dtype=D)
    logratio = torch.tensor([[math.log(1.5), math.log(0.5), math.log(0.5), 0.0, 0.0, 0.0]], dtype=D)
    adv = torch.tensor([[1.0, 1.0, -1.0, 2.0, 0.0, 0.0]], dtype=D)
    mask = _mask([4], 6)
    return old + logratio, old, adv, mask


def test_policy_loss_hand_computed():
    lp, old, adv, mask = _policy_case()
    loss, stats = policy_loss(lp, old, adv, mask, cliprange=0.2)
    assert loss.item() == pytest.approx(-0.725)
    assert stats["policy/clipfrac"].item() == 0.5
    approxkl = 0.5 * (math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 4
    assert stats["policy/approxkl"].item() == pytest.approx(approxkl)
    assert stats["policy/loss"].item() == pytest.approx(-0.725)
    assert stats["policy/ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 0.5 + 1.0) / 4)
    assert all(not v.requires_grad and v.dim() == 0 for v in stats.values())


def test_policy_loss_padding_invariant_and_gradient():
    lp, old, adv, mask = _policy_case()
    lp = lp.clone().requires_grad_(True)
    loss, stats = policy_loss(lp, old, adv, mask, 0.2)
    loss.backward()
    # clipped tokens (0 and 2) get no gradient; unclipped t: d/dlp(-A r)/4 = -A r / 4
    torch.testing.assert_close(
        lp.grad, torch.tensor([[0.0, -0.5 / 4, 0.0, -2.0 / 4, 0.0, 0.0]], dtype=D)
    )
    # garbage (inf / nan) in the padding: same loss, same stats, finite gradient
    lp2 = _fill_padding(lp.detach(), mask, math.inf).requires_grad_(True)
    adv2 = _fill_padding(adv, mask, math.nan)
    loss2, stats2 = policy_loss(lp2, old, adv2, mask, 0.2)
    loss2.backward()
    assert loss2.item() == loss.item()
    assert {k: v.item() for k, v in stats2.items()} == {k: v.item() for k, v in stats.items()}
    torch.testing.assert_close(lp2.grad, lp.grad)


def test_value_loss_hand_computed():
    # cliprange_value 0.2, old_values 0
    #   t  v     R     vclipped  vf_losses1  vf_losses2  max   clipped?
    #   0  0.5   1.0   0.2       0.25        0.64        0.64  yes
    #   1  0.1   1.0   0.1       0.81        0.81        0.81  no
    #   2 -0.5  -1.0  -0.2       0.25        0.64        0.64  yes
    #   3  0.5   0.0   0.2       0.25        0.04        0.25  no
    # loss = 0.5 * (0.64 + 0.81 + 0.64 + 0.25) / 4 = 0.2925, clipfrac = 0.5
    values = torch.tensor([[0.5, 0.1, -0.5, 0.5, 9.0]], dtype=D)
    old = torch.zeros(1, 5, dtype=D)
    returns = torch.tensor([[1.0, 1.0, -1.0, 0.0, -9.0]], dtype=D)
    mask = _mask([4], 5)
    loss, stats = value_loss(values, old, returns, mask, 0.2)
    assert loss.item() == pytest.approx(0.2925)
    assert stats["val/clipfrac"].item() == 0.5
    assert stats["val/error"].item() == pytest.approx((0.25 + 0.81 + 0.25 + 0.25) / 4)
    assert stats["val/vpred"].item() == pytest.approx(0.6 / 4)
    assert stats["val/returns"].item() == pytest.approx(0.25)
    # padding is ignored
    loss2, _ = value_loss(_fill_padding(values, mask, math.nan), old, returns, mask, 0.2)
    assert loss2.item() == loss.item()
    # no clipping: 0.5 * mean(vf_losses1)
    loss3, stats3 = value_loss(values, old, returns, mask, None)
    assert loss3.item() == pytest.approx(0.5 * (0.25 + 0.81 + 0.25 + 0.25) / 4)
    assert stats3["val/clipfrac"].item() == 0.0


def test_explained_variance():
    g = torch.Generator().manual_seed(7)
    returns = torch.randn(3, 6, generator=g, dtype=D)
    mask = _mask([6, 4, 2], 6)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    mean_pred = torch.full_like(returns, masked_mean(returns, mask).item())
    assert explained_variance(mean_pred, returns, mask).item() == pytest.approx(0.0, abs=1e-12)
    # padding is ignored
    garbage = _fill_padding(returns, mask, 1e6)
    assert explained_variance(returns, garbage, mask).item() == pytest.approx(1.0)
    # constant returns: undefined
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask).item())


# --------------------------------------------------------------------------- #
# reward-side helpers
# --------------------------------------------------------------------------- #
def test_normalize_scores():
    s = torch.tensor([0.0, 2.0, 10.0, -10.0])
    # (s - 2) / 2 = [-1, 0, 4, -6] -> clip 3
    torch.testing.assert_close(
        normalize_scores(s, 2.0, 2.0, 3.0), torch.tensor([-1.0, 0.0, 3.0, -3.0])
    )
    torch.testing.assert_close(
        normalize_scores(s, 2.0, 2.0, None), torch.tensor([-1.0, 0.0, 4.0, -6.0])
    )
    with pytest.raises(ValueError):
        normalize_scores(s, 0.0, 0.0, None)


def test_rto_token_rewards():
    dpo = torch.tensor([[-1.0, -2.0, 5.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = _mask([2], 3)
    torch.testing.assert_close(
        rto_token_rewards(dpo, ref, mask, beta=0.1), torch.tensor([[0.05, -0.1, 0.0]])
    )


def test_dpo_loss_hand_computed():
    beta = 0.1
    # pair 0: chosen logratio +1, rejected -1 -> z = 0.1*(1 - -1) = 0.2
    # pair 1: chosen logratio  0, rejected +1 -> z = 0.1*(0 - 1)  = -0.1
    pc = torch.tensor([-1.0, -2.0], dtype=D)
    pr = torch.tensor([-3.0, -1.0], dtype=D)
    rc = torch.tensor([-2.0, -2.0], dtype=D)
    rr = torch.tensor([-2.0, -2.0], dtype=D)
    loss, stats = dpo_loss(pc, pr, rc, rr, beta)
    # -log sigma(z) = log(1 + exp(-z))
    expected = (math.log1p(math.exp(-0.2)) + math.log1p(math.exp(0.1))) / 2
    assert loss.item() == pytest.approx(expected)
    assert stats["dpo/accuracy"].item() == 0.5
    assert stats["dpo/chosen_reward"].item() == pytest.approx((0.1 + 0.0) / 2)
    assert stats["dpo/rejected_reward"].item() == pytest.approx((-0.1 + 0.1) / 2)
    assert stats["dpo/margin"].item() == pytest.approx((0.2 - 0.1) / 2)
    # cDPO: 0.9 * (-log sigma(z)) + 0.1 * (-log sigma(-z))
    loss_s, _ = dpo_loss(pc, pr, rc, rr, beta, label_smoothing=0.1)
    nls = lambda z: math.log1p(math.exp(-z))
    expected_s = sum(0.9 * nls(z) + 0.1 * nls(-z) for z in (0.2, -0.1)) / 2
    assert loss_s.item() == pytest.approx(expected_s)


def test_lm_loss_matches_cross_entropy():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 5, 9, generator=g, dtype=D)
    labels = torch.randint(0, 9, (2, 5), generator=g)
    mask = _mask([5, 3], 5)
    labels_hf = torch.where(mask, labels, torch.full_like(labels, -100))
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 9), labels_hf.reshape(-1))
    loss, stats = lm_loss(logits, labels_hf, mask)
    torch.testing.assert_close(loss, expected)
    assert stats["ptx/tokens"].item() == 8


# --------------------------------------------------------------------------- #
# KL controllers
# --------------------------------------------------------------------------- #
def test_kl_constraint_controller_two_updates_floor_and_resume():
    ctl = KLConstraintController(kl_coef=0.05, target=2.0, horizon=160)
    ctl.update(0.0, n_steps=8)  # a run from the reference: its first KL is 0, the target stays
    assert (ctl.value, ctl.target) == (0.05, 2.0)
    # kl 6: step = (6 - 2) * 8 / 160 = 0.2 -> 0.25
    ctl.update(6.0, n_steps=8)
    assert ctl.value == pytest.approx(0.25, rel=1e-12)
    # kl 1: step = (1 - 2) * 16 / 160 = -0.1 -> 0.15
    ctl.update(torch.tensor(1.0), n_steps=16)
    assert ctl.value == pytest.approx(0.15, rel=1e-6)
    # kl 0 for long: never below the fixed coefficient
    for _ in range(10):
        ctl.update(0.0, n_steps=8)
    assert ctl.value == 0.05
    # exact resume: a fresh controller loaded from the state continues identically
    ctl.update(9.5, n_steps=8)
    other = KLConstraintController(kl_coef=1.0, target=1.0, horizon=1)
    other.load_state_dict(ctl.state_dict())
    assert other.state_dict() == ctl.state_dict()
    for kl in (1.0, 12.0, 0.3):
        ctl.update(kl, 64)
        other.update(kl, 64)
        assert other.value == ctl.value
    with pytest.raises(ValueError, match="must be > 0"):
        KLConstraintController(0.05, target=0.0, horizon=1.0)


def test_kl_target_counts_from_the_start_policy():
    """PPO of round R starts from round R-1's policy, already some nats from the reference: the
    target is the KL the run may add to its start's, not a budget round R-1 already spent (in
    the demo, round 1 started at 1.84 nats with the target 2 and its coefficient rose at once)."""
    ctl = KLConstraintController(kl_coef=0.05, target=2.0, horizon=160)
    ctl.update(1.84, n_steps=8)  # the first rollout: the start policy's KL
    assert (ctl.value, ctl.target) == (0.05, pytest.approx(3.84))
    ctl.update(3.0, n_steps=8)  # 1.16 nats further than the start: within the target
    assert ctl.value == 0.05
    ctl.update(5.84, n_steps=8)  # 4 nats further: (5.84 - 3.84) * 8 / 160 = +0.1
    assert ctl.value == pytest.approx(0.15)
    resumed = KLConstraintController(kl_coef=0.05, target=2.0, horizon=160)
    resumed.load_state_dict(ctl.state_dict())  # a resumed run does not move the target again
    resumed.update(3.84, n_steps=8)
    assert (resumed.target, resumed.value) == (pytest.approx(3.84), pytest.approx(0.15))


def test_early_stopping_counts_falls_in_standard_errors_of_the_difference_and_resumes():
    stop = EarlyStopping(patience=2, drop=2.0)
    assert stop.update(0.5, se=0.1, step=0)  # the first evaluation is the first best
    assert stop.update(0.55, se=0.1, step=5)  # any rise is the new best (no threshold)
    # 0.3 > 0.55 - 2 * hypot(0.1, 0.1) = 0.267: a fall of 0.25 is within the noise
    assert not stop.update(0.3, se=0.1, step=10)
    assert (stop.falls, stop.last_fell, stop.kept_step(10)) == (0, False, 10)
    # 0.2 < 0.267: a fall for sure; 'guarded' now keeps the best, 'last' the last
    assert not stop.update(0.2, se=0.1, step=15)
    assert (stop.falls, stop.last_fell) == (1, True) and not stop.should_stop
    assert (stop.kept_step(15), stop.kept_step(15, "last"), stop.kept_step(15, "best")) == (
        5,
        15,
        5,
    )
    other = EarlyStopping(patience=2, drop=2.0)
    other.load_state_dict(stop.state_dict())
    assert not other.update(0.1, se=0.1, step=20)  # two falls in a row: stop
    assert other.should_stop and other.kept_step(20) == 5
    # a fall, then a score back within the noise: the count starts again, the last is kept
    back = EarlyStopping(patience=2, drop=2.0)
    back.load_state_dict(stop.state_dict())
    assert not back.update(0.4, se=0.1, step=20)
    assert (back.falls, back.should_stop, back.kept_step(20)) == (0, False, 20)
    # patience 0: never stops
    never = EarlyStopping(patience=0, drop=0.0)
    for step, score in enumerate([1.0, 0.9, 0.8, 0.7]):
        never.update(score, se=0.0, step=step)
    assert not never.should_stop and never.falls == 3 and never.kept_step(3) == 0
    assert never.update(1.0 + 1e-9, se=0.0, step=4)
    with pytest.raises(ValueError, match="older rankloop"):
        EarlyStopping(2, 2.0).load_state_dict({"best": 1.0, "best_step": 0, "since_best": 1})


def test_a_kl_budget_stops_at_once_and_keeps_the_last_policy_within_it():
    """kl_budget 6 from the first evaluation's KL (1.5): step 10 (KL 7.4, 5.9 past) is within,
    step 15 (KL 7.6, 6.1 past) is not, whatever its score; the rule picks among steps 0-10."""
    stop = EarlyStopping(patience=3, drop=2.0, kl_budget=6.0)
    assert stop.update(0.5, se=0.1, step=0, kl=1.5)
    assert stop.update(0.6, se=0.1, step=5, kl=4.0)
    assert not stop.update(0.55, se=0.1, step=10, kl=7.4)  # within the noise of 0.6: no fall
    assert not stop.should_stop and stop.last_step == 10
    assert not stop.update(9.9, se=0.1, step=15, kl=7.6)  # past the budget: not even a best
    assert stop.should_stop and stop.over_budget and stop.best == 0.6
    assert (stop.kept_step(15), stop.kept_step(15, "last"), stop.kept_step(15, "best")) == (
        10,
        10,
        5,
    )
    resumed = EarlyStopping(patience=3, drop=2.0, kl_budget=6.0)
    resumed.load_state_dict(stop.state_dict())
    assert resumed.should_stop and resumed.kept_step(15) == 10 and resumed.kl_start == 1.5
    # the last within the budget fell for sure (0.1 < 0.6 - 2 * hypot(0.1, 0.1)): the best
    fell = EarlyStopping(patience=3, drop=2.0, kl_budget=6.0)
    for step, (score, kl) in enumerate([(0.5, 0.0), (0.6, 1.0), (0.1, 2.0), (0.9, 6.5)]):
        fell.update(score, se=0.1, step=step, kl=kl)
    assert fell.over_budget and fell.kept_step(3) == 1
    # no budget (0), or no KL given: the KL never stops a run
    free = EarlyStopping(patience=3, drop=2.0, kl_budget=0.0)
    blind = EarlyStopping(patience=3, drop=2.0, kl_budget=6.0)
    for step, kl in enumerate([0.0, 50.0, 100.0]):
        free.update(1.0 + step, se=0.1, step=step, kl=kl)
        blind.update(1.0 + step, se=0.1, step=step)
    assert not free.should_stop and not blind.should_stop and free.kept_step(2) == 2
    with pytest.raises(ValueError, match="kl_budget"):
        EarlyStopping(3, 2.0, kl_budget=-1.0)


def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 1000)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05
