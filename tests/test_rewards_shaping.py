"""Reward shaping: each function against values computed by hand from its equation, and their composition."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from rewards import compose_rewards, length_aware_reward, overlong_penalty


def test_overlong_penalty_by_hand():
    # L_max = 100, L_cache = 20: no penalty up to 80, linear to -1 at 100, -1 beyond
    lengths = torch.tensor([0, 80, 81, 90, 99, 100, 101, 500])
    want = [0.0, 0.0, -1 / 20, -10 / 20, -19 / 20, -1.0, -1.0, -1.0]
    assert overlong_penalty(lengths, max_len=100, cache_len=20).tolist() == pytest.approx(want)


def test_overlong_penalty_edges():
    assert overlong_penalty(torch.tensor([5, 10, 11]), max_len=10, cache_len=0).tolist() == [0.0, 0.0, -1.0]
    assert overlong_penalty(torch.tensor([0, 5, 10]), max_len=10, cache_len=10).tolist() == pytest.approx([0.0, -0.5, -1.0])
    with pytest.raises(ValueError):
        overlong_penalty(torch.tensor([1]), max_len=10, cache_len=11)


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_length_aware_reward_by_hand():
    # group 1: three correct responses of lengths 100, 200, 300 (mean 200) and one wrong
    # group 2: nobody correct -> untouched
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    L = torch.tensor([100, 200, 300, 50, 10, 20, 30, 40])
    out = length_aware_reward(r, L, group_size=4, alpha=0.01, low=0.5, high=1.0)
    # R = clip(1 / (1 + exp(-0.01 (200 - len))), 0.5, 1)
    want = [_sig(0.01 * 100), 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert out.tolist() == pytest.approx(want)
    assert out[0].item() == pytest.approx(0.7310585786)


def test_length_aware_reward_mean_is_over_correct_responses_only():
    # the wrong response's length (1000) must not move the mean of the correct ones (100, 300 -> 200)
    r = torch.tensor([1.0, 1.0, 0.0])
    out = length_aware_reward(r, torch.tensor([100, 300, 1000]), group_size=3, alpha=0.02, low=0.0, high=1.0)
    assert out.tolist() == pytest.approx([_sig(0.02 * 100), _sig(-0.02 * 100), 0.0])


def test_length_aware_reward_keeps_signed_wrong_rewards_and_validates():
    r = torch.tensor([1.0, -1.0])
    assert length_aware_reward(r, torch.tensor([10, 5]), group_size=2).tolist() == pytest.approx([0.5, -1.0])
    with pytest.raises(ValueError):
        length_aware_reward(torch.ones(5), torch.ones(5), group_size=2)


BASE = {"correctness": "binary", "format_weight": 0.0, "overlong": {"enabled": False, "max_len": 100, "cache_len": 20, "weight": 1.0},
        "length_aware": {"enabled": False, "alpha": 0.01, "low": 0.5, "high": 1.0}}  # fmt: skip


def _cfg(**changes):
    cfg = OmegaConf.create(BASE)
    for k, v in changes.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def test_compose_correctness_modes():
    total, parts = compose_rewards([True, False], [True, True], [10, 10], 2, _cfg())
    assert total == [1.0, 0.0] and parts == {"correctness": [1.0, 0.0]}
    total, _ = compose_rewards([True, False], [True, True], [10, 10], 2, _cfg(correctness="signed"))
    assert total == [1.0, -1.0]
    with pytest.raises(ValueError, match="binary"):
        compose_rewards([True], [True], [1], 1, _cfg(correctness="ternary"))


def test_compose_all_terms_by_hand_and_parts_sum_to_total():
    cfg = _cfg(**{"correctness": "signed", "format_weight": 0.1, "overlong.enabled": True, "overlong.weight": 0.5,
                  "length_aware.enabled": True})  # fmt: skip
    correct = [True, True, False, False]
    has_answer = [True, True, True, False]
    lengths = [60, 90, 95, 120]
    total, parts = compose_rewards(correct, has_answer, lengths, 4, cfg)
    mean_ok = 75
    la = [max(0.5, min(1.0, _sig(0.01 * (mean_ok - 60)))), 0.5, -1.0, -1.0]
    over = [0.0, 0.5 * -10 / 20, 0.5 * -15 / 20, 0.5 * -1.0]
    fmt = [0.1, 0.1, 0.1, 0.0]
    assert parts["correctness"] == [1.0, 1.0, -1.0, -1.0]
    assert parts["length_aware"] == pytest.approx([la[0] - 1.0, -0.5, 0.0, 0.0])
    assert parts["overlong"] == pytest.approx(over) and parts["format"] == pytest.approx(fmt)
    assert total == pytest.approx([a + b + c for a, b, c in zip(la, over, fmt)])
    assert total == pytest.approx([sum(p[i] for p in parts.values()) for i in range(4)])


def test_compose_accepts_plain_dict_and_checks_lengths():
    total, parts = compose_rewards([True], [False], [5], 1, {"correctness": "binary", "format_weight": 0.2})
    assert total == [1.0] and parts["format"] == [0.0]
    with pytest.raises(ValueError, match="differ in length"):
        compose_rewards([True, False], [True], [1, 2], 2, BASE)


def test_project_config_composes_with_defaults():
    from conftest import compose

    cfg = compose().reward
    total, parts = compose_rewards([True, False], [True, False], [3, 4], 2, cfg)
    assert total == [1.0, 0.0] and list(parts) == ["correctness"]
    assert cfg.overlong.max_len == compose().rollout.max_new_tokens
