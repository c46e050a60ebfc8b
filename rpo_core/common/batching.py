"""Padding a RolloutBatch into the tensors the learner and the losses use."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch

from rpo_core.common.types import RolloutBatch


@dataclass
class TrainBatch:
    """Prompts left-padded to width P, responses right-padded to width T: response token j of every row sits in
    column P + j, so one slice of the logits serves the whole batch."""

    input_ids: torch.Tensor  # [N, P + T]
    attention_mask: torch.Tensor  # [N, P + T]
    position_ids: torch.Tensor  # [N, P + T] positions counted from each row's first real token
    response_mask: torch.Tensor  # [N, T] 1 on real response tokens
    loss_mask: torch.Tensor  # [N, T] 1 on tokens that enter the loss
    prefix_mask: torch.Tensor  # [N, T] 1 on the plan's prefix tokens (RPO: from its cache, an older policy's)
    behavior_logp: torch.Tensor  # [N, T] logprobs recorded when each token was generated
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    finished: torch.Tensor  # [N] 1 if the response ended with EOS, 0 if the token budget cut it
    staleness: torch.Tensor  # [N] optimizer steps between the policy that generated the sample and the one updated
    group_size: int
    ref_logp: Optional[torch.Tensor] = None  # [N, T] reference-model logprobs (KL penalty)
    rollout_logp: Optional[torch.Tensor] = None  # [N, T] learner logprobs under the rollout policy (None: one step)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "TrainBatch":
        """Every tensor on `device` (the learner's): the one place a batch crosses from host to accelerator."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def trimmed(self) -> "TrainBatch":
        """The same rows at their own widths: prompt columns cut to the longest prompt among them, response columns
        to the longest response (a micro-batch need not be padded to the longest row of the whole batch)."""
        P = self.input_ids.shape[1] - self.response_mask.shape[1]
        p = int(self.attention_mask[:, :P].sum(1).max()) if len(self) else 0
        t = max(1, int(self.response_mask.sum(1).max())) if len(self) else 1
        if p == P and t == self.response_mask.shape[1]:
            return self
        cut = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in cut.items():
            if isinstance(value, torch.Tensor) and value.dim() == 2:
                cut[name] = value[:, P - p : P + t] if value.shape[1] == P + self.response_mask.shape[1] else value[:, :t]
        return replace(self, **cut)

    def select(self, index: torch.Tensor) -> "TrainBatch":
        """The rows at `index` (a 1-D tensor of row numbers), in that order."""
        cut = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in cut.items():
            if isinstance(value, torch.Tensor):
                cut[name] = value[index.to(value.device)]
        return replace(self, **cut)


def to_train_batch(batch: RolloutBatch, pad_id: int, step: int) -> TrainBatch:
    """The padded tensors of `batch`; a sample's prefix enters the loss if its plan said so (Sample.prefix_in_loss)."""
    samples = batch.samples
    N = len(samples)
    P = max(len(s.prompt_ids) for s in samples)
    T = max(1, max(len(s.response_ids) for s in samples))
    input_ids = torch.full((N, P + T), pad_id, dtype=torch.long)
    attention = torch.zeros((N, P + T), dtype=torch.long)
    response_mask = torch.zeros((N, T))
    prefix_mask = torch.zeros((N, T))
    behavior = torch.zeros((N, T))
    for i, s in enumerate(samples):
        n, start = len(s.response_ids), P - len(s.prompt_ids)
        input_ids[i, start : P + n] = torch.tensor(list(s.prompt_ids) + list(s.response_ids), dtype=torch.long)
        attention[i, start : P + n] = 1
        response_mask[i, :n] = 1
        prefix_mask[i, : s.prefix_len] = 1
        behavior[i, :n] = torch.tensor(s.behavior_logprobs, dtype=torch.float32)
    rollout = None
    if all(s.rollout_logprobs is not None for s in samples):
        rollout = torch.zeros((N, T))
        for i, s in enumerate(samples):
            rollout[i, : len(s.rollout_logprobs)] = torch.tensor(s.rollout_logprobs, dtype=torch.float32)
    prefix_left_out = torch.tensor([0.0 if s.prefix_in_loss else 1.0 for s in samples])[:, None]
    loss_mask = response_mask * (1 - prefix_mask * prefix_left_out)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
        response_mask=response_mask,
        loss_mask=loss_mask,
        prefix_mask=prefix_mask,
        behavior_logp=behavior,
        rewards=torch.tensor(batch.rewards, dtype=torch.float32),
        advantages=torch.zeros(N),
        finished=torch.tensor([float(s.finished) for s in samples]),
        # the policy being updated at `step` has had step - 1 updates; a sample made by it has staleness 0
        staleness=torch.tensor([float(step - 1 - s.policy_step) for s in samples]),
        group_size=batch.group_size,
        rollout_logp=rollout,
    )
