"""Rollout and learner throughput of the default model as a share of this machine's matmul peak, before and after the
throughput levers, measured side by side in one run.

    python experiments/bench_throughput.py                    # SmolLM2-135M, 8 prompts x 8 samples, both lengths
    python experiments/bench_throughput.py --prompts 4 --lengths arithmetic
    python experiments/bench_throughput.py --rollouts --learners fp32/chunk fp32/chunk/tokens   # a subset
    python experiments/bench_throughput.py --rollouts --learners fp32/chunk rpo:fp32/chunk/shared --learner-steps 3

Every measurement runs in a fresh child process (vLLM reads its thread settings when its engine starts; peak memory
is per process), one after the other so they never share the cores. Settings compared:

  rollout  fp32/reserve1  the old defaults: fp32 engine, vLLM-CPU keeps one core for its scheduler
           fp32/reserve0  rollout.cpu_reserved_cores=0: the model's threads on every core
           */block32      rollout.block_size=32 instead of vLLM-CPU's 128: the G samples of a prompt share its KV blocks
           bf16/*         rollout.dtype=bfloat16 as well (the mismatch to an fp32 learner is printed)
           hf             transformers generate (fp32), for the vLLM / HF ratio
           */compiled     rollout.enforce_eager=false: vLLM compiles the model (engine start-up time printed)
           */unseeded     rollout.per_request_seed=false: one RNG stream instead of a generator per request
  learner  fp32/full      fp32, the [N, T, vocab] logits at once (learner.logprob_chunk=0)
           fp32/chunk     learner.logprob_chunk=64
           bf16/chunk     learner.dtype=bfloat16 as well
           */shared       learner.shared_prefix=true: each group's shared tokens forwarded once (full/shared: the
                          output layer over all response tokens at once, no recompute in the backward)
           */shared/kv    learner.shared_prefix_mode=kv_cache: the shared tokens' cached keys/values, not packed rows
           */ckpt         learner.gradient_checkpointing=true: the decoder layers' activations recomputed in the backward
           */tokens       learner.micro_batch_tokens (--micro-batch-tokens, 4096): groups sorted by length, cut at that
                          many decoder input tokens (rows x width; shared: groups x the longest packed row)
           rpo:*          the same rollouts shaped as RPO trains on them (80% of a response kept as the shared prefix)

"x old" is each setting's tokens/s over the first setting run in its table (fp32/reserve1; fp32/full by default).
FLOPs are counted as 2 x parameters per generated token (rollout) and 6 x parameters per trained token (learner:
forward and backward; attention's share is small at these lengths), and divided by the fp32 / bf16 GEMM peak measured
here at the start. Learner tokens are every prompt and response token of the batch, so tokens/s is the work done per
second whether or not shared tokens are forwarded once; the per-micro-batch trimming of padding is always on. A learner
setting's time is its first step's (Adam allocates its state in it), or with --learner-steps N > 1 the mean of steps
2..N on the same batch; its peak memory covers every step."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LENGTHS = {"arithmetic": ["data=arithmetic"], "gsm8k": ["data=gsm8k", "data.max_new_tokens=128"]}
ROLLOUTS = {"fp32/reserve1": {"dtype": "float32", "reserved": None, "block": None},
            "fp32/reserve0": {"dtype": "float32", "reserved": 0, "block": None},
            "fp32/reserve0/block32": {"dtype": "float32", "reserved": 0, "block": 32},
            "bf16/reserve0/block32": {"dtype": "bfloat16", "reserved": 0, "block": 32},
            "hf": {"dtype": "float32", "engine": "hf"},
            "fp32/reserve0/block32/compiled": {"dtype": "float32", "reserved": 0, "block": 32, "eager": False},
            "fp32/reserve0/block32/unseeded": {"dtype": "float32", "reserved": 0, "block": 32, "seeded": False}}
LEARNERS = {"fp32/full": {"dtype": "float32", "chunk": 0}, "fp32/chunk": {"dtype": "float32", "chunk": 64},
            "bf16/chunk": {"dtype": "bfloat16", "chunk": 64},
            "fp32/chunk/shared": {"dtype": "float32", "chunk": 64, "shared": True},
            "fp32/full/shared": {"dtype": "float32", "chunk": 0, "shared": True},
            "bf16/chunk/shared": {"dtype": "bfloat16", "chunk": 64, "shared": True},
            "fp32/chunk/tokens": {"dtype": "float32", "chunk": 64, "tokens": True},
            "fp32/chunk/shared/tokens": {"dtype": "float32", "chunk": 64, "shared": True, "tokens": True},
            "fp32/chunk/shared/kv": {"dtype": "float32", "chunk": 64, "shared": True, "mode": "kv_cache"},
            "fp32/chunk/shared/ckpt": {"dtype": "float32", "chunk": 64, "shared": True, "ckpt": True}}
LEARNERS.update({f"rpo:{n}": {**LEARNERS[n], "rpo": True} for n in ("fp32/chunk", "fp32/chunk/shared", "fp32/full/shared",
                                                                  "bf16/chunk/shared", "fp32/chunk/shared/tokens",
                                                                  "fp32/chunk/shared/kv")})
RPO_KEEP = 0.8  # the RPO-shaped batch: every sample of a group keeps the first 80% of one response (L ~ 20%)


def gemm_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
    """FLOP/s of an n x n matmul on every core, in `dtype`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def compose(overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides))


# ------------------------------------------------------------------------------------------- child processes
def rollout_child(overrides: list[str], setting: dict, n_prompts: int, out: Path) -> None:
    from experiments.bench_rollout import rollout_requests
    from rollout import build_engine
    from rpo_core.common.types import RolloutBatch, Sample

    reserved = "null" if setting.get("reserved") is None else setting["reserved"]  # null: vLLM's own default
    block = "null" if setting.get("block") is None else setting["block"]  # null: vLLM's own default (128 on CPU)
    vllm_only = [f"rollout.enforce_eager={str(setting.get('eager', True)).lower()}", f"rollout.block_size={block}",
                 f"rollout.per_request_seed={str(setting.get('seeded', True)).lower()}"]
    cfg = compose([*overrides, f"rollout={setting.get('engine', 'vllm')}", f"rollout.dtype={setting['dtype']}",
                   f"rollout.cpu_reserved_cores={reserved}", *([] if setting.get("engine") == "hf" else vllm_only)])
    path, problems, requests = rollout_requests(cfg, n_prompts)
    G = cfg.rollout.group_size
    start = time.perf_counter()
    engine = build_engine(cfg.rollout, path, cfg.seed)
    engine.generate(requests[:1], 1.0)  # warm-up
    startup = time.perf_counter() - start
    start = time.perf_counter()
    groups = engine.generate(requests, 1.0)
    seconds = time.perf_counter() - start
    samples = [Sample(uid=p.uid, prompt_ids=list(p.prompt_ids), response_ids=g.token_ids, behavior_logprobs=g.logprobs)
               for p, group in zip(problems, groups) for g in group]
    torch.save(RolloutBatch(samples, G, rewards=[float(i % 2) for i in range(len(samples))]), out.with_suffix(".pt"))
    tokens = sum(len(s.response_ids) for s in samples)
    out.write_text(json.dumps({"tokens": tokens, "seconds": seconds, "startup": startup, "params": _params(path)}))
    engine.close()
    os._exit(0)  # vLLM's engine process goes with us (no slow interpreter teardown)


def learner_child(overrides: list[str], setting: dict, batch_file: Path, out: Path) -> None:
    from rpo_core.distributed import configure_environment, init_distributed

    cfg = compose([*overrides, f"learner.dtype={setting['dtype']}", f"learner.logprob_chunk={setting['chunk']}",
                   f"learner.shared_prefix={str(setting.get('shared', False)).lower()}",
                   f"learner.shared_prefix_mode={setting.get('mode', 'packed')}",
                   f"learner.micro_batch_tokens={setting.get('tokens', 0)}",
                   f"learner.gradient_checkpointing={str(setting.get('ckpt', False)).lower()}"])
    configure_environment("cpu")
    init_distributed("gloo")
    from algorithms import build_algorithm
    from rpo_core.common.batching import to_train_batch
    from rpo_core.learner import DeepSpeedLearner
    from rpo_core.metrics import peak_memory_gb, reset_peak_memory
    from rpo_core.models import prepare_model

    path = prepare_model(cfg.model)
    batch = torch.load(batch_file, weights_only=False)
    if setting.get("rpo"):
        batch = rpo_shaped(batch)
    learner = DeepSpeedLearner(path, cfg.learner, cfg.learner.optim, 1.0)
    algorithm = build_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens)
    tb = algorithm.prepare(to_train_batch(batch, 0, step=1))
    reset_peak_memory()
    results, seconds = [], []
    for _ in range(setting["steps"]):  # the same batch again: later steps run with Adam's state already allocated
        start = time.perf_counter()
        results.append(learner.train_step(tb, algorithm.loss, algorithm.token_level))
        seconds.append(time.perf_counter() - start)
    fresh = tb.response_mask  # the first step's logprobs are the weights the rollout sampled from
    mismatch = float(((results[0].logprobs - tb.behavior_logp).abs() * fresh).sum() / fresh.sum())
    tokens = int(tb.attention_mask.sum())  # prompt + response tokens forwarded and back-propagated
    out.write_text(json.dumps({"tokens": tokens, "seconds": statistics.fmean(seconds[1:] or seconds),
                               "peak_gb": peak_memory_gb(),
                               "mismatch": mismatch, "params": _params(path)}))


def rpo_shaped(batch):
    """The same rollouts as RPO would train on them: each group's samples share the first RPO_KEEP of the group's
    first response (the kept prefix) and continue with their own tokens for the rest of that length."""
    from rpo_core.common.types import Sample

    G, samples = batch.group_size, []
    for g in range(0, len(batch.samples), G):
        cached = batch.samples[g].response_ids
        keep = int(RPO_KEEP * len(cached))
        for s in batch.samples[g : g + G]:
            response = cached[:keep] + s.response_ids[: max(1, len(cached) - keep)]
            samples.append(Sample(uid=s.uid, prompt_ids=s.prompt_ids, response_ids=response, prefix_len=keep,
                                  behavior_logprobs=[0.0] * len(response)))
    return type(batch)(samples, G, rewards=batch.rewards)


def _params(path: str) -> int:
    from rollout.vllm_engine import checkpoint_shapes

    return sum(int(torch.tensor(shape).prod()) for name, shape in checkpoint_shapes(path).items())


def run_child(kind: str, *args: str) -> dict:
    out = Path(args[-1])
    cmd = [sys.executable, __file__, "--child", kind, *args]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------------- report
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--lengths", nargs="+", default=list(LENGTHS), choices=list(LENGTHS))
    ap.add_argument("--rollouts", nargs="*", default=list(ROLLOUTS), choices=list(ROLLOUTS),
                    help="rollout settings to run (fp32/reserve1 always runs: the learners train on its rollouts)")
    ap.add_argument("--learners", nargs="*", default=list(LEARNERS), choices=list(LEARNERS))
    ap.add_argument("--learner-steps", type=int, default=1,
                    help="steps per learner setting on the same batch; > 1: time the mean of the steps after the first")
    ap.add_argument("--micro-batch-tokens", type=int, default=4096,
                    help="learner.micro_batch_tokens of the */tokens settings")
    ap.add_argument("--work", default="/tmp/rpo-bench-throughput")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "rollout":
            rollout_child(json.loads(rest[0]), json.loads(rest[1]), int(rest[2]), Path(rest[3]))
        else:
            learner_child(json.loads(rest[0]), json.loads(rest[1]), Path(rest[2]), Path(rest[3]))
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    peak = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    print(f"GEMM peak on {torch.get_num_threads()} threads: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s")
    for length in args.lengths:
        overrides = ["model=smollm2_135m", *LENGTHS[length], "rollout.group_size=8"]
        print(f"\n== {length}: {args.prompts} prompts x 8 samples, up to {compose(overrides).rollout.max_new_tokens} "
              f"new tokens")
        print(f"{'rollout':22} {'tokens':>7} {'s':>7} {'tok/s':>8} {'x old':>6} {'% peak':>7} {'start-up s':>10}")
        rollouts = {}
        for name, setting in ROLLOUTS.items():
            if name != "fp32/reserve1" and name not in args.rollouts:
                continue
            r = run_child("rollout", json.dumps(overrides), json.dumps(setting), str(args.prompts),
                          str(work / f"{length}-{name.replace('/', '_')}.json"))
            r["tps"] = r["tokens"] / r["seconds"]
            rollouts[name] = r
            share = 2 * r["params"] * r["tps"] / peak["bf16" if setting["dtype"] == "bfloat16" else "fp32"]
            print(f"{name:22} {r['tokens']:7d} {r['seconds']:7.1f} {r['tps']:8.1f} "
                  f"{r['tps'] / rollouts['fp32/reserve1']['tps']:6.2f} {100 * share:6.1f}% {r['startup']:10.1f}")
        if "hf" in rollouts:
            print(f"vLLM (old defaults) / HF generate: {rollouts['fp32/reserve1']['tps'] / rollouts['hf']['tps']:.2f}x; "
                  f"vLLM (best) / HF: {max(r['tps'] for n, r in rollouts.items() if n != 'hf') / rollouts['hf']['tps']:.2f}x")
        batch = work / f"{length}-fp32_reserve1.pt"  # the same fp32-engine rollouts for every learner setting
        print(f"{'learner':22} {'tokens':>7} {'s':>7} {'tok/s':>8} {'x old':>6} {'% peak':>7} {'peak GB':>8} {'mismatch':>9}")
        learners = {}
        for name in args.learners:
            setting = LEARNERS[name]
            tokens = args.micro_batch_tokens if "tokens" in setting else 0
            child = {**setting, "steps": args.learner_steps, "tokens": tokens}
            r = run_child("learner", json.dumps(overrides), json.dumps(child), str(batch),
                          str(work / f"{length}-learner-{name.replace('/', '_').replace(':', '_')}.json"))
            r["tps"] = r["tokens"] / r["seconds"]
            learners[name] = r
            share = 6 * r["params"] * r["tps"] / peak["bf16" if setting["dtype"] == "bfloat16" else "fp32"]
            print(f"{name:22} {r['tokens']:7d} {r['seconds']:7.1f} {r['tps']:8.1f} "
                  f"{r['tps'] / next(iter(learners.values()))['tps']:6.2f} {100 * share:6.1f}% {r['peak_gb']:8.2f} "
                  f"{r['mismatch']:9.4f}")
        if learners:  # what no batching can save: fp32 weights, gradients and Adam's two moments, 16 bytes a parameter
            print(f"fp32 weights + gradients + Adam moments alone: {16 * r['params'] / 1e9:.2f} GB")
        rpo = {name: r for name, r in learners.items() if name.startswith("rpo:")}
        if "fp32/chunk" in learners and rpo:
            print("learner time per step, RPO-shaped batch vs the GRPO batch (fp32/chunk): " + ", ".join(
                f"{name[4:]} {r['seconds'] / learners['fp32/chunk']['seconds']:.2f}x" for name, r in rpo.items()))


if __name__ == "__main__":
    main()
