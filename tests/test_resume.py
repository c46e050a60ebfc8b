"""Crash safety and exact resume: SIGKILL during rollout, update and checkpoint write, then `trainer.resume=auto`.

The resumed run must finish, never see a half-written checkpoint, keep every cache entry a completed step wrote,
and log the same metrics as an uninterrupted run of the same seed (timings aside)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import child_env

from test_train_e2e import ROOT, SMALL, metrics, rpo_train

STEPS = 4
RUN = ["rpo.enabled=true", "rpo.max_truncate=8", f"trainer.total_steps={STEPS}", "trainer.save_every=1",
       "trainer.keep_last=2", "trainer.eval_every=2"]
# Wall-clock measurements differ between any two runs; the reward verdict cache lives in memory, so after a resume
# it starts cold and its hit/worker-call counters differ (the verdicts do not).
VOLATILE = ("time_", "wall_time", "cache_init_seconds", "reward_seconds", "reward_cache_hits", "reward_worker_calls")


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def killed_run(out: Path, point: str, *overrides: str) -> None:
    """Start rpo-train, wait until it reaches `point` (e.g. update:3), SIGKILL it."""
    flag = out.parent / f"{out.name}.paused"
    env = child_env(RPO_PAUSE_AT=point, RPO_PAUSE_FILE=str(flag))
    cmd = [sys.executable, "-m", "rpo_core.train", *SMALL, f"trainer.output_dir={out}", *RUN, *overrides]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 600
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before reaching {point}: {proc.stderr.read().decode()[-3000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"run never reached {point}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the trainer and its vLLM / reward worker processes
    proc.wait()


def cache_content(out: Path) -> list[tuple]:
    """Every row of the cache, every version, minus the wall-clock `created_at` (and the digest that covers it)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{out / 'rpo_cache.sqlite'}?mode=ro", uri=True)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(entries)") if r[1] not in ("created_at", "digest")]
    rows = conn.execute(f"SELECT {', '.join(cols)} FROM entries ORDER BY uid, version_step").fetchall()
    conn.close()
    return rows


def assert_checkpoints_complete(out: Path) -> None:
    from rpo_core.checkpoint import complete_checkpoints

    for ckpt in (out / "checkpoints").iterdir():
        if ckpt.name.startswith("step_"):
            assert (ckpt / "trainer.pt").is_file() and (ckpt / "hf" / "model.safetensors").is_file(), ckpt
    assert complete_checkpoints(out), "no complete checkpoint to resume from"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs per algorithm, computed once: (metrics rows, final cache state)."""
    cache = {}

    def get(algorithm: str) -> list[dict]:
        if algorithm not in cache:
            out = tmp_path_factory.mktemp(f"ref-{algorithm}")
            rpo_train(out, f"algorithm={algorithm}", *_algo_overrides(algorithm), *RUN)
            cache[algorithm] = metrics(out), cache_content(out)
        return cache[algorithm]

    return get


def _algo_overrides(algorithm: str) -> list[str]:
    return {"rapid": ["algorithm.inference_batch_size=8"], "dapo": ["algorithm.max_gen_batches=2"]}.get(algorithm, [])


def test_same_seed_runs_are_identical(tmp_path, reference):
    rpo_train(tmp_path, "algorithm=grpo", *RUN)
    assert comparable(metrics(tmp_path)) == comparable(reference("grpo")[0])


@pytest.mark.parametrize("algorithm,point", [
    ("grpo", "update:3"),                          # killed after the optimizer step, before sync/cache/log
    ("dapo", "rollout:3"),                         # killed while generating (DAPO: maybe mid dynamic sampling)
    ("rapid", "checkpoint_deepspeed_written:2"),   # killed in the middle of writing a checkpoint (mid-RAPID cycle)
    ("dr_grpo", "checkpoint_before_rename:3"),     # checkpoint fully written but not yet renamed into place
])
def test_kill_then_resume_matches_uninterrupted(tmp_path, reference, algorithm, point):
    out = tmp_path / "run"
    killed_run(out, point, f"algorithm={algorithm}", *_algo_overrides(algorithm))
    assert_checkpoints_complete(out)
    from cache import TrajectoryCache

    with TrajectoryCache(out / "rpo_cache.sqlite", readonly=True) as cache:  # opens cleanly after SIGKILL
        cache.verify()
        steps_in_cache = cache.state()["version_step"]
    rpo_train(out, f"algorithm={algorithm}", *_algo_overrides(algorithm), *RUN, "trainer.resume=auto")
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(STEPS + 1)), "steps missing or logged twice"
    ref_rows, ref_cache = reference(algorithm)
    assert comparable(rows) == comparable(ref_rows)
    with TrajectoryCache(out / "rpo_cache.sqlite", readonly=True) as cache:
        cache.verify()
        assert cache.state()["version_step"] >= steps_in_cache  # nothing a completed step wrote was lost
    # every version of every entry, as the uninterrupted run wrote them
    assert cache_content(out) == ref_cache
