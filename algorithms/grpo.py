"""GRPO and Dr.GRPO: the same update, different normalisation (the defaults in conf/algorithm/*.yaml)."""
from algorithms.base import ALGORITHMS, Algorithm, GRPOConfig
from rpo_core.common.checks import preset

# GRPO: advantages (r - mean)/std, seq-mean-token-mean loss (Shao et al. 2024).
ALGORITHMS.register("grpo")(Algorithm)


@ALGORITHMS.register("dr_grpo")
class DrGRPO(Algorithm):
    """Dr.GRPO (Liu et al. 2025): no std normalisation, each sequence's token sum divided by a constant length."""

    schema = preset(name="dr_grpo", normalize_std=False, loss_agg="seq-mean-token-sum-norm")(GRPOConfig)
