"""The GPU path checked as a whole in one call (GitHub issue 31); experiments/gpu_check.sh sets up and runs it.

  1. the device, and its bf16 matmul peak measured in the same call;
  2. `pytest -m gpu` (tests/test_gpu.py: a learner step on the device against the CPU step);
  3. three steps of GRPO and of GRPO+RPO through rpo-train on a randomly initialised model with SmolLM2-135M's
     architecture (rollout=hf, every response forced to the token budget with rollout.ignore_eos so times compare),
     then a resume of the RPO run from its checkpoint for one more step;
  4. steps on Qwen2.5-0.5B's architecture (its published config; the SmolLM2 tokenizer, whose ids it covers);
then one table of per-phase times, tokens/s, their share of the measured bf16 peak and peak GPU memory, on stdout and
in <out>/gpu_check.txt. --device cpu is the dry run (smaller batches, the 0.5B model cut to 2 layers, one step).

Share of peak: the rollout's 2 N FLOPs per generated token and the learner's 6 N per trained (prompt + response) token,
N the parameters (tied embeddings once: they are the output layer's matmul), over the phase's time and the peak.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# Qwen2.5-0.5B's published config.json (architecture only; no weights are needed)
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, rope_theta=1000000.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--out", type=Path, required=True, help="the table, logs and each run's metrics.jsonl")
    ap.add_argument("--work", type=Path, default=Path("/tmp/rpo-gpu-check"), help="model folders and run outputs")
    ap.add_argument("--assets", type=Path, default=ROOT / ".cache/gpu_carry/smollm2_135m",
                    help="SmolLM2-135M's config.json and tokenizer (experiments/build_gpu_wheels.sh)")
    ap.add_argument("--run-timeout", type=int, default=None, help="seconds for each child (default: 180 cuda, 600 cpu)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    cpu = args.device == "cpu"
    args.run_timeout = args.run_timeout or (600 if cpu else 180)
    lines = [environment(args.device)]
    peak = matmul_peak(args.device)
    lines.append(f"bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s (measured: {'2048' if cpu else '8192'}^3, this call)")
    lines += gpu_tests(args)
    report("\n".join(lines), args.out)  # what is known so far survives a later timeout

    # the dry run: both architectures cut to 2 layers, a small batch, short responses
    layers = {"num_hidden_layers": 2} if cpu else {}
    smol, smol_n = build_model(args.work / "smollm2_135m_arch", args.assets, args.device, None, layers)
    qwen, qwen_n = build_model(args.work / "qwen2.5_0.5b_arch", args.assets, args.device, QWEN25_05B, layers)
    shape = (["algorithm.train_batch_size=2", "rollout.group_size=4", "data.max_new_tokens=16", "rpo.max_truncate=8",
              "data.n_train=16", "trainer.eval_size=4"]
             if cpu else ["algorithm.train_batch_size=16", "rollout.group_size=8", "data.max_new_tokens=128",
                          "rpo.max_truncate=64", "data.n_train=64", "trainer.eval_size=8"])
    common = [f"device={args.device}", f"learner.backend={'gloo' if cpu else 'nccl'}", "rollout=hf",
              "rollout.ignore_eos=true", "rollout.dtype=bfloat16", "learner.dtype=bfloat16", "learner.micro_batch_size=32",
              "learner.skip_inert_groups=false",  # a random model's groups all score 0: train on them anyway, for time
              "trainer.eval_every=0", "trainer.progress=false",
              "cache.init_progress=false", "model=path", *shape]
    arch = " (2 layers)" if cpu else ""
    runs = [(f"GRPO 135M-arch{arch} ZeRO-2", "grpo", smol, smol_n, ["learner.zero_stage=2", "trainer.total_steps=3"]),
            (f"GRPO+RPO 135M-arch{arch} ZeRO-2", "rpo", smol, smol_n, ["learner.zero_stage=2", "trainer.total_steps=3",
                                                             "rpo.enabled=true"]),
            ("  resumed at 3 -> 4", "rpo", smol, smol_n, ["learner.zero_stage=2", "trainer.total_steps=4",
                                                          "rpo.enabled=true", "trainer.resume=auto"]),
            (f"GRPO 0.5B-arch{arch} ZeRO-0", "qwen", qwen, qwen_n,
             ["learner.zero_stage=0", f"trainer.total_steps={1 if cpu else 2}"])]
    header = (f"{'run':36} {'steps':>5} {'rollout s':>9} {'train s':>8} {'sync s':>7} {'step s':>7} {'gen tok/s':>10} "
              f"{'train tok/s':>11} {'gen %pk':>7} {'train %pk':>9} {'GPU GiB':>7}  status")
    rows = []
    for label, folder, model, n_params, overrides in runs:
        out_dir = args.work / "runs" / folder
        record = train_run(args, label, [*common, f"model.path={model}", f"trainer.output_dir={out_dir}", *overrides])
        rows.append(table_row(label, record, out_dir, n_params, peak))
        (args.out / "runs").mkdir(exist_ok=True)
        if (out_dir / "metrics.jsonl").exists():
            (args.out / "runs" / f"{folder}.metrics.jsonl").write_text((out_dir / "metrics.jsonl").read_text())
        report("\n".join([*lines, "", header, *rows]), args.out)
    notes = ["times: mean of the steps after the first (the first includes warm-up); one step: that step",
             f"N: 135M-arch{arch} {smol_n / 1e6:.0f}M, 0.5B-arch{arch} {qwen_n / 1e6:.0f}M parameters; "
             f"responses forced to the budget (rollout.ignore_eos)"]
    report("\n".join([*lines, "", header, *rows, *notes]), args.out)


def report(text: str, out: Path) -> None:
    (out / "gpu_check.txt").write_text(text + "\n")


def environment(device: str) -> str:
    import transformers

    try:
        import deepspeed
        ds = deepspeed.__version__
    except ImportError as e:
        ds = f"missing ({e})"
    where = (f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
             if device == "cuda" else platform.processor() or platform.machine())
    return (f"GPU check (issue 31) on {device}: {where}; python {platform.python_version()}, torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}), transformers {transformers.__version__}, deepspeed {ds}")


def matmul_peak(device: str) -> float:
    """bf16 FLOP/s of a square matmul, best of a few timed rounds after warm-up."""
    n, reps = (2048, 3) if device == "cpu" else (8192, 50)
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    best = float("inf")
    for _ in range(4):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * reps / best


def gpu_tests(args) -> list[str]:
    """pytest -m gpu in a child process: its summary line and the per-setting error lines the tests print."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-rs", "-m", "gpu", "tests/test_gpu.py"]
    t = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.run_timeout)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        output, code = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    (args.out / "logs" / "pytest_gpu.log").write_text(output)
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    steps = [line.strip() for line in output.splitlines() if line.strip().startswith("gpu-step")]
    skips = sorted({line.split(": ", 1)[-1] for line in output.splitlines() if line.startswith("SKIPPED")})
    return [f"pytest -m gpu (exit {code}, {time.perf_counter() - t:.0f} s): {summary[-1] if summary else 'no summary'}"
            + (f"; skipped: {'; '.join(skips)}" if skips else ""), *[f"  {s}" for s in steps]]


def build_model(folder: Path, assets: Path, device: str, qwen2: dict | None, overrides: dict) -> tuple[Path, int]:
    """A seeded random model with the assets' architecture (or Qwen2's with the `qwen2` config) and the assets'
    tokenizer; `overrides` change config fields (the dry run's layer count). Returns (folder, parameter count)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(assets)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = AutoConfig.from_pretrained(assets, **overrides) if qwen2 is None else Qwen2Config(**{**qwen2, **overrides}, **ids)
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds instead of a minute for 0.5B
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if qwen2 else torch.float32)
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())  # tied embeddings once
    del model
    return folder, n_params


def train_run(args, label: str, overrides: list[str]) -> dict:
    """One rpo-train in a child process (this module's --child), which also records its peak GPU memory."""
    name = re.sub(r"\W+", "_", label.strip()).strip("_")
    result = args.work / f"{name}.result.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "experiments.gpu_check", "--child", str(result), *overrides]
    t = time.perf_counter()
    with open(args.out / "logs" / f"{name}.log", "w") as log:
        try:
            code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=args.run_timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    record = json.loads(result.read_text()) if result.exists() else {}
    record.update(exit=code, seconds=time.perf_counter() - t)
    print(f"{label}: exit {code} in {record['seconds']:.0f} s", flush=True)
    return record


def child(result: Path, overrides: list[str]) -> None:
    from rpo_core import train

    sys.argv = ["rpo-train", *overrides]
    try:
        train.main()
    finally:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        result.write_text(json.dumps({"peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}))


def table_row(label: str, record: dict, out_dir: Path, n_params: int, peak: float) -> str:
    path = out_dir / "metrics.jsonl"
    steps = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    steps = [s for s in steps if s.get("step", 0) > 0]
    status = "ok" if record.get("exit") == 0 else f"FAILED (exit {record.get('exit')}, see logs/)"
    if "resume" in label:  # the steps this run added, and where train.log says it resumed
        resumed = re.findall(r"resumed from \S+ at step (\d+)", (out_dir / "train.log").read_text())
        steps = [s for s in steps if resumed and s["step"] > int(resumed[-1])]
        status += f"; resumed at step {resumed[-1]}" if resumed else "; FAILED: did not resume"
    if not steps:
        return f"{label:36} {'-':>5} {'':>9} {'':>8} {'':>7} {'':>7} {'':>10} {'':>11} {'':>7} {'':>9} {'':>7}  {status}"
    steady = steps[1:] or steps

    def mean(key):
        values = [s[key] for s in steady if s.get(key) is not None]
        return sum(values) / len(values) if values else None

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    gen, trained = mean("rollout_tokens_per_s"), mean("train_tokens_per_s")
    gen_share = gen * 2 * n_params / peak if gen else None
    train_share = trained * 6 * n_params / peak if trained else None
    gpu = record.get("peak_gpu_gb")
    return (f"{label:36} {','.join(str(s['step']) for s in steps):>5} {fmt(mean('time_rollout'), '.2f'):>9} "
            f"{fmt(mean('time_train'), '.2f'):>8} {fmt(mean('time_sync'), '.2f'):>7} {fmt(mean('time_step'), '.2f'):>7} "
            f"{fmt(gen, '.0f'):>10} {fmt(trained, '.0f'):>11} {fmt(gen_share and 100 * gen_share, '.2f'):>7} "
            f"{fmt(train_share and 100 * train_share, '.2f'):>9} {fmt(gpu, '.1f'):>7}  {status}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), sys.argv[3:])
    else:
        main()
