"""The documented multi-process launch: `torchrun --nproc_per_node 2 -m rpo_core.train` with ZeRO-3 on gloo.

Rank 0 generates and broadcasts the batch, both ranks train on their share, ZeRO-3 partitions parameters and optimizer
state across them, and the checkpoint gathers the full weights. One step must give the same weights as the
single-process run of the same seed. (The tiny random model earns reward 0 everywhere, so its policy gradient is 0;
weight decay makes the step move every parameter, which still exercises the partitioned update and the gather.)"""
from __future__ import annotations

import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import child_env
from test_train_e2e import ROOT, SMALL, metrics, rpo_train

ONE_STEP = ["trainer.total_steps=1", "trainer.eval_every=0", "learner.zero_stage=3", "learner.optim.lr=1e-2",
            "learner.optim.weight_decay=1.0"]


def test_two_ranks_match_one_rank_after_a_step(tmp_path, tiny_model_path):
    single, double = tmp_path / "one", tmp_path / "two"
    rpo_train(single, *ONE_STEP)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "rpo_core.train", *SMALL,
           f"trainer.output_dir={double}", *ONE_STEP]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=child_env(OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-6000:]

    one, two = metrics(single), metrics(double)
    assert [r["step"] for r in two] == [0, 1]
    assert two[1]["rollout_tokens"] == one[1]["rollout_tokens"] > 0  # rank 0 generated the same rollouts
    assert two[1]["reward_mean"] == one[1]["reward_mean"]

    w1 = load_file(single / "checkpoints" / "step_000001" / "hf" / "model.safetensors")
    w2 = load_file(double / "checkpoints" / "step_000001" / "hf" / "model.safetensors")
    w0 = load_file(f"{tiny_model_path}/model.safetensors")
    assert w1.keys() == w2.keys()
    moved = max((w1[k] - w0[k]).abs().max().item() for k in w1)
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert moved > 1e-5, "the step did not change the weights"
    print(f"step moved weights by up to {moved:.3g}; 2 ranks vs 1 rank differ by up to {diff:.3g}")
    assert diff < 1e-2 * moved, f"2-rank weights differ from 1-rank by {diff} (the step moved them by {moved})"
