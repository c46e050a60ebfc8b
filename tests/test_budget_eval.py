"""Wall-time budgets and off-the-clock evaluation through the real CLIs (`rpo-train`, `rpo-eval`) on real vLLM and
DeepSpeed: the budget stops a run within one step, evaluation and checkpoints stay off the training clock, checkpoints
land on the wall-time grid, and rpo-eval's greedy accuracy equals the in-run evaluation of the same weights."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli
from test_train_e2e import metrics, rpo_train

pytestmark = pytest.mark.full


def rpo_eval(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli("rpo_core.evaluate", *overrides, check=check)


def eval_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]


def test_time_budget_stops_within_one_step_and_keeps_evaluation_off_the_clock(tmp_path):
    budget, grid = 60.0, 15.0  # the clock starts before the engine and the learner: about 20 s of it on a quiet host
    rpo_train(tmp_path, "trainer.total_steps=1000", f"trainer.time_budget_s={budget}", f"trainer.save_every_s={grid}",
              "trainer.eval_every=1", "trainer.keep_last=1", "trainer.keep_hf=true")
    rows = metrics(tmp_path)
    steps = rows[1:]
    assert rows[0]["host_cpu"] and rows[0]["train_wall_s"] > 0  # engine start counts as training
    wall = [r["train_wall_s"] for r in steps]
    assert wall == sorted(wall) and len(steps) >= 3, wall
    # the first step boundary past the budget, and not one step later
    assert wall[-1] >= budget > wall[-2], wall
    assert len(steps) < 1000
    # evaluation (every step here) is off the clock: the run's wall time grew by it, the training clock did not
    elapsed = steps[-1]["wall_time"] - steps[0]["wall_time"]
    trained = wall[-1] - wall[0]
    evaluating = sum(r["time_eval"] for r in steps[1:])
    assert evaluating > 0.5
    assert elapsed - trained >= 0.9 * evaluating, (elapsed, trained, evaluating)
    # a checkpoint after every step whose training crossed a multiple of the grid, and the last
    before = [rows[0]["train_wall_s"]] + wall[:-1]
    expected = {r["step"] for r, b in zip(steps, before) if int(r["train_wall_s"] // grid) > int(b // grid)}
    expected.add(steps[-1]["step"])
    ckpts = sorted((tmp_path / "checkpoints").glob("step_*"))
    assert {int(p.name[5:]) for p in ckpts} == expected
    assert len(expected) >= 3
    # keep_hf: only the newest keeps its resume state; every one keeps the weights and meta.json for rpo-eval
    assert [p.name for p in ckpts if (p / "trainer.pt").exists()] == [ckpts[-1].name]
    for p in ckpts:
        meta = json.loads((p / "meta.json").read_text())
        assert meta["train_wall_s"] == pytest.approx(next(r["train_wall_s"] for r in steps if r["step"] == meta["step"]))
        assert (p / "hf" / "model.safetensors").is_file()


def test_rpo_eval_agrees_with_the_in_run_evaluation_and_skips_what_is_done(tmp_path):
    rpo_train(tmp_path, "trainer.total_steps=2", "trainer.save_every=1", "trainer.keep_last=2", "trainer.eval_every=1")
    (tmp_path / "checkpoints" / ".tmp-step_000003").mkdir()  # an interrupted save
    overrides = [f"run={tmp_path}", "eval.size=8", "eval.samples=2", "eval.probe_prefix=null"]
    rpo_eval(*overrides, "eval.checkpoints=last")  # the end first, the curve on the next call
    assert [r["checkpoint"] for r in eval_rows(tmp_path)] == ["start", "step_000002"]
    proc = rpo_eval(*overrides)
    assert "skipping" in proc.stderr and ".tmp-step_000003" in proc.stderr
    assert "2 already in" in proc.stdout
    rows, in_run = sorted(eval_rows(tmp_path), key=lambda r: r["step"]), {r["step"]: r for r in metrics(tmp_path)}
    assert [(r["checkpoint"], r["step"]) for r in rows] == [("start", 0), ("step_000001", 1), ("step_000002", 2)]
    for r in rows:
        assert r["n_problems"] == 8 and r["k"] == 2 and r["sampled_accuracy"] is not None
        assert r["greedy_accuracy"] == in_run[r["step"]]["accuracy"]
        assert r["response_len"] == pytest.approx(in_run[r["step"]]["eval_response_len"])
        assert r["greedy_digest"] == in_run[r["step"]]["eval_digest"]  # the same greedy tokens, problem by problem
    assert rows[0]["train_wall_s"] == 0 and rows[2]["train_wall_s"] == pytest.approx(in_run[2]["train_wall_s"])
    # each checkpoint's weights were loaded: the trained policies generate other tokens than the start
    assert rows[0]["greedy_digest"] != rows[2]["greedy_digest"] and len({r["model_sha256"] for r in rows}) == 3
    again = rpo_eval(*overrides)
    assert "3 already in" in again.stdout and len(eval_rows(tmp_path)) == 3


def test_rpo_eval_refuses_a_folder_without_checkpoints(tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    proc = rpo_eval(f"run={tmp_path}", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no complete checkpoint" in proc.stderr
    proc = rpo_eval(f"run={tmp_path / 'missing'}", check=False)
    assert proc.returncode == 2 and "no config.yaml" in proc.stderr
