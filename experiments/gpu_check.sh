#!/usr/bin/env bash
# The GPU path checked in one call on a GPU machine without network (GitHub issue 31): pytest -m gpu, three steps of
# GRPO and of GRPO+RPO on SmolLM2-135M's architecture with a checkpoint and a resume, steps on Qwen2.5-0.5B's
# architecture, and one table of per-phase times, tokens/s, share of the measured bf16 peak and peak GPU memory
# (experiments/gpu_check.py), on stdout and in $OUT/gpu_check.txt.
#
#   bash experiments/build_gpu_wheels.sh     # here, first: wheels + SmolLM2's config and tokenizer in .cache/gpu_carry
#   bash experiments/gpu_check.sh            # on the GPU machine, with .cache/gpu_carry carried beside the working tree
#   DEVICE=cpu bash experiments/gpu_check.sh # the dry run on a CPU (the GPU tests skip; smaller shapes)
#
# On the GPU it installs only what the image lacks, offline, from the carried wheels; rollout=hf (vLLM's CUDA wheel is
# too large to carry). About 4-6 minutes on an H200 (estimate); each child (pytest, each rpo-train) is capped at
# RUN_TIMEOUT seconds (default 180 on cuda), and the table is rewritten after each, so a cut-off call still returns it.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/rpo-gpu-check-out}
carry=.cache/gpu_carry
mkdir -p "$OUT"
if [ "$DEVICE" = cpu ]; then
    PY=${PYTHON:-.venv/bin/python}
else
    PY=${PYTHON:-$(command -v python || command -v python3)}
    # Satisfied requirements stay as the image has them; PIP_BREAK_SYSTEM_PACKAGES: a disposable machine's system Python.
    want=(deepspeed==0.19.8 "hydra-core>=1.3.2,<1.4" "omegaconf>=2.3" "transformers>=5.19,<6")
    PIP_BREAK_SYSTEM_PACKAGES=1 $PY -m pip install --quiet --no-index --find-links "$carry/wheels" "${want[@]}" \
        || PIP_BREAK_SYSTEM_PACKAGES=1 $PY -m pip install --quiet --user --no-index --find-links "$carry/wheels" "${want[@]}" \
        || { echo "offline install from $carry/wheels failed (python $($PY -V 2>&1))" | tee "$OUT/gpu_check.txt"; exit 1; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
export DS_ACCELERATOR=$DEVICE WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1
# the children's output goes to $OUT/logs/; this shows the check's own lines
$PY -m experiments.gpu_check --device "$DEVICE" --out "$OUT" --assets "$carry/smollm2_135m" \
    ${RUN_TIMEOUT:+--run-timeout "$RUN_TIMEOUT"} 2>&1 | tee "$OUT/gpu_check.log" | grep -v "^\s*$" | tail -n 15
echo
cat "$OUT/gpu_check.txt"
