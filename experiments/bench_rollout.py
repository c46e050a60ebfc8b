"""Rollout throughput of vLLM vs transformers `generate` on the same model and prompts, and where a step's time goes.

    python experiments/bench_rollout.py                       # SmolLM2-135M on the default task
    python experiments/bench_rollout.py model=tiny --prompts 8
    python experiments/bench_rollout.py data=gsm8k data.max_new_tokens=128 --prompts 8 --profile 20

Part 1 times both engines on identical token-id prompts (after one warm-up call each) and prints tokens/s and their
ratio. Part 2 runs a short real training run (`rpo-train`, a subprocess) and prints each phase's share of step time.
--profile N instead runs one vLLM rollout of the configured engine in this process under torch's profiler and prints
the N ops with the most CPU time, and how much of the wall time passed outside any op (vLLM's own Python).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def compose(overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides))


def time_engine(engine, requests, temperature: float) -> tuple[float, int]:
    engine.generate(requests[:2], temperature)  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    groups = engine.generate(requests, temperature)
    seconds = time.perf_counter() - start
    return seconds, sum(len(g.token_ids) for group in groups for g in group)


def rollout_requests(cfg, n_prompts: int):
    """(model folder, problems, one seeded request of G samples per problem) for the first n training prompts, in a
    process set up the way rpo-train sets itself up."""
    from rpo_core.distributed import configure_environment, init_distributed

    configure_environment("cpu")
    init_distributed("gloo")
    from transformers import AutoTokenizer

    from rollout.base import GenerationRequest
    from rpo_core.data import load_problems
    from rpo_core.models import prepare_model

    path = prepare_model(cfg.model)
    problems = load_problems(cfg.data, AutoTokenizer.from_pretrained(path)).train[:n_prompts]
    G, budget = cfg.rollout.group_size, cfg.rollout.max_new_tokens
    return path, problems, [GenerationRequest(list(p.prompt_ids), G, budget, seed=i) for i, p in enumerate(problems)]


def throughput(cfg, n_prompts: int) -> None:
    from rollout import build_engine

    path, problems, requests = rollout_requests(cfg, n_prompts)
    G, budget = cfg.rollout.group_size, cfg.rollout.max_new_tokens
    rows = []
    for name in ("vllm", "hf"):
        engine_cfg = compose([f"model={cfg.model.name}", f"rollout={name}"]).rollout
        engine = build_engine(engine_cfg, path, cfg.seed)
        seconds, tokens = time_engine(engine, requests, cfg.rollout.temperature)
        rows.append((name, tokens, seconds, tokens / seconds))
        del engine
    print(f"\nrollout throughput: {cfg.model.name}, {n_prompts} prompts x {G} samples, up to {budget} new tokens")
    print(f"{'engine':8} {'tokens':>8} {'seconds':>8} {'tokens/s':>10}")
    for name, tokens, seconds, tps in rows:
        print(f"{name:8} {tokens:8d} {seconds:8.2f} {tps:10.1f}")
    print(f"vllm / hf throughput ratio: {rows[0][3] / rows[1][3]:.2f}x")


def op_profile(overrides, n_prompts: int, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    from rollout import build_engine

    cfg = compose([*overrides, "rollout.engine_process=inproc"])  # the model's ops then run in this process
    path, _, requests = rollout_requests(cfg, n_prompts)
    engine = build_engine(cfg.rollout, path, cfg.seed)
    engine.generate(requests[:2], cfg.rollout.temperature)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        groups = engine.generate(requests, cfg.rollout.temperature)
        seconds = time.perf_counter() - start
    tokens = sum(len(g.token_ids) for group in groups for g in group)
    ops = prof.key_averages()
    print(ops.table(sort_by="self_cpu_time_total", row_limit=rows))
    in_ops = sum(e.self_cpu_time_total for e in ops) / 1e6
    print(f"{tokens} tokens in {seconds:.1f} s ({tokens / seconds:.1f} tokens/s, profiled); in ops {in_ops:.1f} s, "
          f"outside them {seconds - in_ops:.1f} s")


def phase_shares(overrides, steps: int) -> None:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "rpo_core.train", *overrides, f"trainer.total_steps={steps}",
               "trainer.eval_every=0", "trainer.eval_size=16", "trainer.progress=false", f"trainer.output_dir={out}"]
        subprocess.run(cmd, check=True, cwd=ROOT)
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steps_ = [r for r in records if r["step"] > 1]  # step 1 pays one-off warm-ups
    total = sum(r["time_step"] for r in steps_)
    phases = sorted({k for r in steps_ for k in r if k.startswith("time_") and k != "time_step"})
    print(f"\nshare of step time over steps 2..{steps} ({total / len(steps_):.2f} s/step):")
    for k in phases:
        share = sum(r.get(k) or 0.0 for r in steps_) / total
        print(f"  {k[5:]:10} {100 * share:5.1f}%")
    other = 1 - sum(sum(r.get(k) or 0.0 for r in steps_) for k in phases) / total
    print(f"  {'other':10} {100 * other:5.1f}%  (batching, logging, bookkeeping)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=tiny")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="training steps for the phase breakdown (0 = skip)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="only profile vLLM's ops, print the top N")
    args = ap.parse_args()
    if args.profile:
        op_profile(args.overrides, args.prompts, args.profile)
        return
    cfg = compose(args.overrides)
    throughput(cfg, args.prompts)
    if args.steps:
        phase_shares(args.overrides, args.steps)


if __name__ == "__main__":
    main()
