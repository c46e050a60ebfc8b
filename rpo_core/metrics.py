"""Per-step metrics: one JSON line per optimizer step in <output_dir>/metrics.jsonl, mirrored to wandb and stdout."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

log = logging.getLogger("rpo")


class Console:
    """Progress for a person: messages go to train.log always and to stdout (above the progress bar) when shown."""

    def __init__(self, show: bool):
        self.show = show

    def say(self, message: str) -> None:
        log.info(message)
        if self.show:
            tqdm.write(message, file=sys.stdout)

    def progress(self, steps):
        return tqdm(steps, desc="train", unit="step", file=sys.stdout, dynamic_ncols=True) if self.show else steps


def reset_peak_memory() -> None:
    """Start a new peak-resident-memory window for this process (Linux: /proc/self/clear_refs; elsewhere a no-op)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_gb() -> float:
    """Peak resident memory of this process since the last reset_peak_memory (VmHWM), in GiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # no /proc: the lifetime peak (KiB)


def host_cpu() -> str:
    """The CPU this process runs on, e.g. 'AMD EPYC 9R14 (family 25, model 17, 2 cores)': timings compare only within
    one host, so every run records it."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown"
    return (f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}, {os.cpu_count()} cores)")


class TrainClock:
    """Training wall time: seconds since the run started (engine start and RPO cache init included) plus what earlier
    attempts of the run had trained, minus the time spent evaluating and checkpointing (`with clock.off(): ...`).
    trainer.time_budget_s and trainer.save_every_s count this clock, so evaluation never eats a run's budget."""

    def __init__(self, trained_before: float = 0.0):
        self.start, self.before, self.excluded = time.perf_counter(), trained_before, 0.0

    def resume_from(self, trained_before: float) -> None:
        self.before = trained_before

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start - self.excluded

    @contextmanager
    def off(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - start


class PhaseTimer:
    """Wall time of each named phase of a step: `with timer("rollout"): ...` -> {"time_rollout": s}."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"time_{phase}"
            self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - start


def to_number(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; null says "not available"
    return v


class MetricsLogger:
    def __init__(self, output_dir: Path, cfg, run_config: dict):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.wandb = None
        if cfg.wandb:
            import wandb

            # mode=None lets WANDB_MODE decide; the config default is offline so a run never waits on a network.
            self.wandb = wandb.init(
                project=cfg.project, mode=os.environ.get("WANDB_MODE", cfg.mode), dir=str(output_dir),
                config=run_config, resume="allow", id=_wandb_id(output_dir),
            )

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines of steps the checkpoint does not contain, so no step appears twice."""
        if not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, self.path)

    def log(self, record: dict) -> dict:
        record = {k: to_number(v) for k, v in record.items() if not k.startswith("_")}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if v is not None}, step=record["step"])
        return record

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_id(output_dir) -> str:
    return hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:12]


def format_step_line(r: dict) -> str:
    def f(key, fmt):
        v = r.get(key)
        return "-" if v is None else format(v, fmt)

    acc = f" acc {r['accuracy']:.3f}" if r.get("accuracy") is not None else ""
    return (
        f"step {r['step']:>4} | reward {f('reward_mean', '.3f')} correct {f('correct_mean', '.3f')}{acc} | "
        f"tokens {r.get('rollout_tokens', 0):>6} | rollout {f('time_rollout', '.1f')}s reward {f('time_reward', '.2f')}s "
        f"train {f('time_train', '.1f')}s sync {f('time_sync', '.2f')}s step {f('time_step', '.1f')}s | "
        f"mismatch {f('logprob_mismatch', '.4f')}"
    )
