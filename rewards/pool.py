"""A pool of reward worker processes with a wall-clock limit per answer.

Why not multiprocessing/concurrent.futures: neither can stop one running task (a process pool can only be torn
down whole), their spawn/forkserver children re-import the trainer's __main__ module (torch, vLLM) before
running anything, and fork is unsafe in a process with vLLM/torch threads. Here each worker is a fresh
`python -m rewards.worker` talking JSON lines over pipes; an answer that runs past `timeout_s` gets its worker
SIGKILLed (no signal.alarm, so this works from any thread) and a fresh worker takes its place while the others
keep going. The verdicts of a `judge` call do not depend on which worker ran what.
"""
from __future__ import annotations

import json
import math
import os
import selectors
import subprocess
import sys
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Optional

from rewards.numbers import REL_TOL

TIMEOUT, MEMORY, CRASH = "timeout", "memory", "crash"
_STARTING, _IDLE, _BUSY = "starting", "idle", "busy"
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class _Worker:
    def __init__(self, proc: subprocess.Popen, start_deadline: float):
        self.proc = proc
        self.buf = b""
        self.state = _STARTING
        self.task: Optional[int] = None
        self.deadline = start_deadline


def _stop(procs: list[subprocess.Popen]) -> None:
    """Close stdin (idle workers exit on EOF), then kill whatever is still running."""
    for p in procs:
        try:
            p.stdin.close()
        except OSError:
            pass
    end = time.monotonic() + 1.0
    for p in procs:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        try:
            p.stdout.close()
        except OSError:
            pass


class JudgePool:
    """`num_workers` processes running `rewards.judge.judge`, one answer each at a time."""

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 2.0,
        memory_mb: int = 1024,
        rel_tol: float = REL_TOL,
        start_timeout_s: float = 120.0,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if memory_mb < 256:
            raise ValueError(f"memory_mb must be >= 256 (Python + sympy need about 150 MB), got {memory_mb}")
        self.timeout_s = float(timeout_s)
        self.memory_mb = int(memory_mb)
        self.rel_tol = float(rel_tol)
        self.start_timeout_s = float(start_timeout_s)
        self.kills = 0  # workers killed on the wall-clock limit, over the pool's life
        self.respawns = 0
        self._sel = selectors.DefaultSelector()
        self._procs: list[subprocess.Popen] = []  # every live process, for the finalizer
        self._workers = [self._spawn() for _ in range(num_workers)]
        self._finalizer = weakref.finalize(self, _stop, self._procs)
        self._startup_failures = 0
        self._wait_until_ready()

    # -- process management -----------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        env["OMP_NUM_THREADS"] = "1"
        cmd = [
            sys.executable, "-m", "rewards.worker",
            "--memory-mb", str(self.memory_mb),
            "--cpu-budget-s", str(math.ceil(self.timeout_s) + 2),
        ]  # fmt: skip
        # a new session: a Ctrl-C in the terminal reaches the trainer, which then stops the workers itself
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True)
        os.set_blocking(proc.stdout.fileno(), False)
        self._procs.append(proc)
        w = _Worker(proc, time.monotonic() + self.start_timeout_s)
        self._sel.register(proc.stdout, selectors.EVENT_READ, w)
        return w

    def _replace(self, w: _Worker) -> None:
        self._sel.unregister(w.proc.stdout)
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait()
        for f in (w.proc.stdin, w.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._procs.remove(w.proc)
        self._workers[self._workers.index(w)] = self._spawn()
        self.respawns += 1

    def _wait_until_ready(self) -> None:
        while any(w.state == _STARTING for w in self._workers):
            self._poll([], self._next_deadline())

    @property
    def num_alive(self) -> int:
        return sum(w.proc.poll() is None for w in self._workers)

    # -- judging ------------------------------------------------------------------------------------------------
    def judge(self, pairs: list[tuple[str, str]]) -> list[str]:
        """Verdict per (gold, prediction): correct | wrong | parse_failure | timeout | memory | crash | error."""
        if self._finalizer.alive is False:
            raise RuntimeError("JudgePool is closed")
        results: list[Optional[str]] = [None] * len(pairs)
        queue = deque(range(len(pairs)))
        while queue or any(w.state == _BUSY for w in self._workers):
            for w in list(self._workers):
                if w.state == _IDLE and queue:
                    k = queue.popleft()
                    gold, pred = pairs[k]
                    msg = json.dumps({"id": k, "gold": gold, "pred": pred, "rel_tol": self.rel_tol}) + "\n"
                    try:
                        w.proc.stdin.write(msg.encode())
                        w.proc.stdin.flush()
                    except OSError:  # died while idle: requeue the answer, replace the worker
                        queue.appendleft(k)
                        self._replace(w)
                        continue
                    w.state, w.task, w.deadline = _BUSY, k, time.monotonic() + self.timeout_s
            self._poll(results, self._next_deadline())
        return results  # type: ignore[return-value]

    def _next_deadline(self) -> float:
        waiting = [w.deadline for w in self._workers if w.state in (_BUSY, _STARTING)]
        return min(waiting) if waiting else time.monotonic()

    def _poll(self, results: list, deadline: float) -> None:
        for key, _ in self._sel.select(max(0.0, deadline - time.monotonic())):
            self._read(key.data, results)
        now = time.monotonic()
        for w in list(self._workers):
            if w.state == _BUSY and now >= w.deadline:
                results[w.task] = TIMEOUT
                self.kills += 1
                self._replace(w)
            elif w.state == _STARTING and now >= w.deadline:
                self.close()
                raise RuntimeError(f"a reward worker did not start within {self.start_timeout_s:.0f} s")

    def _read(self, w: _Worker, results: list) -> None:
        try:
            data = os.read(w.proc.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return
        if not data:  # the worker exited: out of memory at the C level, SIGXCPU, or killed from outside
            if w.state == _STARTING:
                self._startup_failures += 1
                if self._startup_failures >= 3:
                    self.close()
                    raise RuntimeError("reward workers keep dying at startup; see their stderr above")
            elif w.state == _BUSY:
                results[w.task] = CRASH
            self._replace(w)
            return
        w.buf += data
        while b"\n" in w.buf:
            line, w.buf = w.buf.split(b"\n", 1)
            msg = json.loads(line)
            if msg.get("ready"):
                w.state = _IDLE
                self._startup_failures = 0
            elif w.state == _BUSY and msg.get("id") == w.task:
                results[w.task] = msg["verdict"]
                w.state, w.task = _IDLE, None

    def close(self) -> None:
        for w in self._workers:
            try:
                self._sel.unregister(w.proc.stdout)
            except (KeyError, ValueError):
                pass
        self._finalizer()
