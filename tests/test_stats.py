"""experiments/stats.py against hand-computed values."""
from __future__ import annotations

import math

import pytest

from experiments.stats import (accuracy_at, first_trained_eval, hosts_note, mean_accuracy_to, paired, paired_diffs,
                               sign_counts, spans_hosts, t_half_width, t_quantile_975, time_to_target)


def test_paired_t_on_three_pairs():
    # diffs 1, 2, 3: mean 2, sd sqrt(((-1)^2 + 0 + 1^2) / 2) = 1, half-width t_{0.975,2} * 1 / sqrt(3)
    p = paired({0: 2.0, 1: 4.0, 2: 6.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert p.n == 3 and p.mean == pytest.approx(2.0) and p.sd == pytest.approx(1.0)
    assert p.half_width == pytest.approx(4.303 / math.sqrt(3))
    assert p.interval == pytest.approx((2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)))
    assert (p.lower, p.higher, p.seeds) == (0, 3, (0, 1, 2))


def test_pairs_are_matched_by_seed_not_by_position():
    # seed 2 has no partner and seed 1 has no value: one pair left (seed 0), no interval from one pair
    assert paired_diffs({0: 0.5, 1: None, 2: 0.9}, {1: 0.3, 0: 0.2, 5: 0.1}) == {0: pytest.approx(0.3)}
    p = paired({0: 0.5, 1: 0.4, 2: 0.9}, {2: 0.3, 0: 0.2, 1: 0.6})  # diffs by seed: 0.3, -0.2, 0.6
    assert p.mean == pytest.approx(0.7 / 3) and (p.lower, p.higher) == (1, 2)
    one = paired({0: 0.5}, {0: 0.2})
    assert one.n == 1 and one.mean == pytest.approx(0.3) and one.sd is None and one.interval is None
    assert paired({}, {0: 1.0}).mean is None


def test_t_quantiles_and_half_width():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(7) == 2.365 and t_quantile_975(30) == 2.042
    assert t_quantile_975(60) == pytest.approx(2.000, abs=1e-3)  # tables: 2.000 at 60, 1.980 at 120
    assert t_quantile_975(120) == pytest.approx(1.980, abs=1e-3)
    # 8 pairs with sd 0.02: 2.365 * 0.02 / sqrt(8)
    assert t_half_width(0.02, 8) == pytest.approx(2.365 * 0.02 / math.sqrt(8))
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_sign_counts():
    assert sign_counts([-0.1, -0.2, 0.0, 0.3, -1e-12]) == (2, 1, 2)


GRID = [(0.0, 0.28), (100.0, 0.35), (200.0, 0.46), (300.0, 0.44), (400.0, 0.50)]


def test_time_to_target_is_a_grid_point_never_an_interpolated_crossing():
    assert time_to_target(GRID, 0.40) == 200.0  # the crossing lies between 100 and 200 s: the grid says 200
    assert time_to_target(GRID, 0.46) == 200.0  # equal counts as reached
    assert time_to_target(GRID, 0.48) == 400.0  # 0.46 then a fall to 0.44: the first point at or above
    assert time_to_target(GRID, 0.28) == 0.0
    assert time_to_target(GRID, 0.51) is None  # not reached


def test_accuracy_at_reads_the_last_evaluation_at_or_before_t():
    assert accuracy_at(GRID, 99.0) == 0.28 and accuracy_at(GRID, 100.0) == 0.35 and accuracy_at(GRID, 350.0) == 0.44
    assert accuracy_at([(5.0, 0.1)], 4.0) is None
    assert first_trained_eval(GRID) == 100.0 and first_trained_eval(GRID[:1]) is None


def test_mean_accuracy_to_t_is_the_trapezoid_area_over_t():
    # up to 200 s: (100 * (0.28 + 0.35) / 2 + 100 * (0.35 + 0.46) / 2) / 200 = (31.5 + 40.5) / 200
    assert mean_accuracy_to(GRID, 200.0) == pytest.approx(72.0 / 200)
    # cut inside a segment: 250 s ends at (0.46 + 0.44) / 2 = 0.45, adding 50 * (0.46 + 0.45) / 2 = 22.75
    assert mean_accuracy_to(GRID, 250.0) == pytest.approx((72.0 + 22.75) / 250)
    assert mean_accuracy_to([(0.0, 0.5), (10.0, 0.5)], 10.0) == pytest.approx(0.5)
    assert mean_accuracy_to(GRID, 401.0) is None  # the curve does not reach T
    assert mean_accuracy_to([(10.0, 0.3), (20.0, 0.4)], 15.0) is None  # no step-0 point at 0 s


def test_hosts_mixing_is_said_and_pairs_across_hosts_are_flagged():
    assert hosts_note(["Zen4", "Zen4"]) is None
    note = hosts_note(["Zen4", "Zen3", "Zen4"])
    assert note.startswith("Hosts mixed: Zen3 (1 run); Zen4 (2 runs)")
    assert "not recorded (1 run)" in hosts_note(["Zen4", None])
    assert hosts_note([None, None]).startswith("Host CPU not recorded")
    assert spans_hosts("Zen4", "Zen3") and spans_hosts("Zen4", None) and not spans_hosts("Zen4", "Zen4")
