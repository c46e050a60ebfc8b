"""Run by test_learner_step under `torchrun --nproc_per_node 2`: each rank trains on its half of a batch (whole
groups) while rank 1's loss turns non-finite in one step and its gradient (behind a finite loss) in the next. Every
rank writes what it saw to <out>/rank<r>.json."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_learner import _mixed_lengths_batch  # noqa: E402  (conftest, imported with it, sets up the CPU environment)
from test_learner_step import _advantage_loss as advantage_loss, _learner  # noqa: E402


def poisoned_on_rank1(logp, mb):
    loss, stats = advantage_loss(logp, mb)
    return (loss * float("inf") if int(os.environ["RANK"]) == 1 else loss), stats


def nan_gradient_on_rank1(logp, mb):
    """A finite loss (its value unchanged) whose gradient is NaN on rank 1: d sqrt(|u|)/du at u = 0 is inf * 0."""
    loss, stats = advantage_loss(logp, mb)
    return (loss + (logp.sum() * 0).abs().sqrt() if int(os.environ["RANK"]) == 1 else loss), stats


def main(model_path: str, stage: int, out: Path) -> None:
    from rpo_core.distributed import init_distributed

    rank, world = init_distributed("gloo")
    tb = _mixed_lengths_batch()
    tb.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, -0.5, 0.5, 1.0, -1.0])
    mine = tb.select(torch.tensor([r for g in range(rank, 4, world) for r in (2 * g, 2 * g + 1)]))  # groups r, r+2

    def learner():
        return _learner(model_path, f"learner.zero_stage={stage}", "learner.micro_batch_size=2", world_size=world)

    def weights(lrn):
        return {name: t.clone() for name, t in lrn.full_weights()}

    reference = learner()
    first = reference.train_step(mine, advantage_loss, token_level=True)  # the clean step on fresh weights
    after_reference = weights(reference)
    del reference
    lrn = learner()
    start = weights(lrn)
    bad = lrn.train_step(mine, poisoned_on_rank1, token_level=True)
    after_bad = weights(lrn)
    bad_grad = lrn.train_step(mine, nan_gradient_on_rank1, token_level=True)
    after_bad_grad = weights(lrn)
    good = lrn.train_step(mine, advantage_loss, token_level=True)
    after_good = weights(lrn)

    def distance(a, b):
        return max((a[n] - b[n]).abs().max().item() for n in a)

    (out / f"rank{rank}.json").write_text(json.dumps({
        "bad_skipped": bad.skipped, "bad_grad_skipped": bad_grad.skipped, "good_skipped": good.skipped,
        "reference_grad_norm": first.grad_norm, "good_grad_norm": good.grad_norm,
        "moved_by_bad": distance(after_bad, start), "moved_by_bad_grad": distance(after_bad_grad, start),
        "moved_by_reference": distance(after_reference, start), "good_vs_reference": distance(after_good, after_reference),
        "weights_sum": sum(t.double().sum().item() for t in after_good.values()),  # the ranks must hold the same
    }))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
