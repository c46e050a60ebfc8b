"""A reward worker process: judges one (gold, prediction) pair at a time, read as JSON lines on stdin.

Started by `rewards.pool.JudgePool` as `python -m rewards.worker`, a fresh interpreter (never a fork of the
trainer, whose vLLM/torch threads make forking unsafe, and never a re-import of the trainer's main module).
Limits it sets on itself after importing sympy:
- RLIMIT_AS (address space) = memory_mb: a runaway computation fails with MemoryError, reported as "memory";
- RLIMIT_CPU, re-armed before every answer at (CPU used so far + cpu_budget_s): if the parent is gone and nobody
  kills this process on the wall-clock limit, the kernel does (SIGXCPU) even inside a C loop holding the GIL.
Replies carry only the verdict string; the parent never unpickles anything from here.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys


def _arm_cpu_limit(budget_s: int) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + budget_s
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory-mb", type=int, required=True)
    ap.add_argument("--cpu-budget-s", type=int, required=True)
    args = ap.parse_args()

    from rewards.judge import PARSE_FAILURE, judge

    judge("\\frac{1}{2}", "x=\\sqrt{2}")  # import sympy's lazily loaded parts before the memory limit applies
    limit = args.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.setrecursionlimit(4000)

    out = sys.stdout.buffer
    out.write(b'{"ready": true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        req = json.loads(line)
        _arm_cpu_limit(args.cpu_budget_s)
        try:
            verdict = judge(req["gold"], req["pred"], req["rel_tol"])
        except MemoryError:
            verdict = "memory"
        except RecursionError:
            verdict = PARSE_FAILURE
        except Exception as e:  # a bug or a sympy corner case: scored as wrong, counted, never fatal
            verdict = "error"
            print(f"rewards.worker: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr, flush=True)
        out.write(json.dumps({"id": req["id"], "verdict": verdict}).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main()
