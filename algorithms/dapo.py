"""DAPO (Yu et al. 2025): clip-higher, token-level loss, overlong shaping/filtering and dynamic sampling."""
from __future__ import annotations

import math
from dataclasses import dataclass

from algorithms.base import ALGORITHMS, Algorithm, GenerateFn, GRPOConfig
from rpo_core.common.checks import between, opt, preset
from rpo_core.common.types import RolloutBatch


@preset(name="dapo", clip_high=0.28, loss_agg="token-mean", kl_coef=0.0, overlong_filter=False,
        overlong_punishment=True, mini_batches_per_rollout=4)
@dataclass
class DAPOConfig(GRPOConfig):
    """conf/algorithm/dapo.yaml."""

    oversample: float = opt(1.5, between(1.0))
    max_gen_batches: int = opt(4, between(1))


@ALGORITHMS.register("dapo")
class DAPO(Algorithm):
    schema = DAPOConfig

    def collect(self, generate: GenerateFn) -> tuple[RolloutBatch, dict]:
        """Dynamic sampling: over-sample, keep only groups whose rewards differ, until the batch is full
        or `max_gen_batches` generation rounds have run (then train on what there is)."""
        want = self.prompts_per_rollout
        per_round = math.ceil(want * self.cfg.oversample)
        kept: list[RolloutBatch] = []
        have = rounds = dropped = 0
        while have < want and rounds < self.cfg.max_gen_batches:
            batch = generate(per_round)
            rounds += 1
            varied = [g for g in range(batch.num_groups) if len(set(batch.rewards[batch.group_size * g:batch.group_size * (g + 1)])) > 1]
            dropped += batch.num_groups - len(varied)
            varied = varied[: want - have]
            if varied:
                kept.append(batch.select_groups(varied))
                have += len(varied)
        stats = {"dapo_gen_batches": rounds, "dapo_groups_dropped": dropped, "dapo_groups_kept": have,
                 "dapo_batch_full": float(have >= want)}
        if not kept:  # every group constant: nothing carries gradient, but the step is still logged
            return batch.select_groups([]), stats
        return RolloutBatch.concat(kept), stats
