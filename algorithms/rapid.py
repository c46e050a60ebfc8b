"""RAPID (arXiv 2510.03515): one large inference pass, then H = inference_batch / train_batch off-policy
policy-gradient steps on its mini-batches, each corrected by clipped importance weights pi_theta / pi_behaviour
and an importance-weighted group baseline."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms import core
from algorithms.base import ALGORITHMS, Algorithm, GRPOConfig
from rpo_core.common.batching import TrainBatch
from rpo_core.common.checks import ConfigError, between, one_of, opt, preset


@preset(name="rapid", train_batch_size=16, loss_agg="token-mean", kl_coef=0.0)
@dataclass
class RAPIDConfig(GRPOConfig):
    """conf/algorithm/rapid.yaml."""

    inference_batch_size: int = opt(64, between(1))
    is_clip: float = opt(2.0, between(1.0))
    is_level: str = opt("sequence", one_of(core.IS_LEVELS))


@ALGORITHMS.register("rapid")
class RAPID(Algorithm):
    schema = RAPIDConfig

    @classmethod
    def validate(cls, cfg) -> None:
        a = cfg.algorithm
        if a.inference_batch_size % a.train_batch_size:
            raise ConfigError(f"algorithm.inference_batch_size={a.inference_batch_size} must be a multiple of "
                              f"algorithm.train_batch_size={a.train_batch_size}")
        G, micro = cfg.rollout.group_size, cfg.learner.micro_batch_size
        if not cfg.learner.micro_batch_tokens and micro % G:  # its group baseline is computed inside the loss
            raise ConfigError(f"learner.micro_batch_size={micro} must be a multiple of rollout.group_size={G} "
                              f"for RAPID (its baseline needs whole groups in a micro-batch)")
        if a.mini_batches_per_rollout != 1:
            raise ConfigError(f"algorithm.mini_batches_per_rollout={a.mini_batches_per_rollout}: RAPID sets its steps "
                              f"per rollout as algorithm.inference_batch_size / algorithm.train_batch_size")

    @property
    def prompts_per_rollout(self) -> int:
        return self.cfg.inference_batch_size

    @property
    def needs_rollout_logp(self) -> bool:
        return False  # the importance weights are to the behaviour policy's logprobs

    def prepare(self, tb: TrainBatch) -> TrainBatch:
        # The baseline depends on the current policy's weights, so advantages are formed inside the loss, which reports
        # their mean |A| (advantage_abs_mean); tb.advantages stays 0.
        if self.cfg.overlong_filter:
            tb.loss_mask = tb.loss_mask * tb.finished[:, None]
        return tb

    def inert_groups(self, tb: TrainBatch) -> torch.Tensor:
        """Groups of equal rewards: their advantages are exactly 0 whatever the importance weights (rapid_advantages)."""
        if self.needs_reference:
            return torch.zeros(len(tb) // tb.group_size, dtype=torch.bool)
        return core.constant_groups(tb.rewards, tb.group_size)

    def loss(self, logp: torch.Tensor, tb: TrainBatch) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        loss, stats = core.rapid_loss(
            logp, tb.behavior_logp, tb.rewards, tb.loss_mask, tb.group_size,
            is_clip=cfg.is_clip, is_level=cfg.is_level, normalize_std=cfg.normalize_std,
            agg=cfg.loss_agg, norm_len=self.norm_len,
            weight_mask=tb.loss_mask * (1 - tb.prefix_mask),  # RAPID corrects its own reuse of fresh tokens, not RPO's prefix
        )
        if self.needs_reference:
            kl = core.kl_estimate(logp, tb.ref_logp, cfg.kl_kind)
            loss = loss + cfg.kl_coef * core.aggregate_loss(kl, tb.loss_mask, cfg.loss_agg, norm_len=self.norm_len)
            stats["kl"] = core.masked_mean(kl.detach(), tb.loss_mask)
        stats["suffix_loss_share"] = core.suffix_loss_share(tb.loss_mask, tb.prefix_mask, cfg.loss_agg, self.norm_len)
        stats["staleness_mean"] = tb.staleness.float().mean()
        stats["staleness_max"] = tb.staleness.float().max()
        return loss, stats
