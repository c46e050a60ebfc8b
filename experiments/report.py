"""rpo-report: tables and plots of a sweep of `rpo-train` runs, in the shape of the RPO paper's Tables 1-3.

    rpo-report multirun/2026-11-22/10-00-00                   # writes report.md, report.json and PNGs there
    rpo-report SWEEP_DIR --out results/ --baseline grpo+LA
    rpo-report SWEEP_DIR --out experiments/results/NAME --copy-runs   # plus every run's config, overrides, metrics
    rpo-report SWEEP_DIR --targets 0.40 0.45 --wall-time 600          # targets and T fixed before the runs

Every directory under SWEEP_DIR holding config.yaml, metrics.jsonl or error.txt is one run. A run is "ok" when it
has no error.txt and its metrics reach trainer.total_steps (or trainer.time_budget_s of train_wall_s) with an accuracy
before and after training; any other run is a FAILED row with its reason (never dropped). Method rows aggregate the ok runs over seeds. A run's
eval.jsonl (`rpo-eval`, off the clock) supplies its accuracies when present, else its in-run evaluations do.

Definitions (per run; a method row shows mean +- sample std over its ok runs):
  acc before / after   greedy held-out accuracy at step 0 / at the last step (eval.jsonl's when it has both)
  gen tokens/sample    mean over generating steps of rollout_tokens_per_sample (RPO: regenerated suffix tokens only)
  rollout s/step       sum of time_rollout / optimizer steps (RAPID generates once per H steps: cost spread over H)
  train time           sum of time_step - time_eval over steps >= 1 (excludes evaluation, start-up and cache init)
  cache init           RPO's one-off cache initialization (step-0 cache_init_seconds); "-" for methods without RPO
  total time           train time + cache init
Ratios divide a method's mean by the baseline's mean in the same setting; "(worse)" marks a ratio > 1 or a lower
accuracy. "?" in a table means a value the run did not record; "-" means not applicable.
The phase table and the paired comparisons over seeds (time to target, accuracy at a common wall time T, mean
accuracy up to T): experiments/curves.py and experiments/stats.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import shutil
import statistics
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from experiments.curves import (RunCurves, accuracy_curve, analyze, eval_source, run_curves, run_host, step_seconds,
                                tokens_per_sample)
from experiments.curves import render as render_curves
from experiments.curves import render_paired
from experiments.stats import hosts_note

log = logging.getLogger("rpo-report")

RUN_FILES = ("config.yaml", "metrics.jsonl", "error.txt")
EVAL_FILE = "eval.jsonl"  # rpo-eval's accuracy per checkpoint (optional)
ALGORITHM_ORDER = ("grpo", "dr_grpo", "dapo", "rapid")
METHOD_KEYS = {"algorithm", "algorithm.name", "rpo.enabled", "reward.length_aware.enabled"}  # make the label
METHOD_GROUPS = ("algorithm", "rpo", "reward")  # other overrides under these are method hyperparameters
SETTING_KEYS = ("model.name", "data.name", "rollout.group_size", "trainer.total_steps")  # compared in every config
IGNORED_KEYS = {"seed", "trainer.output_dir", "trainer.resume", "trainer.progress", "trainer.save_every",
                "trainer.keep_last", "cache.init_progress"}  # per-run or no effect on results: never split a table
IGNORED_GROUPS = ("hydra", "logger")
SUMMARY_NUMBERS = ("acc_before", "acc_after", "tokens_per_sample", "rollout_s_per_step", "train_time_s",
                   "cache_init_s", "total_time_s")


# =====================================================================================================================
# loading
# =====================================================================================================================
@dataclass
class Run:
    """What one run directory holds, read as is (no interpretation yet)."""

    path: Path
    config: dict  # config.yaml, else the sweep job's .hydra/config.yaml, else {}
    overrides: list[str] | None  # .hydra/overrides.yaml (None when absent)
    metrics: list[dict]  # metrics.jsonl records sorted by step
    error: str | None  # error.txt text
    notes: list[str] = field(default_factory=list)  # anything skipped or odd while reading
    evals: list[dict] = field(default_factory=list)  # eval.jsonl records sorted by step ([] when absent)


def find_run_dirs(root: Path) -> list[Path]:
    """Directories under root (root included) holding a run file, or a sweep job's .hydra/overrides.yaml (a job
    killed before writing anything is still a run: a FAILED row). Run internals (checkpoints, .hydra) skipped."""
    found = []

    def visit(d: Path) -> None:
        if any((d / name).is_file() for name in RUN_FILES + (".hydra/overrides.yaml",)):
            found.append(d)
            return  # a run's own subfolders (checkpoints, .hydra) are not runs
        for child in sorted(p for p in d.iterdir() if p.is_dir() and p.name != ".hydra"):
            visit(child)

    visit(Path(root))
    return found


def load_run(path: Path) -> Run:
    notes: list[str] = []
    config = _read_yaml(path / "config.yaml", notes)
    if config is None:
        config = _read_yaml(path / ".hydra" / "config.yaml", notes)
        if config is not None:
            notes.append("config.yaml missing: read the sweep job's .hydra/config.yaml")
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml", notes)
    if overrides is not None and not isinstance(overrides, list):
        notes.append(".hydra/overrides.yaml is not a list: ignored")
        overrides = None
    error = (path / "error.txt").read_text(errors="replace") if (path / "error.txt").is_file() else None
    return Run(path=path, config=config if isinstance(config, dict) else {}, overrides=overrides,
               metrics=read_metrics(path / "metrics.jsonl", notes), error=error, notes=notes,
               evals=read_eval(path / EVAL_FILE, notes))


def _read_yaml(path: Path, notes: list[str]):
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        notes.append(f"{path.name} unreadable ({type(e).__name__}): ignored")
        log.warning("%s: unreadable YAML: %s", path, e)
        return None


EVAL_KEYS = ("train_wall_s", "greedy_accuracy")  # an eval.jsonl row without them has no place on the time axis
EVAL_SETTINGS = ("n_problems", "k", "temperature", "max_new_tokens", "probe_prefix")  # rpo-eval's settings


def read_jsonl(path: Path, notes: list[str], required: tuple[str, ...] = ()) -> list[dict]:
    """The file's records in order; unparsable lines (e.g. a line cut by a kill) and records without an integer
    step or a numeric required key are counted and skipped."""
    if not path.is_file():
        return []
    records, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["step"] = int(record["step"])
            if any(not isinstance(record.get(k), (int, float)) for k in required):
                raise ValueError(f"missing one of {required}")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            bad += 1
            continue
        records.append(record)
    if bad:
        notes.append(f"{bad} unreadable {path.name} line(s) skipped")
        log.warning("%s: %d unreadable line(s) skipped", path, bad)
    return records


def by_step(records: list[dict], name: str, notes: list[str]) -> list[dict]:
    """One record per step, sorted; the later line of a repeated step wins (what a resumed run re-logged)."""
    out = {r["step"]: r for r in records}
    if len(out) < len(records):
        notes.append(f"{len(records) - len(out)} repeated step(s) in {name}: the last line of each kept")
        log.warning("%s: %d repeated step(s)", name, len(records) - len(out))
    return [out[s] for s in sorted(out)]


def read_metrics(path: Path, notes: list[str]) -> list[dict]:
    """metrics.jsonl records by step."""
    return by_step(read_jsonl(path, notes), path.name, notes)


def read_eval(path: Path, notes: list[str]) -> list[dict]:
    """eval.jsonl records by step, of one rpo-eval setting: when the file holds several (rpo-eval re-run with other
    settings), the one covering the most checkpoints, the later written on a tie; the others are named in a note."""
    groups: dict[tuple, list[dict]] = {}
    for r in read_jsonl(path, notes, required=EVAL_KEYS):
        groups.setdefault(tuple(r.get(k) for k in EVAL_SETTINGS), []).append(r)
    if not groups:
        return []
    order = list(groups)
    pick = max(order, key=lambda g: (len({r["step"] for r in groups[g]}), order.index(g)))
    if len(groups) > 1:
        named = lambda g: ", ".join(f"{k}={v}" for k, v in zip(EVAL_SETTINGS, g))  # noqa: E731
        notes.append(f"eval.jsonl holds {len(groups)} rpo-eval settings: read {named(pick)}; left out "
                     + "; ".join(named(g) for g in order if g != pick))
    return by_step(groups[pick], path.name, notes)


def dig(d: dict, dotted: str, default=None):
    """d["a"]["b"] for "a.b", or default when any level is missing."""
    for key in dotted.split("."):
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def parse_override(override: str) -> tuple[str, str]:
    """'+rpo.enabled=true' -> ('rpo.enabled', 'true')."""
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


# =====================================================================================================================
# one run -> one row
# =====================================================================================================================
def _override_value(run: Run, key: str):
    for o in run.overrides or []:
        k, v = parse_override(o)
        if k == key:
            return yaml.safe_load(v) if v else None
    return None


def method_label(run: Run) -> str:
    """algorithm + '+RPO' if rpo.enabled + '+LA' if the length-aware reward is on (absent = off)."""
    algo = dig(run.config, "algorithm.name") or _override_value(run, "algorithm") or "unknown"
    rpo = dig(run.config, "rpo.enabled", _override_value(run, "rpo.enabled"))
    la = dig(run.config, "reward.length_aware.enabled", _override_value(run, "reward.length_aware.enabled"))
    return f"{algo}{'+RPO' if rpo is True else ''}{'+LA' if la is True else ''}"


def run_seed(run: Run):
    seed = run.config.get("seed")
    return seed if seed is not None else _override_value(run, "seed")


def run_command(run: Run) -> str:
    if run.overrides is None:
        return "(unknown: no .hydra/overrides.yaml)"
    return " ".join(["rpo-train", *(shlex.quote(str(o)) for o in run.overrides)])


def first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "(empty error.txt)")


def train_seconds(r: dict):
    """curves.step_seconds, or None when the step recorded no time."""
    return None if r.get("time_step") is None else step_seconds(r)


def summarize_run(run: Run) -> dict:
    """The run's numbers (see the module docstring), its status and, when not ok, why."""
    steps = [r for r in run.metrics if r["step"] >= 1]
    step0 = next((r for r in run.metrics if r["step"] == 0), {})
    last = steps[-1] if steps else {}
    rpo = "+RPO" in method_label(run)
    total_steps = dig(run.config, "trainer.total_steps")

    step_times = [train_seconds(r) for r in steps]
    cache_init = step0.get("cache_init_seconds")
    if rpo and cache_init is None and dig(run.config, "rpo.init") == "lazy":
        cache_init = 0.0  # lazy init generates full rollouts inside the training steps: no separate cost
    evals = {r["step"]: r["greedy_accuracy"] for r in run.evals}
    from_eval = 0 in evals and bool(steps) and last["step"] in evals
    s = {
        "steps": len(steps),
        "acc_before": evals[0] if from_eval else step0.get("accuracy"),
        "acc_after": evals[last["step"]] if from_eval else last.get("accuracy"),
        "acc_source": eval_source(run.evals) if from_eval else "in-run",
        "host": run_host(run.metrics),
        "tokens_per_sample": tokens_per_sample(run.metrics),
        "rollout_s_per_step": sum(r.get("time_rollout") or 0.0 for r in steps) / len(steps) if steps else None,
        "train_time_s": sum(step_times) if steps and None not in step_times else None,
        "cache_init_s": cache_init if rpo else None,
        "generated_tokens": sum(r.get("rollout_tokens") or 0 for r in steps),
        "cache_init_tokens": step0.get("cache_init_tokens") if rpo else None,
        "eval_time_s": sum(r.get("time_eval") or 0.0 for r in steps),
        "wall_time_s": last.get("wall_time"),
        # RPO: the share of cache hits that read an entry a training step wrote (not the initialization), over steps
        "cache_trained_share": _mean_of(steps, "cache_trained_share") if rpo else None,
    }
    s["total_time_s"] = None if s["train_time_s"] is None else s["train_time_s"] + (cache_init or 0.0)

    problems = []
    if not run.metrics:
        problems.append("no metrics.jsonl records")
    if not run.config:
        problems.append("no config.yaml")
    budget = dig(run.config, "trainer.time_budget_s")
    spent = budget is not None and (last.get("train_wall_s") or 0.0) >= budget  # stopped by trainer.time_budget_s
    if total_steps is not None and steps and last["step"] < total_steps and not spent:
        problems.append(f"stopped at step {last['step']} of {total_steps}" +
                        (f" before its time budget ({budget} s of training)" if budget is not None else ""))
    required = [k for k in SUMMARY_NUMBERS if not (k == "cache_init_s" and not rpo)]
    missing = [k for k in required if s[k] is None]
    if run.metrics and missing:
        problems.append("missing " + ", ".join(missing))
    if run.error is not None:
        s.update(status="FAILED", error=first_line(run.error))
    elif problems:
        s.update(status="FAILED", error="incomplete run (no error.txt): " + "; ".join(problems))
    else:
        s.update(status="ok", error=None)
    return s


def _mean_of(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def guard_table(evaluations: list[dict]) -> str:
    """The collapse guard along each run: at every rpo-eval checkpoint, accuracy beside the evaluated response length
    and the direct-answer share (a policy that learns by dropping its reasoning shortens and answers at once)."""
    table = [[run["method"], str(run["seed"]), str(e["step"]), fmt(e.get("train_wall_s"), 0),
              fmt(e.get("greedy_accuracy")), fmt(e.get("sampled_accuracy")), fmt(e.get("response_len"), 1),
              fmt(e.get("sampled_response_len"), 1), fmt(e.get("direct_answer_share")), fmt(e.get("probe_accuracy"))]
             for run in evaluations for e in run["evals"]]
    return md_table(["method", "seed", "step", "train_wall_s", "greedy", "sampled", "greedy len", "sampled len",
                     "direct answers", "probe"], table)


def common_overrides(runs: list[Run]) -> set[str]:
    """Overrides every run was started with (none when some run has no overrides file: nothing is known shared)."""
    if not runs or any(r.overrides is None for r in runs):
        return set()
    return set.intersection(*(set(r.overrides) for r in runs))


def group_runs(runs: list[Run]) -> list[tuple[str, str]]:
    """(method, setting) per run. Overrides that differ between runs split the table: algorithm./rpo./reward.
    hyperparameters extend the method label ('rapid [algorithm.is_clip=5]'), anything else (model, data,
    rollout, trainer...) makes a separate setting with its own baseline. Overrides shared by all runs are ignored.
    SETTING_KEYS are also compared in the configs, so runs started without Hydra's overrides file are not mixed."""
    common = common_overrides(runs)
    differing = [k for k in SETTING_KEYS if len({repr(dig(r.config, k)) for r in runs if r.config}) > 1]
    out = []
    for run in runs:
        variant, setting = [], {}
        for o in run.overrides or []:
            key = parse_override(o)[0]
            group = key.split(".")[0]
            if o in common or key in METHOD_KEYS or key in IGNORED_KEYS or group in IGNORED_GROUPS:
                continue
            if group in METHOD_GROUPS:
                variant.append(o)
            else:
                setting[key] = o
        for k in differing:  # unless an override already names it (e.g. `model=tiny` for model.name)
            if run.config and k not in setting and k.split(".")[0] not in setting:
                setting[k] = f"{k}={dig(run.config, k)}"
        label = method_label(run) + (f" [{' '.join(sorted(variant))}]" if variant else "")
        out.append((label, " ".join(sorted(setting.values()))))
    return out


def run_rows(runs: list[Run]) -> list[dict]:
    rows = []
    for run, (method, setting) in zip(runs, group_runs(runs)):
        rows.append({"method": method, "setting": setting, "seed": run_seed(run), "path": str(run.path),
                     "command": run_command(run), "notes": run.notes, **summarize_run(run)})
    return sorted(rows, key=lambda r: (r["setting"], method_order(r["method"]), str(r["seed"]), r["path"]))


def method_order(label: str) -> tuple:
    base = label.split(" ")[0]
    algo = base.split("+")[0]
    rank = ALGORITHM_ORDER.index(algo) if algo in ALGORITHM_ORDER else len(ALGORITHM_ORDER)
    return rank, "+RPO" in base, "+LA" in base, label


# =====================================================================================================================
# runs -> method rows
# =====================================================================================================================
def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; None with fewer than 2 values)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def ratio(a, b):
    """a / b, or None when either is missing or b is 0."""
    return None if a is None or b is None or b == 0 else a / b


def aggregate_method(rows: list[dict]) -> dict:
    """One method in one setting: mean and std of each number over the ok runs (failed runs only counted)."""
    ok = [r for r in rows if r["status"] == "ok"]
    agg = {"method": rows[0]["method"], "setting": rows[0]["setting"], "runs_ok": len(ok), "runs_total": len(rows),
           "seeds": sorted((r["seed"] for r in ok), key=str)}
    for key in SUMMARY_NUMBERS + ("generated_tokens",):
        agg[key], agg[key + "_std"] = mean_std([r[key] for r in ok if r[key] is not None])
    return agg


def compare_to_baseline(method: dict, base: dict | None) -> dict:
    """Ratios of the method's means to the baseline's, and the accuracy difference (method - baseline)."""
    if base is None or base["runs_ok"] == 0 or method["runs_ok"] == 0:
        return {k: None for k in ("tokens_ratio", "rollout_ratio", "train_time_ratio", "total_time_ratio", "acc_diff")}
    return {
        "tokens_ratio": ratio(method["tokens_per_sample"], base["tokens_per_sample"]),
        "rollout_ratio": ratio(method["rollout_s_per_step"], base["rollout_s_per_step"]),
        "train_time_ratio": ratio(method["train_time_s"], base["train_time_s"]),
        "total_time_ratio": ratio(method["total_time_s"], base["total_time_s"]),
        "acc_diff": method["acc_after"] - base["acc_after"],
    }


def method_rows(rows: list[dict], baseline: str) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["method"]), []).append(r)
    methods = [aggregate_method(g) for g in groups.values()]
    for m in methods:
        base = next((b for b in methods if b["setting"] == m["setting"] and b["method"] == baseline), None)
        m["baseline"] = baseline if base is not None and base["runs_ok"] else None
        m.update(compare_to_baseline(m, base))
    return sorted(methods, key=lambda m: (m["setting"], method_order(m["method"])))


def rapid_comparisons(methods: list[dict]) -> list[dict]:
    """RAPID vs GRPO (and RAPID+RPO vs GRPO+RPO, ...): same flags, same setting, both with ok runs."""
    out = []
    for m in methods:
        if not m["method"].startswith("rapid") or " " in m["method"] or not m["runs_ok"]:
            continue
        partner = "grpo" + m["method"][len("rapid"):]
        g = next((x for x in methods if x["setting"] == m["setting"] and x["method"] == partner and x["runs_ok"]), None)
        if g is None:
            continue
        out.append({"setting": m["setting"], "rapid": m["method"], "grpo": partner,
                    "rapid_train_time_s": m["train_time_s"], "grpo_train_time_s": g["train_time_s"],
                    "train_time_ratio": ratio(m["train_time_s"], g["train_time_s"]),
                    "rapid_total_time_s": m["total_time_s"], "grpo_total_time_s": g["total_time_s"],
                    "total_time_ratio": ratio(m["total_time_s"], g["total_time_s"]),
                    "rapid_acc_after": m["acc_after"], "grpo_acc_after": g["acc_after"],
                    "acc_diff": m["acc_after"] - g["acc_after"]})
    return out


# =====================================================================================================================
# markdown
# =====================================================================================================================
def fmt(v, digits: int = 3, missing: str = "?") -> str:
    if v is None or not math.isfinite(v):
        return missing
    return f"{v:.{digits}f}"


def fmt_mean(m: dict, key: str, digits: int, missing: str = "?") -> str:
    if m[key] is None:
        return missing
    if m[key + "_std"] is None:
        return f"{m[key]:.{digits}f} (n=1)"
    return f"{m[key]:.{digits}f} ± {m[key + '_std']:.{digits}f}"


def fmt_ratio(r, is_baseline: bool) -> str:
    if is_baseline:
        return "1.00 (baseline)"
    if r is None:
        return "n/a"
    return f"{r:.2f}×" + (" (worse)" if r > 1 else "")


def fmt_diff(d, is_baseline: bool) -> str:
    if is_baseline:
        return "0.000 (baseline)"
    if d is None:
        return "n/a"
    return f"{d:+.3f}" + (" (worse)" if d < 0 else "")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


METHOD_HEADER = ["method", "runs ok/total", "acc before", "acc after", "gen tokens/sample", "rollout s/step",
                 "train time s", "cache init s", "total time s (incl. cache init)", "tokens/sample vs base",
                 "rollout time vs base", "train time vs base", "total time vs base", "acc after − base"]
RUN_HEADER = ["method", "seed", "status", "acc before", "acc after", "gen tokens/sample", "rollout s/step",
              "train time s", "cache init s", "command", "path", "accuracy from", "host CPU",
              "cache hits on trained entries"]


def method_table(methods: list[dict]) -> str:
    rows = []
    for m in methods:
        is_base = m["method"] == m["baseline"]
        rpo = "+RPO" in m["method"]
        rows.append([
            m["method"], f"{m['runs_ok']}/{m['runs_total']}",
            fmt_mean(m, "acc_before", 3), fmt_mean(m, "acc_after", 3), fmt_mean(m, "tokens_per_sample", 1),
            fmt_mean(m, "rollout_s_per_step", 2), fmt_mean(m, "train_time_s", 1),
            fmt_mean(m, "cache_init_s", 1) if rpo else "-", fmt_mean(m, "total_time_s", 1),
            fmt_ratio(m["tokens_ratio"], is_base), fmt_ratio(m["rollout_ratio"], is_base),
            fmt_ratio(m["train_time_ratio"], is_base), fmt_ratio(m["total_time_ratio"], is_base),
            fmt_diff(m["acc_diff"], is_base),
        ])
    return md_table(METHOD_HEADER, rows)


def worse_lines(methods: list[dict]) -> list[str]:
    """Plain sentences for every comparison where a method did worse than the baseline."""
    what = {"tokens_ratio": "generated tokens per sample", "rollout_ratio": "rollout time per step",
            "train_time_ratio": "training time", "total_time_ratio": "total time including cache init"}
    out = []
    for m in methods:
        if m["baseline"] is None or m["method"] == m["baseline"]:
            continue
        for key, name in what.items():
            if m[key] is not None and m[key] > 1:
                out.append(f"- {m['method']}: {name} is {m[key]:.2f}× the baseline's ({m['baseline']}), i.e. higher.")
        if m["acc_diff"] is not None and m["acc_diff"] < 0:
            out.append(f"- {m['method']}: accuracy after training is {-m['acc_diff']:.3f} lower than "
                       f"{m['baseline']}'s.")
    return out


def run_table(rows: list[dict]) -> str:
    table = []
    for r in rows:
        rpo = "+RPO" in r["method"]
        status = "ok" if r["status"] == "ok" else f"FAILED: {r['error'][:200]}"
        seed = "?" if r["seed"] is None else str(r["seed"])
        table.append([r["method"], seed, status, fmt(r["acc_before"]), fmt(r["acc_after"]),
                      fmt(r["tokens_per_sample"], 1), fmt(r["rollout_s_per_step"], 2), fmt(r["train_time_s"], 1),
                      fmt(r["cache_init_s"], 1) if rpo else "-", f"`{r['command']}`", f"`{r['path']}`",
                      r["acc_source"], r["host"] or "not recorded",
                      fmt(r["cache_trained_share"], missing="not recorded") if rpo else "-"])
    return md_table(RUN_HEADER, table)


def rapid_table(comparisons: list[dict]) -> str:
    rows = [[f"{c['rapid']} vs {c['grpo']}" + (f" (`{c['setting']}`)" if c["setting"] else ""),
             f"{c['rapid_train_time_s']:.1f}", f"{c['grpo_train_time_s']:.1f}",
             fmt_ratio(c["train_time_ratio"], False), fmt_ratio(c["total_time_ratio"], False),
             f"{c['rapid_acc_after']:.3f}", f"{c['grpo_acc_after']:.3f}", fmt_diff(c["acc_diff"], False)]
            for c in comparisons]
    return md_table(["comparison", "RAPID train time s", "GRPO train time s", "train time ratio",
                     "total time ratio (incl. cache init)", "RAPID acc after", "GRPO acc after", "acc diff"], rows)


def render_markdown(report: dict) -> str:
    rows, methods = report["runs"], report["methods"]
    settings = sorted({m["setting"] for m in methods})
    n_failed = sum(r["status"] != "ok" for r in rows)
    out = [f"# Sweep report: `{report['sweep_dir']}`", "",
           f"{len(rows)} runs, {len(rows) - n_failed} ok, {n_failed} failed. Baseline: `{report['baseline']}`. "
           "Means ± sample std over the seeds of the ok runs; definitions at the end.", ""]
    for setting in settings:
        ms = [m for m in methods if m["setting"] == setting]
        out += [f"## Table 1: methods{f' (setting: `{setting}`)' if setting else ''}", "", method_table(ms), ""]
        hosts = hosts_note([r["host"] for r in rows if r["setting"] == setting and r["status"] == "ok"])
        out += [hosts, ""] if hosts else []
        if not any(m["baseline"] for m in ms):
            out += [f"No ok run of the baseline `{report['baseline']}` in this setting: ratios are n/a.", ""]
        worse = worse_lines(ms)
        out += ["Where a method did worse than the baseline:", "", *(worse or ["- nowhere."]), ""]
    if report["rapid"]:
        out += ["## RAPID vs GRPO", "", "Training time (sum of step times) and accuracy after training, per pair "
                "(ratio = RAPID / GRPO).", "", rapid_table(report["rapid"]), ""]
    for setting, analysis in report["curves"].items():
        if setting:
            out += [f"### Setting: `{setting}`", ""]
        out += render_curves(analysis)
    if report["evaluations"]:
        out += ["## Collapse guard: each run's evaluations (rpo-eval)", "", guard_table(report["evaluations"]), ""]
    out += ["## Runs", "", run_table(rows), ""]
    hosts = hosts_note([r["host"] for r in rows])
    out += [hosts, ""] if hosts else []
    notes = [f"- `{r['path']}`: {n}" for r in rows for n in r["notes"]]
    if notes:
        out += ["Notes while reading the runs:", "", *notes, ""]
    out += ["## How this was produced", "",
            f"- Sweep directory: `{report['sweep_dir']}`",
            f"- Report: `{report['report_command']}`",
            f"- Overrides shared by every run: `{' '.join(report['common_overrides']) or '(none)'}`",
            "- Each run's exact training command is in the `command` column above (add `trainer.output_dir=...`).",
            "- Plots: " + ", ".join(f"`{p}`" for p in report["plots"]),
            "", "```", "Definitions" + __doc__.split("Definitions", 1)[1].rstrip(), "```", ""]
    return "\n".join(out)


# =====================================================================================================================
# plots
# =====================================================================================================================
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def _colors(labels: list[str]) -> dict[str, str]:
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if r["step"] >= 1 and r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _mean_over_runs(per_run: list[dict[int, float]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps present in every run, with the mean, min and max over runs."""
    steps = sorted(set.intersection(*(set(d) for d in per_run))) if per_run else []
    vals = [[d[s] for d in per_run] for s in steps]
    return steps, [statistics.fmean(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals]


def _accuracy_time_figure(path: Path, title: str, draw: Callable) -> None:
    """Two panels of held-out accuracy against cumulative step time, without and with RPO's cache init;
    draw(ax, with_init) plots the lines of one panel."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, with_init in zip(axes, (False, True)):
        draw(ax, with_init)
        ax.set_xlabel("cumulative time (s), including RPO cache init" if with_init else "cumulative training time (s)")
        ax.set_title("including cache init" if with_init else "excluding cache init (as the RPO paper)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out greedy accuracy")
    _legend(fig, axes[0])
    fig.suptitle(title)
    _save(fig, path)


def plot_accuracy_vs_time(ok: list[tuple[str, Run]], colors: dict[str, str], path: Path) -> None:
    """One line per run: evaluated accuracy against cumulative step time, without and with RPO's cache init."""
    def draw(ax, with_init: bool) -> None:
        seen = set()
        for label, run in ok:
            curve = accuracy_curve(run.metrics, with_init)
            xs, ys = [t for t, _ in curve], [acc for _, acc in curve]
            ax.plot(xs, ys, marker="o", ms=3, color=colors[label], alpha=0.8, label=None if label in seen else label)
            seen.add(label)

    _accuracy_time_figure(path, "Accuracy vs wall-clock time (one line per run)", draw)


def plot_reward_vs_step(ok: list[tuple[str, Run]], colors: dict[str, str], path: Path) -> None:
    """Mean training reward per step over seeds, band = min..max over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label in colors:
        per_run = [dict(zip(*_series(run.metrics, "reward_mean"))) for lab, run in ok if lab == label]
        steps, mean, lo, hi = _mean_over_runs(per_run)
        ax.plot(steps, mean, color=colors[label], label=f"{label} (n={len(per_run)})")
        ax.fill_between(steps, lo, hi, color=colors[label], alpha=0.15)
    ax.set_xlabel("optimizer step")
    _integer_steps(ax)
    ax.set_ylabel("mean reward of the trained batch")
    ax.set_title("Training reward vs step (mean over seeds, band = min-max)")
    ax.grid(alpha=0.3)
    _legend(fig, ax)
    _save(fig, path)


def plot_tokens_per_step(ok: list[tuple[str, Run]], colors: dict[str, str], path: Path) -> None:
    """Generated tokens per step and cumulated (RPO runs start at their cache-initialization tokens)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in colors:
        runs = [run for lab, run in ok if lab == label]
        per_step, cumulative = [], []
        for run in runs:
            steps = [r for r in run.metrics if r["step"] >= 1]
            step0 = next((r for r in run.metrics if r["step"] == 0), {})
            total = step0.get("cache_init_tokens") or 0
            per_step.append({r["step"]: r.get("rollout_tokens") or 0 for r in steps})
            cum = {0: total}
            for r in steps:
                total += r.get("rollout_tokens") or 0
                cum[r["step"]] = total
            cumulative.append(cum)
        for ax, data in zip(axes, (per_step, cumulative)):
            steps, mean, _, _ = _mean_over_runs(data)
            ax.plot(steps, mean, marker=".", color=colors[label], label=f"{label} (n={len(runs)})")
    axes[0].set_ylabel("generated tokens in the step")
    axes[0].set_title("Generated tokens per step (RAPID: one rollout every H steps)")
    axes[1].set_ylabel("cumulative generated tokens")
    axes[1].set_title("Cumulative generated tokens (RPO: from its cache-init tokens)")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        _integer_steps(ax)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0])
    fig.suptitle("Rollout cost: generated tokens (mean over seeds)")
    _save(fig, path)


def _legend(fig, ax) -> None:
    """One legend under the figure (method labels can be long); a note instead when nothing was drawn."""
    handles, labels = ax.get_legend_handles_labels()
    if not labels:  # say so on the figure rather than leave a silent blank plot
        ax.text(0.5, 0.5, "no completed (ok) runs", ha="center", va="center", transform=ax.transAxes)
        return
    labels = [textwrap.shorten(label, 90, placeholder=" ...") for label in labels]
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(labels)), fontsize=8)


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")  # keeps the legend under the axes
    _pyplot().close(fig)


def plot_accuracy_vs_time_mean(ok: list[tuple[str, Run]], colors: dict[str, str], path: Path) -> None:
    """Per method: mean accuracy at each evaluation against the mean time it was reached, band = min..max over seeds."""
    def draw(ax, with_init: bool) -> None:
        for label in colors:
            curves = [accuracy_curve(run.metrics, with_init) for lab, run in ok if lab == label]
            n = min((len(c) for c in curves), default=0)
            if not n:
                continue
            xs = [statistics.fmean(c[i][0] for c in curves) for i in range(n)]
            accs = [[c[i][1] for c in curves] for i in range(n)]
            ax.plot(xs, [statistics.fmean(a) for a in accs], marker="o", ms=3, color=colors[label],
                    label=f"{label} (n={len(curves)})")
            ax.fill_between(xs, [min(a) for a in accs], [max(a) for a in accs], color=colors[label], alpha=0.15)

    _accuracy_time_figure(path, "Accuracy vs wall-clock time (mean over seeds, band = min-max)", draw)


def plot_accuracy_vs_train_wall(ok: list[tuple[str, Run]], colors: dict[str, str], path: Path) -> None:
    """rpo-eval's greedy and sampled accuracy against train_wall_s: thin lines per run, thick per method mean (mean
    accuracy and mean train_wall_s at the checkpoints every run of the method evaluated)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key in zip(axes, ("greedy_accuracy", "sampled_accuracy")):
        for label in colors:
            runs = [run for lab, run in ok if lab == label and run.evals]
            per_run = [{r["step"]: (r["train_wall_s"], r[key]) for r in run.evals if r.get(key) is not None}
                       for run in runs]
            for pts in filter(None, per_run):
                ax.plot(*zip(*sorted(pts.values())), color=colors[label], alpha=0.3, lw=0.8)
            steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
            if steps:
                xs = [statistics.fmean(p[s][0] for p in per_run) for s in steps]
                ys = [statistics.fmean(p[s][1] for p in per_run) for s in steps]
                ax.plot(xs, ys, marker="o", ms=3, lw=2, color=colors[label], label=f"{label} (n={len(per_run)})")
        ax.set_xlabel("train_wall_s (wall clock without evaluation)")
        ax.set_title(key.replace("_", " ") + (" (pass@1 over k samples)" if key.startswith("sampled") else ""))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy (rpo-eval)")
    _legend(fig, axes[0])
    fig.suptitle("Accuracy vs training wall time (thin: runs, thick: method mean)")
    _save(fig, path)


PLOTS = {"accuracy_vs_time.png": plot_accuracy_vs_time, "accuracy_vs_time_mean.png": plot_accuracy_vs_time_mean,
         "reward_vs_step.png": plot_reward_vs_step, "tokens_per_step.png": plot_tokens_per_step}
EVAL_PLOTS = {"accuracy_vs_train_wall.png": plot_accuracy_vs_train_wall}  # drawn when some run has an eval.jsonl


# =====================================================================================================================
# entry point
# =====================================================================================================================
RUN_RECORD = RUN_FILES + (EVAL_FILE, ".hydra/overrides.yaml")  # what --copy-runs keeps (never checkpoints/caches)


def copy_runs(runs: list[Run], sweep_dir: Path, out_dir: Path) -> None:
    """Each run's exact config, overrides, metrics (and error) into out_dir/runs/<its path under sweep_dir>/, in the
    run's own layout: the copy is itself a sweep directory rpo-report reads with the same labels."""
    for run in runs:
        dest = out_dir / "runs" / run.path.relative_to(sweep_dir)
        for name in RUN_RECORD:
            if (run.path / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run.path / name, dest / name)
            elif (dest / name).is_file():  # left by an earlier copy of this run (e.g. the error of a failed attempt)
                (dest / name).unlink()


def build_report(sweep_dir: Path, out_dir: Path, baseline: str = "grpo", command: str = "",
                 keep_runs: bool = False, targets: tuple[float, ...] = (), wall_time: float | None = None) -> dict:
    """Read every run under sweep_dir, write report.md, report.json and the PNG plots into out_dir (with keep_runs,
    also every run's record: copy_runs). targets and wall_time: see curves.analyze."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist")
    run_dirs = find_run_dirs(sweep_dir)
    if not run_dirs:
        raise FileNotFoundError(f"no run under {sweep_dir} (no config.yaml, metrics.jsonl or error.txt found)")
    runs = [load_run(d) for d in run_dirs]
    rows = run_rows(runs)
    methods = method_rows(rows, baseline)
    command = command or f"rpo-report {shlex.quote(str(sweep_dir))} --baseline {shlex.quote(baseline)}"
    by_path = {str(r.path): r for r in runs}
    ok = [(_plot_label(r, len({m["setting"] for m in methods}) > 1), by_path[r["path"]])
          for r in rows if r["status"] == "ok"]
    plots = {**PLOTS, **(EVAL_PLOTS if any(run.evals for _, run in ok) else {})}
    report = {"sweep_dir": str(sweep_dir), "baseline": baseline, "report_command": command,
              "common_overrides": sorted(common_overrides(runs)),
              "runs": rows, "methods": methods, "rapid": rapid_comparisons(methods),
              "curves": curve_analyses(rows, by_path, baseline, targets, wall_time), "plots": list(plots),
              "evaluations": [{"method": r["method"], "seed": r["seed"], "evals": by_path[r["path"]].evals}
                              for r in rows if by_path[r["path"]].evals]}

    out_dir.mkdir(parents=True, exist_ok=True)
    colors = _colors(list(dict.fromkeys(label for label, _ in ok)))
    for name, plot in plots.items():
        plot(ok, colors, out_dir / name)
    if keep_runs:
        copy_runs(runs, sweep_dir, out_dir)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report))
    return report


def curve_analyses(rows: list[dict], by_path: dict[str, Run], baseline: str, targets: tuple[float, ...] = (),
                   wall_time: float | None = None) -> dict[str, dict]:
    """curves.analyze per setting, over the ok runs of each method."""
    out = {}
    for setting in sorted({r["setting"] for r in rows}):
        methods: dict[str, list[RunCurves]] = {}
        for r in rows:
            if r["setting"] == setting and r["status"] == "ok":
                run = by_path[r["path"]]
                methods.setdefault(r["method"], []).append(run_curves(r["seed"], run.metrics, run.evals))
        out[setting] = analyze(methods, baseline, targets, wall_time)
    return out


def _plot_label(row: dict, several_settings: bool) -> str:
    return f"{row['method']} [{row['setting']}]" if several_settings and row["setting"] else row["method"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rpo-report", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory (or any folder of rpo-train runs)")
    p.add_argument("--out", type=Path, default=None, help="where to write the report (default: SWEEP_DIR)")
    p.add_argument("--baseline", default="grpo", help="method label the ratios divide by (default: grpo)")
    p.add_argument("--copy-runs", action="store_true",
                   help="also copy each run's config.yaml, .hydra/overrides.yaml, metrics.jsonl and eval.jsonl "
                        "into OUT/runs/")
    p.add_argument("--targets", type=float, nargs="+", default=[],
                   help="accuracies for time to target, fixed before the runs (e.g. --targets 0.40 0.45)")
    p.add_argument("--plateau", type=float, default=None,
                   help="the base method's plateau accuracy, fixed before the runs; with --target-fractions")
    p.add_argument("--target-fractions", type=float, nargs="+", default=[],
                   help="targets as fractions of --plateau (e.g. --plateau 0.55 --target-fractions 0.9 0.95)")
    p.add_argument("--wall-time", type=float, default=None,
                   help="the common wall time T (train_wall_s) for accuracy at T and mean accuracy up to T "
                        "(default: per comparison, the end of the shorter method's runs)")
    args = p.parse_args(argv)
    if bool(args.target_fractions) != (args.plateau is not None):
        p.error("--plateau and --target-fractions go together")
    if args.wall_time is not None and args.wall_time <= 0:
        p.error("--wall-time must be > 0 seconds")
    targets = tuple(args.targets) + tuple(round(args.plateau * f, 6) for f in args.target_fractions)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or args.sweep_dir
    command = " ".join(["rpo-report", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    try:
        report = build_report(args.sweep_dir, out, args.baseline, command, keep_runs=args.copy_runs,
                              targets=targets, wall_time=args.wall_time)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    n_failed = sum(r["status"] != "ok" for r in report["runs"])
    for setting, analysis in report["curves"].items():
        print("\n".join(([f"Setting: {setting}", ""] if setting else []) + render_paired(analysis)))
    print(f"{len(report['runs'])} runs ({n_failed} failed) -> {out / 'report.md'}, {out / 'report.json'}, "
          + ", ".join(str(out / name) for name in report["plots"]))


if __name__ == "__main__":
    main()
