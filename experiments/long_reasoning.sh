#!/usr/bin/env bash
# The long-reasoning sweep (conf/experiment/long_reasoning.yaml) in the order that makes a partial result useful:
# GRPO and GRPO+RPO for every seed first, then per seed RAPID and DAPO (each +-RPO), then the prefix-in-loss ablation.
# Re-running skips runs whose metrics reach their config's last step. Pause between runs: touch $SWEEP/.pause
#   experiments/long_reasoning.sh [SWEEP_DIR]        then: rpo-report SWEEP_DIR
set -u
SWEEP=${1:-multirun/long_reasoning}
PY=${PY:-python}
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

run() {  # run NAME OVERRIDES...
  local name=$1; shift
  local dir=$SWEEP/$name
  while [ -e "$SWEEP/.pause" ]; do sleep 10; done
  if [ -f "$dir/metrics.jsonl" ] && $PY - "$dir" <<'EOF'; then return; fi
import json, sys
from pathlib import Path
from omegaconf import OmegaConf
run = Path(sys.argv[1])
last = json.loads(run.joinpath("metrics.jsonl").read_text().splitlines()[-1])["step"]
sys.exit(0 if last == OmegaConf.load(run / "config.yaml").trainer.total_steps else 1)
EOF
  mkdir -p "$dir"
  echo "$(date -u +%FT%T) start $name"
  $PY -m rpo_core.train -m experiment=long_reasoning hydra.sweep.dir="$SWEEP" hydra.sweep.subdir="$name" "$@" \
    > "$dir/stdout.log" 2>&1 || echo "$(date -u +%FT%T) FAILED $name (see $dir/stdout.log)"
  echo "$(date -u +%FT%T) end $name"
}

for seed in 0 1 2; do
  run grpo_seed$seed algorithm=grpo rpo.enabled=false seed=$seed
  run grpo_rpo_seed$seed algorithm=grpo rpo.enabled=true seed=$seed
done
for seed in 0 1 2; do
  for algo in rapid dapo; do
    run ${algo}_seed$seed algorithm=$algo rpo.enabled=false seed=$seed
    run ${algo}_rpo_seed$seed algorithm=$algo rpo.enabled=true seed=$seed
  done
done
for seed in 0 1 2; do
  # prefix-in-loss ablation of GRPO+RPO (the runs above: prefix in the loss at ratio 1)
  run grpo_rpo_prefix-behavior_seed$seed algorithm=grpo rpo.enabled=true rpo.prefix_ratio=behavior seed=$seed
  run grpo_rpo_suffix-only_seed$seed algorithm=grpo rpo.enabled=true rpo.prefix_in_loss=false seed=$seed
done
