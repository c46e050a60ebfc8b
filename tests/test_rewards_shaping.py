"""Reward shaping: each function against values computed by hand from its equation, and their composition."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from rewards import compose_rewards, cosine_length_reward, length_aware_reward, overlong_penalty
from rewards.shaping import LENGTH_UNITS, word_counts
from rpo_core.schema import RewardConfig


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
        "length_aware": {"enabled": False, "unit": "tokens", "alpha": 0.01, "low": 0.5, "high": 1.0}}  # fmt: skip


def _cfg(**changes):
    cfg = OmegaConf.merge(OmegaConf.structured(RewardConfig), BASE)  # a reward node as validation types it
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


def test_compose_format_term_and_checks_lengths():
    total, parts = compose_rewards([True], [False], [5], 1, _cfg(format_weight=0.2))
    assert total == [1.0] and parts["format"] == [0.0]
    with pytest.raises(ValueError, match="differ in length"):
        compose_rewards([True, False], [True], [1, 2], 2, BASE)


def test_word_counts():
    assert word_counts(["a b  c", "  x\n\ty ", "", "\\boxed{42}"]) == [3, 2, 0, 1]  # any whitespace run splits


# An all-correct group (token lengths 18, 20, 22, 25; word counts 9, 10, 12, 14): binary rewards make it a dead
# group, the length-aware reward is the only signal in it.
TOKENS, WORDS = [18, 20, 22, 25], [9, 10, 12, 14]


def test_length_aware_spread_in_an_all_correct_group_old_vs_authors_setting():
    la_on = {"length_aware.enabled": True}
    old, _ = compose_rewards([True] * 4, [True] * 4, TOKENS, 4, _cfg(**la_on))  # BASE: tokens, alpha 0.01
    # mean 85/4 = 21.25 tokens: sig(0.01 * 3.25) = sig(0.0325) = 0.508124, sig(0.0125) = 0.503125,
    # sig(-0.0075) and sig(-0.0375) < 0.5 -> clipped to 0.5: all ~0.5, spread 0.0081
    assert old == pytest.approx([0.5081242849, 0.5031249593, 0.5, 0.5])
    assert max(old) - min(old) < 0.05
    new, _ = compose_rewards([True] * 4, [True] * 4, TOKENS, 4,
                             _cfg(**la_on, **{"length_aware.unit": "words", "length_aware.alpha": 0.1}),
                             word_counts=WORDS)  # fmt: skip
    # mean 45/4 = 11.25 words: sig(0.1 * 2.25) = sig(0.225) = 0.556014, sig(0.125) = 0.531209,
    # sig(-0.075), sig(-0.275) -> 0.5: spread 0.0560, 6.9x the old one
    assert new == pytest.approx([0.5560138905, 0.5312093734, 0.5, 0.5])
    assert max(new) - min(new) == pytest.approx(0.0560138905)
    assert max(new) - min(new) > 6 * (max(old) - min(old))
    # unit=tokens with the same alpha reads the token lengths, whatever word_counts holds
    tok, _ = compose_rewards([True] * 4, [True] * 4, TOKENS, 4, _cfg(**la_on, **{"length_aware.unit": "tokens"}),
                             word_counts=WORDS)  # fmt: skip
    assert tok == old


def test_length_aware_units_validation():
    words_cfg = _cfg(**{"length_aware.enabled": True, "length_aware.unit": "words"})
    assert LENGTH_UNITS == ("words", "tokens")
    with pytest.raises(ValueError, match="word_counts"):
        compose_rewards([True, True], [True, True], [10, 12], 2, words_cfg)
    with pytest.raises(ValueError, match="word_counts has 1"):
        compose_rewards([True, True], [True, True], [10, 12], 2, words_cfg, word_counts=[3])
    with pytest.raises(ValueError, match="unit"):
        compose_rewards([True], [True], [1], 1, _cfg(**{"length_aware.enabled": True, "length_aware.unit": "chars"}))
    # disabled: the unit is never read, so the caller need not count words
    total, _ = compose_rewards([True], [True], [1], 1, _cfg(**{"length_aware.unit": "words"}))
    assert total == [1.0]


def test_project_config_composes_with_defaults():
    from conftest import compose

    cfg = compose().reward
    total, parts = compose_rewards([True, False], [True, False], [3, 4], 2, cfg)
    assert total == [1.0, 0.0] and list(parts) == ["correctness"]
    assert cfg.overlong.max_len == compose().rollout.max_new_tokens
    assert cfg.length_aware.unit == "words" and cfg.length_aware.alpha == 0.1  # the authors' setting
    cfg.length_aware.enabled = True
    total, _ = compose_rewards([True, True], [True, True], [30, 20], 2, cfg, word_counts=[14, 9])
    # mean 11.5 words: sig(0.1 * (11.5 - 14)) = sig(-0.25) -> clipped to 0.5; sig(0.25) = 0.562177
    assert total == pytest.approx([0.5, 0.5621765009])


# open-r1's cosine reward at hand-picked lengths, max_len = 1000: cos(0) = 1, cos(pi/4) = 0.7071068, cos(pi/2) = 0,
# cos(pi) = -1, cos(3pi/2) = 0, cos(2pi) = 1 (past max_len the cosine turns back: the authors' code does not clip)
COS_LENGTHS = [0, 250, 500, 1000, 1500, 2000]


def test_cosine_length_reward_by_hand_with_the_authors_defaults():
    n = len(COS_LENGTHS)
    L = torch.tensor(COS_LENGTHS * 2)
    correct = torch.tensor([True] * n + [False] * n)
    out = cosine_length_reward(correct, L, max_len=1000)  # authors' GRPOScriptArguments: 0.0, -0.5, 0.5, 1.0
    # correct: 0.5 + 0.25 (1 + cos): 1 at L = 0 down to 0.5 at max_len; wrong: -0.5 + 0.25 (1 + cos): 0 down to -0.5
    half = 0.5 + 0.25 * (1 + math.sqrt(0.5))
    assert out.tolist() == pytest.approx([1.0, half, 0.75, 0.5, 0.75, 1.0, 0.0, half - 1.0, -0.25, -0.5, -0.25, 0.0])


def test_cosine_length_reward_wrong_answers_swap_their_ends():
    """open-r1's function defaults (min_value_wrong=-1, max_value_wrong=-0.5): a wrong answer starts at min_value_wrong
    and reaches max_value_wrong at max_len (the swap), so longer wrong answers are penalized less."""
    out = cosine_length_reward(torch.tensor([False] * 3), torch.tensor([0, 50, 100]), max_len=100,
                               min_value_wrong=-1.0, max_value_wrong=-0.5)
    assert out.tolist() == pytest.approx([-1.0, -0.75, -0.5])
    with pytest.raises(ValueError, match="max_len"):
        cosine_length_reward(torch.tensor([True]), torch.tensor([1]), max_len=0)


def test_compose_cosine_term_in_tokens_or_chars():
    cos_on = {"format_weight": 1.0, "cosine": {"enabled": True, "weight": 1.0, "unit": "tokens", "max_len": 1000,
                                               "min_value_wrong": 0.0, "max_value_wrong": -0.5,
                                               "min_value_correct": 0.5, "max_value_correct": 1.0}}  # fmt: skip
    total, parts = compose_rewards([True, False], [True, True], [500, 0], 2, _cfg(**cos_on))
    assert parts["cosine"] == pytest.approx([0.75, 0.0]) and total == pytest.approx([2.75, 1.0])
    chars = _cfg(**cos_on, **{"cosine.unit": "chars", "cosine.weight": 2.0})
    total, parts = compose_rewards([True, False], [True, False], [500, 0], 2, chars, char_counts=[1000, 500])
    assert parts["cosine"] == pytest.approx([1.0, -0.5]) and total == pytest.approx([3.0, -0.5])
    with pytest.raises(ValueError, match="char_counts"):
        compose_rewards([True], [True], [1], 1, chars)
    with pytest.raises(ValueError, match="char_counts has 1"):
        compose_rewards([True, True], [True, True], [1, 2], 2, chars, char_counts=[3])


def test_authors_reward_preset_is_format_plus_cosine_plus_accuracy():
    """reward=authors (yhz5613813/RPO recipes: format + cosine + accuracy, weights 1): composed and validated as
    rpo-train does, it gives each response 1{answer} + cosine(len) + 1{correct} and nothing else."""
    from conftest import compose
    from rpo_core.config import validate_config

    cfg = compose("reward=authors")
    validate_config(cfg)
    total, parts = compose_rewards([True, False, False], [True, True, False], [0, 500, 1000], 3, cfg.reward)
    assert list(parts) == ["correctness", "format", "cosine"]
    assert total == pytest.approx([1.0 + 1.0 + 1.0, 0.0 + 1.0 - 0.25, 0.0 + 0.0 - 0.5])
    total, parts = compose_rewards([True], [True], [0], 1, compose().reward)
    assert list(parts) == ["correctness"]  # the default reward is unchanged


@pytest.mark.parametrize("override,message", [
    ("reward.cosine.unit=words", "reward.cosine.unit='words' is not one of: tokens, chars"),
    ("reward.cosine.max_len=0", "reward.cosine.max_len=0 must be >= 1"),
    ("reward.cosine.min_value_wrong=low", "reward.cosine.min_value_wrong='low' must be a number"),
])
def test_cosine_options_are_validated(override, message):
    from conftest import compose
    from rpo_core.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match=message):
        validate_config(compose("reward=authors", override))
