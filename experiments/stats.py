"""Numbers for comparing runs: paired differences over seeds, time to a fixed target and accuracy along a time grid.

A curve is the list of (train_wall_s, accuracy) at each evaluated checkpoint, step 0 (the starting model, at 0 s)
first. Two methods are compared over seed pairs (same seed = one pair): with 3 seeds a percentile bootstrap of the
seeds has 10 distinct resamples of each side and is not an interval; the paired t interval below is, under the
usual assumption that the per-pair differences are normal.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional

Curve = list[tuple[float, float]]  # (train_wall_s, accuracy) per evaluation, sorted by time
TOL = 1e-9  # a reading equal to the target counts as reaching it (0.45 read from JSON as 0.4499999...)

# two-sided 95% quantiles t_{0.975, dof} of Student's t (standard tables)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
         21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042}
Z_975 = 1.959964


def t_quantile_975(dof: int) -> float:
    """t_{0.975, dof}: the table up to 30, beyond it z + (z^3+z)/(4v) + (5z^5+16z^3+3z)/(96v^2) (Cornish-Fisher)."""
    if dof < 1:
        raise ValueError(f"a t quantile needs dof >= 1, got {dof}")
    if dof in T_975:
        return T_975[dof]
    z = Z_975
    return z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof ** 2)


def paired_diffs(a: dict, b: dict) -> dict:
    """d_s = a_s - b_s for every seed s with a value on both sides (seeds of one side only are not pairs)."""
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b), key=str) if a[s] is not None and b[s] is not None}


def sample_sd(xs: list[float]) -> float:
    """sqrt(sum (x - mean)^2 / (n - 1))."""
    return statistics.stdev(xs)


def t_half_width(sd: float, n: int) -> float:
    """t_{0.975, n-1} * sd / sqrt(n): half the width of the 95% paired t interval of a mean difference."""
    return t_quantile_975(n - 1) * sd / math.sqrt(n)


def sign_counts(diffs: list[float]) -> tuple[int, int, int]:
    """(#d < 0, #d > 0, #d == 0): in how many pairs the first method was lower, higher, equal."""
    return sum(d < -TOL for d in diffs), sum(d > TOL for d in diffs), sum(abs(d) <= TOL for d in diffs)


@dataclass(frozen=True)
class Paired:
    """Mean difference a - b over seed pairs, its 95% paired t interval (None with fewer than 2 pairs) and signs."""

    n: int
    mean: Optional[float]
    sd: Optional[float]
    half_width: Optional[float]
    lower: int  # pairs where a < b
    higher: int  # pairs where a > b
    seeds: tuple

    @property
    def interval(self) -> Optional[tuple[float, float]]:
        return None if self.half_width is None else (self.mean - self.half_width, self.mean + self.half_width)


def paired(a: dict, b: dict) -> Paired:
    """Paired analysis of two methods' per-seed values (dicts seed -> value): mean, sd, t half-width, sign counts."""
    diffs = paired_diffs(a, b)
    d = list(diffs.values())
    n = len(d)
    lower, higher, _ = sign_counts(d)
    sd = sample_sd(d) if n >= 2 else None
    return Paired(n=n, mean=statistics.fmean(d) if d else None, sd=sd,
                  half_width=t_half_width(sd, n) if sd is not None else None,
                  lower=lower, higher=higher, seeds=tuple(diffs))


def time_to_target(curve: Curve, target: float) -> Optional[float]:
    """The first grid time t with accuracy(t) >= target (no interpolation between evaluations); None if never."""
    return next((t for t, acc in curve if acc >= target - TOL), None)


def accuracy_at(curve: Curve, seconds: float) -> Optional[float]:
    """Accuracy of the last evaluation at or before `seconds`; None before the first."""
    seen = [acc for t, acc in curve if t <= seconds + TOL]
    return seen[-1] if seen else None


def mean_accuracy_to(curve: Curve, seconds: float) -> Optional[float]:
    """(1/T) * integral_0^T acc dt, trapezoids between evaluations (step 0 at 0 s); None unless 0 <= t0 and the
    curve reaches T (a segment cut by T ends at its linear value there)."""
    if not curve or seconds <= 0 or curve[0][0] > TOL or curve[-1][0] < seconds - TOL:
        return None
    area = 0.0
    for (t0, a0), (t1, a1) in zip(curve, curve[1:]):
        if t0 >= seconds - TOL:
            break
        if t1 > seconds:  # the segment is cut at T
            a1 = a0 + (a1 - a0) * (seconds - t0) / (t1 - t0)
            t1 = seconds
        area += (t1 - t0) * (a0 + a1) / 2
    return area / seconds


def first_trained_eval(curve: Curve) -> Optional[float]:
    """Time of the first evaluation after the starting model (the curve's second point); None without one."""
    return curve[1][0] if len(curve) > 1 else None


def hosts_note(hosts: list[Optional[str]]) -> Optional[str]:
    """A line saying the runs ran on several CPU models (how many on each) or that none recorded one; None when
    every run recorded the same model."""
    counts: dict[str, int] = {}
    for h in hosts:
        counts[h or "not recorded"] = counts.get(h or "not recorded", 0) + 1
    if set(counts) == {"not recorded"}:
        return "Host CPU not recorded by these runs: whether their wall times come from one machine is unknown."
    if len(counts) <= 1:
        return None
    return ("Hosts mixed: " + "; ".join(f"{h} ({n} run{'s' if n > 1 else ''})" for h, n in sorted(counts.items()))
            + ". Wall times are comparable only within one host.")


def spans_hosts(host_a: Optional[str], host_b: Optional[str]) -> bool:
    """host_a != host_b: a pair whose runs recorded different CPU models (or one recorded none)."""
    return host_a != host_b
