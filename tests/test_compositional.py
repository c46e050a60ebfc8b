"""data.source=compositional: deterministic disjoint splits, arithmetically correct traces, the Answer-line reward."""
from __future__ import annotations

import json
import re

import pytest
from omegaconf import OmegaConf

from conftest import ROOT
from rewards import RewardScorer
from experiments.make_warm_start import write_sft_jsonl
from rpo_core.data import DataError, compositional_trace, generate_compositional, load_problems

EXPRESSION = re.compile(r"^[\d*+ ]+$")
COLUMN_LINE = re.compile(r"^(\d+) ([+-]) (\d+): (.+), so (\d+)$")
ADD_COLUMN = re.compile(r"^(\d+(?:\+\d+)*)=(\d+)( carry 1)?$")
SUB_COLUMN = re.compile(r"^(\d)-(\d(?:-\d)?)(?: borrow (\d+)-(\d(?:-\d)?))?=(\d)$")


def data_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.load(ROOT / "conf/data/compositional.yaml"), overrides)


def digit(n: int, k: int) -> int:
    return n // 10**k % 10


def check_product_line(line: str) -> int:
    """'47*30 = 40*30 + 7*30 = 1200 + 210 = 1410': every side of the chain has the same value; returns it."""
    sides = line.split(" = ")
    assert len(sides) >= 2 and all(EXPRESSION.match(s) for s in sides), line
    values = {eval(s) for s in sides}  # only digits, * and + (checked above)
    assert len(values) == 1, f"unequal sides in {line!r}"
    return values.pop()


def check_column_line(line: str) -> tuple[int, str, int, int]:
    """'1692 + 58: 2+8=10 carry 1, ..., so 1750': each column's equation, its digits, carries/borrows and the result
    assembled from the written digits are checked; returns (x, op, y, result)."""
    m = COLUMN_LINE.match(line)
    assert m, line
    x, op, y, result = int(m[1]), m[2], int(m[3]), int(m[5])
    cols = m[4].split(", ")
    written, carry = [], 0
    for k, col in enumerate(cols):
        if op == "+" and k >= max(len(str(x)), len(str(y))):  # the carry out of the last column, written alone
            assert col == "1" and carry == 1 and k == len(cols) - 1, f"column {k} of {line!r}"
            written.append(1)
            carry = 0
            continue
        if k >= len(str(y)) and not carry:  # a digit of x alone
            assert col == str(digit(x, k)), f"column {k} of {line!r}"
            written.append(int(col))
            continue
        if op == "+":
            c = ADD_COLUMN.match(col)
            assert c, f"column {k} of {line!r}"
            terms = [int(t) for t in c[1].split("+")]
            wanted = [digit(x, k)] * (k < len(str(x))) + [digit(y, k)] * (k < len(str(y))) + [carry] * carry
            assert terms == wanted and sum(terms) == int(c[2]), f"column {k} of {line!r}"
            assert bool(c[3]) == (int(c[2]) > 9), f"carry of column {k} of {line!r}"
            carry = int(c[2]) // 10
            written.append(int(c[2]) if k == len(cols) - 1 else int(c[2]) % 10)
        else:
            c = SUB_COLUMN.match(col)
            assert c, f"column {k} of {line!r}"
            top, rest = int(c[1]), [int(t) for t in c[2].split("-")]
            assert top == digit(x, k) and rest == [carry] * carry + [digit(y, k)] * (k < len(str(y))), f"column {k} of {line!r}"
            if c[3]:  # borrowed: the top digit was too small, and gains 10
                assert top < sum(rest) and int(c[3]) == top + 10 and c[4] == c[2], f"borrow in column {k} of {line!r}"
            else:
                assert top >= sum(rest), f"column {k} of {line!r} needed a borrow"
            value = int(c[3] or top) - sum(rest)
            assert value == int(c[5]), f"column {k} of {line!r}"
            carry = int(bool(c[3]))
            written.append(value)
    assert carry == 0 and len(cols) >= len(str(x)), f"carry left over or a column missing in {line!r}"
    assembled = int("".join(str(w) for w in reversed(written[:-1]))) if len(written) > 1 else 0
    assembled += written[-1] * 10 ** (len(written) - 1)
    assert assembled == result == (x + y if op == "+" else x - y), line
    return x, op, y, result


def check_trace(question: str, gold: str, trace: str) -> None:
    """The trace of '(a * b) + c - d' computes a*b by partial products, then + c, then - d, and ends with the gold."""
    a, b, c, d = map(int, re.findall(r"\d+", question))
    lines = trace.split("\n")
    assert lines[-1] == f"Answer: {gold}" and int(gold) == a * b + c - d
    n_parts = len(str(b))
    products = [check_product_line(line) for line in lines[:n_parts]]
    heads = [line.split(" = ")[0] for line in lines[:n_parts]]
    assert heads == [f"{a}*{int(ch) * 10**k}" for k, ch in zip(reversed(range(n_parts)), str(b))]
    steps = [check_column_line(line) for line in lines[n_parts:-1]]
    # the partial products summed in order, then + c, then - d, each column line starting from the previous result
    total, expected = products[0], []
    for p in products[1:]:
        expected.append((total, "+", p, total + p))
        total += p
    expected += [(total, "+", c, total + c), (total + c, "-", d, total + c - d)]
    assert steps == expected


# ------------------------------------------------------------------------------------------------- splits
def test_generation_is_deterministic_and_the_splits_disjoint():
    cfg = data_cfg(n_test=500, n_train=1000, n_sft=1000)
    test, train, sft = generate_compositional(cfg)
    assert (len(test), len(train), len(sft)) == (500, 1000, 1000)
    assert (test, train, sft) == generate_compositional(cfg)
    questions = [q for q, _, _ in test + train + sft]
    assert len(set(questions)) == len(questions)  # distinct within and across the three splits
    for q, gold, _ in test + train + sft:  # Python's own evaluation of the question text is the oracle
        assert gold == str(eval(q)) and int(gold) >= 0  # redrawn when negative
    # test does not move when the later splits change size, train does not move when n_sft does
    test2, train2, sft2 = generate_compositional(data_cfg(n_test=500, n_train=300, n_sft=10))
    assert test2 == test and train2 == train[:300] and sft2 == train[300:310]
    assert generate_compositional(data_cfg(n_test=500, n_train=0, n_sft=0, seed=5))[0] != test


def test_too_few_distinct_questions_is_an_error():
    # a, c, d in [1, 2] and b = 1: 8 distinct questions
    with pytest.raises(DataError, match="only 8 distinct questions"):
        generate_compositional(data_cfg(min_operand=1, max_operand=2, min_factor=1, max_factor=1, n_test=5, n_train=4,
                                        n_sft=0))


# ------------------------------------------------------------------------------------------------- traces
@pytest.mark.parametrize("factors", [(2, 9), (10, 99)])  # the config's one-digit b, and two partial products
def test_every_trace_is_arithmetically_correct_and_ends_with_the_gold(factors):
    cfg = data_cfg(n_test=500, n_train=500, n_sft=2000, min_factor=factors[0], max_factor=factors[1])
    test, train, sft = generate_compositional(cfg)
    for q, gold, trace in test + train + sft:
        check_trace(q, gold, trace)


@pytest.mark.parametrize("a, b, c, d", [
    (47, 36, 58, 29),  # the worked example: carries in the sum, a borrow in the difference
    (99, 99, 99, 99),  # the largest: carries out of every column
    (40, 30, 10, 99),  # zero digits: a zero partial product, borrows across zeros
    (10, 10, 10, 99),  # the smallest product: 110 - 99 = 11 (leading zero of the column result)
    (95, 8, 80, 99),   # one-digit factor: one partial product, no partial sum
    (7, 5, 0, 35),     # one-digit operand, result 0
    (123, 45, 6, 7),   # three-digit operand
])
def test_edge_case_traces(a, b, c, d):
    check_trace(f"({a} * {b}) + {c} - {d}", str(a * b + c - d), compositional_trace(a, b, c, d))


def test_the_checker_catches_a_wrong_step():
    trace = compositional_trace(47, 36, 58, 29)
    assert "9+5+1=15 carry 1" in trace and "5-1-2=2" in trace and "7*30 = 1200 + 210" in trace
    for bad in (trace.replace("9+5+1=15 carry 1", "9+5+1=14 carry 1"),  # a wrong column sum
                trace.replace("9+5+1=15 carry 1", "9+5+1=15"),          # a dropped carry
                trace.replace("5-1-2=2", "5-2=3"),                      # a forgotten borrow
                trace.replace("1200 + 210", "1200 + 200"),              # a wrong partial product
                trace.replace("so 1750", "so 1760"),                    # a wrongly assembled result
                trace.replace("Answer: 1721", "Answer: 1722")):
        with pytest.raises(AssertionError):
            check_trace("(47 * 36) + 58 - 29", "1721", bad)


def test_trace_token_lengths(tokenizer):
    """The traces the warm start trains on are 80-140 SmolLM2 tokens, well inside the config's max_new_tokens."""
    _, _, sft = generate_compositional(data_cfg(n_test=500, n_train=0, n_sft=300))
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for _, _, t in sft]
    assert 80 <= min(lengths) and max(lengths) <= 140 and 1.3 * max(lengths) < data_cfg().max_new_tokens
    assert 100 <= sum(lengths) / len(lengths) <= 130


# ------------------------------------------------------------------------------------------------- reward
def test_the_reward_scores_the_answer_line_only():
    cfg = data_cfg()
    trace = compositional_trace(47, 36, 58, 29)
    wrong_answer = trace.replace("Answer: 1721", "Answer: 1750")  # 1721 still appears on the line above
    no_answer = trace.rsplit("\n", 1)[0]  # ends "..., so 1721": the right number, but no Answer line
    with RewardScorer(style=cfg.answer_style, num_workers=1) as scorer:
        result = scorer.score([trace, wrong_answer, no_answer], ["1721"] * 3)
    assert result.correct == [True, False, False]
    assert result.verdicts[2] == "no_answer"


# ------------------------------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)  # the SmolLM2 tokenizer


def test_the_config_loads_through_load_problems(tokenizer):
    cfg = data_cfg()
    splits = load_problems(cfg, tokenizer)
    assert (len(splits.train), len(splits.test)) == (cfg.n_train, cfg.n_test) and splits.skipped["total"] == 0
    test, train, sft = generate_compositional(cfg)
    assert [(p.question, p.gold) for p in splits.test] == [r[:2] for r in test]
    assert [(p.question, p.gold) for p in splits.train] == [r[:2] for r in train]
    assert not {q for q, _, _ in sft} & {p.question for p in splits.train + splits.test}
    prompt = tokenizer.decode(splits.test[0].prompt_ids)
    assert cfg.prompt_template.replace("{question}", splits.test[0].question) in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


# ------------------------------------------------------------------------------------------------- warm start
def test_the_warm_start_jsonl_is_the_sft_split_and_stable(tmp_path):
    cfg = data_cfg(n_test=50, n_train=100, n_sft=20)
    path = write_sft_jsonl(cfg, tmp_path)
    assert write_sft_jsonl(cfg, tmp_path / "again").read_bytes() == path.read_bytes()  # same config, same file
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    test, train, sft = generate_compositional(cfg)
    assert rows == [{"prompt": cfg.prompt_template.replace("{question}", q), "response": t} for q, _, t in sft]
    assert not {row["prompt"] for row in rows} & {cfg.prompt_template.replace("{question}", q) for q, _, _ in test + train}
