"""experiments/paper_regime.py: the plan fixed from the pilot before any comparison run (issue 29)."""
import pytest

from experiments.paper_regime import finished, plan_from


def test_plan_from_pilot_and_calibration():
    evals = [{"step": s, "greedy_accuracy": a} for s, a in [(40, 0.76), (0, 0.6), (10, 0.7), (20, 0.75), (30, 0.74)]]
    calibration = [{"step": 0, "train_wall_s": 40.0}] + [{"step": s, "time_step": t}
                                                         for s, t in [(1, 80.0), (2, 60.0), (3, 62.0), (4, 58.0)]]
    plan = plan_from(evals, calibration)
    assert plan["plateau_accuracy"] == pytest.approx(0.75)  # mean of steps 20, 30, 40 (the last three)
    assert plan["plateau_step"] == 20  # the first checkpoint at or above the plateau
    assert plan["step_s"] == 60.0  # median of steps 2-4: step 1 (warm-up) left out
    assert plan["T_s"] == 1560  # 1.25 x (40 + 20 x 60) = 1550 s, up to the minute
    assert plan["save_every_s"] == 390 and plan["targets"] == [0.675, 0.75]


def test_finished_by_steps_or_budget(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "train_wall_s": 30}\n{"step": 3, "train_wall_s": 610.5}\n')
    assert finished(tmp_path, steps=3) and not finished(tmp_path, steps=4)
    assert finished(tmp_path, budget_s=600) and not finished(tmp_path, budget_s=700)
    assert not finished(tmp_path / "absent", budget_s=1, steps=1)
