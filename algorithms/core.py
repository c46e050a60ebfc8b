"""The algorithm math as small pure functions on tensors.

Group advantages, KL estimators, loss aggregation (and the weight it gives each token), the clipped surrogate
and its pi_old, importance weights (truncated IS for the engine-vs-learner mismatch, RAPID's off-policy weights
and baseline). RPO's sampling helpers (truncation, cache pick) live with its planner in `algorithms.rpo`.
Tensors in, tensors out: no models, no configs, no framework objects.

Conventions: N sequences stored group-contiguously (B groups of G: rows g*G .. g*G+G-1 share a prompt),
T token positions, `mask` [N, T] marks the response tokens that enter the loss (bool or 0/1). Positions
outside the mask never reach a value or a gradient, even if they hold NaN or inf (padding garbage is
common), and a sequence whose mask is all 0 contributes 0 to every loss. Stats come back as detached 0-dim
tensors.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "k2", "k3")
IS_LEVELS = ("token", "sequence")
PREFIX_RATIOS = ("one", "behavior")


# ---------------------------------------------------------------------------------------------------------
# Validation and small helpers
# ---------------------------------------------------------------------------------------------------------


def _bool_mask(mask: Tensor, shape: torch.Size) -> Tensor:
    """The mask as bool, after checking its shape and that it holds only 0 and 1."""
    if mask.shape != shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 and 1 (or be bool)")
    return mask.bool()


def by_group(values: Tensor, group_size: int, name: str = "rewards") -> Tensor:
    """A flat [B*G] tensor viewed as [B, G] floats, after checking the grouping and finiteness."""
    if values.dim() != 1:
        raise ValueError(f"{name} must be a flat tensor of B*G values, got shape {tuple(values.shape)}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if values.numel() % group_size:
        raise ValueError(f"{name} has {values.numel()} values, not a multiple of group_size={group_size}")
    if not values.is_floating_point():
        values = values.to(torch.get_default_dtype())
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} must be finite")
    return values.view(-1, group_size)


def _constant(grouped: Tensor) -> Tensor:
    """[B, 1] bool: the group's values are all (exactly) equal."""
    return (grouped == grouped[:, :1]).all(dim=1, keepdim=True)


def _group_std(grouped: Tensor) -> Tensor:
    """Unbiased sample std of each group, [B, 1]; 0 for groups of one (torch.std would give NaN)."""
    if grouped.shape[1] == 1:
        return torch.zeros_like(grouped)
    return grouped.std(dim=1, keepdim=True)


def _per_token(values: Tensor, shape: torch.Size, name: str) -> Tensor:
    """Per-sequence [N] values broadcast to [N, T]; per-token [N, T] values pass through."""
    if values.shape == shape:
        return values
    if values.dim() == 1 and values.shape[0] == shape[0]:
        return values.unsqueeze(1).expand(shape)
    raise ValueError(f"{name} must have shape [N]={shape[0]} or [N, T]={tuple(shape)}, got {tuple(values.shape)}")


def _masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """max of x over the mask; 0 when the mask is empty."""
    if not bool(mask.any()):
        return x.new_zeros(())
    return x[mask].max()


def _masked_min(x: Tensor, mask: Tensor) -> Tensor:
    """min of x over the mask; 0 when the mask is empty."""
    if not bool(mask.any()):
        return x.new_zeros(())
    return x[mask].min()


def masked_mean(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """mean(x | mask) = sum(x * mask) / max(sum(mask), 1): 0 (never NaN) where no element is valid.

    Masked-out elements are excluded by selection, not multiplication, so NaN or inf there is harmless.
    """
    m = _bool_mask(mask, x.shape)
    kept = torch.where(m, x, torch.zeros_like(x))
    if dim is None:
        return kept.sum() / m.sum().clamp(min=1)
    return kept.sum(dim) / m.sum(dim).clamp(min=1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H = logsumexp(z) - sum_v softmax(z)_v z_v over the last dim (finite logits).

    Same value as torch.distributions.Categorical(logits=z).entropy() with two [.., V] temporaries instead
    of four, which matters at vocabulary size. Differentiable.
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Advantages, KL, aggregation
# ---------------------------------------------------------------------------------------------------------


def group_advantages(rewards: Tensor, group_size: int, normalize_std: bool = True, eps: float = 1e-6) -> Tensor:
    """A_i = (r_i - mean_g r) / (std_g r + eps) (unbiased std), or r_i - mean_g r without std; 0 for G = 1.

    rewards: flat [B*G], consecutive groups of `group_size`. Returns [B*G]. All-equal rewards give exactly 0.
    """
    grouped = by_group(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize_std:
        centred = centred / (_group_std(grouped) + eps)
    # The float mean of equal rewards can miss them by an ulp (8 x 0.7 in fp32), which / (0 + eps) makes ~0.05.
    return torch.where(_constant(grouped), torch.zeros_like(centred), centred).reshape(-1)


def constant_groups(rewards: Tensor, group_size: int) -> Tensor:
    """[B] bool, detached: r_gj = r_g0 for all j (exact equality; a group of one is constant)."""
    return _constant(by_group(rewards.detach(), group_size))[:, 0]


def count_constant_groups(rewards: Tensor, group_size: int) -> Tensor:
    """#{g : r_gj = r_g0 for all j}: groups whose rewards are all (exactly) equal, int64 0-dim, detached.

    Such a group is dead: every advantage in it is 0 (group_advantages, and rapid_advantages whatever the
    weights), so it adds no gradient, only tokens to the denominators. A group of one is always constant.
    """
    return constant_groups(rewards, group_size).sum()


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str) -> Tensor:
    """Per-token KL(pi_theta || pi_ref) estimate from sampled-token log-probs, d = logp - ref_logp:
    k1 = d, k2 = d^2 / 2, k3 = exp(-d) + d - 1.

    k1 is unbiased but signed, k2 is biased and non-negative, k3 is unbiased and non-negative (Schulman,
    "Approximating KL divergence"). No clamping: pass sensible log-probs. Mask the result yourself.
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} differ in shape")
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d.square()
    if kind == "k3":
        return torch.exp(-d) + d - 1.0
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {KL_KINDS}")


def _check_agg(mode: str, norm_len: Optional[float]) -> None:
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {AGG_MODES}")
    if mode == "seq-mean-token-sum-norm" and (norm_len is None or not norm_len > 0):
        raise ValueError(f"seq-mean-token-sum-norm needs a positive norm_len, got {norm_len!r}")


def aggregate_loss(per_token: Tensor, mask: Tensor, mode: str, norm_len: Optional[float] = None) -> Tensor:
    """Reduce a per-token loss l [N, T] over the mask m:
    token-mean: sum_it l m / sum_it m                     (DAPO's token-level loss)
    seq-mean-token-mean: 1/N sum_i sum_t l m / sum_t m     (original GRPO)
    seq-mean-token-sum: 1/N sum_i sum_t l m
    seq-mean-token-sum-norm: 1/N sum_i sum_t l m / norm_len (Dr.GRPO; norm_len a constant generation length)

    N counts every row, so a sequence with no valid token contributes 0 to the sequence mean (it is not
    dropped from the denominator: the normalizer stays a constant of the batch shape). An all-masked batch
    gives 0 with a zero gradient, never NaN. Equals (loss_token_weights(m, mode) * l).sum() for finite l.
    """
    if per_token.dim() != 2:
        raise ValueError(f"per_token must be [N, T], got shape {tuple(per_token.shape)}")
    m = _bool_mask(mask, per_token.shape)
    _check_agg(mode, norm_len)
    masked = torch.where(m, per_token, torch.zeros_like(per_token))
    if mode == "token-mean":
        return masked.sum() / m.sum().clamp(min=1)
    n_seq = max(per_token.shape[0], 1)
    seq_sum = masked.sum(dim=1)
    if mode == "seq-mean-token-mean":
        return (seq_sum / m.sum(dim=1).clamp(min=1)).sum() / n_seq
    if mode == "seq-mean-token-sum":
        return seq_sum.sum() / n_seq
    return seq_sum.sum() / (n_seq * norm_len)


def loss_token_weights(
    mask: Tensor, agg: str, norm_len: Optional[float] = None, dtype: Optional[torch.dtype] = None
) -> Tensor:
    """w_it with aggregate_loss(l, m, agg) = sum_it w_it l_it: m / sum m (token-mean), m / (N sum_t m_i)
    (seq-mean-token-mean), m / N (seq-mean-token-sum), m / (N norm_len) (seq-mean-token-sum-norm).

    [N, T], 0 outside the mask; dtype defaults to the mask's if floating, else torch's default. Shows where a
    loss puts its weight, e.g. how much of it lands on an RPO prefix (suffix_loss_share).
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be [N, T], got shape {tuple(mask.shape)}")
    m = _bool_mask(mask, mask.shape)
    _check_agg(agg, norm_len)
    if dtype is None:
        dtype = mask.dtype if mask.is_floating_point() else torch.get_default_dtype()
    w = m.to(dtype)
    n_seq = max(mask.shape[0], 1)
    if agg == "token-mean":
        return w / m.sum().clamp(min=1)
    if agg == "seq-mean-token-mean":
        return w / (m.sum(dim=1, keepdim=True).clamp(min=1) * n_seq)
    if agg == "seq-mean-token-sum":
        return w / n_seq
    return w / (n_seq * norm_len)


def suffix_loss_share(
    mask: Tensor, prefix_mask: Optional[Tensor], agg: str, norm_len: Optional[float] = None
) -> Tensor:
    """sum_{it not prefix} w_it / sum_it w_it, w = loss_token_weights(mask, agg): the share of the loss weight on
    freshly generated tokens; detached 0-dim float64.

    1 without a prefix (prefix_mask None or empty), 0 for an empty mask. With an RPO prefix in the loss, the
    rest (1 - share) is the weight spent on cached tokens; it depends on agg (seq-mean-token-mean gives a short
    suffix after a long prefix a small share, token-mean counts tokens).
    """
    with torch.no_grad():
        w = loss_token_weights(mask, agg, norm_len, dtype=torch.float64)
        total = w.sum()
        if prefix_mask is None:
            fresh = total
        else:
            fresh = torch.where(_bool_mask(prefix_mask, w.shape), torch.zeros_like(w), w).sum()
        return fresh / total if bool(total > 0) else total.new_zeros(())


# ---------------------------------------------------------------------------------------------------------
# Clipped surrogate (GRPO / Dr.GRPO / DAPO)
# ---------------------------------------------------------------------------------------------------------


def ratio_reference(
    logp: Tensor,
    rollout_logp: Optional[Tensor],
    behavior_logp: Optional[Tensor],
    prefix_mask: Optional[Tensor],
    prefix_ratio: str = "one",
) -> Tensor:
    """pi_old of rho = exp(logp - old_logp): old_logp_t = behavior_logp_t on RPO prefix tokens if
    prefix_ratio = "behavior", else rollout_logp_t. Detached [N, T], to pass as policy_loss's old_logp.

    rollout_logp: the learner's log-probs of the batch under the policy that generated it (None = logp, i.e.
    one update per rollout: rho = 1 on fresh tokens). The cached prefix came from an older policy:
    "one" treats it like fresh tokens, as the authors' code does (yhz5613813/RPO: pi_old is the current
    policy's own logprobs of the whole completion); "behavior" uses the cached behaviour log-probs, an IS
    ratio to the policy that made the cache entry, so clipping can engage on a drifted prefix.
    """
    if logp.dim() != 2:
        raise ValueError(f"logp must be [N, T], got shape {tuple(logp.shape)}")
    if prefix_ratio not in PREFIX_RATIOS:
        raise ValueError(f"unknown prefix_ratio {prefix_ratio!r}; choose one of {PREFIX_RATIOS}")
    fresh = logp if rollout_logp is None else rollout_logp
    if fresh.shape != logp.shape:
        raise ValueError(f"rollout_logp {tuple(fresh.shape)} and logp {tuple(logp.shape)} differ in shape")
    fresh = fresh.detach()
    if prefix_ratio == "one" or prefix_mask is None:
        return fresh
    if behavior_logp is None or behavior_logp.shape != logp.shape:
        raise ValueError('prefix_ratio="behavior" needs behavior_logp of the same [N, T] shape as logp')
    prefix = _bool_mask(prefix_mask, logp.shape)
    return torch.where(prefix, behavior_logp.detach(), fresh)


def _clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: Optional[float],
    clip_high: Optional[float],
    dual_clip: Optional[float],
    is_weights: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-token loss (0 outside the mask), the ratio, the bool mask and the per-token advantages."""
    if logp.dim() != 2:
        raise ValueError(f"logp must be [N, T], got shape {tuple(logp.shape)}")
    if old_logp.shape != logp.shape:
        raise ValueError(f"old_logp {tuple(old_logp.shape)} and logp {tuple(logp.shape)} differ in shape")
    for name, c in (("clip_low", clip_low), ("clip_high", clip_high)):
        if c is not None and c < 0:
            raise ValueError(f"{name} must be >= 0 or None (no clipping on that side), got {c}")
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (it caps the loss of negative-advantage tokens), got {dual_clip}")
    m = _bool_mask(mask, logp.shape)
    adv = _per_token(advantages.detach(), logp.shape, "advantages")
    # Select before exp: padding may hold -inf/NaN, and where() keeps both its value and its gradient out.
    log_ratio = torch.where(m, logp - old_logp.detach(), torch.zeros_like(logp))
    ratio = torch.exp(log_ratio)
    low = -math.inf if clip_low is None else 1.0 - clip_low
    high = math.inf if clip_high is None else 1.0 + clip_high
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(low, high))
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
    if is_weights is not None:
        w = _per_token(is_weights.detach(), logp.shape, "is_weights")
        loss = loss * torch.where(m, w, torch.zeros_like(w))
    return torch.where(m, loss, torch.zeros_like(loss)), ratio, m, adv


def policy_loss_terms(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: Optional[float] = 0.2,
    clip_high: Optional[float] = 0.2,
    dual_clip: Optional[float] = None,
    is_weights: Optional[Tensor] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """l_t = -w_t * min(rho_t A, clip(rho_t, 1 - clip_low, 1 + clip_high) A), rho_t = exp(logp_t - old_logp_t);
    with dual_clip c, a token with A < 0 has l_t = w_t * min(-min(rho A, clip(rho) A), -c A).

    logp [N, T] (differentiable), old_logp [N, T] (detached here), advantages [N] (or [N, T]), mask [N, T].
    clip_low / clip_high None disables that side of the clip. is_weights: optional importance weights [N, T]
    or [N], detached here, multiplying the per-token loss (truncated-IS correction, RAPID).
    Returns the per-token loss [N, T] (0 outside the mask; reduce it with aggregate_loss) and the stats,
    taken over valid tokens:
      ratio_mean, ratio_max, ratio_min;
      clip_frac_high: A > 0 and rho > 1 + clip_high (clip active, zero gradient);
      clip_frac_low:  A < 0 and rho < 1 - clip_low  (clip active, zero gradient);
      dual_clip_frac: A < 0 and rho > dual_clip      (cap active, zero gradient).
    """
    per_token, ratio, m, adv = _clipped_surrogate(
        logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip, is_weights
    )
    with torch.no_grad():
        ratio = ratio.detach()
        high = math.inf if clip_high is None else 1.0 + clip_high
        low = -math.inf if clip_low is None else 1.0 - clip_low
        dual = math.inf if dual_clip is None else dual_clip
        as_float = lambda active: masked_mean((m & active).to(ratio.dtype), m)  # noqa: E731
        stats = {
            "ratio_mean": masked_mean(ratio, m),
            "ratio_max": _masked_max(ratio, m),
            "ratio_min": _masked_min(ratio, m),
            "clip_frac_high": as_float((adv > 0) & (ratio > high)),
            "clip_frac_low": as_float((adv < 0) & (ratio < low)),
            "dual_clip_frac": as_float((adv < 0) & (ratio > dual)),
        }
    return per_token, stats


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: Optional[float] = 0.2,
    clip_high: Optional[float] = 0.2,
    dual_clip: Optional[float] = None,
    agg: str = "token-mean",
    norm_len: Optional[float] = None,
    is_weights: Optional[Tensor] = None,
) -> Tensor:
    """L = agg_t[-min(rho_t A, clip(rho_t, 1 - clip_low, 1 + clip_high) A)], the negated clipped surrogate.

    Scalar loss; see policy_loss_terms for the per-token terms, dual-clip, is_weights and the stats, and
    aggregate_loss for `agg`.
    """
    per_token, *_ = _clipped_surrogate(logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip, is_weights)
    return aggregate_loss(per_token, mask, agg, norm_len)


# ---------------------------------------------------------------------------------------------------------
# Importance weights
# ---------------------------------------------------------------------------------------------------------


def _log_importance_ratio(logp: Tensor, behavior_logp: Tensor, mask: Tensor, level: str) -> tuple[Tensor, Tensor]:
    """Detached log pi/mu: per token [N, T] (0 outside the mask) or per sequence [N] (masked sum), and the
    bool mask of the units that count in stats (valid tokens, or sequences with at least one valid token)."""
    if logp.dim() != 2 or behavior_logp.shape != logp.shape:
        raise ValueError(
            f"logp and behavior_logp must both be [N, T], got {tuple(logp.shape)} and {tuple(behavior_logp.shape)}"
        )
    if level not in IS_LEVELS:
        raise ValueError(f"unknown importance-weight level {level!r}; choose one of {IS_LEVELS}")
    m = _bool_mask(mask, logp.shape)
    with torch.no_grad():
        log_ratio = torch.where(m, logp.detach() - behavior_logp.detach(), torch.zeros_like(logp))
        if level == "token":
            return log_ratio, m
        return log_ratio.sum(dim=1), m.any(dim=1)


def truncated_is_weights(
    learner_logp: Tensor,
    behavior_logp: Tensor,
    mask: Tensor,
    level: str = "token",
    threshold: float = 2.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """w = min(exp(learner_logp - behavior_logp), C): truncated IS correcting the rollout engine (vLLM) vs
    learner mismatch; sequence level uses exp(sum_t m_t (learner_logp_t - behavior_logp_t)).

    learner_logp: the learner's log-probs of the sampled tokens under the weights that generated them;
    behavior_logp: the engine's. Returns detached weights ([N, T], 1 outside the mask, or [N]) to pass as
    `is_weights`, and stats over valid units: mean and max of the truncated weights, raw_max (may be inf),
    frac_truncated (raw weight > C).
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    log_ratio, valid = _log_importance_ratio(learner_logp, behavior_logp, mask, level)
    raw = torch.exp(log_ratio)
    weights = raw.clamp(max=threshold)
    stats = {
        "mean": masked_mean(weights, valid),
        "max": _masked_max(weights, valid),
        "raw_max": _masked_max(raw, valid),
        "frac_truncated": masked_mean((raw > threshold).to(raw.dtype), valid),
    }
    return weights, stats


# ---------------------------------------------------------------------------------------------------------
# RAPID (Huang et al. 2025, arXiv 2510.03515): large-batch inference, then H off-policy mini-batch
# policy-gradient steps on that data, with clipped importance weights and an importance-weighted baseline.
# ---------------------------------------------------------------------------------------------------------


def rapid_importance_weights(
    logp: Tensor,
    behavior_logp: Tensor,
    mask: Tensor,
    level: str = "sequence",
    clip: float = 2.0,
) -> tuple[Tensor, Tensor]:
    """w = pi_theta(y|x) / pi_beh(y|x) = exp(sum_t m_t (logp_t - behavior_logp_t)) (sequence) or
    exp(logp_t - behavior_logp_t) (token); returns (min(w, clip), w), both detached.

    Shapes: [N] for sequence level, [N, T] (1 outside the mask) for token level. The raw weight can
    overflow to inf for long sequences; the clipped one is always finite and <= clip.
    """
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    log_ratio, _ = _log_importance_ratio(logp, behavior_logp, mask, level)
    raw = torch.exp(log_ratio)
    return raw.clamp(max=clip), raw


def weighted_group_baseline(rewards: Tensor, weights: Tensor, group_size: int) -> Tensor:
    """b_g = sum_{j in g} w_j r_j / sum_{j in g} w_j: the self-normalized importance-sampling estimate of
    E_{y ~ pi_theta}[r(x_g, y)] from responses sampled by the behaviour policy; returned per sample [B*G].

    Every member, the sample itself included, enters its group's baseline (as in GRPO; with all w = 1 it is
    the group mean). A group whose weights sum to 0 (all underflowed) gets its plain mean; rapid_loss counts
    such groups in its stats.
    """
    grouped_r = by_group(rewards, group_size)
    grouped_w = by_group(weights.detach(), group_size, name="weights").to(grouped_r.dtype)
    if bool((grouped_w < 0).any()):
        raise ValueError("importance weights must be >= 0")
    w_sum = grouped_w.sum(dim=1, keepdim=True)
    weighted = (grouped_w * grouped_r).sum(dim=1, keepdim=True) / w_sum.clamp(min=torch.finfo(w_sum.dtype).tiny)
    baseline = torch.where(w_sum > 0, weighted, grouped_r.mean(dim=1, keepdim=True))
    return baseline.expand_as(grouped_r).reshape(-1)


def rapid_advantages(
    rewards: Tensor, weights: Tensor, group_size: int, normalize_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """A_i = (r_i - b_g) / (std_g r + eps), b_g = weighted_group_baseline (unbiased plain std); r_i - b_g
    without std; exactly 0 for all-equal rewards (G = 1 included). With all weights equal it is exactly
    group_advantages."""
    baseline = weighted_group_baseline(rewards, weights, group_size).view(-1, group_size)
    grouped = by_group(rewards, group_size)
    centred = grouped - baseline
    if normalize_std:
        centred = centred / (_group_std(grouped) + eps)
    # sum(w r) / sum(w) of equal r can miss r by an ulp: no signal must mean no gradient (see group_advantages)
    return torch.where(_constant(grouped), torch.zeros_like(centred), centred).reshape(-1)


def rapid_loss(
    logp: Tensor,
    behavior_logp: Tensor,
    rewards: Tensor,
    mask: Tensor,
    group_size: int,
    is_clip: float = 2.0,
    is_level: str = "sequence",
    normalize_std: bool = True,
    agg: str = "seq-mean-token-sum",
    norm_len: Optional[float] = None,
    eps: float = 1e-6,
    weight_mask: Optional[Tensor] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """grad L = -agg_t[ min(w, eta) * A_i * grad logp_t ]: importance-weighted group-relative policy gradient,
    w = pi_theta / pi_beh (detached, clipped from above at eta = is_clip), A_i = (r_i - b_g) / (std_g r + eps),
    b_g = sum_j w_j r_j / sum_j w_j over the group (sequence-level clipped weights).

    The per-token term is -sg(w) * A * exp(logp - sg(logp)): its value is -w A and its gradient is
    -w A grad logp (REINFORCE with a constant weight). With fresh samples (behavior_logp == logp, w = 1)
    value and gradient equal policy_loss on group_advantages with the same agg: GRPO's update without
    clipping. The default agg "seq-mean-token-sum" is the literal sequence-level estimator
    1/N sum_i w_i A_i grad log pi(y_i|x).
    weight_mask [N, T]: the tokens whose log-ratios form w and the baseline (None = mask). Pass the tokens
    this rollout generated: an RPO prefix was sampled by an older policy, and its drift (shared by the whole
    group) would scale every w of the group, so the gradient, and through the clip the baseline, would move
    with the prefix's age rather than with this rollout's staleness. Token level: loss tokens outside
    weight_mask get weight 1.
    Returns (loss, stats): weight mean/max/min before (raw_*) and after clipping, frac_clipped (over sequences
    with a weighted token, or weighted tokens at token level), baseline_degenerate_groups, and advantage_abs_mean,
    the mean |A_i| over the N sequences (the advantages exist only here: they depend on the current policy).
    """
    wmask = mask if weight_mask is None else weight_mask
    clipped, raw = rapid_importance_weights(logp, behavior_logp, wmask, is_level, is_clip)
    # The baseline estimates E_{pi_theta}[r | x]: that needs the response-level ratio whatever the gradient uses.
    if is_level == "sequence":
        seq_clipped = clipped
    else:
        seq_clipped, _ = rapid_importance_weights(logp, behavior_logp, wmask, "sequence", is_clip)
    advantages = rapid_advantages(rewards, seq_clipped, group_size, normalize_std, eps)
    # Ratio to the detached current policy is exactly 1, so no clip ever engages: a plain weighted PG term.
    per_token, *_ = _clipped_surrogate(logp, logp.detach(), advantages, mask, None, None, None, clipped)
    loss = aggregate_loss(per_token, mask, agg, norm_len)

    wm = _bool_mask(wmask, logp.shape)
    valid = wm if is_level == "token" else wm.any(dim=1)
    with torch.no_grad():
        stats = {
            "raw_weight_mean": masked_mean(raw, valid),
            "raw_weight_max": _masked_max(raw, valid),
            "raw_weight_min": _masked_min(raw, valid),
            "weight_mean": masked_mean(clipped, valid),
            "weight_max": _masked_max(clipped, valid),
            "weight_min": _masked_min(clipped, valid),
            "frac_clipped": masked_mean((raw > is_clip).to(raw.dtype), valid),
            "baseline_degenerate_groups": (seq_clipped.view(-1, group_size).sum(dim=1) == 0).sum(),
            "advantage_abs_mean": advantages.abs().mean(),
        }
    return loss, stats
