"""Accuracy over wall-clock time, as the RPO paper reads its runs: time to reach a target accuracy, accuracy at
equal wall time and time per step by phase (its Table 3), each comparison with a 95% bootstrap interval over seeds.

Time axis: cumulative step time without held-out evaluation; RPO runs start at their cache-initialization time
("with init") or at 0 ("without init", as the paper plots). The target accuracy is the baseline's final accuracy
(mean over its seeds). Intervals resample each method's seeds with replacement, independently (10,000 draws);
with 3 seeds they are coarse, and an interval that contains no difference (0 for a difference, 1 for a ratio) is
reported as such.
"""
from __future__ import annotations

import math
import random
import statistics
from typing import Callable, Optional

PHASES = ("time_rollout", "time_reward", "time_train", "time_sync", "time_cache", "time_eval")
Curve = list[tuple[float, float]]  # (seconds, accuracy) at each evaluation


def step_seconds(record: dict) -> float:
    """Wall time of one optimizer step without its held-out evaluation (evaluation is not training cost)."""
    return (record.get("time_step") or 0.0) - (record.get("time_eval") or 0.0)


def accuracy_curve(metrics: list[dict], with_init: bool) -> Curve:
    """(cumulative step seconds, held-out accuracy) at every evaluation, step 0 included."""
    step0 = next((r for r in metrics if r["step"] == 0), {})
    t = (step0.get("cache_init_seconds") or 0.0) if with_init else 0.0
    curve = [(t, step0["accuracy"])] if step0.get("accuracy") is not None else []
    for r in sorted((r for r in metrics if r["step"] >= 1), key=lambda r: r["step"]):
        t += step_seconds(r)
        if r.get("accuracy") is not None:
            curve.append((t, r["accuracy"]))
    return curve


def time_to_accuracy(curve: Curve, target: float) -> float:
    """Seconds until the first evaluation with accuracy >= target; inf when the run never reached it."""
    return next((t for t, acc in curve if acc >= target - 1e-9), math.inf)


def accuracy_at(curve: Curve, seconds: float) -> Optional[float]:
    """Accuracy of the last evaluation at or before `seconds` (None before the first)."""
    seen = [acc for t, acc in curve if t <= seconds + 1e-9]
    return seen[-1] if seen else None


def mean_ratio(a: list[float], b: list[float]) -> float:
    """mean(a) / mean(b)."""
    return statistics.fmean(a) / statistics.fmean(b)


def mean_diff(a: list[float], b: list[float]) -> float:
    """mean(a) - mean(b)."""
    return statistics.fmean(a) - statistics.fmean(b)


def bootstrap_ci(a: list[float], b: list[float], stat: Callable[[list[float], list[float]], float],
                 draws: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of stat(a*, b*), a* and b* drawn from a and b with replacement (seeds, independently)."""
    rng = random.Random(seed)
    drawn = (stat(rng.choices(a, k=len(a)), rng.choices(b, k=len(b))) for _ in range(draws))
    values = sorted(v for v in drawn if not math.isnan(v))  # nan: undefined draw (e.g. neither side reached)
    if not values:
        return math.nan, math.nan
    lo = values[int((1 - level) / 2 * len(values))]
    hi = values[min(len(values) - 1, int((1 + level) / 2 * len(values)))]
    return lo, hi


def compare(a: list[float], b: list[float], stat: Callable, null: float) -> dict:
    """Point value, 95% interval and whether the interval excludes `null` (no difference); no interval from one seed."""
    if not a or not b:
        return {"value": None, "ci": None, "excludes_null": None, "n": (len(a), len(b))}
    value = stat(a, b)
    if min(len(a), len(b)) < 2 or math.isnan(value):  # one seed, or undefined (time_ratio: not every seed reached)
        return {"value": value, "ci": None, "excludes_null": None, "n": (len(a), len(b))}
    lo, hi = bootstrap_ci(a, b, stat)
    excludes = None if math.isnan(lo) else not (lo <= null <= hi)
    return {"value": value, "ci": (lo, hi), "excludes_null": excludes, "n": (len(a), len(b))}


def time_ratio(a: list[float], b: list[float]) -> float:
    """mean(a) / mean(b) of times to target, nan unless every seed of both reached it (inf = never reached: a mean
    over such seeds is not a time, and inf / t or t / inf would read as "never" or "instantly")."""
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    return ma / mb if math.isfinite(ma) and math.isfinite(mb) and mb > 0 else math.nan


def method_curves(runs: list[list[dict]], with_init: bool = True) -> list[Curve]:
    return [accuracy_curve(m, with_init) for m in runs]


def final_accuracy(curves: list[Curve]) -> list[float]:
    return [c[-1][1] for c in curves if c]


def tokens_per_sample(metrics: list[dict]) -> Optional[float]:
    values = [r["rollout_tokens_per_sample"] for r in metrics
              if r["step"] >= 1 and r.get("rollout_tokens_per_sample") is not None]
    return statistics.fmean(values) if values else None


def phase_row(runs: list[list[dict]]) -> dict:
    """Mean seconds per optimizer step of each phase over the runs' steps, plus cache init (mean over runs)."""
    steps = [r for m in runs for r in m if r["step"] >= 1]
    row = {p: statistics.fmean(r.get(p) or 0.0 for r in steps) if steps else None for p in PHASES}
    row["step_s"] = statistics.fmean(step_seconds(r) for r in steps) if steps else None
    inits = [next((r.get("cache_init_seconds") for r in m if r["step"] == 0), None) for m in runs]
    inits = [x for x in inits if x is not None]
    row["cache_init_s"] = statistics.fmean(inits) if inits else None
    return row


def analyze(methods: dict[str, list[list[dict]]], baseline: str) -> dict:
    """Headline comparisons of every method with the baseline, and of each X+RPO with X.

    methods: label -> the metrics records of each of its ok runs (one list per seed)."""
    out = {"baseline": baseline, "phases": {m: phase_row(runs) for m, runs in methods.items()},
           "target": None, "methods": {}, "comparisons": []}
    if baseline not in methods:
        return out
    curves = {label: method_curves(runs) for label, runs in methods.items()}
    base_final = final_accuracy(curves[baseline])
    target = statistics.fmean(base_final) if base_final else None
    out["target"] = target
    for label, runs in methods.items():
        out["methods"][label] = {
            "final_acc": final_accuracy(curves[label]),
            "time_to_target_s": [time_to_accuracy(c, target) for c in curves[label]] if target is not None else [],
            "end_time_s": [c[-1][0] for c in curves[label] if c],
            "tokens_per_sample": [x for x in (tokens_per_sample(m) for m in runs) if x is not None],
        }
    pairs = [(m, baseline) for m in methods if m != baseline]
    pairs += [(m, m.replace("+RPO", "")) for m in methods
              if "+RPO" in m and m.replace("+RPO", "") in methods and m.replace("+RPO", "") != baseline]
    for label, ref in pairs:
        out["comparisons"].append(compare_methods(label, ref, curves, out["methods"]))
    return out


def compare_methods(label: str, ref: str, curves: dict[str, list[Curve]], summary: dict) -> dict:
    """label vs ref: tokens/sample ratio, time-to-target ratio, final and equal-time accuracy differences."""
    a, b = summary[label], summary[ref]
    curves_a, curves_b = curves[label], curves[ref]
    horizon = min(a["end_time_s"] + b["end_time_s"]) if a["end_time_s"] and b["end_time_s"] else None
    at_a = [x for x in (accuracy_at(c, horizon) for c in curves_a) if x is not None] if horizon else []
    at_b = [x for x in (accuracy_at(c, horizon) for c in curves_b) if x is not None] if horizon else []
    return {
        "method": label, "reference": ref,
        "tokens_ratio": compare(a["tokens_per_sample"], b["tokens_per_sample"], mean_ratio, 1.0),
        "time_to_target_ratio": compare(a["time_to_target_s"], b["time_to_target_s"], time_ratio, 1.0),
        "reached": (sum(math.isfinite(t) for t in a["time_to_target_s"]), len(a["time_to_target_s"])),
        "ref_reached": (sum(math.isfinite(t) for t in b["time_to_target_s"]), len(b["time_to_target_s"])),
        "final_acc_diff": compare(a["final_acc"], b["final_acc"], mean_diff, 0.0),
        "equal_time_s": horizon,
        "equal_time_acc_diff": compare(at_a, at_b, mean_diff, 0.0),
    }


# ------------------------------------------------------------------------------------------------ markdown
def _fmt(x: Optional[float], digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return "∞" if math.isinf(x) else f"{x:.{digits}f}"


def fmt_compare(c: dict, digits: int = 2) -> str:
    if c["value"] is None:
        return "n/a"
    if c["ci"] is None:
        return f"{_fmt(c['value'], digits)} (n = {c['n'][0]} vs {c['n'][1]} seeds: no interval)"
    lo, hi = c["ci"]
    verdict = {True: "", False: " (interval includes no difference)", None: ""}[c["excludes_null"]]
    return f"{_fmt(c['value'], digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]{verdict}"


def render(analysis: dict) -> list[str]:
    """Markdown lines: Table 3 (phases), time to the baseline's final accuracy, and the headline comparisons."""
    lines = ["## Table 3: time per optimizer step by phase (seconds, mean over runs and steps)", ""]
    header = ["method", "step (no eval)", *(p.removeprefix("time_") for p in PHASES[:-1]), "eval (held-out, not in step)",
              "cache init (once)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m, row in analysis["phases"].items():
        cells = [m, _fmt(row["step_s"], 1), *(_fmt(row[p], 1) for p in PHASES), _fmt(row["cache_init_s"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if analysis["target"] is None:
        return lines + [f"No ok run of the baseline `{analysis['baseline']}`: no time-to-accuracy.", ""]
    lines += [f"## Time to the baseline's final accuracy ({analysis['target']:.3f}, mean of `{analysis['baseline']}`'s "
              "seeds), including cache init", "",
              "| method | time to target per seed (s) | final accuracy per seed | tokens/sample per seed |",
              "|---|---|---|---|"]
    for m, s in analysis["methods"].items():
        times = ", ".join("not reached" if math.isinf(t) else f"{t:.0f}" for t in s["time_to_target_s"])
        lines.append(f"| {m} | {times} | {', '.join(f'{x:.3f}' for x in s['final_acc'])} | "
                     f"{', '.join(f'{x:.1f}' for x in s['tokens_per_sample'])} |")
    lines += ["", "## Headline comparisons (value [95% bootstrap interval over seeds])", "",
              "| method vs reference | tokens/sample ratio | time-to-target ratio (reached) | final accuracy diff | "
              "accuracy diff at equal wall time |", "|---|---|---|---|---|"]
    for c in analysis["comparisons"]:
        reached = f" ({c['reached'][0]}/{c['reached'][1]} vs {c['ref_reached'][0]}/{c['ref_reached'][1]})"
        ratio = c["time_to_target_ratio"]
        ratio_text = "undefined: not every seed reached" if ratio["value"] is not None and math.isnan(ratio["value"]) \
            else fmt_compare(ratio)
        lines.append(f"| {c['method']} vs {c['reference']} | {fmt_compare(c['tokens_ratio'])} | "
                     f"{ratio_text}{reached} | {fmt_compare(c['final_acc_diff'], 3)} | "
                     f"{fmt_compare(c['equal_time_acc_diff'], 3)} at {_fmt(c['equal_time_s'], 0)} s |")
    lines += ["", "Equal wall time: the shorter of the two methods' runs (including cache init); each run's accuracy "
              "is its last evaluation at or before it.", ""]
    return lines
