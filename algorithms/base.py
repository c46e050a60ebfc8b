"""The algorithm interface the loop calls, with GRPO's behaviour as the default of every hook.

An algorithm decides three things: which samples make a batch (`collect`), how a batch is cut into optimizer steps
(`split`), and the loss of one step (`advantages` + `loss`). The math itself lives in `algorithms.core`."""
from __future__ import annotations

from typing import Callable

import torch

from algorithms import core
from rpo_core.batching import TrainBatch
from rpo_core.registry import Registry
from rpo_core.types import RolloutBatch

ALGORITHMS: Registry[type["Algorithm"]] = Registry("algorithm")

GenerateFn = Callable[[int], RolloutBatch]  # n prompts -> rewarded groups


class Algorithm:
    """GRPO (Shao et al. 2024): group-normalised advantages, clipped ratio objective, optional KL to a reference."""

    def __init__(self, cfg):
        self.cfg = cfg

    # ---------------------------------------------------------------- which samples
    @property
    def prompts_per_rollout(self) -> int:
        return self.cfg.train_batch_size

    def collect(self, generate: GenerateFn) -> tuple[RolloutBatch, dict]:
        return generate(self.prompts_per_rollout), {}

    def split(self, batch: RolloutBatch) -> list[RolloutBatch]:
        """Mini-batches of whole groups, one optimizer step each, in order."""
        per_step = self.cfg.train_batch_size
        if batch.num_groups == 0:  # e.g. DAPO found no group with reward variance: the step runs without an update
            return [batch]
        return [batch.select_groups(list(range(g, min(g + per_step, batch.num_groups))))
                for g in range(0, batch.num_groups, per_step)]

    # ---------------------------------------------------------------- what the loss needs
    @property
    def needs_reference(self) -> bool:
        return self.cfg.kl_coef > 0

    def prepare(self, tb: TrainBatch) -> TrainBatch:
        """Per-batch quantities fixed before the update: the advantages and, optionally, loss masks."""
        tb.advantages = core.group_advantages(tb.rewards, tb.group_size, normalize_std=self.cfg.normalize_std)
        if self.cfg.overlong_filter:  # DAPO: truncated responses carry no reliable reward, keep them out of the loss
            tb.loss_mask = tb.loss_mask * tb.finished[:, None]
        return tb

    def ratio_reference(self, logp: torch.Tensor, tb: TrainBatch) -> torch.Tensor:
        """pi_old of the ratio: the stored behaviour logprobs on cached-prefix tokens (an older policy made them),
        the learner's own detached logprobs on fresh tokens (one on-policy update per rollout: ratio 1, gradient A)."""
        return torch.where(tb.prefix_mask.bool(), tb.behavior_logp, logp.detach())

    def loss(self, logp: torch.Tensor, tb: TrainBatch) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        old_logp = self.ratio_reference(logp, tb)
        is_weights, stats = None, {}
        if cfg.rollout_is != "none":  # vLLM and the learner never agree exactly: truncated IS on fresh tokens
            fresh_mask = tb.loss_mask * (1 - tb.prefix_mask)
            is_weights, is_stats = core.truncated_is_weights(
                logp.detach(), tb.behavior_logp, fresh_mask, level=cfg.rollout_is, threshold=cfg.rollout_is_threshold
            )
            is_weights = torch.where(tb.prefix_mask.bool(), torch.ones_like(logp), _per_token(is_weights, logp))
            stats.update({f"rollout_is_{k}": v for k, v in is_stats.items()})
        per_token, pg_stats = core.policy_loss_terms(
            logp, old_logp, tb.advantages, tb.loss_mask,
            clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip, is_weights=is_weights,
        )
        stats.update(pg_stats)
        if self.needs_reference:
            kl = core.kl_estimate(logp, tb.ref_logp, cfg.kl_kind)
            per_token = per_token + cfg.kl_coef * kl
            stats["kl"] = core.masked_mean(kl.detach(), tb.loss_mask)
        loss = core.aggregate_loss(per_token, tb.loss_mask, cfg.loss_agg, norm_len=cfg.norm_len)
        stats["pg_loss"] = loss.detach()
        stats["_token_level"] = cfg.loss_agg == "token-mean"
        return loss, stats


def _per_token(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return weights if weights.dim() == 2 else weights[:, None].expand_as(like)
