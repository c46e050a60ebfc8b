"""Checks of single config values: each failure names the key, the value and what is allowed (ConfigError)."""
from __future__ import annotations

import math

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    pass


def get(cfg, key):
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}: {e.__class__.__name__}: {str(e).splitlines()[0]}") from None


def choice(cfg, key, allowed):
    v = get(cfg, key)
    if v not in allowed:
        raise ConfigError(f"{key}={v!r} is not one of: {', '.join(map(str, allowed))}")
    return v


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bounds(low, high, strict_low=False) -> str:
    """'must be >= 1', 'must be <= 3' or, for a closed range, 'must be in [0, 3]'."""
    if high is None:
        return f"must be {'>' if strict_low else '>='} {low}"
    if low is None:
        return f"must be <= {high}"
    return f"must be in {'(' if strict_low else '['}{low}, {high}]"


def integer(cfg, key, low=None, high=None, allow_none=False):
    v = get(cfg, key)
    if v is None and allow_none:
        return v
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{key}={v!r} must be an integer")
    if (low is not None and v < low) or (high is not None and v > high):
        raise ConfigError(f"{key}={v} {_bounds(low, high)}")
    return v


def number(cfg, key, low=None, high=None, allow_none=False, strict_low=False):
    v = get(cfg, key)
    if v is None and allow_none:
        return v
    if not is_number(v):
        raise ConfigError(f"{key}={v!r} must be a number")
    if math.isnan(v):
        bounded = low is not None or high is not None
        raise ConfigError(f"{key}=nan {_bounds(low, high, strict_low) if bounded else 'must be a real number'}")
    if (low is not None and (v <= low if strict_low else v < low)) or (high is not None and v > high):
        raise ConfigError(f"{key}={v} {_bounds(low, high, strict_low)}")
    return v


def boolean(cfg, key):
    v = get(cfg, key)
    if not isinstance(v, bool):
        raise ConfigError(f"{key}={v!r} must be true or false")
    return v


