"""Start-up validation of the composed config: every message names the key, its value and what is allowed."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
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


def _int(cfg, key, low=None, high=None, allow_none=False):
    v = _get(cfg, key)
    if v is None and allow_none:
        return v
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{key}={v!r} must be an integer")
    if low is not None and v < low:
        raise ConfigError(f"{key}={v} must be >= {low}")
    if high is not None and v > high:
        raise ConfigError(f"{key}={v} must be <= {high}")
    return v


def _float(cfg, key, low=None, high=None, allow_none=False, strict_low=False):
    v = _get(cfg, key)
    if v is None and allow_none:
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{key}={v!r} must be a number")
    if low is not None and (v <= low if strict_low else v < low):
        raise ConfigError(f"{key}={v} must be {'>' if strict_low else '>='} {low}")
    if high is not None and v > high:
        raise ConfigError(f"{key}={v} must be <= {high}")
    return v


def _bool(cfg, key):
    v = _get(cfg, key)
    if not isinstance(v, bool):
        raise ConfigError(f"{key}={v!r} must be true or false")
    return v


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError on the first invalid option (resolving every interpolation on the way)."""
    from algorithms import ALGORITHMS
    from rollout import ENGINES

    _choice(cfg, "algorithm.name", ALGORITHMS.names())
    _choice(cfg, "rollout.name", ENGINES.names())
    _choice(cfg, "device", ("cpu", "cuda"))
    _int(cfg, "seed", 0)
    # trainer
    _int(cfg, "trainer.total_steps", 1)
    _int(cfg, "trainer.eval_every", 0)
    _int(cfg, "trainer.eval_size", 1, allow_none=True)
    _int(cfg, "trainer.save_every", 0)
    _int(cfg, "trainer.keep_last", 1)
    _int(cfg, "trainer.max_bad_steps", 1)
    # rollout
    G = _int(cfg, "rollout.group_size", 1)
    _float(cfg, "rollout.temperature", 0.0, strict_low=True)
    max_new = _int(cfg, "rollout.max_new_tokens", 1)
    _int(cfg, "rollout.max_model_len", 2)
    if max_new >= cfg.rollout.max_model_len:
        raise ConfigError(f"rollout.max_new_tokens={max_new} must be < rollout.max_model_len={cfg.rollout.max_model_len}")
    _choice(cfg, "rollout.dtype", ("float32", "bfloat16", "auto"))
    if cfg.rollout.name == "vllm":
        _choice(cfg, "rollout.engine_process", ("subprocess", "inproc"))
    # learner
    _int(cfg, "learner.zero_stage", 0, 3)
    _choice(cfg, "learner.backend", ("gloo", "nccl"))
    _choice(cfg, "learner.dtype", ("float32", "bfloat16"))
    _int(cfg, "learner.micro_batch_size", 1)
    _float(cfg, "learner.optim.lr", 0.0, strict_low=True)
    _float(cfg, "learner.optim.grad_clip", 0.0)
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
        _int(cfg, "cache.init_batch_size", 1)
    if G == 1 and cfg.algorithm.normalize_std:
        raise ConfigError("rollout.group_size=1 gives every group advantage 0: use group_size >= 2")
