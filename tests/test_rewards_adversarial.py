"""Hostile model output: code injection, runaway arithmetic, deep nesting, huge or malformed strings.

Each must score 0 within the time limit, leave no side effect, be counted, and leave the worker pool healthy.
Runtime is dominated by the deliberate timeouts (about 15 s on two cores).
"""
from __future__ import annotations

import os
import threading
import time

import pytest
import sympy

from rewards import RewardScorer, math_equal, normalize_gold

TIMEOUT_S = 1.0
RESPAWN_S = 1.5  # a killed worker's replacement starts Python and imports sympy before taking work


def _payloads(sentinel: str) -> list[str]:
    touch = f"__import__('pathlib').Path('{sentinel}').touch()"
    return [
        touch,
        f"__import__('os').system('touch {sentinel}')",
        f"(lambda: {touch})()",
        f"().__class__.__base__.__subclasses__()",
        "x.__class__.__init__.__globals__",
        f"exec(\"{touch}\")",
        f"eval('{touch}')",
        f"Symbol('x').__class__.__mro__[-1].__subclasses__()",
        f"[{touch} for _ in (1,)]",
        f"1 if {touch} else 2",
        f"Integer(1).__add__({touch})",
    ]


@pytest.fixture(scope="module")
def scorer():
    with RewardScorer(num_workers=2, timeout_s=TIMEOUT_S, max_answer_chars=2_000_000) as s:
        yield s


def test_payloads_are_live_through_sympify(tmp_path):
    """Control: the payloads below really execute code when handed to sympy directly."""
    sentinel = tmp_path / "control"
    sympy.sympify(_payloads(str(sentinel))[0])
    assert sentinel.exists()


def test_code_injection_never_executes(scorer, tmp_path):
    sentinel = str(tmp_path / "pwned")
    payloads = _payloads(sentinel)
    texts = [f"The answer is \\boxed{{{p}}}" for p in payloads] + [f"Answer: {p}" for p in payloads]
    res = scorer.score(texts, ["1"] * len(texts))
    assert not any(res.correct)
    assert res.stats["reward_parse_failures"] == len(texts), res.verdicts
    for p in payloads:
        assert not math_equal("1", p)
        assert not math_equal(p, "1")  # as a gold too
        with pytest.raises(ValueError):
            normalize_gold(p)
    assert not os.path.exists(sentinel)


RUNAWAY = [
    r"9^{9^{9^{9}}}",
    "9^9^9^9",
    r"10^{10^{10}}",
    r"2^{2^{2^{2^{2^{2}}}}}",
    r"(x+1)^{10^{6}}",
    r"\sqrt{2}^{10^{12}} - 1",
]


def test_runaway_arithmetic_times_out_and_pool_recovers(scorer):
    texts = [f"\\boxed{{{r}}}" for r in RUNAWAY]
    kills_before = scorer.pool.kills
    t = time.perf_counter()
    res = scorer.score(texts, ["1"] * len(texts))
    elapsed = time.perf_counter() - t
    assert not any(res.correct)
    assert set(res.verdicts) <= {"timeout", "memory", "wrong"}, res.verdicts
    assert res.stats["reward_timeouts"] >= 3
    assert res.stats["reward_timeouts"] + res.stats["reward_memory_errors"] + res.verdicts.count("wrong") == len(RUNAWAY)
    # two workers; each answer costs at most TIMEOUT_S, plus a respawn before that worker takes the next one
    assert elapsed < (TIMEOUT_S + RESPAWN_S) * len(RUNAWAY) / 2 + 2.0, (elapsed, res.verdicts)
    print(f"{len(RUNAWAY)} runaway answers judged in {elapsed:.1f} s: {res.verdicts}")
    assert scorer.pool.kills - kills_before == res.stats["reward_timeouts"]
    # the pool is whole again and judges normally
    assert scorer.pool.num_alive == 2
    ok = scorer.score([r"\boxed{\frac{\sqrt{3}}{3}}", r"\boxed{(x+1)^2}"], [r"\frac{1}{\sqrt{3}}", "x^2+2x+1"])
    assert ok.correct == [True, True] and ok.stats["reward_timeouts"] == 0


def test_timeouts_are_not_cached(scorer):
    t = time.perf_counter()
    first = scorer.score([r"\boxed{9^{9^{9^{9}}}}"], ["2"])
    assert time.perf_counter() - t < TIMEOUT_S + RESPAWN_S  # (a worker may still be restarting from the last test)
    second = scorer.score([r"\boxed{9^{9^{9^{9}}}}"], ["2"])
    assert first.verdicts == second.verdicts == ["timeout"]
    assert second.stats["reward_cache_hits"] == 0


def test_limit_works_off_the_main_thread(scorer):
    out = {}

    def run():
        out["res"] = scorer.score([r"\boxed{9^{9^{9^{9}}}}", r"\boxed{4}"], ["1", "4"])

    th = threading.Thread(target=run)
    th.start()
    th.join(timeout=30)
    assert not th.is_alive()
    assert out["res"].verdicts == ["timeout", "correct"]


def test_deep_nesting_and_huge_answers_are_refused_quickly(scorer):
    deep_parens = "(" * 5000 + "1" + ")" * 5000
    deep_frac = "\\frac{" * 300 + "1" + "}{2}" * 300
    deep_sqrt = "\\sqrt{" * 300 + "4" + "}" * 300
    deep_braces = "{" * 3000 + "1" + "}" * 3000
    megabyte_digits = "1" * 1_000_000
    megabyte_expr = "x+" * 500_000 + "1"
    answers = [deep_parens, deep_frac, deep_sqrt, deep_braces, megabyte_digits, megabyte_expr]
    t = time.perf_counter()
    res = scorer.score([f"\\boxed{{{a}}}" for a in answers], ["1"] * len(answers))
    assert time.perf_counter() - t < TIMEOUT_S * 3 + 2.0
    assert not any(res.correct)
    assert res.stats["reward_parse_failures"] + res.stats["reward_timeouts"] == len(answers), res.verdicts
    # the default limit refuses a megabyte answer before it reaches any parser
    with RewardScorer(num_workers=1) as small:
        r = small.score([f"\\boxed{{{megabyte_digits}}}"], ["1"])
        assert r.verdicts == ["parse_failure"] and r.stats["reward_worker_calls"] == 0


def test_megabyte_response_without_answer(scorer):
    text = "Let me think. " * 80_000  # ~1.1 MB
    t = time.perf_counter()
    res = scorer.score([text, text + "\\boxed{7}"], ["7", "7"])
    assert time.perf_counter() - t < 2.0
    assert res.verdicts == ["no_answer", "correct"] and res.stats["reward_no_answer"] == 1


def test_null_bytes_and_invalid_unicode(scorer):
    broken = b"\\boxed{1\xff\xfe2}".decode("utf-8", errors="surrogateescape")  # lone surrogates
    texts = ["\\boxed{12\x00}", "\\boxed{1\x002}", broken, "\\boxed{\ud800}", "Answer: 5\x00"]
    res = scorer.score(texts, ["12", "12", "12", "1", "5"])
    assert res.verdicts == ["parse_failure"] * len(texts)
    assert res.stats["reward_parse_failures"] == len(texts)
    assert not math_equal("12", "12\x00")


def test_memory_limit_is_enforced_and_counted():
    with RewardScorer(num_workers=1, timeout_s=20.0, memory_mb=300) as s:
        res = s.score([r"\boxed{(x+1)^{100000}}", r"\boxed{2}"], ["1", "2"])
        assert res.verdicts == ["memory", "correct"], res.verdicts
        assert res.stats["reward_memory_errors"] == 1


def test_pool_survives_a_worker_killed_from_outside(scorer):
    victim = scorer.pool._workers[0].proc
    victim.kill()
    victim.wait()
    res = scorer.score([r"\boxed{\sqrt{4}}"] * 2 + [r"\boxed{\sqrt{9}}"] * 2, ["2", "2", "3", "3"])
    assert res.correct == [True] * 4
    assert scorer.pool.num_alive == 2
