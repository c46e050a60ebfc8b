"""Crash safety and exact resume: SIGKILL during rollout, update and checkpoint write, then `trainer.resume=auto`.

The resumed run must finish, never see a half-written checkpoint, keep every cache entry a completed step wrote, log
the same metrics as an uninterrupted run of the same seed (timings aside) and end on the same weights, bit for bit.
On the parity task every step has nonzero gradients, so a resume that lost the optimizer state (Adam's moments) or the
data position ends on different weights. A killed trainer must leave no process behind (its vLLM engine included)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import child_env

from test_train_e2e import ROOT, SMALL, final_weights, metrics, rpo_train

pytestmark = pytest.mark.full

STEPS = 4
RUN = ["rpo.enabled=true", "rpo.max_truncate=8", f"trainer.total_steps={STEPS}", "trainer.save_every=1",
       "trainer.keep_last=2", "trainer.eval_every=2"]
# Wall-clock measurements differ between any two runs (train_wall_s among them); the reward verdict cache lives in
# memory, so after a resume it starts cold and its hit/worker-call counters differ (the verdicts do not); the first
# step of every attempt records its host (host_cpu), so a resumed run has one such field more.
VOLATILE = ("time_", "wall_time", "train_wall_s", "peak_rss_gb", "rollout_tokens_per_s", "train_tokens_per_s",
            "cache_init_seconds", "reward_seconds", "reward_cache_hits", "reward_worker_calls", "host_cpu")


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def session_processes(sid: int) -> list[str]:
    """Command lines of the live processes of a session (the killed run was started in its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if os.getsid(int(entry.name)) == sid and state != "Z":  # a zombie holds no memory and runs nothing
                    found.append((entry / "cmdline").read_text().replace("\0", " ")[:120])
            except (ProcessLookupError, FileNotFoundError, PermissionError):
                pass
    return found


def killed_run(out: Path, point: str, *overrides: str) -> None:
    """Start rpo-train, wait until it reaches `point` (e.g. update:3), SIGKILL the trainer process alone (as the OOM
    killer or a scheduler would), and check that its vLLM engine and reward workers go with it."""
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
    assert len(session_processes(proc.pid)) > 1  # the trainer and its engine / reward worker processes
    os.kill(proc.pid, signal.SIGKILL)  # the trainer only
    proc.wait()
    deadline = time.time() + 30
    while session_processes(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    left = session_processes(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL) if left else None  # do not leave them to the next test
    assert not left, f"processes of the killed run survived: {left}"


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

    def get(algorithm: str) -> tuple[list[dict], list[tuple], dict]:
        if algorithm not in cache:
            out = tmp_path_factory.mktemp(f"ref-{algorithm}")
            rpo_train(out, f"algorithm={algorithm}", *_algo_overrides(algorithm), *RUN)
            cache[algorithm] = metrics(out), cache_content(out), final_weights(out)
        return cache[algorithm]

    return get


def _algo_overrides(algorithm: str) -> list[str]:
    return {"rapid": ["algorithm.inference_batch_size=8"],
            "dapo": ["algorithm.max_gen_batches=2", "algorithm.mini_batches_per_rollout=2"]}.get(algorithm, [])


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[0]}: max {(a[differ[0]] - b[differ[0]]).abs().max()}"


def test_same_seed_runs_are_identical(tmp_path, reference):
    rpo_train(tmp_path, "algorithm=grpo", *RUN)
    ref_rows, _, ref_weights = reference("grpo")
    assert comparable(metrics(tmp_path)) == comparable(ref_rows)
    assert_same_weights(final_weights(tmp_path), ref_weights)


@pytest.mark.parametrize("algorithm,point", [
    ("grpo", "update:3"),                          # killed after the optimizer step, before sync/cache/log
    ("dapo", "rollout:3"),                         # killed while generating (DAPO: mu = 2, a fresh rollout at step 3)
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
    ref_rows, ref_cache, ref_weights = reference(algorithm)
    assert comparable(rows) == comparable(ref_rows)
    assert_same_weights(final_weights(out), ref_weights)
    with TrajectoryCache(out / "rpo_cache.sqlite", readonly=True) as cache:
        cache.verify()
        assert cache.state()["version_step"] >= steps_in_cache  # nothing a completed step wrote was lost
    # every version of every entry, as the uninterrupted run wrote them
    assert cache_content(out) == ref_cache
