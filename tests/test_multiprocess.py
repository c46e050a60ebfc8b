"""The documented multi-process launch: `torchrun --nproc_per_node 2 -m rpo_core.train` on gloo, ZeRO-2 and ZeRO-3.

Rank 0 generates and broadcasts the batch, each rank trains on whole groups of it with the loss normalisers
all-reduced, ZeRO partitions gradients (and under stage 3 parameters) across ranks, and the checkpoint gathers the
full weights. On the parity task the advantages are nonzero, so three steps of 2 ranks must end on the weights of one
rank: a rank that normalised by its own share of tokens, or dropped the other's gradients, ends elsewhere."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import child_env
from test_train_e2e import ROOT, SMALL, final_weights, metrics, rpo_train

pytestmark = pytest.mark.full

STEPS = ["trainer.total_steps=3", "trainer.eval_every=0", "algorithm.loss_agg=token-mean"]


@pytest.mark.parametrize("stage,placement", [(2, "rank0"), (3, "rank0"), (3, "every_rank")])
def test_two_ranks_match_one_rank(tmp_path, tiny_model_path, stage, placement):
    """every_rank: an engine on each rank generates half of each round's questions; per-request seeds make the samples
    those of one engine, so rewards and weights still equal the single-process run's."""
    single, double = tmp_path / "one", tmp_path / "two"
    run = [*STEPS, f"learner.zero_stage={stage}"]
    rpo_train(single, *run)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "rpo_core.train", *SMALL,
           f"trainer.output_dir={double}", *run, f"rollout.placement={placement}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=child_env(OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-6000:]

    one, two = metrics(single), metrics(double)
    assert [r["step"] for r in two] == [0, 1, 2, 3]
    for a, b in zip(one[1:], two[1:]):  # rank 0 generated the same rollouts from the same weights
        assert a["rollout_tokens"] == b["rollout_tokens"] > 0 and a["reward_mean"] == b["reward_mean"]
        assert 0 < a["reward_mean"] < 1 and a["grad_norm"] > 0
        # the gradient itself, before Adam (whose update is blind to a uniformly mis-scaled gradient)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), (a["step"], a["grad_norm"], b["grad_norm"])

    w0 = load_file(f"{tiny_model_path}/model.safetensors")
    w1, w2 = final_weights(single), final_weights(double)
    assert w1.keys() == w2.keys()
    moved = max((w1[k] - w0[k]).abs().max().item() for k in w1)
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    print(f"ZeRO-{stage} {placement}: 3 steps moved weights by up to {moved:.3g}; 2 ranks vs 1 differ by {diff:.3g}")
    assert moved > 1e-3, "the steps did not move the weights"
    # Adam divides by sqrt(v): on parameters whose gradient is near 0, float summation order across ranks changes the
    # update by a few percent of lr (measured: 1.1e-5 after moves of 3e-3); a wrong normaliser changes it by ~lr
    assert diff < 2e-2 * moved, f"2-rank weights differ from 1-rank by {diff} (the steps moved them by {moved})"


def test_two_node_launch_on_localhost_trains(tmp_path, tiny_model_path):
    """`torchrun --nnodes 2` twice on one machine (node ranks 0 and 1, one process each, a static rendezvous on
    127.0.0.1) forms one 2-node job: the launch a cluster uses, with no process management of our own."""
    from rpo_core.distributed import _free_port

    out, port = tmp_path / "nodes", _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
         "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "rpo_core.train", *SMALL,
         f"trainer.output_dir={out}", "trainer.total_steps=2", "trainer.eval_every=0", "learner.zero_stage=3"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(OMP_NUM_THREADS="1"))
        for node in (0, 1)]
    results = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-4000:]
    rows = metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["grad_norm"] > 0 for r in rows[1:])
    # both nodes wrote their ZeRO-3 partition into the one checkpoint
    assert len(list((out / "checkpoints" / "step_000002" / "deepspeed").rglob("*optim_states.pt"))) == 2


def _placement_rank(rank: int, port: int, out: str) -> None:
    """One rank of test_placement_collectives: every Placement collective under both rollout placements."""
    import json

    import torch.distributed as dist

    from rpo_core.distributed import Placement

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    seen = {}
    for every in (False, True):
        p = Placement(rank, 2, every_rank_generates=every)
        calls = []
        plans = p.planned(lambda: calls.append(rank) or ["plan", "of", "rank", rank])  # noqa: B023
        asked = p.my_requests(list(range(5)))
        merged = p.merged({k: f"generated by {rank}" for k in asked})
        collected = p.collected(f"collected by {rank}") if p.generates else p.collected(None)
        seen[str(every)] = {"generates": p.generates, "planned_on": calls, "plans": plans, "asked": asked,
                            "merged": {str(k): v for k, v in sorted(merged.items())}, "collected": collected,
                            "broadcast": p.broadcast(rank + 10), "gather": p.gather(rank), "groups": p.my_groups(5)}
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


def test_placement_collectives(tmp_path):
    """Two gloo ranks: rank 0 alone plans; with every_rank the plan reaches rank 1, each rank generates every other
    request and both end with every result; with rank0 only rank 0 collects and rank 1 receives its result; training
    groups go round-robin. A world of one is the identity (no process group needed)."""
    import json

    import torch.multiprocessing as mp

    from rpo_core.distributed import Placement, _free_port

    mp.spawn(_placement_rank, args=(_free_port(), str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for every in ("False", "True"):
        assert r0[every]["planned_on"] == [0] and r1[every]["planned_on"] == ([] if every == "True" else [1])
        assert r0[every]["broadcast"] == r1[every]["broadcast"] == 10
        assert r0[every]["gather"] == r1[every]["gather"] == [0, 1]
        assert (r0[every]["groups"], r1[every]["groups"]) == ([0, 2, 4], [1, 3])
    spread0, spread1 = r0["True"], r1["True"]
    assert spread1["plans"] == ["plan", "of", "rank", 0] and spread1["generates"]
    assert (spread0["asked"], spread1["asked"]) == ([0, 2, 4], [1, 3])
    assert spread0["merged"] == spread1["merged"] == {str(k): f"generated by {k % 2}" for k in range(5)}
    assert spread0["collected"] == "collected by 0" and spread1["collected"] == "collected by 1"  # each its own
    rank0, rank1 = r0["False"], r1["False"]
    assert not rank1["generates"] and rank0["asked"] == rank1["asked"] == list(range(5))
    assert rank1["merged"] == {str(k): "generated by 1" for k in range(5)}  # not spread: its own only
    assert rank0["collected"] == rank1["collected"] == "collected by 0"
    one = Placement()
    assert one.broadcast(3) == 3 and one.gather(3) == [3] and one.collected(4) == 4 and one.my_groups(3) == [0, 1, 2]
    assert one.planned(lambda: 5) == 5 and one.my_requests([1, 2]) == [1, 2] and one.merged({1: 2}) == {1: 2}
