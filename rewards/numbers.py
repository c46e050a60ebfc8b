"""Surface clean-up of answer strings and the exact fast path for plain numbers (no sympy, no eval).

`clean_answer` removes notation that never changes the value: math delimiters, \\left/\\right, spacing commands,
currency, degree signs, units, thousands separators. Its output is still LaTeX-ish and is what the grammar in
`rewards.judge` parses; applying it twice changes nothing.

`fast_verdict` decides (gold, prediction) pairs where both sides are plain numbers (integers, decimals, a/b,
\\frac{a}{b}, mixed numbers, percentages, scientific notation) with `fractions.Fraction`, so the common GSM8K and
arithmetic cases never pay for sympy or a worker round trip. Anything else returns None.

Tolerance (stated once, used everywhere): two exact numbers must be equal; when either side is written as a
decimal or in scientific notation, |pred - gold| <= REL_TOL * |gold| is accepted (so 0.333 != 1/3, 0.3333333 == 1/3).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

REL_TOL = 1e-6

# Words that are mathematics, never units ("2 pi" is not "2 [units]").
MATH_WORDS = frozenset(
    "pi sqrt sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp infty oo i e".split()
)

_UNICODE = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-", "\u00a0": " ", "\uff0c": ",", "\u00b0": "^\\circ"})
_SIZED_DELIM = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)\s*(\\[{}|]|[()\[\]|.])")
_TEXT_MACROS = re.compile(r"\\(?:textbf|textrm|textit|textsf|texttt|textnormal|mathrm|mathbf|mathit|mathsf|mbox|hbox|rm|text)\s*\{")
_UNIT_TEXT = re.compile(r"\\text\{\s*([A-Za-z][A-Za-z\s.]*?)\s*\}(?:\s*\^\s*\{?\s*[23]\s*\}?)?")
_TRAILING_UNITS = re.compile(
    r"^(?P<num>[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+)?(?:\\%)?)\s+(?P<words>[A-Za-z]{2,}\.?(?:\s+[A-Za-z]+\.?)*)"
    r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?$"
)
_THOUSANDS_WHOLE = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?:\\%)?$")


def clean_answer(s: str) -> str:
    """Drop value-preserving notation from an answer string (idempotent)."""
    s = s.translate(_UNICODE).strip()
    s = s.replace("\\$", "").replace("$", "")
    s = _SIZED_DELIM.sub(lambda m: "" if m.group(1) == "." else m.group(1), s)
    s = re.sub(r"(?<!\\)\\[()\[\]]", "", s)  # \( \) \[ \] math-mode delimiters
    # explicit thousands separators: 10,\!080  1{,}000  1\,000
    s = re.sub(r"(?<=\d)(?:,\\!\s*|\{,\}|\\,)(?=\d{3}(?!\d))", "", s)
    s = re.sub(r"(?<!\\)\\[!,;:> ]|\\q?quad(?![A-Za-z])|~", " ", s)  # spacing commands (not the \\ row break)
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)  # also \dfrac34
    s = re.sub(r"\\[dt]binom(?![A-Za-z])", r"\\binom", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])", "", s)
    s = re.sub(r"^\\approx\s*", "", s.strip())  # "\approx 8.24"
    s = re.sub(r"\\?%|\bpercent\b", r"\\%", s)
    s = _TEXT_MACROS.sub(r"\\text{", s)
    s = re.sub(r"\\text\{\s*,?\s*(?:and|or)\s*\}", ",", s)
    if not re.fullmatch(r"\(?\s*\\text\{[^{}]*\}\s*\)?", s.strip()):
        stripped = _UNIT_TEXT.sub("", s).strip()
        if stripped:  # the \text was a unit after a value; a bare \text{...} answer is kept
            s = stripped
    s = re.sub(r"^[A-Za-z]\s*\\in\s*", "", s.strip())  # "x \in [2, 3]"
    s = re.sub(r"\s+", " ", s).strip().rstrip(".;,").strip()
    m = _TRAILING_UNITS.match(s)
    if m and not (set(m.group("words").lower().replace(".", "").split()) & MATH_WORDS):
        s = m.group("num")
    if _THOUSANDS_WHOLE.match(s):
        s = s.replace(",", "")
    return s


@dataclass(frozen=True)
class Number:
    value: Fraction
    inexact: bool  # written as a decimal or in scientific notation
    percent: bool  # written with a % sign


_SIGN = r"(?P<sign>[-+])?\s*"
_FRAC_ARG = r"(?:\{\s*(?P<NAME>\d+)\s*\}|(?P<NAME1>\d))"  # \frac{12}{5} or \frac 34
_LATEX_FRAC = r"\\frac\s*" + _FRAC_ARG.replace("NAME", "n") + r"\s*" + _FRAC_ARG.replace("NAME", "d")
_PATTERNS = [
    ("int", re.compile(_SIGN + r"(?P<i>\d+)$")),
    ("dec", re.compile(_SIGN + r"(?P<x>\d+\.\d*|\.\d+)$")),
    ("sci", re.compile(_SIGN + r"(?P<x>\d+(?:\.\d+)?)\s*(?:[eE]\s*|(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*)\{?(?P<e>[-+]?\d{1,3})\}?$")),
    ("slash", re.compile(_SIGN + r"(?P<n>\d+)\s*/\s*(?P<d>\d+)$")),
    ("frac", re.compile(_SIGN + _LATEX_FRAC + r"$")),
    ("mixed_slash", re.compile(_SIGN + r"(?P<i>\d+)\s+(?P<n>\d+)\s*/\s*(?P<d>\d+)$")),
    ("mixed_frac", re.compile(_SIGN + r"(?P<i>\d+)\s*" + _LATEX_FRAC + r"$")),
]


def parse_number(s: str) -> Optional[Number]:
    """A cleaned answer as an exact Fraction if it is a plain number, else None."""
    percent = s.endswith("\\%")
    if percent:
        s = s[:-2].rstrip()
    if len(s) > 400:  # long digit strings are legal but belong to the worker, not the trainer process
        return None
    for kind, pattern in _PATTERNS:
        m = pattern.match(s)
        if not m:
            continue
        g = m.groupdict()
        if kind == "int":
            v, inexact = Fraction(int(g["i"])), False
        elif kind == "dec":
            v, inexact = Fraction(g["x"]), True
        elif kind == "sci":
            v, inexact = Fraction(g["x"]) * Fraction(10) ** int(g["e"]), True
        else:
            n = int(g.get("n") or g.get("n1"))
            d = int(g.get("d") or g.get("d1"))
            if d == 0:
                return None
            v, inexact = Fraction(n, d) + int(g.get("i") or 0), False
        if g["sign"] == "-":
            v = -v
        return Number(v, inexact, percent)
    return None


def numbers_equal(gold: Number, pred: Number, rel_tol: float = REL_TOL) -> bool:
    """Equal as numbers; a % on either side also allows the value divided by 100 (50% == 0.5 == 50)."""
    golds = [gold.value] + ([gold.value / 100] if gold.percent else [])
    preds = [pred.value] + ([pred.value / 100] if pred.percent else [])
    inexact = gold.inexact or pred.inexact
    tol = Fraction(rel_tol) if inexact else Fraction(0)
    return any(abs(p - g) <= tol * abs(g) for g in golds for p in preds)


def fast_verdict(gold: str, pred: str, rel_tol: float = REL_TOL) -> Optional[bool]:
    """True/False when both answers are plain numbers, None when sympy has to decide."""
    g = parse_number(clean_answer(gold))
    if g is None:
        return None
    p = parse_number(clean_answer(pred))
    if p is None:
        return None
    return numbers_equal(g, p, rel_tol)
