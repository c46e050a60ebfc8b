"""Start-up validation of the composed config: every message names the key, its value and what is allowed.

Allowed values come from the code that defines them (registries, `algorithms.core`, `algorithms.rpo`, the cache and
the reward extractors); each algorithm checks its own options (`Algorithm.validate`). Nothing here changes the config."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig

from algorithms import ALGORITHMS
from algorithms.core import PREFIX_RATIOS
from algorithms.rpo import CACHE_UPDATES, INIT_MODES, SUFFIX_BUDGETS, TRUNCATE_MODES, TRUNCATE_PER
from cache.store import SYNCHRONOUS_MODES
from rewards import SCORERS, STYLES
from rewards.shaping import COSINE_UNITS, LENGTH_UNITS
from rollout import ENGINES, PLACEMENTS
from rpo_core.checkpoint import is_complete
from rpo_core.logprobs import SHARED_PREFIX_MODES
from rpo_core.data import SOURCES
from rpo_core.common.checks import ConfigError, boolean, choice, get, integer, is_number, number

__all__ = ["ConfigError", "validate_config"]


def _resume(cfg) -> None:
    """trainer.resume as rpo_core.checkpoint.resolve_resume reads it, checked before any model or engine is built."""
    v = get(cfg, "trainer.resume")
    if v in (None, "", False, "auto"):
        return
    if not isinstance(v, str):
        raise ConfigError(f"trainer.resume={v!r} must be null, auto or the path of a checkpoint directory")
    if not is_complete(v):
        raise ConfigError(f"trainer.resume={v!r} is not a complete checkpoint (no {Path(v) / 'trainer.pt'}); "
                          f"use null, auto or the path of a checkpoint directory")


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError on the first invalid option (resolving every interpolation on the way)."""
    choice(cfg, "algorithm.name", ALGORITHMS.names())
    choice(cfg, "rollout.name", ENGINES.names())
    device = choice(cfg, "device", ("cpu", "cuda"))
    integer(cfg, "seed", 0)
    choice(cfg, "data.source", SOURCES)
    # trainer
    integer(cfg, "trainer.total_steps", 1)
    integer(cfg, "trainer.eval_every", 0)
    integer(cfg, "trainer.eval_size", 1, allow_none=True)
    integer(cfg, "trainer.save_every", 0)
    integer(cfg, "trainer.keep_last", 1)
    number(cfg, "trainer.time_budget_s", 0.0, strict_low=True, allow_none=True)
    number(cfg, "trainer.save_every_s", 0.0, strict_low=True, allow_none=True)
    boolean(cfg, "trainer.keep_hf")
    integer(cfg, "trainer.max_bad_steps", 1)
    boolean(cfg, "trainer.progress")
    _resume(cfg)
    # rollout
    G = integer(cfg, "rollout.group_size", 1)
    number(cfg, "rollout.temperature", 0.0, strict_low=True)
    max_new = integer(cfg, "rollout.max_new_tokens", 1)
    integer(cfg, "rollout.max_model_len", 2)
    if max_new >= cfg.rollout.max_model_len:
        raise ConfigError(f"rollout.max_new_tokens={max_new} must be < rollout.max_model_len={cfg.rollout.max_model_len}")
    eval_new = integer(cfg, "trainer.eval_max_new_tokens", 1)
    if eval_new >= cfg.rollout.max_model_len:
        raise ConfigError(f"trainer.eval_max_new_tokens={eval_new} must be < rollout.max_model_len={cfg.rollout.max_model_len}")
    choice(cfg, "rollout.dtype", ("float32", "bfloat16", "auto"))
    choice(cfg, "rollout.placement", PLACEMENTS)
    integer(cfg, "rollout.cpu_reserved_cores", 0, allow_none=True)
    if cfg.rollout.name == "vllm":
        choice(cfg, "rollout.engine_process", ("subprocess", "inproc"))
        boolean(cfg, "rollout.per_request_seed")
        number(cfg, "rollout.kv_cache_gb", 0.0, strict_low=True)
        integer(cfg, "rollout.tensor_parallel_size", 1)
        block = integer(cfg, "rollout.block_size", 1, allow_none=True)
        if device == "cpu" and block is not None and block % 32:
            raise ConfigError(f"rollout.block_size={block}: vLLM's CPU attention takes multiples of 32 (or null)")
        number(cfg, "rollout.gpu_memory_utilization", 0.0, 1.0, strict_low=True)
    # learner
    integer(cfg, "learner.zero_stage", 0, 3)
    backend = choice(cfg, "learner.backend", ("gloo", "nccl"))
    if device == "cpu" and backend == "nccl":
        raise ConfigError("learner.backend='nccl' needs device=cuda; with device=cpu use learner.backend=gloo")
    choice(cfg, "learner.dtype", ("float32", "bfloat16"))
    integer(cfg, "learner.micro_batch_size", 1)
    integer(cfg, "learner.micro_batch_tokens", 0)
    number(cfg, "learner.optim.lr", 0.0, strict_low=True)
    number(cfg, "learner.optim.grad_clip", 0.0)
    number(cfg, "learner.optim.weight_decay", 0.0)
    number(cfg, "learner.optim.eps", 0.0, strict_low=True)
    betas = get(cfg, "learner.optim.betas")
    betas = list(betas) if isinstance(betas, (ListConfig, list, tuple)) else betas
    if not (isinstance(betas, list) and len(betas) == 2 and all(is_number(b) and 0.0 <= b < 1.0 for b in betas)):
        raise ConfigError(f"learner.optim.betas={betas!r} must be two numbers in [0, 1), e.g. [0.9, 0.99]")
    boolean(cfg, "learner.gradient_checkpointing")
    integer(cfg, "learner.logprob_chunk", 0)
    if boolean(cfg, "learner.shared_prefix"):
        mode = choice(cfg, "learner.shared_prefix_mode", SHARED_PREFIX_MODES)
        if mode == "kv_cache" and cfg.learner.gradient_checkpointing:
            raise ConfigError("learner.shared_prefix_mode=kv_cache reuses the shared tokens' cached keys and values, "
                              "which transformers' gradient checkpointing turns off: use shared_prefix_mode=packed "
                              "or learner.gradient_checkpointing=false")
    boolean(cfg, "learner.skip_inert_groups")
    # algorithm: each class checks its own options
    ALGORITHMS.get(cfg.algorithm.name).validate(cfg)
    # rpo
    if boolean(cfg, "rpo.enabled"):
        L = integer(cfg, "rpo.max_truncate", 0)
        if L > max_new:
            raise ConfigError(f"rpo.max_truncate={L} is larger than the generation limit rollout.max_new_tokens={max_new}")
        choice(cfg, "rpo.truncate_mode", TRUNCATE_MODES)
        low = integer(cfg, "rpo.min_truncate", 0)
        if low > L:
            raise ConfigError(f"rpo.min_truncate={low} must be <= rpo.max_truncate={L}")
        choice(cfg, "rpo.truncate_per", TRUNCATE_PER)
        choice(cfg, "rpo.prefix_ratio", PREFIX_RATIOS)
        choice(cfg, "rpo.suffix_budget", SUFFIX_BUDGETS)
        integer(cfg, "rpo.suffix_slack", 0)
        boolean(cfg, "rpo.prefix_in_loss")
        number(cfg, "rpo.epsilon", 0.0, 1.0)
        init = choice(cfg, "rpo.init", INIT_MODES)
        if choice(cfg, "rpo.cache_update", CACHE_UPDATES) == "static" and init != "upfront":
            raise ConfigError(f"rpo.cache_update=static keeps the responses of the cache initialization, which "
                              f"rpo.init={init} does not run: use rpo.init=upfront")
        number(cfg, "rpo.init_temperature", 0.0, strict_low=True)
        integer(cfg, "cache.init_batch_size", 1)
        sync = get(cfg, "cache.synchronous")
        if str(sync).upper() not in SYNCHRONOUS_MODES:  # TrajectoryCache upper-cases it too
            raise ConfigError(f"cache.synchronous={sync!r} is not one of: {', '.join(SYNCHRONOUS_MODES)}")
    _reward(cfg)
    if G == 1 and cfg.algorithm.normalize_std:
        raise ConfigError("rollout.group_size=1 gives every group advantage 0: use group_size >= 2")


def _reward(cfg) -> None:
    """The reward node: what RewardScorer and compose_rewards would refuse only once the run has started."""
    choice(cfg, "reward.verifier", SCORERS.names())
    choice(cfg, "reward.style", STYLES)
    if get(cfg, "data.answer_style") is not None:  # the dataset's extractor wins over reward.style
        choice(cfg, "data.answer_style", STYLES)
    choice(cfg, "reward.correctness", ("binary", "signed"))
    number(cfg, "reward.format_weight", allow_none=True)
    integer(cfg, "reward.num_workers", 1)
    number(cfg, "reward.timeout_s", 0.0, strict_low=True)
    integer(cfg, "reward.max_answer_chars", 1)
    integer(cfg, "reward.memory_mb", 256)  # Python + sympy need about 150 MB (rewards/pool.py)
    integer(cfg, "reward.cache_size", 0)
    number(cfg, "reward.rel_tol", 0.0)
    if boolean(cfg, "reward.overlong.enabled"):
        max_len = integer(cfg, "reward.overlong.max_len", 1)
        cache_len = integer(cfg, "reward.overlong.cache_len", 0)
        if cache_len > max_len:
            raise ConfigError(f"reward.overlong.cache_len={cache_len} (the soft-punishment buffer) must be <= "
                              f"reward.overlong.max_len={max_len}")
        number(cfg, "reward.overlong.weight", 0.0)
    if boolean(cfg, "reward.length_aware.enabled"):
        number(cfg, "reward.length_aware.alpha", 0.0)
        low = number(cfg, "reward.length_aware.low")
        high = number(cfg, "reward.length_aware.high")
        choice(cfg, "reward.length_aware.unit", LENGTH_UNITS)
        if low > high:
            raise ConfigError(f"reward.length_aware.low={low} must be <= reward.length_aware.high={high}")
    if boolean(cfg, "reward.cosine.enabled"):
        number(cfg, "reward.cosine.weight")
        choice(cfg, "reward.cosine.unit", COSINE_UNITS)
        integer(cfg, "reward.cosine.max_len", 1)
        for end in ("min_value_wrong", "max_value_wrong", "min_value_correct", "max_value_correct"):
            number(cfg, f"reward.cosine.{end}")
