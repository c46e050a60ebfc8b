"""Accuracy over wall-clock time, as the RPO paper reads its runs: time per step by phase (its Table 3), and each
method against its reference over seed pairs (experiments/stats.py): final accuracy, accuracy at a common wall time T,
mean accuracy up to T and time to targets fixed before the runs.

Time axis: train_wall_s, the run's wall clock without evaluation, from eval.jsonl (`rpo-eval`, greedy and sampled
accuracy per checkpoint) when the run has one; otherwise the in-run greedy evaluations in metrics.jsonl, at
train_wall_s or, in runs logged before it, cumulative step time without evaluation plus RPO's cache init. The
starting model (step 0) sits at 0 s in every run.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Optional

from experiments.stats import (Curve, accuracy_at, first_trained_eval, hosts_note, mean_accuracy_to, paired,
                               spans_hosts, time_to_target)

PHASES = ("time_rollout", "time_reward", "time_train", "time_sync", "time_cache", "time_eval")


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



# ------------------------------------------------------------------------------------------------ one run's curves
@dataclass
class RunCurves:
    """What the paired analysis reads of one ok run."""

    seed: object
    host: Optional[str]  # CPU model it trained on (run_host); None when not recorded
    source: str  # "rpo-eval (n=.., k=.., temperature ..)" (eval.jsonl) or "in-run" (metrics.jsonl accuracy)
    greedy: Curve
    sampled: Optional[Curve]  # pass@1 over k samples; only rpo-eval measures it
    metrics: list[dict]


def inrun_curve(metrics: list[dict]) -> Curve:
    """(train_wall_s, greedy accuracy) of the in-run evaluations, the starting model at 0 s; runs logged before
    train_wall_s existed: cumulative step time without evaluation, plus RPO's cache init."""
    step0 = next((r for r in metrics if r["step"] == 0), {})
    later = [r for r in metrics if r["step"] >= 1]
    if later and all(r.get("train_wall_s") is not None for r in later):
        points = [(r["train_wall_s"], r["accuracy"]) for r in later if r.get("accuracy") is not None]
    else:
        points = accuracy_curve(metrics, with_init=True)[1 if step0.get("accuracy") is not None else 0:]
    return ([(0.0, step0["accuracy"])] if step0.get("accuracy") is not None else []) + points


def eval_curves(evals: list[dict]) -> tuple[Curve, Curve]:
    """(train_wall_s, greedy_accuracy) and (train_wall_s, sampled_accuracy) of eval.jsonl, by step."""
    rows = sorted(evals, key=lambda r: r["step"])
    greedy = [(r["train_wall_s"], r["greedy_accuracy"]) for r in rows if r.get("greedy_accuracy") is not None]
    sampled = [(r["train_wall_s"], r["sampled_accuracy"]) for r in rows if r.get("sampled_accuracy") is not None]
    return greedy, sampled


def run_host(metrics: list[dict]) -> Optional[str]:
    """The CPU model(s) the run trained on, from metrics.jsonl's host_cpu (logged by every attempt of the run; a
    resume on another machine reads 'A + B'). Not eval.jsonl's: that is where rpo-eval ran, off the clock."""
    hosts = list(dict.fromkeys(r["host_cpu"] for r in metrics if r.get("host_cpu")))
    return " + ".join(hosts) or None


def eval_source(evals: list[dict]) -> str:
    """rpo-eval's settings, as the label that says whether two runs' accuracies are measured alike."""
    r = evals[0]
    return f"rpo-eval (n={r.get('n_problems')}, k={r.get('k')}, temperature {r.get('temperature')})"


def run_curves(seed, metrics: list[dict], evals: list[dict]) -> RunCurves:
    host = run_host(metrics)
    if evals:
        greedy, sampled = eval_curves(evals)
        return RunCurves(seed, host, eval_source(evals), greedy, sampled or None, metrics)
    return RunCurves(seed, host, "in-run", inrun_curve(metrics), None, metrics)


# ------------------------------------------------------------------------------------------------ comparisons
def analyze(methods: dict[str, list[RunCurves]], baseline: str, targets: tuple[float, ...] = (),
            wall_time: Optional[float] = None) -> dict:
    """Table 3 (phases) and every method against the baseline, and each X+RPO against X, over seed pairs.

    methods: label -> its ok runs. targets: accuracies fixed before the runs. wall_time: the common T (default: per
    comparison, the end of the shortest of the two methods' curves)."""
    runs = [r for rs in methods.values() for r in rs]
    out = {"baseline": baseline, "phases": {m: phase_row([r.metrics for r in rs]) for m, rs in methods.items()},
           "targets": list(targets), "wall_time": wall_time, "sources": sorted({r.source for r in runs}),
           "hosts_note": hosts_note([r.host for r in runs]) if runs else None, "comparisons": []}
    pairs = [(m, baseline) for m in methods if m != baseline and baseline in methods]
    pairs += [(m, m.replace("+RPO", "")) for m in methods
              if "+RPO" in m and m.replace("+RPO", "") in methods and m.replace("+RPO", "") != baseline]
    for label, ref in pairs:
        out["comparisons"].append(compare_methods(label, ref, methods[label], methods[ref], targets, wall_time))
    return out


def compare_methods(label: str, ref: str, a: list[RunCurves], b: list[RunCurves], targets: tuple[float, ...],
                    wall_time: Optional[float]) -> dict:
    """label vs ref over seed pairs: one row per quantity (greedy, and sampled where both have it)."""
    ends = [r.greedy[-1][0] for r in a + b if r.greedy]
    horizon = wall_time if wall_time is not None else (min(ends) if ends else None)
    by_seed_a, by_seed_b = {r.seed: r for r in a}, {r.seed: r for r in b}
    common = sorted(set(by_seed_a) & set(by_seed_b), key=str)
    kinds = ["greedy"] + (["sampled"] if all(r.sampled for r in a + b) else [])
    rows, notes = [], []
    for kind in kinds:
        curve_a = {r.seed: getattr(r, kind) for r in a}
        curve_b = {r.seed: getattr(r, kind) for r in b}
        rows.append(_row(f"{kind} accuracy, final", _each(curve_a, lambda c: c[-1][1] if c else None),
                         _each(curve_b, lambda c: c[-1][1] if c else None)))
        if horizon is not None:
            at = lambda c: trained_accuracy_at(c, horizon)  # noqa: E731
            rows.append(_row(f"{kind} accuracy at {horizon:.0f} s", _each(curve_a, at), _each(curve_b, at)))
            rows.append(_row(f"{kind} mean accuracy over 0-{horizon:.0f} s",
                             _each(curve_a, lambda c: mean_accuracy_to(c, horizon)),
                             _each(curve_b, lambda c: mean_accuracy_to(c, horizon))))
            notes += [f"{m} seed {s}: {_first_eval_text(c)}, after T = {horizon:.0f} s: left out of the {kind} "
                      "accuracy at T (it would read the starting model)"
                      for m, cs in ((label, curve_a), (ref, curve_b)) for s, c in cs.items() if c and at(c) is None]
        for target in targets:
            reach = lambda c: time_to_target(c, target)  # noqa: E731
            rows.append(_row(f"time to {kind} ≥ {target:g} (s)", _each(curve_a, reach), _each(curve_b, reach),
                             reached=True))
    flagged = [s for s in common if spans_hosts(by_seed_a[s].host, by_seed_b[s].host)]
    if flagged and any(r.host for r in a + b):
        notes.append(f"pairs spanning two hosts (seed {', '.join(map(str, flagged))}): their time differences mix "
                     "machines")
    mixed = sorted({r.source for r in a + b})
    if len(mixed) > 1:
        notes.append(f"the two methods' accuracies come from different evaluations ({'; '.join(mixed)}): not "
                     "measured alike")
    return {"method": label, "reference": ref, "wall_time": horizon, "rows": rows, "notes": notes}


def trained_accuracy_at(curve: Curve, seconds: float) -> Optional[float]:
    """accuracy_at(curve, T), or None when the run had no evaluation after step 0 by T (it would read the start)."""
    first = first_trained_eval(curve)
    return None if first is None or first > seconds else accuracy_at(curve, seconds)


def _first_eval_text(curve: Curve) -> str:
    first = first_trained_eval(curve)
    return "no evaluation after step 0" if first is None else f"first evaluation after step 0 at {first:.0f} s"


def _each(curves: dict, f) -> dict:
    return {s: f(c) for s, c in curves.items()}


def _row(quantity: str, a: dict, b: dict, reached: bool = False) -> dict:
    """Per-seed values of both methods, their means over the pairs and the paired difference (a - b) over them."""
    p = paired(a, b)
    row = {"quantity": quantity, "method": a, "reference": b, "paired": asdict(p),
           "method_mean": statistics.fmean(a[s] for s in p.seeds) if p.n else None,
           "reference_mean": statistics.fmean(b[s] for s in p.seeds) if p.n else None}
    if reached:  # time to target: how many runs got there at all
        row["reached"] = (sum(v is not None for v in a.values()), len(a),
                          sum(v is not None for v in b.values()), len(b))
    return row


# ------------------------------------------------------------------------------------------------ markdown
def _fmt(x: Optional[float], digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def fmt_paired(p: dict, digits: int) -> list[str]:
    """Cells: mean difference, 95% paired t interval, sign count, n pairs."""
    if not p["n"]:
        return ["n/a", "n/a", "no pairs", "0"]
    interval = "one pair: none" if p["half_width"] is None else \
        f"[{p['mean'] - p['half_width']:+.{digits}f}, {p['mean'] + p['half_width']:+.{digits}f}]"
    signs = f"lower in {p['lower']} of {p['n']}, higher in {p['higher']}"
    return [f"{p['mean']:+.{digits}f}", interval, signs, str(p["n"])]


def render(analysis: dict) -> list[str]:
    """Markdown lines: Table 3 (phases) and the paired comparisons."""
    return render_phases(analysis) + render_paired(analysis)


def render_phases(analysis: dict) -> list[str]:
    """Markdown lines of Table 3: seconds per step by phase."""
    lines = ["## Table 3: time per optimizer step by phase (seconds, mean over runs and steps)", ""]
    header = ["method", "step (no eval)", *(p.removeprefix("time_") for p in PHASES[:-1]),
              "eval (held-out, not in step)", "cache init (once)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m, row in analysis["phases"].items():
        cells = [m, _fmt(row["step_s"], 1), *(_fmt(row[p], 1) for p in PHASES), _fmt(row["cache_init_s"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def render_paired(analysis: dict) -> list[str]:
    """Markdown lines of the paired comparisons, with what they read and their flags."""
    if not analysis["comparisons"]:
        return [f"No ok run of the baseline `{analysis['baseline']}`: no paired comparison.", ""]
    lines = ["## Paired comparisons over seeds (same seed = one pair; difference = method − reference)", "",
              "| method vs reference | quantity | method (mean over the pairs) | reference (mean over the pairs) | "
              "mean difference | "
              "95% paired t interval | pairs | n |", "|---|---|---|---|---|---|---|---|"]
    for c in analysis["comparisons"]:
        for row in c["rows"]:
            time_row = "reached" in row
            digits = 0 if time_row else 3
            mine, theirs = _fmt(row["method_mean"], digits), _fmt(row["reference_mean"], digits)
            if time_row:
                k, n, kr, nr = row["reached"]
                mine, theirs = f"{mine} (reached in {k}/{n} runs)", f"{theirs} (reached in {kr}/{nr} runs)"
            lines.append(f"| {c['method']} vs {c['reference']} | {row['quantity']} | {mine} | {theirs} | "
                         + " | ".join(fmt_paired(row["paired"], digits)) + " |")
    lines += [""]
    if not analysis["targets"]:
        lines += ["No targets given (`--targets`): no time to target. Fix targets before the runs; a target read off "
                  "the same runs' finals is reached by about half of them by construction.", ""]
    lines += ["Accuracy from " + " and ".join("the in-run greedy evaluation (metrics.jsonl)" if s == "in-run"
                                               else f"{s}, eval.jsonl" for s in analysis["sources"]) + ". "
              "T: the end of the shorter of the two methods' runs unless `--wall-time` is given; the accuracy at T is "
              "a run's last evaluation at or before T, the mean accuracy the trapezoid area under its curve from "
              "0 s (the starting model) to T, divided by T. Time to a target is the first evaluation at or above it "
              "(never an interpolated crossing); its difference is over the pairs where both runs reached it. "
              "The interval is mean ± t_{0.975, n−1} · sd / √n over the per-seed differences; with 2-3 pairs it "
              "is "
              "wide. A percentile bootstrap over 3 seeds is not an interval and is not used.", ""]
    if analysis["hosts_note"]:
        lines += [analysis["hosts_note"], ""]
    notes = [f"- {c['method']} vs {c['reference']}: {n}" for c in analysis["comparisons"] for n in c["notes"]]
    if notes:
        lines += ["Flags:", "", *notes, ""]
    return lines
