"""Math rewards: answer extraction, a safe sympy-backed equivalence check, batch scoring and reward shaping.

    from rewards import extract_answer, math_equal, normalize_gold, RewardScorer, compose_rewards

The shaping functions (`overlong_penalty`, `length_aware_reward`, `cosine_length_reward`, `compose_rewards`) need torch and are imported
on first use, so that reward worker processes (`python -m rewards.worker`) stay small: they load sympy only.
"""
from rewards.extract import STYLES, extract_answer
from rewards.judge import ParseError, judge, normalize_gold
from rewards.numbers import REL_TOL
from rewards.scorer import RewardScorer, ScoreResult, math_equal
from rewards.toy import LengthParityScorer
from rpo_core.common.registry import Registry

# reward.verifier -> a scorer with `score(texts, golds) -> ScoreResult` and `close()`
SCORERS: Registry = Registry("reward verifier")
SCORERS.register("math")(lambda reward, data: RewardScorer.from_config(reward, style=data.answer_style or reward.style))
SCORERS.register("length_parity")(lambda reward, data: LengthParityScorer())


def build_scorer(reward_cfg, data_cfg):
    """The scorer `reward.verifier` names; the dataset's answer_style wins over reward.style (it knows its answers)."""
    return SCORERS.get(reward_cfg.verifier)(reward_cfg, data_cfg)

_SHAPING = ("overlong_penalty", "length_aware_reward", "cosine_length_reward", "compose_rewards")

__all__ = [
    "REL_TOL", "SCORERS", "STYLES", "LengthParityScorer", "ParseError", "RewardScorer", "ScoreResult",
    "build_scorer", "extract_answer", "judge", "math_equal", "normalize_gold", *_SHAPING,
]  # fmt: skip


def __getattr__(name: str):
    if name in _SHAPING:
        from rewards import shaping

        return getattr(shaping, name)
    raise AttributeError(f"module 'rewards' has no attribute {name!r}")
