"""The paper's regime in miniature (GitHub issue 29): GRPO vs GRPO+RPO from the warm-started reasoner, on equal
wall-time budgets, paired by seed. One command remakes it; every stage resumes and skips what is complete.

    python experiments/paper_regime.py                    # = --stage all (or: make paper-regime)
    python experiments/paper_regime.py --stage pairs --seeds 0 1 2 3 4
    python experiments/paper_regime.py --stage extras     # single-seed side arms (authors' reward, static cache, ...)

Stages, in order (`all` runs them in turn):
  warm       `make warm-start` (remade on each host: floating point differs between CPUs); its sha256 is recorded
  pilot      GRPO, seed 0, PILOT_STEPS steps, a checkpoint every PILOT_SAVE_EVERY steps; rpo-eval on each
  calibrate  short runs of both arms alone on the host: start-up and seconds per step (GRPO's sets T), tokens/sample
  plan       T, the checkpoint grid and the targets, fixed from the pilot before any comparison run: plan.json, which is
             never rewritten (delete it to plan again)
  pairs      per seed: GRPO, then GRPO+RPO, each with trainer.time_budget_s = T, on one host, one after the other
  eval       rpo-eval on every checkpoint of every run (EVAL_SIZE held-out problems, greedy + EVAL_SAMPLES samples)
  report     rpo-report: Tables 1-3, paired differences (interval, sign count), time to targets, curves

Timed stages (calibrate, pairs, extras) must run with nothing else on the machine: each records the load average
before and after its run, and refuses to start above MAX_LOAD unless --allow-load (results then marked).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rpo_core.evaluate import append_row, read_rows as rows  # noqa: E402
from rpo_core.metrics import host_cpu as host  # noqa: E402  (the CPU model, as every metrics row records it)
from experiments.report import copy_runs, find_run_dirs, load_run  # noqa: E402
WARM = ROOT / ".cache" / "models" / "compositional-warm"
RESULTS = ROOT / "experiments" / "results" / "paper_regime"

# ---- the setting, fixed before the runs (experiments/results/paper_regime/README.md says why) ----------------------
LR = 5e-6               # 2e-5 lowered greedy accuracy 0.68 -> 0.48 in one step (results/time_budget_demo); see the README
N_TRAIN = 160           # training questions: GRPO's 8 prompts/step see them every 20 steps
SETTING = [
    "model=path", f"model.path={WARM}", "model.dtype=float32", "data=compositional", f"data.n_train={N_TRAIN}",
    "rollout.temperature=0.7",    # the RPO authors' temperature (recipes/grpo.yaml)
    "learner.shared_prefix=true", f"learner.optim.lr={LR}",
    "trainer.keep_hf=true", "trainer.keep_last=1", "trainer.resume=auto", "trainer.progress=false",
]
# RPO as the paper and the authors' defaults (conf/rpo/default.yaml): prefix in the loss at ratio 1, epsilon-greedy
# update with epsilon 0.5, upfront cache init; m drawn per question (rpo.truncate_per=question). L = 34, 30% of the
# warm start's 114.5-token responses: the top of the paper's 10-30%, because at the task default L = 24 the calibration
# left 7.7 of 8 groups with equal rewards (the suffix mostly rewrites the answer line; results/paper_regime/README.md).
RPO_L = 34
ARMS = {"grpo": [], "grpo_rpo": ["rpo.enabled=true", "rpo.truncate_per=question", f"rpo.max_truncate={RPO_L}"]}
EXTRAS = {  # single runs, seed 0, same T: clearly marked as such in the report
    "rpo_authors_reward": ARMS["grpo_rpo"] + ["reward=authors"],
    "rpo_static_cache": ARMS["grpo_rpo"] + ["rpo.cache_update=static"],
    "rpo_suffix_only": ARMS["grpo_rpo"] + ["rpo.prefix_in_loss=false"],
    "dapo": ["algorithm=dapo"],
    "dapo_rpo": ["algorithm=dapo"] + ARMS["grpo_rpo"],
    "rapid": ["algorithm=rapid"],
}
PILOT_STEPS, PILOT_SAVE_EVERY = 45, 5  # 60 planned; greedy accuracy was flat from step 25 to 45 (0.726-0.742)
CALIBRATION_STEPS = 6   # steps 2..6 give the seconds per step (step 1 warms up)
EVAL_SIZE, EVAL_SAMPLES = 500, 2  # 2 samples triple the tokens greedy alone generates
MARGIN = 1.25           # T = this x the pilot's (calibrated) time to its plateau
GRID_PARTS = 4          # checkpoints about every T / GRID_PARTS
MAX_LOAD = 0.5          # 1-minute load average allowed before a timed run
LOAD_WAIT_S = 300       # how long a timed run waits for the load to fall below MAX_LOAD before refusing


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline",
           "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def train(out: Path, seed: int, extra: list[str]) -> None:
    run([sys.executable, "-m", "rpo_core.train", *SETTING, f"seed={seed}", f"trainer.output_dir={out}", *extra])


def finished(out: Path, budget_s: float | None = None, steps: int | None = None) -> bool:
    """The run reached its step count or its time budget (its last row says so)."""
    last = rows(out / "metrics.jsonl")[-1:] or [{}]
    return (steps is not None and last[0].get("step", 0) >= steps) or (
        budget_s is not None and last[0].get("train_wall_s", 0) >= budget_s and last[0].get("step", 0) > 0)


def timed(label: str, out: Path, allow_load: bool, fn) -> None:
    """Run fn alone on the machine, with the load average before and after on record in <out>/load.json."""
    deadline = time.time() + LOAD_WAIT_S  # the load average lags: the previous run's own load takes minutes to decay
    while os.getloadavg()[0] > MAX_LOAD and time.time() < deadline and not allow_load:
        time.sleep(10)
    before = os.getloadavg()[0]
    if before > MAX_LOAD and not allow_load:
        raise SystemExit(f"error: load average {before:.2f} > {MAX_LOAD} before {label}: a timed run needs the machine "
                         f"to itself (or pass --allow-load; the run is then marked)")
    fn()
    append_row(out / "load.json", {"label": label, "load_before": before, "load_after": os.getloadavg()[0],
                                    "host": host(), "allow_load": allow_load, "time": time.time()})


# ---- stages --------------------------------------------------------------------------------------------------------
def stage_warm(args) -> None:
    run([sys.executable, "experiments/make_warm_start.py"])


def stage_pilot(args) -> None:
    out = args.out / "pilot"
    if not finished(out, steps=PILOT_STEPS):
        train(out, 0, [f"trainer.total_steps={PILOT_STEPS}", f"trainer.save_every={PILOT_SAVE_EVERY}",
                       "trainer.eval_every=0"])
    evaluate(out, samples=0)  # the plan reads greedy accuracy; 500 problems x 2 samples would triple the cost


def stage_calibrate(args) -> None:
    """Each arm for CALIBRATION_STEPS steps, alone on the host: start-up and step seconds by phase, tokens per sample."""
    for arm, overrides in ARMS.items():
        out = args.out / "calibrate" / arm
        if not finished(out, steps=CALIBRATION_STEPS):
            timed(arm, out.parent, args.allow_load, lambda: train(out, 0, [
                f"trainer.total_steps={CALIBRATION_STEPS}", "trainer.eval_every=0", *overrides]))


PLAN_RULE = ("plateau = mean greedy accuracy of the pilot's last three checkpoints; plateau step = its first checkpoint "
             "at or above that; T = MARGIN x (start-up + plateau step x the calibrated GRPO seconds per step), rounded "
             "up to a minute; checkpoints every T / GRID_PARTS; targets 90% and 100% of the plateau")


def plan_from(pilot_evals: list[dict], calibration: list[dict]) -> dict:
    """T, grid and targets (PLAN_RULE) from the pilot's rpo-eval rows and the calibration run's metrics rows."""
    curve = sorted((r["step"], r["greedy_accuracy"]) for r in pilot_evals)
    plateau = statistics.fmean(acc for _, acc in curve[-3:])
    plateau_step = next(step for step, acc in curve if acc >= plateau)
    startup = next(r["train_wall_s"] for r in calibration if r["step"] == 0)
    per_step = statistics.median(r["time_step"] for r in calibration if r["step"] >= 2)  # step 1 warms up
    T = math.ceil(MARGIN * (startup + plateau_step * per_step) / 60) * 60
    return {"T_s": T, "save_every_s": T / GRID_PARTS, "plateau_accuracy": plateau, "plateau_step": plateau_step,
            "targets": [round(0.9 * plateau, 4), round(plateau, 4)], "startup_s": startup, "step_s": per_step,
            "pilot_curve": curve, "rule": PLAN_RULE}


def stage_plan(args) -> dict:
    path = args.out / "plan.json"
    if not path.is_file():
        evals = [r for r in rows(args.out / "pilot" / "eval.jsonl") if r.get("n_problems") == EVAL_SIZE]
        plan = plan_from(evals, rows(args.out / "calibrate" / "grpo" / "metrics.jsonl"))
        plan["host"], plan["warm_sha256"] = host(), warm_sha256()
        path.write_text(json.dumps(plan, indent=1) + "\n")
    return json.loads(path.read_text())


def warm_sha256() -> str:
    return json.loads((WARM / "rpo_model.json").read_text())["model_safetensors_sha256"]


def stage_pairs(args, arms: dict = ARMS, seeds: list[int] | None = None, folder: str = "pairs") -> None:
    plan = stage_plan(args)
    for seed in seeds if seeds is not None else args.seeds:
        pair = args.out / folder / f"seed{seed}"
        pair.mkdir(parents=True, exist_ok=True)
        record = json.loads((pair / "pair.json").read_text()) if (pair / "pair.json").is_file() else {
            "host": host(), "warm_sha256": warm_sha256(), "T_s": plan["T_s"]}
        if record["host"] != host():
            raise SystemExit(f"error: {pair} began on {record['host']}; a pair never spans two hosts (this is "
                             f"{host()}): finish it there, or delete {pair} to run the whole pair here")
        (pair / "pair.json").write_text(json.dumps(record, indent=1) + "\n")
        for arm, overrides in arms.items():
            out = pair / arm
            if not finished(out, budget_s=plan["T_s"]):
                timed(arm, pair, args.allow_load, lambda: train(out, seed, [
                    "trainer.total_steps=100000", f"trainer.time_budget_s={plan['T_s']}",
                    f"trainer.save_every_s={plan['save_every_s']}", "trainer.eval_every=0", *overrides]))


def stage_extras(args) -> None:
    stage_pairs(args, arms=EXTRAS, seeds=[0], folder="extras")


def evaluate(run_dir: Path, samples: int = EVAL_SAMPLES, checkpoints: str = "all") -> None:
    run([sys.executable, "-m", "rpo_core.evaluate", f"run={run_dir}", f"eval.size={EVAL_SIZE}", f"eval.samples={samples}",
         f"eval.checkpoints={checkpoints}"])


def stage_eval(args) -> None:
    """Greedy accuracy at T for every run first, then the greedy curves, then the sampled ones (3x the tokens): an
    interrupted evaluation has the comparison's main read-out first."""
    runs = sorted(p.parent for p in args.out.glob("*/seed*/*/metrics.jsonl"))
    for samples, checkpoints in ((0, "last"), (0, "all"), (EVAL_SAMPLES, "all")):
        for run_dir in runs:
            evaluate(run_dir, samples, checkpoints)


def stage_report(args) -> None:
    """rpo-report over the pairs; every run's record (never a checkpoint) and the plan, host and load files into
    RESULTS, in the --out layout."""
    plan = stage_plan(args)
    run([sys.executable, "-m", "experiments.report", str(args.out / "pairs"), "--out", str(RESULTS),
         "--targets", *map(str, plan["targets"]), "--wall-time", str(plan["T_s"])])
    copy_runs([load_run(d) for d in find_run_dirs(args.out)], args.out, RESULTS)
    shutil.copyfile(args.out / "plan.json", RESULTS / "plan.json")
    for path in [*args.out.glob("**/pair.json"), *args.out.glob("**/load.json")]:
        dest = RESULTS / "runs" / path.relative_to(args.out)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)


STAGES = {"warm": stage_warm, "pilot": stage_pilot, "calibrate": stage_calibrate, "plan": stage_plan,
          "pairs": stage_pairs, "eval": stage_eval, "report": stage_report, "extras": stage_extras}
ALL = ("warm", "pilot", "calibrate", "plan", "pairs", "eval", "report")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seed pairs (5 if the machine allows)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "paper_regime", help="runs go here")
    p.add_argument("--allow-load", action="store_true", help="run timed stages on a busy machine (marked)")
    args = p.parse_args()
    for name in ALL if args.stage == "all" else (args.stage,):
        STAGES[name](args)


if __name__ == "__main__":
    main()
