"""algorithms.core against numbers worked out by hand from each equation, values and autograd gradients."""
import math

import pytest
import torch
from torch.testing import assert_close

from algorithms.core import (
    PREFIX_RATIOS,
    aggregate_loss,
    count_constant_groups,
    entropy_from_logits,
    group_advantages,
    kl_estimate,
    loss_token_weights,
    masked_mean,
    policy_loss,
    policy_loss_terms,
    rapid_advantages,
    rapid_importance_weights,
    rapid_loss,
    ratio_reference,
    suffix_loss_share,
    truncated_is_weights,
    weighted_group_baseline,
)
from algorithms.rpo import TRUNCATE_PER, epsilon_greedy_pick, sample_truncation

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


def test_equal_rewards_that_float_means_miss_still_give_exactly_zero_advantage():
    # fp32: the mean of eight 0.7s is not 0.7, and / (std 0 + eps) turned that ulp into advantages of ~0.056
    for value in (0.7, 0.1, 1 / 3, 2.2):
        rewards = torch.full((8,), value, dtype=torch.float32)
        assert rewards.mean() != rewards[0] or value == 2.2  # the setting where a naive mean goes wrong
        for normalize in (True, False):
            assert torch.equal(group_advantages(rewards, 8, normalize_std=normalize), torch.zeros(8))
            weights = torch.tensor([2.0, 0.5, 1.0, 1.7, 0.3, 1.1, 0.9, 1.3])  # sum(w r)/sum(w) misses 2.2 by an ulp
            assert torch.equal(rapid_advantages(rewards, weights, 8, normalize_std=normalize), torch.zeros(8))
    # a constant group beside a live one: only the constant group is zeroed
    adv = group_advantages(torch.tensor([0.7] * 4 + [1.0, 0.0, 0.0, 1.0]), 4)
    assert torch.equal(adv[:4], torch.zeros(4)) and adv[4:].abs().min() > 0.8


def test_group_advantages_accepts_integer_rewards():
    assert_close(group_advantages(torch.tensor([1, 0]), 2, normalize_std=False), torch.tensor([0.5, -0.5]))


@pytest.mark.parametrize(
    "rewards,group_size",
    [(t([1.0, 0.0, 1.0]), 2), (t([1.0, float("nan")]), 2), (t([[1.0, 0.0]]), 2), (t([1.0, 0.0]), 0)],
)
def test_group_advantages_rejects_bad_input(rewards, group_size):
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size)


def test_count_constant_groups_by_hand():
    rewards = t([1.0, 1.0, 0.0, 1.0,  # mixed: alive
                 0.0, 0.0, 0.0, 0.0,  # all wrong: dead
                 0.5, 0.5, 0.5, 0.5,  # all equal after shaping: dead
                 1.0, 1.0, 1.0, 0.999])  # fmt: skip  # an all-correct group spread by length shaping: alive
    n = count_constant_groups(rewards, 4)
    assert n.dtype == torch.int64 and n.dim() == 0 and n.item() == 2
    assert count_constant_groups(rewards, 2).item() == 6  # pairs (1,1) (0,1) (0,0) (0,0) (.5,.5) (.5,.5) (1,1) (1,.999)
    assert count_constant_groups(rewards, 1).item() == 16  # a group of one has nothing to compare against
    assert count_constant_groups(torch.tensor([-1, -1, 1, -1]), 2).item() == 1  # signed integer rewards
    # dead <=> zero advantages
    adv = group_advantages(rewards, 4).view(4, 4)
    assert (adv == 0).all(dim=1).sum().item() == 2
    with pytest.raises(ValueError):
        count_constant_groups(rewards, 3)


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


# Row 0: 2 prefix tokens + 2 fresh tokens; row 1: 2 fresh tokens and 2 padding positions.
W_MASK = t([[1, 1, 1, 1], [1, 1, 0, 0]])
W_PREFIX = torch.tensor([[True, True, False, False], [False, False, False, False]])


def test_loss_token_weights_hand_values():
    q, e, h = 1 / 4, 1 / 8, 1 / 2
    want = {
        "token-mean": t([[1, 1, 1, 1], [1, 1, 0, 0]]) / 6,  # 6 valid tokens
        "seq-mean-token-mean": t([[e, e, e, e], [q, q, 0, 0]]),  # 1 / (N=2 * len): 1/(2*4), 1/(2*2)
        "seq-mean-token-sum": t([[h, h, h, h], [h, h, 0, 0]]),  # 1 / N
        "seq-mean-token-sum-norm": t([[e, e, e, e], [e, e, 0, 0]]),  # 1 / (N * norm_len) = 1/(2*4)
    }
    for agg, w in want.items():
        assert_close(loss_token_weights(W_MASK, agg, norm_len=4), w, rtol=0, atol=1e-15)
    assert loss_token_weights(W_MASK.bool(), "token-mean").dtype == torch.get_default_dtype()
    assert torch.equal(loss_token_weights(torch.zeros(2, 3), "token-mean"), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        loss_token_weights(W_MASK, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError):
        loss_token_weights(W_MASK, "sum")


@pytest.mark.parametrize("agg", AGGS)
def test_loss_token_weights_reproduce_aggregate_loss(agg):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(5, 7, generator=gen, dtype=F64)
    mask = torch.rand(5, 7, generator=gen) > 0.4
    mask[2] = False  # an empty row
    w = loss_token_weights(mask, agg, norm_len=7, dtype=F64)
    assert_close((w * x).sum(), aggregate_loss(x, mask, agg, norm_len=7), rtol=1e-13, atol=1e-15)


def test_suffix_loss_share_hand_values():
    want = {
        "token-mean": 4 / 6,  # 4 of the 6 equally weighted tokens are fresh
        "seq-mean-token-mean": (2 / 8 + 2 / 4) / 1.0,  # row 0 fresh 2 * 1/8, row 1 2 * 1/4; weights sum to 1
        "seq-mean-token-sum": (2 * 0.5 + 2 * 0.5) / (6 * 0.5),  # = 2/3
        "seq-mean-token-sum-norm": (4 / 8) / (6 / 8),  # = 2/3
    }
    for agg, share in want.items():
        out = suffix_loss_share(W_MASK, W_PREFIX, agg, norm_len=4)
        assert out.dim() == 0 and not out.requires_grad
        assert out.item() == pytest.approx(share), agg
        assert suffix_loss_share(W_MASK, None, agg, norm_len=4).item() == 1.0
        assert suffix_loss_share(W_MASK, torch.zeros(2, 4), agg, norm_len=4).item() == 1.0
        assert suffix_loss_share(torch.zeros(2, 4), W_PREFIX, agg, norm_len=4).item() == 0.0
    # an all-prefix batch (every cached response reused whole) puts no weight on fresh tokens
    assert suffix_loss_share(W_MASK, W_MASK, "token-mean").item() == 0.0


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


def test_ratio_reference_hand_values():
    logp = leaf([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]])
    rollout = t([[-1.1, -2.2, -3.3], [-1.4, -2.5, -3.6]])
    behavior = t([[-0.5, -0.6, -0.7], [-0.8, float("nan"), float("nan")]])  # NaN only off the prefix
    prefix = torch.tensor([[True, True, False], [True, False, False]])
    assert PREFIX_RATIOS == ("one", "behavior")
    one = ratio_reference(logp, rollout, behavior, prefix, "one")
    assert torch.equal(one, rollout)  # the prefix is treated like fresh tokens
    beh = ratio_reference(logp, rollout, behavior, prefix, "behavior")
    assert torch.equal(beh, t([[-0.5, -0.6, -3.3], [-0.8, -2.5, -3.6]]))
    fresh = ratio_reference(logp, None, behavior, prefix, "one")  # one update per rollout: pi_old = pi_theta
    assert torch.equal(fresh, logp.detach()) and not fresh.requires_grad
    assert torch.equal(ratio_reference(logp, rollout, None, None, "behavior"), rollout)  # no prefix at all
    with pytest.raises(ValueError, match="prefix_ratio"):
        ratio_reference(logp, rollout, behavior, prefix, "cached")
    with pytest.raises(ValueError, match="behavior_logp"):
        ratio_reference(logp, rollout, None, prefix, "behavior")


def shared_prefix_group():
    """G = 4 rows sharing a 2-token prefix (one leaf: identical context, identical logp, and autograd sums
    the rows' gradients as the model's parameters would), then 2 fresh tokens each."""
    prefix = leaf([-0.7, -1.2])
    suffix = leaf([[-0.3, -0.9], [-1.5, -0.2], [-0.4, -0.6], [-2.0, -0.1]])
    logp = torch.cat([prefix.expand(4, 2), suffix], dim=1)
    is_prefix = torch.tensor([[True, True, False, False]] * 4)
    adv = group_advantages(t([1.0, 0.0, 0.0, 1.0]), 4, normalize_std=False)  # [0.5, -0.5, -0.5, 0.5]
    return prefix, suffix, logp, is_prefix, adv


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum"])
def test_prefix_gradient_cancels_under_one_but_not_under_behavior(agg):
    prefix, suffix, logp, is_prefix, adv = shared_prefix_group()
    mask = torch.ones(4, 4, dtype=torch.bool)
    n = 16 if agg == "token-mean" else 4  # the aggregation's denominator
    # the cache entry was made by a policy that gave the prefix tokens ln 1.5 less: rho = 1.5 there
    behavior = torch.where(is_prefix, logp.detach() - math.log(1.5), torch.full((4, 4), float("nan"), dtype=F64))

    old = ratio_reference(logp, None, behavior, is_prefix, "one")
    per_token, _ = policy_loss_terms(logp, old, adv, mask)
    g_prefix, g_suffix = torch.autograd.grad(aggregate_loss(per_token, mask, agg), (prefix, suffix))
    # rho = 1: d l_it / d logp_it = -A_i / n; on the prefix sum_i -A_i / n = -(0.5 - 0.5 - 0.5 + 0.5) / n = 0
    assert_close(g_prefix, t([0.0, 0.0]), rtol=0, atol=1e-15)
    assert_close(g_suffix, -adv[:, None].expand(4, 2) / n)  # the fresh tokens still learn

    old = ratio_reference(logp, None, behavior, is_prefix, "behavior")
    per_token, stats = policy_loss_terms(logp, old, adv, mask)
    (g_prefix,) = torch.autograd.grad(aggregate_loss(per_token, mask, agg), prefix)
    # rho = 1.5 > 1.2: the A = +0.5 rows are clipped (gradient 0), the A = -0.5 rows are not:
    # each prefix token gets 2 rows * (-A rho) / n = 2 * 0.5 * 1.5 / n = 1.5 / n
    assert_close(g_prefix, t([1.5, 1.5]) / n)
    assert stats["clip_frac_high"].item() == pytest.approx(4 / 16)  # 2 rows x 2 prefix tokens


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
    assert stats["advantage_abs_mean"].item() == pytest.approx((0.2 + 0.8) / 2)


def drifting_prefix_batch(drift):
    """One group of 2 sharing a 17-token RPO prefix, then 3 fresh tokens each. The prefix was sampled by an
    older policy: its behaviour log-probs are `drift` nats/token below the current ones. Row 0's suffix is
    fresh (log-ratio 0); row 1's suffix is 0.1 nat/token stale (log-ratio -0.3)."""
    P, S = 17, 3
    logp = torch.full((2, P + S), -0.8, dtype=F64)
    behavior = logp.clone()
    behavior[:, :P] -= drift
    behavior[1, P:] += 0.1
    mask = torch.ones(2, P + S, dtype=torch.bool)
    fresh = mask.clone()
    fresh[:, :P] = False
    return logp, behavior, mask, fresh


def rapid_grad(logp, behavior, mask, **kw):
    x = logp.clone().requires_grad_()
    loss, stats = rapid_loss(x, behavior, t([1.0, 0.0]), mask, 2, is_clip=2.0, normalize_std=False, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss, grad, stats


def test_rapid_weight_mask_ignores_prefix_drift():
    logp, drifted, mask, fresh = drifting_prefix_batch(0.05)
    _, clean, _, _ = drifting_prefix_batch(0.0)
    # Weights over the fresh tokens: [exp(0), exp(-0.3)] = [1, 0.740818]; b = 1 / 1.740818 = 0.574443;
    # A = [0.425557, -0.574443]; w A = [0.425557, -0.425557]; seq-mean-token-sum gradient -w A / N (N = 2).
    w_want = t([1.0, math.exp(-0.3)])
    a_want = t([1 - 1 / (1 + math.exp(-0.3)), -1 / (1 + math.exp(-0.3))])
    g_row = 0.4255574831883410 / 2
    for behavior in (drifted, clean):
        w, _ = rapid_importance_weights(logp, behavior, fresh, "sequence", 2.0)
        assert_close(w, w_want)
        assert_close(rapid_advantages(t([1.0, 0.0]), w, 2, normalize_std=False), a_want)
        loss, grad, stats = rapid_grad(logp, behavior, mask, weight_mask=fresh)
        assert_close(grad, torch.cat([torch.full((1, 20), -g_row), torch.full((1, 20), g_row)]).to(F64))
        assert stats["frac_clipped"].item() == 0.0 and stats["weight_max"].item() == pytest.approx(1.0)
    assert_close(rapid_grad(logp, clean, mask)[1], rapid_grad(logp, drifted, mask, weight_mask=fresh)[1])

    # weight_mask=None sums the prefix drift into w: row 0 raw exp(17 * 0.05) = exp(0.85) = 2.3396 -> clipped
    # to 2; row 1 exp(0.85 - 0.3) = exp(0.55) = 1.7333. b = 2 / 3.7333 = 0.535726, A = [0.464274, -0.535726],
    # w A = [0.928548, -0.928548]: the gradient is 2.18 times the drift-free one.
    loss, grad, stats = rapid_grad(logp, drifted, mask)
    assert stats["raw_weight_max"].item() == pytest.approx(2.3396468519)
    assert stats["weight_max"].item() == 2.0 and stats["frac_clipped"].item() == 0.5
    w, _ = rapid_importance_weights(logp, drifted, mask, "sequence", 2.0)
    assert_close(w, t([2.0, math.exp(0.55)]))
    assert_close(rapid_advantages(t([1.0, 0.0]), w, 2, normalize_std=False), t([1 - 2 / 3.7332530178673953,
                                                                                 -2 / 3.7332530178673953]))
    assert_close(grad[:, 0], t([-0.9285483783563688, 0.9285483783563688]) / 2)


@pytest.mark.parametrize("is_level", ["sequence", "token"])
def test_rapid_weight_mask_equal_to_mask_is_the_default(is_level):
    logp, mask, rewards, gen = random_batch(seed=12)
    behavior = logp + 0.4 * torch.randn(logp.shape, generator=gen, dtype=F64)
    a, sa = rapid_loss(logp, behavior, rewards, mask, 4, is_level=is_level)
    b, sb = rapid_loss(logp, behavior, rewards, mask, 4, is_level=is_level, weight_mask=mask)
    assert a.item() == b.item() and all(torch.equal(sa[k], sb[k]) for k in sa)


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


# ------------------------------------------------------------------------------------- RPO helpers (algorithms.rpo)


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


def old_sample_truncation(lens, limit, gen):
    """The implementation before min_truncate / per existed, kept to pin bit-identical draws."""
    upper = torch.minimum(lens.long(), torch.as_tensor(limit).long().expand_as(lens))
    u = torch.rand(lens.shape, generator=gen, dtype=torch.float64)
    return torch.minimum(torch.floor(u * (upper + 1).double()).long(), upper)


def test_sample_truncation_per_question_default_is_bit_identical_to_before():
    lens = torch.tensor([5, 3, 0, 10, 300, 1]).repeat(500)
    for limit in (4, torch.tensor([0, 1, 2, 3, 300, 9]).repeat(500)):
        new = sample_truncation(lens, limit, torch.Generator().manual_seed(13))
        assert torch.equal(new, old_sample_truncation(lens, limit, torch.Generator().manual_seed(13)))
        explicit = sample_truncation(lens, limit, torch.Generator().manual_seed(13), min_truncate=0, per="question")
        assert torch.equal(explicit, new)


def uniform_counts_ok(values, lo, hi):
    """Every value of lo..hi is drawn, nothing else, and each count is within 8% of n / (hi - lo + 1)
    (n = 20000, k <= 5 values: sd of a count <= sqrt(4000 * 0.8) = 57, 8% of 4000 = 320, over 5 sd)."""
    counts = torch.bincount(values - lo)
    expected = values.numel() / (hi - lo + 1)
    return counts.numel() == hi - lo + 1 and bool(((counts - expected).abs() <= 0.08 * expected).all())


def test_sample_truncation_min_truncate_ranges_and_uniformity():
    gen = torch.Generator().manual_seed(14)
    lens = torch.tensor([10, 3, 1, 0, 2]).repeat(20_000)
    m = sample_truncation(lens, 4, gen, min_truncate=2)
    # len 10: U{2..4}; len 3: U{2..3}; len 1 < min_truncate: regenerated whole (lo = hi = 1); len 0: 0; len 2: 2
    assert uniform_counts_ok(m[lens == 10], 2, 4) and uniform_counts_ok(m[lens == 3], 2, 3)
    assert bool((m[lens == 1] == 1).all()) and bool((m[lens == 0] == 0).all()) and bool((m[lens == 2] == 2).all())
    m1 = sample_truncation(lens, 4, gen, min_truncate=1)  # the authors' randint(1, L): never keeps everything
    assert bool((m1[lens >= 1] >= 1).all())
    assert uniform_counts_ok(m1[lens == 10], 1, 4)
    # min_truncate above L: lo = min(min_truncate, hi) = hi, every response loses exactly min(L, len)
    assert torch.equal(sample_truncation(torch.tensor([9, 2]), 3, gen, min_truncate=5), torch.tensor([3, 2]))


def test_sample_truncation_batch_mode_one_shared_draw():
    assert TRUNCATE_PER == ("question", "batch")
    gen = torch.Generator().manual_seed(15)
    lens = torch.tensor([50, 40, 30, 20])  # all >= L = 5
    draws = torch.stack([sample_truncation(lens, 5, gen, min_truncate=1, per="batch") for _ in range(20_000)])
    assert bool((draws == draws[:, :1]).all())  # one m for the whole batch
    assert uniform_counts_ok(draws[:, 0], 1, 5)  # m ~ U{1..5}
    # short responses: m_b = clamp(m, lo_b, hi_b), hi_b = min(5, len_b), lo_b = min(1, hi_b)
    short = torch.tensor([50, 3, 1, 0])
    for seed in range(200):
        m = sample_truncation(short, 5, torch.Generator().manual_seed(seed), min_truncate=1, per="batch")
        shared = int(sample_truncation(lens, 5, torch.Generator().manual_seed(seed), min_truncate=1, per="batch")[0])
        assert m.tolist() == [shared, min(shared, 3), 1, 0]
    # an all-equal tensor limit is one L; differing limits cannot share one draw
    same = sample_truncation(lens, torch.full((4,), 5), torch.Generator().manual_seed(3), per="batch")
    assert torch.equal(same, sample_truncation(lens, 5, torch.Generator().manual_seed(3), per="batch"))
    with pytest.raises(ValueError, match="one value"):
        sample_truncation(lens, torch.tensor([5, 5, 4, 5]), gen, per="batch")


def test_sample_truncation_determinism_and_validation():
    lens = torch.tensor([7, 300, 12, 0, 45])
    for per in TRUNCATE_PER:
        a = sample_truncation(lens, 30, torch.Generator().manual_seed(16), min_truncate=1, per=per)
        assert torch.equal(a, sample_truncation(lens, 30, torch.Generator().manual_seed(16), min_truncate=1, per=per))
        assert a.dtype == torch.int64 and a.shape == lens.shape
    with pytest.raises(ValueError, match="per="):
        sample_truncation(lens, 30, None, per="group")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="min_truncate"):
            sample_truncation(lens, 30, None, min_truncate=bad)


def test_epsilon_greedy_pick():
    rewards = t([0.0, 0.5, 1.0, 0.2] * 4000)  # 4000 groups, best member at index 2
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(epsilon_greedy_pick(rewards, 4, 1.0, gen), torch.arange(4000) * 4 + 2)  # flat indices
    assert epsilon_greedy_pick(t([1.0, 1.0, 0.0, 1.0]), 4, 1.0, gen).tolist() == [0]  # ties: first maximum
    uniform = epsilon_greedy_pick(rewards, 4, 0.0, gen) % 4
    counts = torch.bincount(uniform, minlength=4)
    assert bool((counts > 0).all()) and chi_square(counts) < 16.3  # df 3: p < 0.001
    mixed = epsilon_greedy_pick(rewards, 4, 0.5, gen) % 4
    assert (mixed == 2).double().mean().item() == pytest.approx(0.5 + 0.5 / 4, abs=0.03)
    a = epsilon_greedy_pick(rewards, 4, 0.3, torch.Generator().manual_seed(9))
    assert torch.equal(a, epsilon_greedy_pick(rewards, 4, 0.3, torch.Generator().manual_seed(9)))
    with pytest.raises(ValueError):
        epsilon_greedy_pick(rewards, 4, 1.5, gen)


def test_epsilon_greedy_pick_pools_the_groups_of_a_repeated_question():
    # groups 0 and 2 are question 0, group 1 is question 1; hand-computed: q0's best is 0.9 at flat index 5
    rewards = t([0.2, 0.1, 0.7, 0.3, 0.4, 0.9])
    questions = torch.tensor([0, 1, 0])
    assert epsilon_greedy_pick(rewards, 2, 1.0, None, questions).tolist() == [5, 2]
    # uniform: each of q0's 4 samples (flat 0, 1, 4, 5) equally often, q1's 2 (flat 2, 3)
    rewards = t([0.0] * 6 * 3000)
    questions = torch.tensor([0, 1, 0] * 3000) + torch.arange(3000).repeat_interleave(3) * 2
    picks = epsilon_greedy_pick(rewards, 2, 0.0, torch.Generator().manual_seed(3), questions) % 6
    q0 = torch.bincount(picks[0::2], minlength=6)
    assert q0[[2, 3]].sum() == 0 and chi_square(q0[[0, 1, 4, 5]]) < 16.3  # df 3: p < 0.001
    assert set(picks[1::2].tolist()) == {2, 3}
    # without repeats, the same draws as independent groups (the default numbering)
    r = t(torch.rand(40, generator=torch.Generator().manual_seed(1)).tolist())
    assert torch.equal(epsilon_greedy_pick(r, 4, 0.4, torch.Generator().manual_seed(2)),
                       epsilon_greedy_pick(r, 4, 0.4, torch.Generator().manual_seed(2), torch.arange(10)))
    for bad in ([0, 2, 0], [1, 1, 1], [0, 1]):
        with pytest.raises(ValueError, match="questions"):
            epsilon_greedy_pick(t([0.0] * 6), 2, 0.5, None, torch.tensor(bad))


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


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "rapid"])
def test_groups_an_algorithm_calls_inert_get_exactly_zero_gradient_from_its_loss(name):
    """Algorithm.inert_groups lets the learner skip groups: each group it names must add exactly nothing to the loss's
    gradient (here with importance weights away from 1 and rewards of 0.7 whose float mean is not 0.7), and a KL term
    makes no group inert."""
    from algorithms import build_algorithm
    from conftest import compose
    from rpo_core.common.batching import to_train_batch
    from rpo_core.common.types import RolloutBatch, Sample

    rewards = [1.0, 1.0, 1.0, 0.0, 0.7, 0.7, 0.0, 0.0]
    samples = [Sample(uid=str(i // 2), prompt_ids=[1, 2], response_ids=[5, 6 + i, 7], behavior_logprobs=[-1.0, -1.5, -2.0])
               for i in range(8)]
    batch = RolloutBatch(samples, group_size=2, rewards=[torch.tensor(r).float().item() for r in rewards])
    for kl in (0.0, 0.1):
        algo = build_algorithm(compose(f"algorithm={name}", f"algorithm.kl_coef={kl}").algorithm, 16)
        tb = algo.prepare(to_train_batch(batch, pad_id=0, step=1))
        tb.rewards, tb.ref_logp = tb.rewards.float(), torch.full((8, 3), -1.2)
        logp = (torch.full((8, 3), -1.3) + 0.05 * torch.arange(24.0).view(8, 3)).requires_grad_()
        loss, _ = algo.loss(logp, tb)
        loss.backward()
        inert = algo.inert_groups(tb)
        if kl:
            assert not inert.any()
            continue
        assert inert.tolist() == [True, False, True, True]
        grad = logp.grad.view(4, 2, 3)
        assert torch.equal(grad[inert], torch.zeros_like(grad[inert])) and grad[1].abs().min() > 0


def _rapid_batch(rewards, group_size):
    """Three response tokens per row, behaviour log-probs -1; the current policy's are -1 + 0.1 k on row k."""
    from rpo_core.common.batching import to_train_batch
    from rpo_core.common.types import RolloutBatch, Sample

    samples = [Sample(uid=str(i // group_size), prompt_ids=[1, 2], response_ids=[5, 6 + i, 7],
                      behavior_logprobs=[-1.0] * 3) for i in range(len(rewards))]
    tb = to_train_batch(RolloutBatch(samples, group_size=group_size, rewards=rewards), pad_id=0, step=1)
    return tb, (torch.full((len(rewards), 3), -1.0) + 0.1 * torch.arange(len(rewards))[:, None])


def test_rapid_reports_the_advantages_its_loss_forms():
    """RAPID's advantages depend on the current policy, so they are formed in its loss and tb.advantages stays 0 (the
    loop's advantage_abs_mean read 0 on every RAPID step): the loss reports their mean |A|. Row k's sequence weight is
    exp(3 * 0.1 k), clipped at is_clip = 2: w = [1, e^0.3, e^0.6, 2]; rewards [1, 0, 0, 0] (std 0.5):
    b = 1 / sum w, A = ([1, 0, 0, 0] - b) / (0.5 + eps), mean |A| = (1 + 2b) / (4 (0.5 + eps)) (0.75 unweighted)."""
    from algorithms import build_algorithm
    from conftest import compose

    algo = build_algorithm(compose("algorithm=rapid", "algorithm.is_clip=2.0").algorithm, 16)
    tb, logp = _rapid_batch([1.0, 0.0, 0.0, 0.0], group_size=4)
    tb = algo.prepare(tb)
    _, stats = algo.loss(logp.requires_grad_(), tb)
    b = 1 / (1 + math.exp(0.3) + math.exp(0.6) + 2)
    assert torch.equal(tb.advantages, torch.zeros(4))
    assert stats["advantage_abs_mean"].item() == pytest.approx((1 + 2 * b) / (4 * (0.5 + EPS)))
    assert stats["advantage_abs_mean"].item() < 0.7  # the importance-weighted baseline, not the plain mean
    tb, logp = _rapid_batch([1.0, 1.0, 0.0, 0.0], group_size=2)
    assert algo.loss(logp, algo.prepare(tb))[1]["advantage_abs_mean"].item() == 0.0  # no reward spread, no advantage


@pytest.mark.full
def test_the_loop_logs_rapids_advantages(tiny_model_path, dist):
    """update_phase (rpo_core/train.py) with a real DeepSpeed learner: RAPID's advantage_abs_mean is the mean |A| its
    loss formed over the groups the learner computed, not the zeros left in tb.advantages. With groups of 2 and binary
    rewards a computed group's mean |A| is 1 / (2 std) = 0.707 whatever the weights; counting the skipped group of
    equal rewards would give 0.471."""
    from types import SimpleNamespace

    from algorithms import build_algorithm
    from conftest import compose
    from rpo_core.common.batching import to_train_batch
    from rpo_core.distributed import Placement
    from rpo_core.train import update_phase
    from test_learner_step import _learner, _rollout

    cfg = compose("model=tiny", "algorithm=rapid")
    learner = _learner(tiny_model_path)
    c = SimpleNamespace(cfg=cfg, algorithm=build_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens), learner=learner,
                        reference=None, pad_id=0, placement=Placement())
    batch = _rollout([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], seed=0)
    logp = learner.logprobs(to_train_batch(batch, 0, step=1))
    for k, s in enumerate(batch.samples):  # behaviour log-probs 0.05 k nats/token below the learner's
        s.behavior_logprobs = (logp[k, : len(s.response_ids)] - 0.05 * k).tolist()
    tb = to_train_batch(batch, 0, step=1)
    w, _ = rapid_importance_weights(logp, tb.behavior_logp, tb.loss_mask, "sequence", cfg.algorithm.is_clip)
    adv = rapid_advantages(tb.rewards, w, 2).view(3, 2)[[0, 2]]
    stats = update_phase(c, batch, step=1).metrics
    assert stats["learner_rows_skipped"] == 2
    assert stats["advantage_abs_mean"] == pytest.approx(adv.abs().mean().item(), rel=1e-4)
    assert stats["advantage_abs_mean"] > 0.5
