"""experiments/curves.py: the time axis, the curves a run gives and the paired comparisons, by hand."""
from __future__ import annotations

import math
import statistics

from experiments.curves import (accuracy_curve, analyze, eval_curves, inrun_curve, phase_row, render, run_curves,
                                run_host)


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


def test_inrun_curve_puts_the_starting_model_at_0_s():
    # old logs (no train_wall_s): cumulative step time without eval, plus the cache init, after step 0
    assert inrun_curve(run(10.0, {0: 0.2, 2: 0.5, 4: 0.7})) == [(0.0, 0.2), (20.0, 0.5), (30.0, 0.7)]
    logged = [{"step": 0, "accuracy": 0.2}, {"step": 1, "train_wall_s": 40.0},
              {"step": 2, "train_wall_s": 70.0, "accuracy": 0.3}]
    assert inrun_curve(logged) == [(0.0, 0.2), (70.0, 0.3)]  # train_wall_s as logged


def evaluation(step: int, t: float, greedy: float, sampled: float) -> dict:
    return {"step": step, "train_wall_s": t, "greedy_accuracy": greedy, "sampled_accuracy": sampled,
            "host_cpu": "the eval host", "n_problems": 500, "k": 4, "temperature": 0.7}


def test_eval_rows_give_greedy_and_sampled_curves_and_the_training_host():
    evals = [evaluation(5, 50.0, 0.3, 0.25), evaluation(0, 0.0, 0.2, 0.1)]
    assert eval_curves(evals) == ([(0.0, 0.2), (50.0, 0.3)], [(0.0, 0.1), (50.0, 0.25)])
    metrics = [{"step": 0, "host_cpu": "Zen4"}, {"step": 1}, {"step": 7, "host_cpu": "Zen4"}]
    assert run_host(metrics) == "Zen4" and run_host([{"step": 0}]) is None  # rpo-eval's host is not the run's
    assert run_host(metrics + [{"step": 9, "host_cpu": "Zen3"}]) == "Zen4 + Zen3"  # resumed on another machine
    rc = run_curves(1, metrics, evals)
    assert rc.source == "rpo-eval (n=500, k=4, temperature 0.7)" and rc.sampled == [(0.0, 0.1), (50.0, 0.25)]
    assert rc.host == "Zen4"
    assert run_curves(1, run(None, {0: 0.2, 1: 0.3}), []).source == "in-run"


def method(grid: list[float], accs: dict[int, list[float]], host: str = "Zen4", hosts: dict | None = None):
    """One RunCurves per seed: accs[seed] are greedy accuracies on the time grid; sampled = greedy - 0.1."""
    return [run_curves(seed, [{"step": 0, "host_cpu": (hosts or {}).get(seed, host)}],
                       [evaluation(i, t, a, a - 0.1) for i, (t, a) in enumerate(zip(grid, acc))])
            for seed, acc in accs.items()]


def test_paired_comparison_by_hand():
    base = method([0, 100, 200, 300], {0: [0.2, 0.3, 0.4, 0.5], 1: [0.2, 0.4, 0.4, 0.6], 2: [0.2, 0.3, 0.5, 0.5]})
    rpo = method([0, 150, 250], {0: [0.2, 0.5, 0.4], 1: [0.2, 0.3, 0.5], 2: [0.2, 0.3, 0.4]}, hosts={2: "Zen3"})
    a = analyze({"grpo": base, "grpo+RPO": rpo}, "grpo", targets=(0.45,))
    (c,) = a["comparisons"]
    assert c["wall_time"] == 250  # the shorter method's runs end at 250 s
    rows = {r["quantity"]: r for r in c["rows"]}
    final = rows["greedy accuracy, final"]["paired"]  # 0.4-0.5, 0.5-0.6, 0.4-0.5
    assert final["n"] == 3 and math.isclose(final["mean"], -0.1) and final["half_width"] < 1e-6
    assert (final["lower"], final["higher"]) == (3, 0)
    at_t = rows["greedy accuracy at 250 s"]  # rpo 0.4, 0.5, 0.4 (its evals at 250 s); grpo 0.4, 0.4, 0.5 (at 200 s)
    assert at_t["method"] == {0: 0.4, 1: 0.5, 2: 0.4} and at_t["reference"] == {0: 0.4, 1: 0.4, 2: 0.5}
    d = [0.0, 0.1, -0.1]
    assert math.isclose(at_t["paired"]["mean"], statistics.fmean(d), abs_tol=1e-12)
    assert math.isclose(at_t["paired"]["half_width"], 4.303 * statistics.stdev(d) / math.sqrt(3))
    # mean accuracy to 250 s, seed 0 of rpo: (150 * (0.2 + 0.5) / 2 + 100 * (0.5 + 0.4) / 2) / 250
    auc = rows["greedy mean accuracy over 0-250 s"]
    assert math.isclose(auc["method"][0], (52.5 + 45.0) / 250)
    # grpo seed 0 to 250 s: 100*(0.2+0.3)/2 + 100*(0.3+0.4)/2 + 50*(0.4+0.45)/2 (cut at 250 s: 0.45)
    assert math.isclose(auc["reference"][0], (25.0 + 35.0 + 21.25) / 250)
    ttt = rows["time to greedy ≥ 0.45 (s)"]  # rpo: 150, 250, never; grpo: 300, 300, 200
    assert ttt["method"] == {0: 150, 1: 250, 2: None} and ttt["reference"] == {0: 300, 1: 300, 2: 200}
    assert ttt["reached"] == (2, 3, 3, 3) and ttt["paired"]["n"] == 2 and math.isclose(ttt["paired"]["mean"], -100)
    assert math.isclose(ttt["method_mean"], 200) and math.isclose(ttt["reference_mean"], 300)
    assert "sampled accuracy, final" in rows  # every run has rpo-eval's sampled accuracy
    assert any("seed 2" in n and "two hosts" in n for n in c["notes"])
    assert a["hosts_note"].startswith("Hosts mixed: Zen3 (1 run); Zen4 (5 runs)")
    text = "\n".join(render(a))
    assert ("| grpo+RPO vs grpo | time to greedy ≥ 0.45 (s) | 200 (reached in 2/3 runs) | "
            "300 (reached in 3/3 runs) | -100 | [") in text
    assert "lower in 3 of 3, higher in 0 | 3 |" in text and "Hosts mixed" in text
    assert "bootstrap over 3 seeds is not an interval" in text


def test_accuracy_at_t_leaves_out_a_run_not_yet_evaluated_after_step_0():
    base = method([0, 100], {0: [0.2, 0.5], 1: [0.2, 0.4]})
    slow = method([0, 300], {0: [0.2, 0.6], 1: [0.2, 0.3]})
    (c,) = analyze({"grpo": base, "dapo": slow}, "grpo")["comparisons"]
    rows = {r["quantity"]: r for r in c["rows"]}
    assert rows["greedy accuracy at 100 s"]["paired"]["n"] == 0  # dapo's trained model is first read at 300 s
    assert rows["greedy accuracy at 100 s"]["method"] == {0: None, 1: None}
    assert any("first evaluation after step 0 at 300 s, after T = 100 s" in n for n in c["notes"])
    (c,) = analyze({"grpo": base, "dapo": slow}, "grpo", wall_time=300)["comparisons"]
    assert {r["quantity"] for r in c["rows"]} >= {"greedy accuracy at 300 s"}
    assert not any("after T" in n for n in c["notes"])
    assert "No targets given" in "\n".join(render(analyze({"grpo": base, "dapo": slow}, "grpo")))


def test_phase_row_means_per_step():
    row = phase_row([run(4.0, {0: 0.1, 2: 0.2}), run(6.0, {0: 0.1, 2: 0.2})])
    assert row["time_rollout"] == 2.0 and row["time_train"] == 3.0 and row["step_s"] == 5.0
    assert row["time_eval"] == 0.5 and row["cache_init_s"] == 5.0
