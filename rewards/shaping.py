"""Reward shaping on top of correctness: DAPO's soft overlong punishment, RPO's length-aware reward, open-r1's
cosine-scaled length reward, a format bonus, and their composition from the `reward` config node. The overlong
punishment counts tokens; the length-aware reward counts words (the authors') or tokens (reward.length_aware.unit);
the cosine reward counts tokens or characters (the authors', reward.cosine.unit).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

CORRECTNESS = ("binary", "signed")  # reward.correctness: wrong answers score 0 | -1
LENGTH_UNITS = ("words", "tokens")
COSINE_UNITS = ("tokens", "chars")


def word_counts(texts: Sequence[str]) -> list[int]:
    """len(text.split()): whitespace-separated words of each decoded completion, the length unit of RPO's
    length-aware reward (github.com/yhz5613813/RPO, src/open_r1/rewards.py, which counts content.split(" "))."""
    return [len(text.split()) for text in texts]


def overlong_penalty(lengths: Tensor, max_len: int, cache_len: int) -> Tensor:
    """DAPO soft overlong punishment: R(L) = 0 if L <= Lmax - Lcache; (Lmax - Lcache - L) / Lcache if Lmax - Lcache < L <= Lmax; -1 if L > Lmax."""
    if not 0 <= cache_len <= max_len:
        raise ValueError(f"need 0 <= cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
    L = lengths.to(torch.float64)
    soft_start = max_len - cache_len
    if cache_len == 0:
        ramp = torch.zeros_like(L)
    else:
        ramp = ((soft_start - L) / cache_len).clamp(max=0.0)
    return torch.where(L > max_len, torch.full_like(L, -1.0), ramp)


def length_aware_reward(
    rewards: Tensor, lengths: Tensor, group_size: int, alpha: float = 0.01, low: float = 0.5, high: float = 1.0
) -> Tensor:
    """RPO Eq. 11 on correct responses: R_i = clip(r_i / (1 + exp(-alpha * (mean_correct_len - len_i))), low, high); r_i <= 0 unchanged.

    The mean is over the correct responses of the question's group and only correct responses (r_i > 0) are
    rescaled; wrong ones keep their reward, and a group without a correct response is untouched. This is what
    the authors' code does (github.com/yhz5613813/RPO, src/open_r1/rewards.py, `accuracy_reward`: mask =
    reward == 1, mean of the masked lengths, clip to [0.5, 1]); applied to r = 0 the clip would pay a wrong
    answer 0.5. A correct response at the mean length gets r/2 (= low), shorter ones up to `high`. alpha is per
    length unit: the authors use 0.1 per word (at ~2 tokens per word, 0.01 per token is ~5x flatter).
    """
    if rewards.shape != lengths.shape or rewards.dim() != 1:
        raise ValueError(f"rewards and lengths must be 1-D of equal shape, got {tuple(rewards.shape)}, {tuple(lengths.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.to(torch.float64).view(-1, group_size)
    L = lengths.to(torch.float64).view(-1, group_size)
    ok = r > 0
    n_ok = ok.sum(dim=1, keepdim=True)
    mean_ok = (L * ok).sum(dim=1, keepdim=True) / n_ok.clamp(min=1)
    shaped = (r / (1 + torch.exp(-alpha * (mean_ok - L)))).clamp(low, high)
    return torch.where(ok, shaped, r).view(-1)


def cosine_length_reward(
    correct: Tensor, lengths: Tensor, max_len: float, min_value_wrong: float = 0.0, max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5, max_value_correct: float = 1.0,
) -> Tensor:
    """open-r1's cosine-scaled reward: R = lo + (hi - lo) (1 + cos(pi L / max_len)) / 2, (lo, hi) = (min_value_correct, max_value_correct) if correct else (max_value_wrong, min_value_wrong).

    So a correct response earns max_value_correct at L = 0 falling to min_value_correct at max_len, a wrong one
    min_value_wrong at L = 0 moving to max_value_wrong at max_len. L is not clipped: past max_len the cosine turns
    back, as in the authors' code (github.com/yhz5613813/RPO, src/open_r1/rewards.py, get_cosine_scaled_reward,
    which takes L = len(content) in characters). The defaults are the authors' GRPOScriptArguments (grpo_cache.py).
    """
    if correct.shape != lengths.shape or correct.dim() != 1:
        raise ValueError(f"correct and lengths must be 1-D of equal shape, got {tuple(correct.shape)}, {tuple(lengths.shape)}")
    if not max_len > 0:
        raise ValueError(f"max_len must be > 0, got {max_len}")
    ok = correct.to(torch.bool)
    f64 = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
    lo = torch.where(ok, f64(min_value_correct), f64(max_value_wrong))
    hi = torch.where(ok, f64(max_value_correct), f64(min_value_wrong))
    cosine = torch.cos(lengths.to(torch.float64) / max_len * math.pi)
    return lo + 0.5 * (hi - lo) * (1.0 + cosine)


def compose_rewards(
    correct: list[bool],
    has_answer: list[bool],
    lengths: list[int],
    group_size: int,
    cfg: Any,
    word_counts: Optional[list[int]] = None,
    char_counts: Optional[list[int]] = None,
) -> tuple[list[float], dict[str, list[float]]]:
    """Total reward per sample and each term (summing to the total), from the `reward` config node as validated
    (rpo_core.config.validate_config: every option present).

    correctness: binary 1/0 or signed +1/-1. length_aware (RPO) rescales the correctness term of correct
    responses; its term is the change it makes. Its length is `word_counts` (see word_counts()) if
    length_aware.unit is "words", the token `lengths` if "tokens". format: format_weight if an answer was extracted.
    overlong: weight * DAPO soft overlong punishment of the response length in tokens. cosine: weight * open-r1's
    cosine-scaled reward of the length in tokens, or in `char_counts` (len of each decoded completion) if cosine.unit
    is "chars".
    """
    n = len(correct)
    if not (len(has_answer) == len(lengths) == n):
        raise ValueError(f"correct, has_answer and lengths differ in length: {n}, {len(has_answer)}, {len(lengths)}")
    for name, counts in (("word_counts", word_counts), ("char_counts", char_counts)):
        if counts is not None and len(counts) != n:
            raise ValueError(f"{name} has {len(counts)} values for {n} responses")
    if cfg.correctness not in CORRECTNESS:
        raise ValueError(f"reward.correctness must be one of {CORRECTNESS}, got {cfg.correctness!r}")
    ok = torch.tensor(correct, dtype=torch.bool)
    L = torch.tensor(lengths, dtype=torch.float64)
    r = torch.where(ok, 1.0, 0.0 if cfg.correctness == "binary" else -1.0).to(torch.float64)
    parts: dict[str, Tensor] = {"correctness": r}
    total = r.clone()

    la = cfg.length_aware
    if la.enabled:
        if la.unit not in LENGTH_UNITS:
            raise ValueError(f"reward.length_aware.unit must be one of {LENGTH_UNITS}, got {la.unit!r}")
        if la.unit == "words" and word_counts is None:
            raise ValueError("reward.length_aware.unit=words needs word_counts (rewards.shaping.word_counts of the "
                             "decoded responses); pass them or set reward.length_aware.unit=tokens")
        la_len = torch.tensor(word_counts, dtype=torch.float64) if la.unit == "words" else L
        shaped = length_aware_reward(r, la_len, group_size, la.alpha, la.low, la.high)
        parts["length_aware"] = shaped - r
        total = shaped.clone()

    if cfg.format_weight:
        parts["format"] = cfg.format_weight * torch.tensor(has_answer, dtype=torch.float64)
        total = total + parts["format"]

    co = cfg.cosine
    if co.enabled:
        if co.unit not in COSINE_UNITS:
            raise ValueError(f"reward.cosine.unit must be one of {COSINE_UNITS}, got {co.unit!r}")
        if co.unit == "chars" and char_counts is None:
            raise ValueError("reward.cosine.unit=chars needs char_counts (len of each decoded response); pass them or "
                             "set reward.cosine.unit=tokens")
        co_len = torch.tensor(char_counts, dtype=torch.float64) if co.unit == "chars" else L
        parts["cosine"] = co.weight * cosine_length_reward(
            ok, co_len, float(co.max_len), co.min_value_wrong, co.max_value_wrong, co.min_value_correct,
            co.max_value_correct)
        total = total + parts["cosine"]

    ov = cfg.overlong
    if ov.enabled:
        parts["overlong"] = ov.weight * overlong_penalty(L, ov.max_len, ov.cache_len)
        total = total + parts["overlong"]

    return total.tolist(), {k: v.tolist() for k, v in parts.items()}
