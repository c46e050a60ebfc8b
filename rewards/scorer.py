"""Batch scoring of model responses against gold answers: extraction, screening, fast path, cache, worker pool."""
from __future__ import annotations

import atexit
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

from rewards.extract import STYLES, extract_answer
from rewards.judge import CORRECT, PARSE_FAILURE, WRONG
from rewards.numbers import REL_TOL, fast_verdict
from rewards.pool import CRASH, MEMORY, TIMEOUT, JudgePool

NO_ANSWER = "no_answer"
# Verdicts a pair always gets again: safe to cache. Timeouts, memory errors and crashes can depend on the load
# of the machine, so a repeated pair is judged afresh.
_DETERMINISTIC = {CORRECT, WRONG, PARSE_FAILURE}


@dataclass
class ScoreResult:
    correct: list[bool]
    has_answer: list[bool]  # an answer was extracted (whatever its verdict): the format signal
    verdicts: list[str]  # correct | wrong | no_answer | parse_failure | timeout | memory | crash | error
    predictions: list[Optional[str]]  # the extracted answers
    stats: dict[str, float] = field(default_factory=dict)


def screen_prediction(pred: str, max_chars: int) -> Optional[str]:
    """Why an extracted answer is refused before any parsing (None if it may be judged)."""
    if len(pred) > max_chars:
        return f"longer than {max_chars} characters"
    if "\x00" in pred:
        return "null byte"
    try:
        pred.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid unicode (lone surrogate)"
    return None


class RewardScorer:
    """Correctness verdicts for a batch of responses, judged in parallel worker processes.

    Model output is untrusted: answers longer than `max_answer_chars` or containing null bytes / invalid unicode
    are refused outright; plain numbers are compared exactly in this process (`rewards.numbers`); everything else
    goes through the whitelisted grammar + sympy in a worker with a `timeout_s` wall-clock limit and a
    `memory_mb` address-space limit. Every refusal or limit hit scores as wrong and is counted in `stats`.
    The worker pool lives as long as the scorer: call `close()` or use it as a context manager.
    Not thread-safe: one scorer per thread.
    """

    def __init__(
        self,
        style: str = "auto",
        num_workers: int = 2,
        timeout_s: float = 2.0,
        max_answer_chars: int = 1000,
        memory_mb: int = 1024,
        cache_size: int = 100_000,
        rel_tol: float = REL_TOL,
    ):
        if style not in STYLES:
            raise ValueError(f"unknown answer style {style!r}; expected one of {STYLES}")
        if max_answer_chars < 1:
            raise ValueError(f"max_answer_chars must be >= 1, got {max_answer_chars}")
        self.style = style
        self.max_answer_chars = int(max_answer_chars)
        self.rel_tol = float(rel_tol)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._pool = JudgePool(num_workers=num_workers, timeout_s=timeout_s, memory_mb=memory_mb, rel_tol=rel_tol)

    @classmethod
    def from_config(cls, cfg: Any, **overrides) -> "RewardScorer":
        """From the validated `reward` config node; keyword overrides win (e.g. style=data.answer_style)."""
        keys = ("style", "num_workers", "timeout_s", "max_answer_chars", "memory_mb", "cache_size", "rel_tol")
        return cls(**{**{k: cfg[k] for k in keys}, **overrides})

    def judge_pairs(self, golds: list[str], preds: list[str]) -> tuple[list[str], Counter]:
        """Verdict per already-extracted (gold, prediction) pair, and counts of how each was decided."""
        verdicts: list[Optional[str]] = [None] * len(preds)
        how: Counter = Counter()
        todo: dict[tuple[str, str], list[int]] = {}
        for i, (gold, pred) in enumerate(zip(golds, preds)):
            if screen_prediction(pred, self.max_answer_chars) is not None:
                verdicts[i] = PARSE_FAILURE
                how["refused"] += 1
                continue
            key = (gold, pred)
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                verdicts[i] = cached
                how["cache_hits"] += 1
                continue
            fast = fast_verdict(gold, pred, self.rel_tol)
            if fast is not None:
                verdicts[i] = CORRECT if fast else WRONG
                self._remember(key, verdicts[i])
                how["fast_path"] += 1
                continue
            todo.setdefault(key, []).append(i)  # identical pairs in one batch are judged once
        if todo:
            pairs = list(todo)
            for key, verdict in zip(pairs, self._pool.judge(pairs)):
                for i in todo[key]:
                    verdicts[i] = verdict
                if verdict in _DETERMINISTIC:
                    self._remember(key, verdict)
            how["worker_calls"] += len(pairs)
        return verdicts, how  # type: ignore[return-value]

    def score(self, texts: list[str], golds: list[str]) -> ScoreResult:
        """Extract an answer from each response and judge it against its gold (golds as from `normalize_gold`)."""
        if len(texts) != len(golds):
            raise ValueError(f"{len(texts)} responses but {len(golds)} gold answers")
        t0 = time.perf_counter()
        preds = [extract_answer(t, self.style) for t in texts]
        idx = [i for i, p in enumerate(preds) if p is not None]
        judged, how = self.judge_pairs([golds[i] for i in idx], [preds[i] for i in idx])
        verdicts = [NO_ANSWER] * len(texts)
        for i, v in zip(idx, judged):
            verdicts[i] = v
        counts = Counter(verdicts)
        stats = {
            "reward_accuracy": counts[CORRECT] / max(1, len(texts)),
            "reward_no_answer": counts[NO_ANSWER],
            "reward_parse_failures": counts[PARSE_FAILURE],
            "reward_timeouts": counts[TIMEOUT],
            "reward_memory_errors": counts[MEMORY],
            "reward_worker_errors": counts[CRASH] + counts["error"],
            "reward_cache_hits": how["cache_hits"],
            "reward_fast_path": how["fast_path"],
            "reward_worker_calls": how["worker_calls"],
            "reward_seconds": time.perf_counter() - t0,
        }
        return ScoreResult(
            correct=[v == CORRECT for v in verdicts],
            has_answer=[p is not None for p in preds],
            verdicts=verdicts,
            predictions=preds,
            stats=stats,
        )

    def _remember(self, key: tuple[str, str], verdict: str) -> None:
        if self.cache_size <= 0:
            return
        self._cache[key] = verdict
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    @property
    def pool(self) -> JudgePool:
        return self._pool

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> "RewardScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_default: Optional[RewardScorer] = None
_default_lock = threading.Lock()


def math_equal(gold: str, prediction: str) -> bool:
    """Is the already-extracted `prediction` equal to the `gold` answer (gold first: it is the reference)?

    Safe on model output: plain numbers are compared here, anything else in a worker process with the default
    limits (one worker, started on first use and stopped at exit). Timeouts and refusals are False.
    """
    global _default
    if not isinstance(gold, str) or not isinstance(prediction, str):
        raise TypeError("math_equal expects two strings (gold, prediction)")
    fast = fast_verdict(gold, prediction) if screen_prediction(prediction, 1000) is None else None
    if fast is not None:
        return fast
    with _default_lock:
        if _default is None:
            _default = RewardScorer(num_workers=1)
            atexit.register(_default.close)
        verdicts, _ = _default.judge_pairs([gold], [prediction])
    return verdicts[0] == CORRECT
