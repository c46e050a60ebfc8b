"""Is a predicted answer the gold one? A whitelisted grammar in front of sympy.

Safety: sympy's `sympify`/`parse_expr` run Python's `eval` on their input. Model text never reaches them: the
tokenizer below accepts only numbers, single letters, a fixed list of function and constant names, operators,
brackets and a fixed list of LaTeX commands, and raises ParseError on anything else (quotes, underscores outside a
base subscript, dots outside numbers, unknown commands, words, control characters). The expression handed to
`parse_expr` is re-emitted from those tokens (`Integer(3)*x + sqrt(Integer(2))`), evaluated with empty builtins and
a namespace holding only those names. Runaway but well-formed work (9^9^9^9, huge expansions) is stopped by the
worker process that runs this module (`rewards.worker`), never by this code.

Answer structure understood: numbers (see `rewards.numbers`), expressions (radicals, pi, i, e, trig/log functions,
n!, polynomials and rational functions, equal after simplification), equations (`x=3` against `3`, or two
equations equal up to swapping sides), percentages, comma lists (order-insensitive: a list of solutions),
`\\{...\\}` sets (order-insensitive), ordered tuples and intervals (bracket types must match), unions of intervals
and sets, `a \\pm b`, inequalities (`a \\le x < b`, also mirrored), ratios `3:1` (ordered), matrices and vectors
(pmatrix/bmatrix), numbers in a base (`204_5`, `152A_{11}`) and text answers (`\\text{Evelyn}`, `(B)`, a word).
When the gold is text or either side cannot be parsed, normalized strings are compared instead.
"""
from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Optional, Union

import sympy
from sympy.parsing.sympy_parser import parse_expr

from rewards.numbers import REL_TOL, clean_answer, numbers_equal, parse_number

CORRECT, WRONG, PARSE_FAILURE = "correct", "wrong", "parse_failure"

MAX_TOKENS = 600  # a long but plausible answer; anything longer is not an answer
MAX_DEPTH = 24  # bracket nesting; far below Python's parser limit (200)


class ParseError(ValueError):
    """The answer is outside the accepted grammar."""


# ---------------------------------------------------------------- tokens ---------------------------------------
# Token kinds: NUM VAR CONST FUNC OP OPEN CLOSE SETO SETC COMMA EQ PM CUP PERCENT BASENUM REL COLON FACT
Token = tuple[str, str]

FUNCS = {
    "sqrt": "sqrt", "sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec", "csc": "csc",
    "arcsin": "asin", "arccos": "acos", "arctan": "atan", "sinh": "sinh", "cosh": "cosh", "tanh": "tanh",
    "log": "log", "ln": "log", "exp": "exp",
}  # fmt: skip
CONSTS = {"pi": "pi", "infty": "oo", "infinity": "oo", "oo": "oo"}
GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "sigma", "phi", "omega", "rho", "tau"}
_LATEX_OPS = {"cdot": "*", "times": "*", "ast": "*", "div": "/"}
_LATEX_RELS = {"le": "<=", "leq": "<=", "leqslant": "<=", "ge": ">=", "geq": ">=", "geqslant": ">=", "lt": "<", "gt": ">",
               "ne": "!=", "neq": "!="}  # fmt: skip
_LATEX_IGNORED = {"displaystyle", "left", "right", "big", "Big", "bigl", "bigr", "Bigl", "Bigr", "circ", "!", ",", ";", ":", " "}
_UNICODE = {"\u00d7": ("OP", "*"), "\u00b7": ("OP", "*"), "\u22c5": ("OP", "*"), "\u00f7": ("OP", "/"),
            "\u00b1": ("PM", "+-"), "\u222a": ("CUP", "u"), "\u03c0": ("CONST", "pi"), "\u221e": ("CONST", "oo"),
            "\u2264": ("REL", "<="), "\u2265": ("REL", ">="), "\u2260": ("REL", "!="), ";": ("COMMA", ","), ":": ("COLON", ":"),
            "!": ("FACT", "!")}  # fmt: skip
_WORDS = sorted(set(FUNCS) | set(CONSTS), key=len, reverse=True)
_NUM = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,3}(?!\d))?")
_BASE_SUB = re.compile(r"_\s*(?:\{\s*(\d{1,2})\s*\}|(\d))")


def _read_arg(s: str, i: int) -> tuple[str, int]:
    """One LaTeX macro argument starting at s[i]: a {group}, a \\command or a single character."""
    n = len(s)
    while i < n and s[i] == " ":
        i += 1
    if i >= n:
        raise ParseError("missing argument")
    if s[i] == "{":
        depth, j = 0, i
        while j < n:
            c = s[j]
            if c == "\\":
                j += 2
                continue
            depth += (c == "{") - (c == "}")
            if depth == 0:
                return s[i + 1 : j], j + 1
            j += 1
        raise ParseError("unbalanced braces")
    if s[i] == "\\":
        m = re.compile(r"\\[A-Za-z]+").match(s, i)
        if not m:
            raise ParseError("bad argument")
        return m.group(0), m.end()
    return s[i], i + 1


def tokenize(s: str, _depth: int = 0) -> list[Token]:
    """Whitelisted tokens of a cleaned answer, or ParseError."""
    if _depth > MAX_DEPTH:
        raise ParseError("nested too deeply")
    out: list[Token] = []
    i, n = 0, len(s)

    def sub(text: str) -> list[Token]:
        return tokenize(text, _depth + 1)

    while i < n:
        if len(out) > MAX_TOKENS:
            raise ParseError("answer too long")
        c = s[i]
        if c in " \t\n":
            i += 1
        elif c.isdigit() or (c == "." and i + 1 < n and s[i + 1].isdigit()):
            m = _NUM.match(s, i)
            i = m.end()
            b = _BASE_SUB.match(s, i)
            if b and m.group(0).isdigit():
                out.append(("BASENUM", f"{m.group(0)}_{b.group(1) or b.group(2)}"))
                i = b.end()
            else:
                out.append(("NUM", m.group(0)))
        elif c in string.ascii_letters:
            j = i
            while j < n and s[j] in string.ascii_letters:
                j += 1
            out += _split_letters(s[i:j])
            i = j
        elif c == "\\":
            m = re.compile(r"\\([A-Za-z]+|.)").match(s, i)
            if not m:
                raise ParseError("dangling backslash")
            name, i = m.group(1), m.end()
            if name == "frac":
                a, i = _read_arg(s, i)
                b, i = _read_arg(s, i)
                out += [("OPEN", "("), ("OPEN", "("), *sub(a), ("CLOSE", ")"), ("OP", "/")]
                out += [("OPEN", "("), *sub(b), ("CLOSE", ")"), ("CLOSE", ")")]
            elif name == "sqrt":
                root = None
                if i < n and s[i] == "[":
                    j = s.find("]", i)
                    if j < 0:
                        raise ParseError("unclosed root index")
                    root, i = s[i + 1 : j], j + 1
                a, i = _read_arg(s, i)
                if root is None:
                    out += [("FUNC", "sqrt"), ("OPEN", "("), *sub(a), ("CLOSE", ")")]
                else:  # (a)^(1/(n))
                    out += [("OPEN", "("), ("OPEN", "("), *sub(a), ("CLOSE", ")"), ("OP", "^"), ("OPEN", "(")]
                    out += [("NUM", "1"), ("OP", "/"), ("OPEN", "("), *sub(root), ("CLOSE", ")"), ("CLOSE", ")"), ("CLOSE", ")")]
            elif name in FUNCS:
                out.append(("FUNC", FUNCS[name]))
            elif name in CONSTS:
                out.append(("CONST", CONSTS[name]))
            elif name in GREEK:
                out.append(("VAR", name))
            elif name in _LATEX_OPS:
                out.append(("OP", _LATEX_OPS[name]))
            elif name in _LATEX_RELS:
                out.append(("REL", _LATEX_RELS[name]))
            elif name in ("pm", "mp"):
                out.append(("PM", "+-"))
            elif name == "cup":
                out.append(("CUP", "u"))
            elif name == "{":
                out.append(("SETO", "{"))
            elif name == "}":
                out.append(("SETC", "}"))
            elif name == "%":
                out.append(("PERCENT", "%"))
            elif name == "text":
                a, i = _read_arg(s, i)
                if a.strip() not in ("and", "or", ""):
                    raise ParseError("text inside an expression")
                if a.strip():
                    out.append(("COMMA", ","))
            elif name in _LATEX_IGNORED:
                pass
            else:
                raise ParseError(f"unsupported command \\{name}")
        elif c in "([{":
            out.append(("OPEN", c))
            i += 1
        elif c in ")]}":
            out.append(("CLOSE", c))
            i += 1
        elif c == "*" and s.startswith("**", i):
            out.append(("OP", "^"))
            i += 2
        elif c in "+-*/^":
            out.append(("OP", c))
            i += 1
        elif c == ",":
            out.append(("COMMA", ","))
            i += 1
        elif c in "<>" or s.startswith("!=", i):
            op = s[i : i + 2] if s.startswith(("<=", ">=", "!="), i) else c
            out.append(("REL", op))
            i += len(op)
        elif c == "=":
            out.append(("EQ", "="))
            i += 1
        elif c == "%":
            out.append(("PERCENT", "%"))
            i += 1
        elif c == "\u221a":  # √2, √(2)
            out.append(("FUNC", "sqrt"))
            i += 1
        elif c in _UNICODE:
            out.append(_UNICODE[c])
            i += 1
        else:
            raise ParseError(f"character {c!r} not allowed")
    if _depth == 0:
        _check_brackets(out)
        out = _merge_mixed_numbers(out)
    return out


def _split_letters(run: str) -> list[Token]:
    """'sinx' -> sin x; '2ab' letters -> a b; a long run with no known name is a word, not mathematics."""
    out: list[Token] = []
    i = 0
    known = False
    while i < len(run):
        for w in _WORDS:
            if run.startswith(w, i):
                out.append(("FUNC", FUNCS[w]) if w in FUNCS else ("CONST", CONSTS[w]))
                i += len(w)
                known = True
                break
        else:
            out.append(("VAR", run[i]))
            i += 1
    if len(run) >= 4 and not known:
        raise ParseError(f"word {run[:20]!r} where mathematics was expected")
    return out


def _check_brackets(toks: list[Token]) -> None:
    stack: list[str] = []
    for kind, val in toks:
        if kind == "OPEN":
            stack.append("{" if val == "{" else "(")
        elif kind == "SETO":
            stack.append("set")
        elif kind == "CLOSE":
            # ( and [ close with either ) or ]: half-open intervals
            if not stack or stack.pop() != ("{" if val == "}" else "("):
                raise ParseError("unbalanced brackets")
        elif kind == "SETC":
            if not stack or stack.pop() != "set":
                raise ParseError("unbalanced set braces")
        if len(stack) > MAX_DEPTH:
            raise ParseError("nested too deeply")
    if stack:
        raise ParseError("unbalanced brackets")


_BOUNDARY_BEFORE = {"COMMA", "OPEN", "SETO", "EQ"}
_BOUNDARY_AFTER = {"COMMA", "CLOSE", "SETC", "EQ", "PERCENT"}


def _merge_mixed_numbers(toks: list[Token]) -> list[Token]:
    """137 \\frac{1}{2} and 2 1/2 are mixed numbers (137 + 1/2), as in `rewards.numbers`, not products."""
    out = list(toks)
    i = 0
    while i < len(out):
        if out[i][0] == "NUM" and out[i][1].isdigit():
            prev = out[i - 1] if i > 0 else None
            before_ok = prev is None or prev[0] in _BOUNDARY_BEFORE or (
                prev == ("OP", "-") and (i < 2 or out[i - 2][0] in _BOUNDARY_BEFORE)
            )
            latex = out[i + 1 : i + 10]
            plain = out[i + 1 : i + 4]
            if before_ok and _is_latex_int_frac(latex) and _ends(out, i + 10):
                num, den, end = latex[2][1], latex[6][1], i + 10
            elif before_ok and len(plain) == 3 and plain[0][0] == "NUM" and plain[1] == ("OP", "/") and plain[2][0] == "NUM" and plain[0][1].isdigit() and plain[2][1].isdigit() and _ends(out, i + 4):
                num, den, end = plain[0][1], plain[2][1], i + 4
            else:
                i += 1
                continue
            out[i:end] = [("OPEN", "("), out[i], ("OP", "+"), ("NUM", num), ("OP", "/"), ("NUM", den), ("CLOSE", ")")]
            i += 7
        else:
            i += 1
    return out


def _is_latex_int_frac(t: list[Token]) -> bool:
    pattern = ["OPEN", "OPEN", "NUM", "CLOSE", "OP", "OPEN", "NUM", "CLOSE", "CLOSE"]
    return (
        len(t) == 9
        and [k for k, _ in t] == pattern
        and t[4][1] == "/"
        and t[2][1].isdigit()
        and t[6][1].isdigit()
    )


def _ends(toks: list[Token], j: int) -> bool:
    return j >= len(toks) or toks[j][0] in _BOUNDARY_AFTER


# ---------------------------------------------------------------- expressions ----------------------------------
_LOCALS: dict = {"Integer": sympy.Integer, "Rational": sympy.Rational, "pi": sympy.pi, "oo": sympy.oo, "factorial": sympy.factorial}
_LOCALS.update({name: getattr(sympy, name) for name in set(FUNCS.values())})
_LOCALS.update({c: sympy.Symbol(c) for c in string.ascii_letters})
_LOCALS.update({"e": sympy.E, "i": sympy.I})
_LOCALS.update({f"greek_{g}": sympy.Symbol(g) for g in GREEK})
_GLOBALS = {"__builtins__": {}}
_ATOMS = {"NUM", "VAR", "CONST"}


MAX_DIGITS = 300  # no answer needs more; Python refuses int(str) beyond 4300 digits anyway


def _num_code(text: str) -> tuple[str, bool]:
    if len(text) > MAX_DIGITS:
        raise ParseError("number too long")
    if text.isdigit():
        return f"Integer({int(text)})", False
    try:
        f = Fraction(Decimal(text))
    except (InvalidOperation, ValueError) as e:
        raise ParseError(f"bad number {text!r}") from e
    return f"Rational({f.numerator},{f.denominator})", True


def _name_code(kind: str, val: str) -> str:
    if kind == "CONST":
        return val
    return f"greek_{val}" if val in GREEK else val


def expression_code(toks: list[Token]) -> tuple[str, bool]:
    """Python source for sympy built only from whitelisted tokens, and whether a decimal appeared."""
    if not toks:
        raise ParseError("empty expression")
    out: list[str] = []
    inexact = False
    prev: Optional[str] = None
    i = 0
    while i < len(toks):
        kind, val = toks[i]
        if prev in ("NUM", "VAR", "CONST", "CLOSE") and kind in ("NUM", "VAR", "CONST", "FUNC", "OPEN"):
            if prev == "NUM" and kind == "NUM":
                raise ParseError("two numbers in a row")
            out.append("*")  # implicit multiplication: 2x, 2\sqrt{3}, (a+1)(b+2)
        if kind == "NUM":
            code, dec = _num_code(val)
            inexact |= dec
            out.append(code)
        elif kind in ("VAR", "CONST"):
            out.append(_name_code(kind, val))
        elif kind == "FUNC":
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            if nxt is not None and nxt[0] == "OPEN":
                out.append(val)
                prev = "FUNC"
                i += 1
                continue
            power = None  # \cos^2 x = (cos x)^2
            if nxt == ("OP", "^") and i + 2 < len(toks) and toks[i + 2][0] == "NUM":
                power, dec = _num_code(toks[i + 2][1])
                inexact |= dec
                i += 2
            j = _argument_end(toks, i + 1)  # \cot x, \sin 2x, \sin(x): the group or run of atoms that follows
            if j == i + 1:
                raise ParseError(f"{val} without an argument")
            arg, dec = expression_code(toks[i + 1 : j])
            inexact |= dec
            out.append(f"{val}({arg})" if power is None else f"({val}({arg}))**{power}")
            prev, i = "CLOSE", j
            continue
        elif kind == "FACT":
            if prev != "NUM":
                raise ParseError("factorial of something other than a number")
            out[-1] = f"factorial({out[-1]})"
        elif kind == "OP":
            if prev in (None, "OP", "OPEN") and val not in "+-":
                raise ParseError(f"operator {val} without a left operand")
            out.append("**" if val == "^" else val)
        elif kind == "OPEN":
            out.append("(")
        elif kind == "CLOSE":
            out.append(")")
        else:
            raise ParseError(f"{kind.lower()} inside an expression")
        prev = kind
        i += 1
    if prev in ("OP", "FUNC"):
        raise ParseError("expression ends with an operator")
    return "".join(out), inexact


def _argument_end(toks: list[Token], start: int) -> int:
    """End of a function argument: a bracket group, else the run of atoms, starting at toks[start]."""
    if start < len(toks) and toks[start][0] == "OPEN":
        depth = 0
        for j in range(start, len(toks)):
            depth += (toks[j][0] == "OPEN") - (toks[j][0] == "CLOSE")
            if depth == 0:
                return j + 1
        raise ParseError("unbalanced brackets")
    j = start
    while j < len(toks) and toks[j][0] in _ATOMS:
        j += 1
    return j


def to_sympy(toks: list[Token]) -> tuple[sympy.Expr, bool]:
    code, inexact = expression_code(toks)
    try:
        expr = parse_expr(code, local_dict=dict(_LOCALS), global_dict=dict(_GLOBALS), transformations=(), evaluate=True)
    except (SyntaxError, TypeError, ValueError, AttributeError, ZeroDivisionError, OverflowError) as e:
        raise ParseError(f"not an expression: {type(e).__name__}") from None
    if not isinstance(expr, sympy.Expr):
        raise ParseError("not a scalar expression")
    return expr, inexact


# ---------------------------------------------------------------- answer structure -----------------------------
@dataclass(frozen=True)
class Text:
    key: str


@dataclass(frozen=True)
class Value:
    expr: sympy.Expr
    inexact: bool = False
    percent: bool = False


@dataclass(frozen=True)
class Equation:
    lhs: sympy.Expr
    rhs: sympy.Expr
    inexact: bool = False


@dataclass(frozen=True)
class BaseNumber:
    digits: str
    base: int


@dataclass(frozen=True)
class Relation:
    items: tuple  # a < b <= c: the sides, left to right
    ops: tuple  # the relations between them


@dataclass(frozen=True)
class Seq:
    kind: str  # list (commas, a \pm) | set (\{ \}) | tuple (brackets, intervals; ":" for ratios) | union | matrix | row
    items: tuple
    brackets: str = ""


Answer = Union[Text, Value, Equation, BaseNumber, Relation, Seq]


def text_key(s: str) -> str:
    """Text answers compare case-insensitively on letters and digits: \\text{(B)} == B, \\text{East} == east."""
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    return re.sub(r"[^0-9a-z]", "", s.lower())


def string_key(s: str) -> str:
    """Last-resort comparison for answers sympy cannot read: whitespace and \\text wrappers ignored."""
    return re.sub(r"\s+", "", re.sub(r"\\text\{([^{}]*)\}", r"\1", s))


_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix)\}(.*)\\end\{\1\}", re.DOTALL)
# 204_5, 4210_{5}, -37_8, 0.0011_{2}, 152A_{11}, \text{A5}_{11}
_BASE_NUMBER = re.compile(r"(-?)(?:\\text\{)?([0-9A-Za-z.]+)\}?\s*_\s*\{?\s*(\d{1,2})\s*\}?")


def _base_number(sign: str, digits: str, base: str) -> BaseNumber:
    digits = digits.upper()
    if "." not in digits:
        digits = digits.lstrip("0") or "0"
    return BaseNumber(sign + digits, int(base))


@functools.lru_cache(maxsize=8192)
def parse_answer(cleaned: str) -> Answer:
    """Structure of a cleaned answer (`rewards.numbers.clean_answer`), or ParseError."""
    if not cleaned:
        raise ParseError("empty answer")
    m = re.fullmatch(r"\(?\s*\\text\{([^{}]*)\}\s*\)?", cleaned)
    if m:
        return Text(text_key(m.group(1)))
    m = _BASE_NUMBER.fullmatch(cleaned)
    if m:
        return _base_number(*m.groups())
    if re.fullmatch(r"[A-Za-z]+(?: [A-Za-z]+)*", cleaned) and max(len(w) for w in cleaned.split()) >= 4:
        return Text(text_key(cleaned))  # a word (a name, a cipher), not a product of variables
    m = _MATRIX.fullmatch(cleaned)
    if m:
        rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
        cells = [[_parse_element(tokenize(c)) for c in r.split("&")] for r in rows]
        if not cells or len({len(r) for r in cells}) != 1 or not all(isinstance(c, Value) for r in cells for c in r):
            raise ParseError("malformed matrix")
        return Seq("matrix", tuple(Seq("row", tuple(r)) for r in cells))
    return _parse_tokens(tokenize(cleaned))


def _split_top(toks: list[Token], kind: str) -> list[list[Token]]:
    parts, cur, depth = [], [], 0
    for t in toks:
        if t[0] in ("OPEN", "SETO"):
            depth += 1
        elif t[0] in ("CLOSE", "SETC"):
            depth -= 1
        if t[0] == kind and depth == 0:
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    parts.append(cur)
    return parts


def _enclosing(toks: list[Token]) -> Optional[tuple[str, str, list[Token]]]:
    """(open, close, inside) when one bracket pair encloses all the tokens."""
    if len(toks) < 2 or toks[0][0] not in ("OPEN", "SETO") or toks[-1][0] not in ("CLOSE", "SETC"):
        return None
    depth = 0
    for k, (kind, _) in enumerate(toks):
        depth += kind in ("OPEN", "SETO")
        depth -= kind in ("CLOSE", "SETC")
        if depth == 0 and k < len(toks) - 1:
            return None
    return toks[0][1], toks[-1][1], toks[1:-1]


def _parse_tokens(toks: list[Token]) -> Answer:
    pieces = _split_top(toks, "CUP")
    if len(pieces) > 1:
        intervals = tuple(_parse_element(p) for p in pieces)
        if not all(isinstance(x, Seq) and (x.kind == "set" or (x.kind == "tuple" and len(x.items) == 2)) for x in intervals):
            raise ParseError("a union of things that are not intervals or sets")
        return Seq("union", intervals)
    items = [x for x in _split_top(toks, "COMMA") if x]  # "2, 3, \text{and} 4" leaves an empty item
    if not items:
        raise ParseError("empty answer")
    if len(items) > 1:
        return Seq("list", _flatten(_parse_element(x) for x in items))
    return _parse_element(items[0])


def _flatten(elements) -> tuple:
    out = []
    for e in elements:
        out += list(e.items) if isinstance(e, Seq) and e.kind == "list" else [e]
    return tuple(out)


def _parse_element(toks: list[Token]) -> Answer:
    enc = _enclosing(toks)
    if enc:
        open_, close, inner = enc
        if open_ == "{" and close == "}" and toks[0][0] == "SETO":
            return Seq("set", _flatten(_parse_element(x) for x in _split_top(inner, "COMMA") if x))
        parts = _split_top(inner, "COMMA")
        if len(parts) > 1:
            if open_ == "{":  # a plain-text set {1, 2}
                return Seq("set", _flatten(_parse_element(x) for x in parts))
            return Seq("tuple", tuple(_parse_element(x) for x in parts), open_ + close)
    if len(toks) == 1 and toks[0][0] == "BASENUM":
        return _base_number("", *toks[0][1].split("_"))
    parts = _split_top(toks, "REL")
    if len(parts) > 1:  # -80 \le g(x) \le 82
        ops = tuple(t[1] for k, t in enumerate(toks) if t[0] == "REL" and _depth_at(toks, k) == 0)
        return Relation(tuple(_parse_element(x) for x in parts), ops)
    parts = _split_top(toks, "COLON")
    if len(parts) > 1:  # a ratio 3:1 (or a time 4:51): ordered, each part exact
        return Seq("tuple", tuple(_parse_element(x) for x in parts), ":")
    sides = _split_top(toks, "EQ")
    if len(sides) > 2:
        raise ParseError("chained equations")
    if len(sides) == 2:
        rhs = _parse_element(sides[1])
        if len(sides[0]) == 1 and sides[0][0][0] == "VAR" and (not isinstance(rhs, Value) or rhs.percent):
            return rhs  # x = 1 \pm \sqrt{2}, x = 204_5, x = 5\%: the answer is the right-hand side
        if not isinstance(rhs, Value) or rhs.percent:
            raise ParseError("equation with a non-expression side")
        lhs, inexact = to_sympy(sides[0])
        return Equation(lhs, rhs.expr, inexact or rhs.inexact)
    pm = [k for k, t in enumerate(toks) if t[0] == "PM" and _depth_at(toks, k) == 0]
    if pm:
        if len(pm) > 1:
            raise ParseError("more than one \\pm")
        k = pm[0]
        right, inexact_r = to_sympy(toks[k + 1 :])
        if k == 0:
            return Seq("list", (Value(right, inexact_r), Value(-right, inexact_r)))
        left, inexact_l = to_sympy(toks[:k])
        inexact = inexact_l or inexact_r
        return Seq("list", (Value(left + right, inexact), Value(left - right, inexact)))
    percent = bool(toks) and toks[-1][0] == "PERCENT"
    expr, inexact = to_sympy(toks[:-1] if percent else toks)
    return Value(expr, inexact, percent)


def _depth_at(toks: list[Token], k: int) -> int:
    depth = 0
    for kind, _ in toks[:k]:
        depth += kind in ("OPEN", "SETO")
        depth -= kind in ("CLOSE", "SETC")
    return depth


# ---------------------------------------------------------------- equivalence ----------------------------------
def expressions_equal(gold: sympy.Expr, pred: sympy.Expr, inexact: bool, rel_tol: float = REL_TOL) -> bool:
    """gold == pred exactly (after simplification), or within rel_tol of |gold| when a decimal was involved."""
    if gold == pred:
        return True
    try:
        diff = gold - pred
        if diff == 0:
            return True
        if not diff.free_symbols:
            if inexact:
                g, d = sympy.N(gold, 30), sympy.N(diff, 30)
                return bool(d.is_finite) and bool(abs(d) <= rel_tol * abs(g))
            if sympy.simplify(diff) == 0:
                return True
            # exact forms simplify cannot match (nested radicals): equal to 40 significant digits
            g, d = sympy.N(gold, 60), sympy.N(diff, 60)
            return bool(d.is_finite) and bool(abs(d) <= sympy.Float("1e-40") * max(1, abs(g)))
        for simplifier in (sympy.expand, sympy.cancel, sympy.simplify):
            if simplifier(diff) == 0:
                return True
        return diff.equals(0) is True
    except (TypeError, ValueError, AttributeError, ZeroDivisionError, NotImplementedError):
        return False


def values_equal(gold: Value, pred: Value, rel_tol: float = REL_TOL) -> bool:
    golds = [gold.expr] + ([gold.expr / 100] if gold.percent else [])
    preds = [pred.expr] + ([pred.expr / 100] if pred.percent else [])
    inexact = gold.inexact or pred.inexact
    return any(expressions_equal(g, p, inexact, rel_tol) for g in golds for p in preds)


def answers_equal(gold: Answer, pred: Answer, rel_tol: float = REL_TOL) -> bool:
    """Structural equivalence with the gold as the reference."""
    if isinstance(gold, Equation) or isinstance(pred, Equation):
        if isinstance(gold, Equation) and isinstance(pred, Equation):
            inexact = gold.inexact or pred.inexact
            g, p = gold.lhs - gold.rhs, pred.lhs - pred.rhs
            return expressions_equal(g, p, inexact, rel_tol) or expressions_equal(g, -p, inexact, rel_tol)
        eq, other = (gold, pred) if isinstance(gold, Equation) else (pred, gold)
        if not (eq.lhs.is_Symbol and isinstance(other, Value)):  # x = 3 against 3
            return False
        rhs = Value(eq.rhs, eq.inexact)
        return values_equal(rhs, other, rel_tol) if eq is gold else values_equal(other, rhs, rel_tol)
    if isinstance(gold, Relation):
        if not isinstance(pred, Relation) or len(pred.items) != len(gold.items):
            return False
        flip = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "!=": "!="}
        mirrored = Relation(pred.items[::-1], tuple(flip[o] for o in pred.ops[::-1]))  # b > a is a < b
        return any(
            p.ops == gold.ops and all(answers_equal(g, q, rel_tol) for g, q in zip(gold.items, p.items))
            for p in (pred, mirrored)
        )
    if isinstance(gold, Value):
        return isinstance(pred, Value) and values_equal(gold, pred, rel_tol)
    if isinstance(gold, BaseNumber):
        if isinstance(pred, BaseNumber):
            return pred == gold
        # the digits alone answer "express in base b"
        return isinstance(pred, Value) and pred.expr.is_Integer and str(pred.expr) == gold.digits and not pred.percent
    if isinstance(gold, Text):
        return isinstance(pred, Text) and pred.key == gold.key
    if isinstance(gold, Seq):
        if not isinstance(pred, Seq):
            return False
        if gold.kind in ("list", "set"):
            return pred.kind in ("list", "set") and _match_unordered(gold.items, pred.items, rel_tol)
        if gold.kind == "union":
            return pred.kind == "union" and _match_unordered(gold.items, pred.items, rel_tol)
        if gold.kind != pred.kind or gold.brackets != pred.brackets or len(gold.items) != len(pred.items):
            return False  # tuple, interval, matrix, row: ordered, brackets and shape must match
        return all(answers_equal(g, p, rel_tol) for g, p in zip(gold.items, pred.items))
    return False


def _match_unordered(golds: tuple, preds: tuple, rel_tol: float) -> bool:
    if len(golds) != len(preds):
        return False
    unused = list(preds)
    for g in golds:
        for k, p in enumerate(unused):
            if answers_equal(g, p, rel_tol):
                del unused[k]
                break
        else:
            return False
    return True


# ---------------------------------------------------------------- entry points ---------------------------------
def judge(gold: str, pred: str, rel_tol: float = REL_TOL) -> str:
    """CORRECT, WRONG, or PARSE_FAILURE (the prediction is outside the grammar; scored as wrong) for one pair.

    Runs sympy in this process: call it on model output only inside a worker (`rewards.worker`).
    """
    g_clean, p_clean = clean_answer(gold), clean_answer(pred)
    g_num, p_num = parse_number(g_clean), parse_number(p_clean)
    if g_num is not None and p_num is not None:
        return CORRECT if numbers_equal(g_num, p_num, rel_tol) else WRONG
    try:
        g = parse_answer(g_clean)
    except (ParseError, RecursionError):
        g = None
    if g is None or isinstance(g, Text):
        # text gold, or a gold sympy cannot read: normalized strings decide
        if g is not None:
            return CORRECT if text_key(p_clean) == g.key else WRONG
        return CORRECT if string_key(p_clean) == string_key(g_clean) else WRONG
    try:
        p = parse_answer(p_clean)
    except (ParseError, RecursionError):
        return CORRECT if string_key(p_clean) == string_key(g_clean) else PARSE_FAILURE
    if isinstance(p, Text):  # \text{5} against 5
        return CORRECT if p.key == text_key(g_clean) else WRONG
    if isinstance(g, BaseNumber) and re.sub(r"\s", "", p_clean).upper() == g.digits:  # 152A against 152A_{11}
        return CORRECT
    return CORRECT if answers_equal(g, p, rel_tol) else WRONG


def normalize_gold(gold: str) -> str:
    """The cleaned gold answer, checked once at load time; ValueError (with the reason) if it cannot be parsed.

    Runs in the calling process: gold answers are dataset text, not model output.
    """
    if not isinstance(gold, str):
        raise ValueError(f"gold answer must be a string, got {type(gold).__name__}")
    cleaned = clean_answer(gold)
    if not cleaned:
        raise ValueError(f"gold answer {gold!r} is empty after normalization")
    if parse_number(cleaned) is None:
        try:
            parse_answer(cleaned)
        except (ParseError, RecursionError) as e:
            raise ValueError(f"gold answer {gold!r} cannot be parsed: {e}") from None
    return cleaned
