"""The shared-prefix learner on long responses, where the RPO paper works (1-3k-token responses, L = 300 regenerated):
learner step time and peak memory of the default model, plain and in both shared-prefix forms, side by side in one run.

    python experiments/bench_long_prefix.py                               # responses of 1200 tokens, 1 group of 8
    python experiments/bench_long_prefix.py --response-tokens 600 2400 --groups 2

Token ids are random: the arithmetic does not depend on them. Every group has a 100-token prompt and 8 responses of
R tokens: all different in the GRPO-shaped batch; in the RPO-shaped one sharing their first R - L tokens (the kept
prefix of one cached response) and with L tokens of their own. Settings, each a fresh child process running
bench_throughput's learner step (fp32, logprob_chunk 64, micro_batch_size 2: whole groups when shared):

  grpo:plain     the GRPO-shaped batch, learner.shared_prefix=false ("x grpo" divides by its time)
  rpo:plain      the RPO-shaped batch, learner.shared_prefix=false
  rpo:packed     learner.shared_prefix=true, shared_prefix_mode=packed: one row per group, dense [L, L] block mask
  rpo:kv_cache   learner.shared_prefix=true, shared_prefix_mode=kv_cache: shared tokens once, suffixes on their cache"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.bench_throughput import run_child  # noqa: E402
from rpo_core.common.types import RolloutBatch, Sample  # noqa: E402

SETTINGS = {"grpo:plain": {"shared": False}, "rpo:plain": {"shared": False},
            "rpo:packed": {"shared": True, "mode": "packed"}, "rpo:kv_cache": {"shared": True, "mode": "kv_cache"}}
PROMPT_TOKENS, G = 100, 8


def synthetic_batch(groups: int, response_tokens: int, regenerated: int, rpo: bool, seed: int = 0) -> RolloutBatch:
    """`groups` prompts x G responses of `response_tokens` random tokens; rpo: the first response_tokens - regenerated
    of them shared within a group, as RPO's cached prefix (prefix_len set)."""
    g = torch.Generator().manual_seed(seed)
    tokens = lambda n: torch.randint(0, 49_000, (n,), generator=g).tolist()  # noqa: E731
    keep = response_tokens - regenerated if rpo else 0
    samples = []
    for q in range(groups):
        prompt, prefix = tokens(PROMPT_TOKENS), tokens(keep)
        for _ in range(G):
            response = prefix + tokens(response_tokens - keep)
            samples.append(Sample(uid=str(q), prompt_ids=prompt, response_ids=response, prefix_len=keep,
                                  behavior_logprobs=[0.0] * len(response)))
    return RolloutBatch(samples, G, rewards=[1.0, 0.0] * (groups * G // 2))  # mixed rewards: no group is inert


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--response-tokens", type=int, nargs="+", default=[1200], help="R, tokens per response")
    ap.add_argument("--regenerated", type=int, default=300, help="L, tokens an RPO sample generates (paper: 300)")
    ap.add_argument("--groups", type=int, default=1, help="prompts (x 8 samples) per batch")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--work", default="/tmp/rpo-bench-long-prefix")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    overrides = ["model=smollm2_135m", "learner.micro_batch_size=2"]
    print(f"SmolLM2-135M learner step, fp32, {args.groups} x {G} samples, {PROMPT_TOKENS}-token prompts, "
          f"L = {args.regenerated}; {torch.get_num_threads()} threads")
    for R in args.response_tokens:
        print(f"\n== responses of {R} tokens (RPO: {R - args.regenerated} kept)")
        print(f"{'setting':14} {'s':>7} {'x grpo':>7} {'peak GB':>8}")
        batch_files = {shape: work / f"batch-{R}-{shape}.pt" for shape in ("grpo", "rpo")}
        for shape, path in batch_files.items():
            torch.save(synthetic_batch(args.groups, R, args.regenerated, rpo=shape == "rpo"), path)
        times = {}
        for name in args.settings:
            batch_file = batch_files[name.split(":")[0]]
            setting = {"dtype": "float32", "chunk": 64, "steps": 1, **SETTINGS[name]}
            r = run_child("learner", json.dumps(overrides), json.dumps(setting), str(batch_file),
                          str(work / f"{R}-{name.replace(':', '_')}.json"))
            times[name] = r["seconds"]
            ratio = f"{r['seconds'] / times['grpo:plain']:7.2f}" if "grpo:plain" in times else f"{'':>7}"
            print(f"{name:14} {r['seconds']:7.1f} {ratio} {r['peak_gb']:8.2f}", flush=True)


if __name__ == "__main__":
    main()
