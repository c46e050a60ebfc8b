"""The algorithm interface the loop calls, with GRPO's behaviour as the default of every hook.

An algorithm decides three things: which samples make a batch (`collect`), how a batch is cut into optimizer steps
(`split`), and the loss of one step (`prepare` + `loss`). The math itself lives in `algorithms.core`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from algorithms import core
from rpo_core.common.batching import TrainBatch
from rpo_core.common.checks import between, one_of, opt
from rpo_core.common.registry import Registry
from rpo_core.common.types import RolloutBatch

ALGORITHMS: Registry[type["Algorithm"]] = Registry("algorithm")

GenerateFn = Callable[[int], RolloutBatch]  # n prompts -> rewarded groups
OLD_LOGP_SOURCES = ("learner", "behavior")  # pi_old with several mini-batches per rollout


@dataclass
class GRPOConfig:
    """conf/algorithm/grpo.yaml, whose comments say what each option does; the other algorithms extend it."""

    name: str = opt("grpo", one_of(ALGORITHMS.names))
    train_batch_size: int = opt(8, between(1))
    normalize_std: bool = True
    clip_low: float = opt(0.2, between(0.0, 1.0))
    clip_high: float = opt(0.2, between(0.0))
    dual_clip: Optional[float] = opt(None, between(1, strict_low=True, note="(or null to disable)"))
    loss_agg: str = opt("seq-mean-token-mean", one_of(core.AGG_MODES))
    norm_len: Optional[int] = opt(None, between(1))
    kl_coef: float = opt(0.0, between(0.0))
    kl_kind: str = opt("k3", one_of(core.KL_KINDS))
    rollout_is: str = opt("auto", one_of(("auto", "none", *core.IS_LEVELS)))
    rollout_is_threshold: float = opt(2.0, between(1.0))
    overlong_filter: bool = False
    overlong_punishment: bool = False
    mini_batches_per_rollout: int = opt(1, between(1))
    old_logp: str = opt("learner", one_of(OLD_LOGP_SOURCES))


class Algorithm:
    """GRPO (Shao et al. 2024): group-normalised advantages, clipped ratio objective, optional KL to a reference."""

    def __init__(self, cfg, max_new_tokens: int, prefix_ratio: str = "one", engine_matches_learner: bool = True):
        self.cfg, self.prefix_ratio = cfg, prefix_ratio  # prefix_ratio: RPO's pi_old on cached-prefix tokens
        # auto: token-level truncated IS when the engine computes in another dtype than the learner (their logprobs
        # then differ by ~0.03 nats/token in bf16 vs fp32, measured), none when they match (~1e-6)
        self.rollout_is = cfg.rollout_is if cfg.rollout_is != "auto" else ("none" if engine_matches_learner else "token")
        # Dr.GRPO's constant length: algorithm.norm_len, or the generation budget when unset.
        self.norm_len = cfg.norm_len if cfg.norm_len is not None else max_new_tokens

    schema = GRPOConfig  # the `algorithm` node's options, types and defaults

    @classmethod
    def validate(cls, cfg) -> None:
        """Raise ConfigError when options of a config typed by the schemas disagree (rules between options)."""

    # ---------------------------------------------------------------- which samples
    @property
    def prompts_per_rollout(self) -> int:
        """mu mini-batches of train_batch_size prompts per rollout; pi_old is the policy that generated them."""
        return self.cfg.train_batch_size * self.cfg.mini_batches_per_rollout

    @property
    def needs_rollout_logp(self) -> bool:
        """Whether the loss needs the learner's logprobs under the rollout policy when a rollout feeds several steps
        (the PPO ratio's pi_old). RAPID weighs by the behaviour policy instead."""
        return self.cfg.old_logp == "learner"

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

    @property
    def token_level(self) -> bool:
        """True when the loss is a mean over all tokens of the batch (micro-batches then weigh by token share)."""
        return self.cfg.loss_agg == "token-mean"

    def prepare(self, tb: TrainBatch) -> TrainBatch:
        """Per-batch quantities fixed before the update: the advantages and, optionally, loss masks."""
        tb.advantages = core.group_advantages(tb.rewards, tb.group_size, normalize_std=self.cfg.normalize_std)
        if self.cfg.overlong_filter:  # DAPO: truncated responses carry no reliable reward, keep them out of the loss
            tb.loss_mask = tb.loss_mask * tb.finished[:, None]
        return tb

    def inert_groups(self, tb: TrainBatch) -> torch.Tensor:
        """[B] bool: groups whose every loss term, and so its gradient, is exactly 0 (all advantages 0, no KL term);
        the learner may leave them out of the forward and backward. Call after `prepare`."""
        if self.needs_reference:
            return torch.zeros(len(tb) // tb.group_size, dtype=torch.bool)
        return (tb.advantages.view(-1, tb.group_size) == 0).all(dim=1)

    def loss(self, logp: torch.Tensor, tb: TrainBatch) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        # pi_old: the rollout policy (its learner logprobs when this rollout feeds several steps, else logp itself)
        rollout_logp = tb.behavior_logp if cfg.old_logp == "behavior" else tb.rollout_logp
        old_logp = core.ratio_reference(logp, rollout_logp, tb.behavior_logp, tb.prefix_mask, self.prefix_ratio)
        is_weights, stats = None, {}
        if self.rollout_is != "none":  # vLLM and the learner never agree exactly: truncated IS on fresh tokens
            fresh_mask = tb.loss_mask * (1 - tb.prefix_mask)
            is_weights, is_stats = core.truncated_is_weights(
                logp.detach(), tb.behavior_logp, fresh_mask, level=self.rollout_is, threshold=cfg.rollout_is_threshold
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
        loss = core.aggregate_loss(per_token, tb.loss_mask, cfg.loss_agg, norm_len=self.norm_len)
        stats["pg_loss"] = loss.detach()
        stats["suffix_loss_share"] = core.suffix_loss_share(tb.loss_mask, tb.prefix_mask, cfg.loss_agg, self.norm_len)
        return loss, stats


def _per_token(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return weights if weights.dim() == 2 else weights[:, None].expand_as(like)
