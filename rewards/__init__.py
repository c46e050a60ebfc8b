"""Math rewards: answer extraction, a safe sympy-backed equivalence check, batch scoring and reward shaping.

    from rewards import extract_answer, math_equal, normalize_gold, RewardScorer, compose_rewards

The shaping functions (`overlong_penalty`, `length_aware_reward`, `compose_rewards`) need torch and are imported
on first use, so that reward worker processes (`python -m rewards.worker`) stay small: they load sympy only.
"""
from rewards.datasets import ANSWER_STYLE, gold_from_record, normalize_golds
from rewards.extract import STYLES, extract_answer
from rewards.judge import ParseError, judge, normalize_gold
from rewards.numbers import REL_TOL
from rewards.scorer import RewardScorer, ScoreResult, math_equal

_SHAPING = ("overlong_penalty", "length_aware_reward", "compose_rewards")

__all__ = [
    "ANSWER_STYLE", "REL_TOL", "STYLES", "ParseError", "RewardScorer", "ScoreResult", "extract_answer",
    "gold_from_record", "judge", "math_equal", "normalize_gold", "normalize_golds", *_SHAPING,
]  # fmt: skip


def __getattr__(name: str):
    if name in _SHAPING:
        from rewards import shaping

        return getattr(shaping, name)
    raise AttributeError(f"module 'rewards' has no attribute {name!r}")
