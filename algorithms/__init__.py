"""Policy-optimisation algorithms. The math is in `algorithms.core` (pure tensor functions, importable in notebooks);
each algorithm module registers itself by the name used in `conf/algorithm/<name>.yaml`."""
from algorithms.core import (  # noqa: F401
    aggregate_loss,
    group_advantages,
    kl_estimate,
    policy_loss,
)
from algorithms.base import ALGORITHMS, Algorithm, GRPOConfig  # noqa: F401
from algorithms import grpo, dapo, rapid  # noqa: F401,E402  (registration)


def build_algorithm(cfg, max_new_tokens: int, prefix_ratio: str = "one", engine_matches_learner: bool = True) -> Algorithm:
    return ALGORITHMS.get(cfg.name)(cfg, max_new_tokens, prefix_ratio, engine_matches_learner)
