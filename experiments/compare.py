"""Side-by-side benchmarks from one invocation: the same model, data, seed and number of samples per method.

    python experiments/compare.py rpo    [overrides...]   # GRPO vs GRPO+RPO (RPO's Tables 2-3: tokens/sample, times)
    python experiments/compare.py rapid  [overrides...]   # GRPO vs RAPID (wall time and accuracy)

Each method is one `rpo-train` job of a Hydra sweep under multirun/compare-<name>/<time>/; the table below is computed
by `rpo-report` from the jobs' metrics.jsonl (the full report.md and plots are written next to them)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESETS = {
    # RPO regenerates only the tail of a cached response: compare generation cost and time per step at equal steps.
    "rpo": ["rpo.enabled=false,true"],
    # RAPID: one inference pass for 4 train batches; GRPO: one per step. Same steps x prompts = same number of samples.
    "rapid": ["algorithm=grpo,rapid"],  # rapid.yaml: 64 prompts per inference pass, H = 64 / 16 = 4
}
COMMON = ["trainer.total_steps=12", "trainer.eval_every=0", "trainer.save_every=0", "trainer.progress=false"]


def run_sweep(name: str, overrides: list[str]) -> Path:
    sweep = ROOT / "multirun" / f"compare-{name}" / time.strftime("%Y-%m-%d_%H-%M-%S")
    cmd = [sys.executable, "-m", "rpo_core.train", "-m", *COMMON, *PRESETS[name], *overrides,
           f"hydra.sweep.dir={sweep}"]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return sweep


def print_table(report: dict) -> None:
    cols = [("method", "method", "{}"), ("acc_before", "acc before", "{:.3f}"), ("acc_after", "acc after", "{:.3f}"),
            ("tokens_per_sample", "gen tok/sample", "{:.1f}"), ("rollout_s_per_step", "rollout s/step", "{:.2f}"),
            ("train_s_per_step", "total s/step", "{:.2f}"), ("train_time_s", "train time s", "{:.1f}"),
            ("cache_init_s", "cache init s", "{:.1f}")]
    rows = []
    for r in report["runs"]:
        r = dict(r, train_s_per_step=(r["train_time_s"] / r["steps"]) if r.get("train_time_s") and r.get("steps") else None)
        rows.append([("-" if r.get(k) is None else f.format(r[k])) for k, _, f in cols])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, (_, h, _) in enumerate(cols)]
    print("  ".join(h.ljust(w) for (_, h, _), w in zip(cols, widths)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    ok = [r for r in report["runs"] if r["status"] == "ok"]
    if len(ok) == 2:
        base, other = ok
        for key, label in (("tokens_per_sample", "generated tokens per sample"), ("rollout_s_per_step", "rollout time per step"),
                           ("train_time_s", "training time (excl. cache init)"), ("total_time_s", "training time incl. cache init")):
            if base.get(key) and other.get(key) is not None:
                print(f"{other['method']} / {base['method']} {label}: {other[key] / base[key]:.3f}x")
        print(f"accuracy after, {other['method']} - {base['method']}: {other['acc_after'] - base['acc_after']:+.3f}")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in PRESETS:
        sys.exit(f"usage: python experiments/compare.py {{{'|'.join(PRESETS)}}} [hydra overrides...]")
    name, overrides = sys.argv[1], sys.argv[2:]
    sweep = run_sweep(name, overrides)
    from experiments.report import build_report

    build_report(sweep, sweep, baseline="grpo", command=" ".join(sys.argv))
    print(f"\n{name}: {sweep}")
    print_table(json.loads((sweep / "report.json").read_text()))


if __name__ == "__main__":
    main()
