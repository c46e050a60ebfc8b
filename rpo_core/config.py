"""Start-up validation of the composed config: every message names the key, its value and what is allowed.

Types, defaults and allowed values are the schemas' (rpo_core.schema); what is left here are the rules between
options. Each algorithm checks its own (`Algorithm.validate`), RPO its own (algorithms.rpo.validate_rpo). Nothing here
changes the config."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from algorithms import ALGORITHMS
from algorithms.rpo import validate_rpo
from rpo_core.checkpoint import is_complete
from rpo_core.common.checks import ConfigError, typed
from rpo_core.schema import train_schema

__all__ = ["ConfigError", "validate_config"]


def validate_config(cfg: DictConfig) -> DictConfig:
    """The config typed by its schemas (every option present, interpolations resolved; `cfg` itself unchanged), or
    ConfigError on the first invalid option."""
    cfg = typed(cfg, train_schema(cfg))
    _resume(cfg.trainer.resume)
    _lengths(cfg)
    _learner(cfg)
    ALGORITHMS.get(cfg.algorithm.name).validate(cfg)
    validate_rpo(cfg)
    _reward(cfg.reward)
    if cfg.rollout.group_size == 1 and cfg.algorithm.normalize_std:
        raise ConfigError("rollout.group_size=1 gives every group advantage 0: use group_size >= 2")
    return cfg


def _resume(v) -> None:
    """trainer.resume as rpo_core.checkpoint.resolve_resume reads it, checked before any model or engine is built."""
    if v in (None, "", "auto") or is_complete(v):
        return
    raise ConfigError(f"trainer.resume={v!r} is not a complete checkpoint (no {Path(v) / 'trainer.pt'}); "
                      f"use null, auto or the path of a checkpoint directory")


def _lengths(cfg) -> None:
    context = cfg.rollout.max_model_len
    for key, v in (("rollout.max_new_tokens", cfg.rollout.max_new_tokens),
                   ("trainer.eval_max_new_tokens", cfg.trainer.eval_max_new_tokens)):
        if v >= context:
            raise ConfigError(f"{key}={v} must be < rollout.max_model_len={context}")
    block = cfg.rollout.block_size
    if cfg.rollout.name == "vllm" and cfg.device == "cpu" and block is not None and block % 32:
        raise ConfigError(f"rollout.block_size={block}: vLLM's CPU attention takes multiples of 32 (or null)")


def _learner(cfg) -> None:
    learner = cfg.learner
    if cfg.device == "cpu" and learner.backend == "nccl":
        raise ConfigError("learner.backend='nccl' needs device=cuda; with device=cpu use learner.backend=gloo")
    if learner.shared_prefix and learner.shared_prefix_mode == "kv_cache" and learner.gradient_checkpointing:
        raise ConfigError("learner.shared_prefix_mode=kv_cache reuses the shared tokens' cached keys and values, "
                          "which transformers' gradient checkpointing turns off: use shared_prefix_mode=packed "
                          "or learner.gradient_checkpointing=false")


def _reward(reward) -> None:
    """What compose_rewards would refuse only once the run has started."""
    ov, la = reward.overlong, reward.length_aware
    if ov.enabled and ov.cache_len > ov.max_len:
        raise ConfigError(f"reward.overlong.cache_len={ov.cache_len} (the soft-punishment buffer) must be <= "
                          f"reward.overlong.max_len={ov.max_len}")
    if la.enabled and la.low > la.high:
        raise ConfigError(f"reward.length_aware.low={la.low} must be <= reward.length_aware.high={la.high}")
