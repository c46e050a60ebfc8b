"""A two-method, one-seed, two-step Hydra sweep end to end, then `rpo-report` on it."""
from __future__ import annotations

import pytest

import json
import subprocess
import sys
from pathlib import Path

from conftest import child_env
from test_train_e2e import ROOT, SMALL

pytestmark = pytest.mark.full


def test_sweep_then_report(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "rpo_core.train", "-m", *SMALL, "algorithm=grpo,rapid",
           "rpo.enabled=true", "rpo.max_truncate=8", "seed=0", "trainer.total_steps=2", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200, env=child_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = subprocess.run([sys.executable, "-m", "experiments.report", str(sweep)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads((sweep / "report.json").read_text())
    assert len(report["runs"]) == 2
    columns = ["acc_before", "acc_after", "tokens_per_sample", "rollout_s_per_step", "train_time_s", "cache_init_s",
               "total_time_s", "command"]
    for run in report["runs"]:
        assert run["status"] == "ok", run
        empty = [k for k in columns if run.get(k) in (None, "")]
        assert not empty, f"unfilled columns {empty} in {run}"
        assert run["command"].startswith("rpo-train") and "algorithm=" in run["command"]
    assert {r["method"].split(" ")[0] for r in report["runs"]} == {"grpo+RPO", "rapid+RPO"}
    assert "rpo-train" in (sweep / "report.md").read_text()
    for name in ("accuracy_vs_time.png", "reward_vs_step.png", "tokens_per_step.png"):
        data = (sweep / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
