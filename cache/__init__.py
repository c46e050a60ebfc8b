"""Disk-backed, crash-safe, versioned cache of one response per training question (RPO's experience cache)."""
from cache.fingerprint import model_fingerprint, tokenizer_fingerprint
from cache.init import format_init_report, initialize_cache
from cache.store import (
    CacheEntry,
    CacheError,
    CacheMismatchError,
    CacheStateError,
    NotACacheError,
    TrajectoryCache,
)

__all__ = [
    "CacheEntry",
    "CacheError",
    "CacheMismatchError",
    "CacheStateError",
    "NotACacheError",
    "TrajectoryCache",
    "format_init_report",
    "initialize_cache",
    "model_fingerprint",
    "tokenizer_fingerprint",
]
