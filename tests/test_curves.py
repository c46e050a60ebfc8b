"""experiments/curves.py: the time axis, time to target, accuracy at equal time and bootstrap intervals, by hand."""
from __future__ import annotations

import math

from experiments.curves import (accuracy_at, accuracy_curve, analyze, bootstrap_ci, compare, mean_diff, mean_ratio,
                                phase_row, render, time_ratio, time_to_accuracy)


def run(init: float | None, accs: dict[int, float], step_s: float = 5.0, eval_s: float = 1.0) -> list[dict]:
    """Metrics of a run: step 0 (cache init, accuracy), then steps of step_s seconds plus eval_s when evaluated."""
    step0 = {"step": 0, "accuracy": accs.get(0)}
    if init is not None:
        step0["cache_init_seconds"] = init
    steps = [{"step": s, "time_step": step_s + (eval_s if s in accs else 0.0), "time_eval": eval_s if s in accs else None,
              "time_rollout": 2.0, "time_train": 3.0, "rollout_tokens_per_sample": 10.0 * (1 if init is None else 0.2),
              **({"accuracy": accs[s]} if s in accs else {})} for s in range(1, max(accs) + 1)]
    return [step0, *steps]


def test_curve_counts_step_time_without_eval_and_starts_at_cache_init():
    metrics = run(10.0, {0: 0.2, 2: 0.5, 4: 0.7})
    assert accuracy_curve(metrics, with_init=True) == [(10.0, 0.2), (20.0, 0.5), (30.0, 0.7)]
    assert accuracy_curve(metrics, with_init=False) == [(0.0, 0.2), (10.0, 0.5), (20.0, 0.7)]


def test_time_to_accuracy_and_accuracy_at():
    curve = [(0.0, 0.2), (10.0, 0.5), (20.0, 0.4), (30.0, 0.7)]
    assert time_to_accuracy(curve, 0.5) == 10.0  # the first time, though it falls back later
    assert time_to_accuracy(curve, 0.8) == math.inf
    assert accuracy_at(curve, 9.9) == 0.2 and accuracy_at(curve, 10.0) == 0.5 and accuracy_at(curve, 29.0) == 0.4
    assert accuracy_at([(5.0, 0.1)], 4.0) is None


def test_bootstrap_interval_and_no_difference_verdict():
    assert bootstrap_ci([1.0, 1.0, 1.0], [2.0, 2.0, 2.0], mean_ratio) == (0.5, 0.5)
    shifted = compare([0.5, 0.6, 0.7], [0.1, 0.2, 0.3], mean_diff, 0.0)
    assert math.isclose(shifted["value"], 0.4) and shifted["excludes_null"] is True
    lo, hi = shifted["ci"]
    assert 0.2 <= lo < 0.4 < hi <= 0.6  # resampled means of 3 lie in [min, max]
    overlapping = compare([0.1, 0.5, 0.9], [0.2, 0.5, 0.8], mean_diff, 0.0)
    assert overlapping["excludes_null"] is False
    one_seed = compare([0.5], [0.1, 0.2], mean_diff, 0.0)  # one seed: a value, never an interval
    assert math.isclose(one_seed["value"], 0.35) and one_seed["ci"] is None and one_seed["excludes_null"] is None


def test_analyze_targets_the_baseline_final_accuracy():
    methods = {"grpo": [run(None, {0: 0.2, 2: 0.4, 4: 0.6}), run(None, {0: 0.2, 2: 0.5, 4: 0.4})],
               "grpo+RPO": [run(4.0, {0: 0.2, 2: 0.5, 4: 0.5}), run(4.0, {0: 0.2, 2: 0.3, 4: 0.4})]}
    a = analyze(methods, "grpo")
    assert math.isclose(a["target"], 0.5)  # mean of the baseline's final accuracies 0.6 and 0.4
    assert a["methods"]["grpo"]["time_to_target_s"] == [20.0, 10.0]
    assert a["methods"]["grpo+RPO"]["time_to_target_s"] == [14.0, math.inf]  # init 4 s + two 5-s steps; never
    (c,) = a["comparisons"]
    # a seed never reached the target: no mean time, so no ratio and no interval (not "infinitely slower")
    assert c["reached"] == (1, 2) and math.isnan(c["time_to_target_ratio"]["value"])
    assert c["time_to_target_ratio"]["ci"] is None
    assert "undefined: not every seed reached (1/2 vs 2/2)" in "\n".join(render(a))
    assert math.isclose(c["tokens_ratio"]["value"], 0.2)
    assert c["equal_time_s"] == 20.0  # the shortest run: a grpo seed ends at 20 s, the RPO ones at 24 s
    assert math.isclose(c["equal_time_acc_diff"]["value"], (0.5 + 0.3) / 2 - (0.6 + 0.4) / 2)
    assert math.isclose(c["final_acc_diff"]["value"], (0.5 + 0.4) / 2 - (0.6 + 0.4) / 2)


def test_time_ratio_when_every_seed_reached():
    assert math.isclose(time_ratio([10.0, 20.0], [30.0, 30.0]), 0.5)
    for a, b in (([10.0, math.inf], [30.0, 30.0]), ([10.0, 20.0], [30.0, math.inf]), ([math.inf], [math.inf])):
        assert math.isnan(time_ratio(a, b))
    c = compare([10.0, 20.0, 15.0], [30.0, 30.0, 30.0], time_ratio, 1.0)
    assert math.isclose(c["value"], 0.5) and c["excludes_null"] is True and c["ci"][0] >= 1 / 3


def test_phase_row_means_per_step():
    row = phase_row([run(4.0, {0: 0.1, 2: 0.2}), run(6.0, {0: 0.1, 2: 0.2})])
    assert row["time_rollout"] == 2.0 and row["time_train"] == 3.0 and row["step_s"] == 5.0
    assert row["time_eval"] == 0.5 and row["cache_init_s"] == 5.0
