"""RAPID (arXiv 2510.03515): one large inference pass, then H = inference_batch / train_batch off-policy
policy-gradient steps on its mini-batches, each corrected by clipped importance weights pi_theta / pi_behaviour
and an importance-weighted group baseline."""
from __future__ import annotations

import torch

from algorithms import core
from algorithms.base import ALGORITHMS, Algorithm
from rpo_core.common import checks
from rpo_core.common.batching import TrainBatch


@ALGORITHMS.register("rapid")
class RAPID(Algorithm):
    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        a = "algorithm"
        B, inf = cfg.algorithm.train_batch_size, checks.integer(cfg, f"{a}.inference_batch_size", 1)
        if inf % B:
            raise checks.ConfigError(f"{a}.inference_batch_size={inf} must be a multiple of {a}.train_batch_size={B}")
        checks.number(cfg, f"{a}.is_clip", 1.0)
        checks.choice(cfg, f"{a}.is_level", core.IS_LEVELS)
        G, micro = cfg.rollout.group_size, cfg.learner.micro_batch_size
        if not cfg.learner.micro_batch_tokens and micro % G:  # its group baseline is computed inside the loss
            raise checks.ConfigError(f"learner.micro_batch_size={micro} must be a multiple of rollout.group_size={G} "
                                     f"for RAPID (its baseline needs whole groups in a micro-batch)")
        if cfg.algorithm.mini_batches_per_rollout != 1:
            raise checks.ConfigError(f"{a}.mini_batches_per_rollout={cfg.algorithm.mini_batches_per_rollout}: RAPID "
                                     f"sets its steps per rollout as {a}.inference_batch_size / {a}.train_batch_size")

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
