"""algorithms.core against numbers worked out by hand from each equation, values and autograd gradients."""
import math

import pytest
import torch
from torch.testing import assert_close

from algorithms.core import (
    aggregate_loss,
    entropy_from_logits,
    epsilon_greedy_pick,
    group_advantages,
    half_min_length,
    kl_estimate,
    masked_mean,
    policy_loss,
    policy_loss_terms,
    rapid_advantages,
    rapid_importance_weights,
    rapid_loss,
    sample_truncation,
    truncated_is_weights,
    weighted_group_baseline,
)

F64 = torch.float64
EPS = 1e-6
AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def t(x, dtype=F64):
    return torch.tensor(x, dtype=dtype)


def leaf(x):
    return torch.tensor(x, dtype=F64, requires_grad=True)


def chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum().item() / counts.numel()
    return float(((counts.double() - expected) ** 2 / expected).sum())


# ------------------------------------------------------------------------------------------------ advantages


def test_group_advantages_two_groups_of_two():
    s = math.sqrt(0.5)  # unbiased std of {1, 0}: sqrt((0.25 + 0.25) / 1)
    a = 0.5 / (s + EPS)
    assert_close(group_advantages(t([1.0, 0.0, 0.0, 1.0]), 2), t([a, -a, -a, a]))
    assert_close(group_advantages(t([1.0, 0.0, 0.0, 1.0]), 2, normalize_std=False), t([0.5, -0.5, -0.5, 0.5]))


def test_group_advantages_group_of_four_uses_unbiased_std():
    std = math.sqrt(5.0 / 3.0)  # deviations -1.5, -0.5, 0.5, 1.5: sum of squares 5, over G - 1 = 3
    expected = t([-1.5, -0.5, 0.5, 1.5]) / (std + EPS)
    assert_close(group_advantages(t([1.0, 2.0, 3.0, 4.0]), 4), expected)
    # eps enters as (std + eps), not sqrt(var + eps)
    assert_close(group_advantages(t([1.0, 2.0, 3.0, 4.0]), 4, eps=0.5), t([-1.5, -0.5, 0.5, 1.5]) / (std + 0.5))


def test_group_advantages_equal_rewards_and_groups_of_one_give_zero():
    for normalize in (True, False):
        eq = group_advantages(t([3.0, 3.0, 3.0, 0.0, 0.0, 0.0]), 3, normalize_std=normalize)
        assert torch.equal(eq, torch.zeros(6, dtype=F64))
        single = group_advantages(t([2.0, -1.0, 7.0]), 1, normalize_std=normalize)
        assert torch.equal(single, torch.zeros(3, dtype=F64))


def test_group_advantages_accepts_integer_rewards():
    assert_close(group_advantages(torch.tensor([1, 0]), 2, normalize_std=False), torch.tensor([0.5, -0.5]))


@pytest.mark.parametrize(
    "rewards,group_size",
    [(t([1.0, 0.0, 1.0]), 2), (t([1.0, float("nan")]), 2), (t([[1.0, 0.0]]), 2), (t([1.0, 0.0]), 0)],
)
def test_group_advantages_rejects_bad_input(rewards, group_size):
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size)


# ------------------------------------------------------------------------------------------------ KL


def test_kl_estimators_hand_values():
    logp, ref = t([math.log(0.5)]), t([math.log(0.25)])  # d = log 2
    d = math.log(2.0)
    assert_close(kl_estimate(logp, ref, "k1"), t([d]))
    assert_close(kl_estimate(logp, ref, "k2"), t([0.5 * d * d]))
    assert_close(kl_estimate(logp, ref, "k3"), t([0.5 + d - 1.0]))  # exp(-d) + d - 1
    for kind in ("k1", "k2", "k3"):
        assert kl_estimate(ref, ref, kind).item() == 0.0
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")


def test_k1_and_k3_are_unbiased_for_kl():
    gen = torch.Generator().manual_seed(0)
    p, q = t([0.6, 0.3, 0.1]), t([0.2, 0.5, 0.3])
    true_kl = float((p * (p / q).log()).sum())
    y = torch.multinomial(p, 400_000, replacement=True, generator=gen)
    logp, ref = p.log()[y], q.log()[y]
    assert kl_estimate(logp, ref, "k1").mean().item() == pytest.approx(true_kl, abs=5e-3)
    assert kl_estimate(logp, ref, "k3").mean().item() == pytest.approx(true_kl, abs=5e-3)
    assert bool((kl_estimate(logp, ref, "k3") >= 0).all())


# ------------------------------------------------------------------------------------------------ aggregation


def test_aggregate_loss_modes_hand_values():
    loss = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = t([[1, 1, 0], [1, 0, 0]])
    assert aggregate_loss(loss, mask, "token-mean").item() == pytest.approx(7.0 / 3.0)
    assert aggregate_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((1.5 + 4.0) / 2.0)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx((3.0 + 4.0) / 2.0)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum-norm", norm_len=4).item() == pytest.approx(
        (3.0 / 4.0 + 4.0 / 4.0) / 2.0
    )


def test_aggregate_loss_empty_sequence_contributes_zero_and_padding_garbage_is_ignored():
    loss = leaf([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0], [float("nan"), 8.0, 9.0]])
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    expected = {
        "token-mean": 7.0 / 3.0,  # the empty row adds no tokens
        "seq-mean-token-mean": (1.5 + 4.0 + 0.0) / 3.0,  # ... and counts as a 0 in the sequence mean
        "seq-mean-token-sum": (3.0 + 4.0 + 0.0) / 3.0,
        "seq-mean-token-sum-norm": (3.0 / 4 + 4.0 / 4 + 0.0) / 3.0,
    }
    for mode, value in expected.items():
        out = aggregate_loss(loss, mask, mode, norm_len=4)
        assert out.item() == pytest.approx(value), mode
        (grad,) = torch.autograd.grad(out, loss)
        assert bool(torch.isfinite(grad).all()), mode
        assert bool((grad[~mask] == 0).all()), mode


def test_aggregate_loss_all_masked_is_zero_with_zero_gradient():
    loss = leaf([[float("nan"), 2.0], [float("-inf"), 5.0]])
    mask = torch.zeros(2, 2)
    for mode in AGGS:
        out = aggregate_loss(loss, mask, mode, norm_len=8)
        assert out.item() == 0.0, mode
        (grad,) = torch.autograd.grad(out, loss)
        assert torch.equal(grad, torch.zeros(2, 2, dtype=F64)), mode


def test_aggregate_loss_errors():
    loss, mask = torch.ones(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError):
        aggregate_loss(loss, mask, "seq-mean-token-sum-norm")  # norm_len missing
    with pytest.raises(ValueError):
        aggregate_loss(loss, mask, "sum")
    with pytest.raises(ValueError):
        aggregate_loss(loss, torch.ones(2, 2), "token-mean")
    with pytest.raises(ValueError):
        aggregate_loss(loss, torch.full((2, 3), 0.5), "token-mean")


def test_masked_mean():
    x = t([[1.0, 2.0, float("nan")], [3.0, 5.0, 7.0]])
    m = t([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(x, m).item() == pytest.approx(1.5)
    assert_close(masked_mean(x, m, dim=1), t([1.5, 0.0]))
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0


# ------------------------------------------------------------------------------------------------ clipped surrogate

# Six one-token sequences (plus a padded second column holding garbage) covering each branch of the clip:
#   A = +1: rho 1.1 (inside), 1.5 (above: clipped), 0.5 (below: unclipped for A > 0)
#   A = -1: rho 0.5 (below: clipped), 1.5 (above: unclipped for A < 0), 3.0 (above; capped by dual-clip 2)
RATIOS = [1.1, 1.5, 0.5, 0.5, 1.5, 3.0]
ADV = t([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])


def branch_case():
    logp = leaf([[-1.0, 0.3] for _ in RATIOS])
    old = torch.tensor([[-1.0 - math.log(r), float("-inf")] for r in RATIOS], dtype=F64)
    mask = torch.tensor([[True, False]] * len(RATIOS))
    return logp, old, mask


def test_clipped_surrogate_values_and_gradients_on_every_branch():
    logp, old, mask = branch_case()
    loss = policy_loss(logp, old, ADV, mask)  # clip 0.2 both sides, token-mean over 6 tokens
    per_token = [-1.1, -1.2, -0.5, 0.8, 1.5, 3.0]  # -min(rho A, clip(rho, 0.8, 1.2) A)
    assert loss.item() == pytest.approx(sum(per_token) / 6)
    (grad,) = torch.autograd.grad(loss, logp)
    # d/dlogp (-A rho) = -A rho inside the active branch, exactly 0 where the clip is active
    assert_close(grad[:, 0], t([-1.1, 0.0, -0.5, 0.0, 1.5, 3.0]) / 6)
    assert torch.equal(grad[:, 1], torch.zeros(6, dtype=F64))  # padding: no gradient despite old = -inf


def test_dual_clip_caps_negative_advantage_tokens():
    logp, old, mask = branch_case()
    per_token, stats = policy_loss_terms(logp, old, ADV, mask, dual_clip=2.0)
    assert_close(per_token[:, 0], t([-1.1, -1.2, -0.5, 0.8, 1.5, 2.0]), atol=1e-12, rtol=0)  # 3.0 capped at -A*2
    (grad,) = torch.autograd.grad(per_token.sum() / 6, logp)
    assert_close(grad[:, 0], t([-1.1, 0.0, -0.5, 0.0, 1.5, 0.0]) / 6)
    assert stats["dual_clip_frac"].item() == pytest.approx(1 / 6)
    assert stats["clip_frac_high"].item() == pytest.approx(1 / 6)
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 6)
    assert stats["ratio_max"].item() == pytest.approx(3.0)
    assert stats["ratio_min"].item() == pytest.approx(0.5)
    assert stats["ratio_mean"].item() == pytest.approx(sum(RATIOS) / 6)
    with pytest.raises(ValueError):
        policy_loss_terms(logp, old, ADV, mask, dual_clip=0.9)


def test_ratios_far_outside_the_clip_range():
    lr = 10.0
    logp = leaf([[0.0]] * 4)
    old = t([[-lr], [lr], [lr], [-lr]])  # rho = e^10, e^-10, e^-10, e^10
    adv = t([1.0, 1.0, -1.0, -1.0])
    mask = torch.ones(4, 1)
    big, small = math.exp(lr), math.exp(-lr)
    per_token, _ = policy_loss_terms(logp, old, adv, mask)
    assert_close(per_token[:, 0], t([-1.2, -small, 0.8, big]))
    (grad,) = torch.autograd.grad(per_token.sum(), logp)
    assert_close(grad[:, 0], t([0.0, -small, 0.0, big]))  # PPO leaves A < 0, rho >> 1 unbounded...
    per_token, _ = policy_loss_terms(logp, old, adv, mask, dual_clip=3.0)
    (grad,) = torch.autograd.grad(per_token.sum(), logp)
    assert_close(per_token[:, 0], t([-1.2, -small, 0.8, 3.0]))  # ... dual-clip bounds it
    assert_close(grad[:, 0], t([0.0, -small, 0.0, 0.0]))


def test_asymmetric_clip_higher():
    logp = leaf([[0.0]])
    old = t([[-math.log(1.25)]])
    mask = torch.ones(1, 1)
    (g_dapo,) = torch.autograd.grad(policy_loss(logp, old, t([1.0]), mask, clip_high=0.28), logp)
    (g_grpo,) = torch.autograd.grad(policy_loss(logp, old, t([1.0]), mask, clip_high=0.2), logp)
    assert g_dapo.item() == pytest.approx(-1.25)  # 1.25 < 1.28: still learning
    assert g_grpo.item() == 0.0  # 1.25 > 1.2: clipped
    no_clip = policy_loss(logp, old, t([1.0]), mask, clip_low=None, clip_high=None)
    assert no_clip.item() == pytest.approx(-1.25)


def test_policy_loss_aggregations_and_is_weights():
    logp = leaf([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    old = logp.detach().clone()  # rho = 1: per-token loss -A
    adv = t([2.0, -1.0])
    mask = t([[1, 1, 1], [1, 0, 0]])
    assert policy_loss(logp, old, adv, mask, agg="token-mean").item() == pytest.approx((-6 + 1) / 4)
    assert policy_loss(logp, old, adv, mask, agg="seq-mean-token-mean").item() == pytest.approx((-2 + 1) / 2)
    assert policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum").item() == pytest.approx((-6 + 1) / 2)
    assert policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum-norm", norm_len=3).item() == pytest.approx(
        (-2 + 1 / 3) / 2
    )
    # importance weights scale value and gradient, are detached, and [N] equals its [N, T] broadcast
    w_seq = torch.tensor([0.5, 2.0], dtype=F64, requires_grad=True)
    weighted = policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum", is_weights=w_seq)
    assert weighted.item() == pytest.approx((0.5 * -6 + 2.0 * 1) / 2)
    (g,) = torch.autograd.grad(weighted, logp)
    assert_close(g, t([[-2.0, -2.0, -2.0], [1.0, 0.0, 0.0]]) * t([[0.5], [2.0]]) / 2)  # -w A / N
    assert w_seq.grad is None
    w_tok = w_seq.detach()[:, None].expand(2, 3)
    assert policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum", is_weights=w_tok).item() == weighted.item()


def test_policy_loss_equals_aggregated_terms():
    gen = torch.Generator().manual_seed(1)
    logp = torch.randn(5, 7, generator=gen, dtype=F64)
    old = logp + 0.3 * torch.randn(5, 7, generator=gen, dtype=F64)
    adv = torch.randn(5, generator=gen, dtype=F64)
    mask = torch.rand(5, 7, generator=gen) > 0.3
    per_token, _ = policy_loss_terms(logp, old, adv, mask, 0.2, 0.28, 3.0)
    for agg in AGGS:
        direct = policy_loss(logp, old, adv, mask, 0.2, 0.28, 3.0, agg=agg, norm_len=7)
        assert direct.item() == aggregate_loss(per_token, mask, agg, norm_len=7).item()


def test_policy_loss_all_masked_gives_zero_loss_and_gradient():
    logp = leaf([[float("nan"), -1.0], [0.0, 0.0]])
    old = t([[float("-inf"), 5.0], [float("nan"), -50.0]])
    mask = torch.zeros(2, 2, dtype=torch.bool)
    for agg in AGGS:
        loss = policy_loss(logp, old, t([1.0, -1.0]), mask, dual_clip=3.0, agg=agg, norm_len=2)
        (grad,) = torch.autograd.grad(loss, logp)
        assert loss.item() == 0.0 and torch.equal(grad, torch.zeros(2, 2, dtype=F64)), agg
    _, stats = policy_loss_terms(logp, old, t([1.0, -1.0]), mask)
    assert all(bool(torch.isfinite(v)) for v in stats.values())


def test_policy_loss_rejects_bad_shapes():
    logp, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError):
        policy_loss(logp, logp, torch.zeros(3), mask)
    with pytest.raises(ValueError):
        policy_loss(logp, torch.zeros(2, 2), torch.zeros(2), mask)


# ------------------------------------------------------------------------------------------------ truncated IS


def test_truncated_is_weights_token_and_sequence():
    learner = torch.tensor([[math.log(0.5), math.log(0.5), 0.0]], dtype=F64, requires_grad=True)
    behavior = t([[math.log(0.25), math.log(0.5), float("-inf")]])  # ratios 2, 1, (padding)
    mask = t([[1, 1, 0]])
    w, stats = truncated_is_weights(learner, behavior, mask, level="token", threshold=1.5)
    assert_close(w, t([[1.5, 1.0, 1.0]]))  # truncated at 1.5; 1 (neutral) outside the mask
    assert not w.requires_grad
    assert stats["frac_truncated"].item() == pytest.approx(0.5)
    assert stats["mean"].item() == pytest.approx(1.25)
    assert stats["max"].item() == pytest.approx(1.5)
    assert stats["raw_max"].item() == pytest.approx(2.0)
    w_seq, stats = truncated_is_weights(learner, behavior, mask, level="sequence", threshold=1.5)
    assert_close(w_seq, t([1.5]))  # exp(log 2 + 0) = 2, truncated
    assert stats["raw_max"].item() == pytest.approx(2.0)
    w_seq, stats = truncated_is_weights(learner, behavior, mask, level="sequence", threshold=3.0)
    assert_close(w_seq, t([2.0]))
    assert stats["frac_truncated"].item() == 0.0
    with pytest.raises(ValueError):
        truncated_is_weights(learner, behavior, mask, level="tokens")


# ------------------------------------------------------------------------------------------------ RAPID


def test_rapid_importance_weights_hand_values():
    logp = t([[-1.0, -1.0]])
    behavior = t([[-2.0, -1.5]])  # log-ratios 1 and 0.5
    clipped, raw = rapid_importance_weights(logp, behavior, torch.ones(1, 2), level="sequence", clip=2.0)
    assert_close(raw, t([math.exp(1.5)]))
    assert_close(clipped, t([2.0]))
    clipped, raw = rapid_importance_weights(logp, behavior, torch.ones(1, 2), level="token", clip=2.0)
    assert_close(raw, t([[math.e, math.exp(0.5)]]))
    assert_close(clipped, t([[2.0, math.exp(0.5)]]))


def test_weighted_group_baseline_hand_values():
    rewards, weights = t([1.0, 0.0, 1.0, 0.0]), t([2.0, 0.5, 1.0, 1.0])
    # group 1: (2*1 + 0.5*0) / 2.5 = 0.8; group 2: plain mean 0.5
    assert_close(weighted_group_baseline(rewards, weights, 2), t([0.8, 0.8, 0.5, 0.5]))
    assert_close(weighted_group_baseline(rewards, t([0.0, 0.0, 1.0, 3.0]), 2), t([0.5, 0.5, 0.25, 0.25]))
    with pytest.raises(ValueError):
        weighted_group_baseline(rewards, t([-1.0, 1.0, 1.0, 1.0]), 2)
    with pytest.raises(ValueError):
        weighted_group_baseline(rewards, t([float("inf"), 1.0, 1.0, 1.0]), 2)
    s = math.sqrt(0.5)
    assert_close(rapid_advantages(rewards, weights, 2, normalize_std=False), t([0.2, -0.8, 0.5, -0.5]))
    assert_close(rapid_advantages(rewards, weights, 2), t([0.2, -0.8, 0.5, -0.5]) / (s + EPS))
    assert torch.equal(rapid_advantages(t([1.0, 0.0]), t([2.0, 0.5]), 1), torch.zeros(2, dtype=F64))


def test_rapid_loss_hand_case_value_and_gradient():
    ln2 = math.log(2.0)
    logp = leaf([[-1.0, -1.0], [-1.0, -1.0]])
    # row 0: log-ratio 2 ln 2 (raw weight 4, clipped to 2); row 1: one valid token, log-ratio -ln 2 (weight 0.5)
    behavior = t([[-1.0 - ln2, -1.0 - ln2], [-1.0 + ln2, float("nan")]])
    mask = t([[1, 1], [1, 0]])
    loss, stats = rapid_loss(logp, behavior, t([1.0, 0.0]), mask, 2, is_clip=2.0, normalize_std=False)
    # b = (2*1 + 0.5*0) / 2.5 = 0.8, A = [0.2, -0.8]; per-token value -w A: row 0 -0.4 x 2, row 1 +0.4
    assert loss.item() == pytest.approx((-0.8 + 0.4) / 2)
    (grad,) = torch.autograd.grad(loss, logp)
    assert_close(grad, t([[-0.4, -0.4], [0.4, 0.0]]) / 2)
    assert stats["raw_weight_max"].item() == pytest.approx(4.0)
    assert stats["raw_weight_min"].item() == pytest.approx(0.5)
    assert stats["weight_max"].item() == pytest.approx(2.0)
    assert stats["weight_mean"].item() == pytest.approx(1.25)
    assert stats["frac_clipped"].item() == pytest.approx(0.5)
    assert stats["baseline_degenerate_groups"].item() == 0


def random_batch(seed, n_groups=3, group_size=4, length=6):
    gen = torch.Generator().manual_seed(seed)
    n = n_groups * group_size
    logp = -torch.rand(n, length, generator=gen, dtype=F64) * 3
    mask = torch.rand(n, length, generator=gen) > 0.3
    mask[0] = False  # one empty sequence
    rewards = (torch.rand(n, generator=gen) > 0.5).to(F64)
    return logp, mask, rewards, gen


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("normalize_std", [True, False])
@pytest.mark.parametrize("is_level", ["sequence", "token"])
def test_rapid_with_fresh_samples_equals_unclipped_grpo(agg, normalize_std, is_level):
    logp, mask, rewards, _ = random_batch(seed=2)
    a, b = logp.clone().requires_grad_(), logp.clone().requires_grad_()
    rapid, stats = rapid_loss(a, a.detach(), rewards, mask, 4, is_level=is_level, normalize_std=normalize_std,
                              agg=agg, norm_len=6)
    adv = group_advantages(rewards, 4, normalize_std=normalize_std)
    grpo = policy_loss(b, b.detach(), adv, mask, clip_low=None, clip_high=None, agg=agg, norm_len=6)
    assert_close(rapid, grpo, rtol=1e-12, atol=1e-12)
    (g_rapid,) = torch.autograd.grad(rapid, a)
    (g_grpo,) = torch.autograd.grad(grpo, b)
    assert_close(g_rapid, g_grpo, rtol=1e-12, atol=1e-12)
    assert g_grpo.abs().sum() > 0  # a real comparison, not 0 == 0
    assert stats["frac_clipped"].item() == 0.0 and stats["weight_max"].item() == 1.0


@pytest.mark.parametrize("is_level", ["sequence", "token"])
def test_rapid_with_stale_samples_never_exceeds_the_clip(is_level):
    logp, mask, rewards, gen = random_batch(seed=3)
    behavior = logp + 1.5 * torch.randn(logp.shape, generator=gen, dtype=F64)  # a much older policy
    eta = 2.0
    clipped, raw = rapid_importance_weights(logp, behavior, mask, level=is_level, clip=eta)
    assert bool((clipped <= eta).all()) and bool((raw > eta).any())
    x = logp.clone().requires_grad_()
    loss, stats = rapid_loss(x, behavior, rewards, mask, 4, is_clip=eta, is_level=is_level, normalize_std=False)
    assert stats["weight_max"].item() <= eta and stats["raw_weight_max"].item() > eta
    assert 0 < stats["frac_clipped"].item() < 1
    (grad,) = torch.autograd.grad(loss, x)
    # seq-mean-token-sum: grad_it = -min(w, eta) A_i / N on valid tokens, 0 elsewhere
    seq_w, _ = rapid_importance_weights(logp, behavior, mask, level="sequence", clip=eta)
    adv = rapid_advantages(rewards, seq_w, 4, normalize_std=False)
    w = clipped if is_level == "token" else clipped[:, None]
    expected = torch.where(mask, -w * adv[:, None] / logp.shape[0], torch.zeros_like(logp))
    assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    assert bool((grad.abs() <= eta * adv.abs()[:, None] / logp.shape[0] + 1e-15).all())


# ------------------------------------------------------------------------------------------------ RPO helpers


def test_sample_truncation_is_uniform_within_bounds():
    gen = torch.Generator().manual_seed(4)
    lens = torch.tensor([5, 3, 0, 10]).repeat(20_000)
    m = sample_truncation(lens, 4, gen)
    assert m.dtype == torch.int64 and m.shape == lens.shape
    assert bool((m >= 0).all()) and bool((m <= torch.clamp(lens, max=4)).all())
    for length, upper in ((5, 4), (3, 3), (10, 4)):
        counts = torch.bincount(m[lens == length], minlength=upper + 1)
        assert counts.numel() == upper + 1  # nothing above min(L, len)
        assert bool((counts > 0).all())  # 0 and the full bound are both drawn
        assert chi_square(counts) < 20.0  # df <= 4: p < 0.001 for a uniform sample
    assert bool((m[lens == 0] == 0).all())


def test_sample_truncation_per_question_limit_zero_limit_and_reproducibility():
    lens = torch.tensor([8, 8, 8])
    limits = torch.tensor([0, 1, 8])
    draws = torch.stack([sample_truncation(lens, limits, torch.Generator().manual_seed(s)) for s in range(300)])
    assert bool((draws[:, 0] == 0).all())
    assert set(draws[:, 1].tolist()) == {0, 1}
    assert set(draws[:, 2].tolist()) == set(range(9))  # m = len (regenerate everything) is reachable
    assert torch.equal(sample_truncation(lens, 0, None), torch.zeros(3, dtype=torch.int64))
    one = sample_truncation(lens, limits, torch.Generator().manual_seed(7))
    assert torch.equal(one, sample_truncation(lens, limits, torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError):
        sample_truncation(torch.tensor([3, -1]), 2, None)
    with pytest.raises(ValueError):
        sample_truncation(torch.tensor([3.0]), 2, None)


def test_half_min_length():
    assert half_min_length([7, 10, 9]) == 3
    assert half_min_length(torch.tensor([12, 40])) == 6
    assert half_min_length([1]) == 0 and half_min_length([0, 5]) == 0
    with pytest.raises(ValueError):
        half_min_length([])


def test_epsilon_greedy_pick():
    rewards = t([0.0, 0.5, 1.0, 0.2] * 4000)  # 4000 groups, best member at index 2
    gen = torch.Generator().manual_seed(5)
    assert bool((epsilon_greedy_pick(rewards, 4, 1.0, gen) == 2).all())
    assert bool((epsilon_greedy_pick(t([1.0, 1.0, 0.0, 1.0]), 4, 1.0, gen) == 0).all())  # ties: first maximum
    uniform = epsilon_greedy_pick(rewards, 4, 0.0, gen)
    counts = torch.bincount(uniform, minlength=4)
    assert bool((counts > 0).all()) and chi_square(counts) < 16.3  # df 3: p < 0.001
    mixed = epsilon_greedy_pick(rewards, 4, 0.5, gen)
    assert (mixed == 2).double().mean().item() == pytest.approx(0.5 + 0.5 / 4, abs=0.03)
    a = epsilon_greedy_pick(rewards, 4, 0.3, torch.Generator().manual_seed(9))
    assert torch.equal(a, epsilon_greedy_pick(rewards, 4, 0.3, torch.Generator().manual_seed(9)))
    with pytest.raises(ValueError):
        epsilon_greedy_pick(rewards, 4, 1.5, gen)


# ------------------------------------------------------------------------------------------------ entropy


def test_entropy_from_logits():
    logits = torch.zeros(2, 3, 8, dtype=F64)
    assert_close(entropy_from_logits(logits), torch.full((2, 3), math.log(8), dtype=F64))
    gen = torch.Generator().manual_seed(6)
    logits = (5 * torch.randn(4, 5, 11, generator=gen, dtype=F64)).requires_grad_()
    h = entropy_from_logits(logits)
    assert_close(h, torch.distributions.Categorical(logits=logits).entropy())
    (grad,) = torch.autograd.grad(h.sum(), logits)
    assert bool(torch.isfinite(grad).all())
