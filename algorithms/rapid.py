"""RAPID (arXiv 2510.03515): one large inference pass, then H = inference_batch / train_batch off-policy
policy-gradient steps on its mini-batches, each corrected by clipped importance weights pi_theta / pi_behaviour
and an importance-weighted group baseline."""
from __future__ import annotations

import torch

from algorithms import core
from algorithms.base import ALGORITHMS, Algorithm
from rpo_core.batching import TrainBatch


@ALGORITHMS.register("rapid")
class RAPID(Algorithm):
    @property
    def prompts_per_rollout(self) -> int:
        return self.cfg.inference_batch_size

    def prepare(self, tb: TrainBatch) -> TrainBatch:
        # The baseline depends on the current policy's weights, so advantages are formed inside the loss.
        if self.cfg.overlong_filter:
            tb.loss_mask = tb.loss_mask * tb.finished[:, None]
        return tb

    def loss(self, logp: torch.Tensor, tb: TrainBatch) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        loss, stats = core.rapid_loss(
            logp, tb.behavior_logp, tb.rewards, tb.loss_mask, tb.group_size,
            is_clip=cfg.is_clip, is_level=cfg.is_level, normalize_std=cfg.normalize_std,
            agg=cfg.loss_agg, norm_len=cfg.norm_len,
        )
        if self.needs_reference:
            kl = core.kl_estimate(logp, tb.ref_logp, cfg.kl_kind)
            loss = loss + cfg.kl_coef * core.aggregate_loss(kl, tb.loss_mask, cfg.loss_agg, norm_len=cfg.norm_len)
            stats["kl"] = core.masked_mean(kl.detach(), tb.loss_mask)
        stats["staleness_mean"] = tb.staleness.float().mean()
        stats["staleness_max"] = tb.staleness.float().max()
        stats["_token_level"] = cfg.loss_agg == "token-mean"
        return loss, stats
