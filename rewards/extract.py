"""Pull the final answer out of a model response (or a dataset solution).

Only explicit answer markers count: the last \\boxed{} / \\fbox{}, GSM8K's `#### n`, an "Answer: ..." line, or
(for the short-answer arithmetic task only) the last number. There is deliberately no fallback that searches the
whole text for the gold answer: that would pay a response for mentioning the answer in passing.

Everything here is linear-time string scanning, safe on megabyte-long model output.
"""
from __future__ import annotations

import re
from typing import Optional

STYLES = ("auto", "boxed", "gsm8k", "answer_line", "last_number")

_BOXED = re.compile(r"\\(?:boxed|fbox)\b")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
# "Answer: x", "**Final Answer:** x", "The final answer is x", "answer is: x"
_ANSWER_LINE = re.compile(r"\banswer\b(?:\s*\*\*)?\s*(?::|\bis\b\s*:?)", re.IGNORECASE)
# A number not glued to a preceding word or digit: -12, 1,234, 3.5, 2/3
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?![\w])")


def extract_answer(text: str, style: str = "auto") -> Optional[str]:
    """The final answer in `text` as a string, or None when the response gives none in the expected form.

    style: "boxed" (last \\boxed{...}, \\boxed x or \\fbox{...}), "gsm8k" (last `#### n`), "answer_line" (last
    "Answer: ..." / "The final answer is ..."), "last_number" (arithmetic task), or "auto" (boxed, then ####,
    then an answer line; never the last number).
    """
    if style not in STYLES:
        raise ValueError(f"unknown answer style {style!r}; expected one of {STYLES}")
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects str, got {type(text).__name__}")
    if style == "boxed":
        return _last_boxed(text)
    if style == "gsm8k":
        return _last_gsm8k(text)
    if style == "answer_line":
        return _last_answer_line(text)
    if style == "last_number":
        return _last_number(text)
    # auto: the most explicit marker present wins
    if _BOXED.search(text):
        return _last_boxed(text)
    if "####" in text:
        return _last_gsm8k(text)
    return _last_answer_line(text)


def _last_boxed(text: str) -> Optional[str]:
    last = None
    for last in _BOXED.finditer(text):
        pass
    if last is None:
        return None
    i = last.end()
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i < n and text[i] == "{":
        depth, j = 0, i
        while j < n:
            c = text[j]
            if c == "\\":  # an escaped character (\{, \}, \\) never opens or closes the box
                j += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return _strip_answer(text[i + 1 : j])
            j += 1
        return None  # unbalanced: the response was cut off inside the box
    # "\boxed 5": the argument runs to the next whitespace or math delimiter
    m = re.compile(r"[^\s$]+").match(text, i)
    return _strip_answer(m.group(0)) if m else None


def _last_gsm8k(text: str) -> Optional[str]:
    last = None
    for last in _GSM8K.finditer(text):
        pass
    if last is None:
        return None
    return _strip_answer(last.group(1))


def _last_answer_line(text: str) -> Optional[str]:
    last = None
    for last in _ANSWER_LINE.finditer(text):
        pass
    if last is None:
        return None
    end = text.find("\n", last.end())
    rest = text[last.end() : end if end >= 0 else len(text)]
    # Minerva style: "Final Answer: The final answer is $x$. I hope it is correct."
    # (patterns anchored at one end only: an unanchored \s* would be quadratic on a line of spaces)
    rest = re.sub(r"^the\s+final\s+answer\s+is\s*", "", rest.strip(), flags=re.IGNORECASE)
    if rest.lower().endswith(("i hope it is correct.", "i hope it is correct")):
        rest = rest[: rest.lower().rfind("i hope it is correct")]
    inner = _last_boxed(rest) if _BOXED.search(rest) else None
    return inner if inner is not None else _strip_answer(rest)


def _last_number(text: str) -> Optional[str]:
    last = None
    for last in _NUMBER.finditer(text):
        pass
    return None if last is None else last.group(0)


def _strip_answer(s: str) -> Optional[str]:
    """Remove decoration around an extracted answer: spaces, markdown bold, math delimiters, a final period."""
    s = s.strip()
    for _ in range(3):  # layers such as "**$x$**."
        before = s
        s = s.strip().strip("*").strip()
        if s.endswith("."):
            s = s[:-1].rstrip()
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
            s = s.strip("$").strip()
        if s.startswith("\\(") and s.endswith("\\)"):
            s = s[2:-2].strip()
        if s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2].strip()
        if s == before:
            break
    return s or None
