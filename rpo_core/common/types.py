"""The small typed records the components exchange. Token ids stay token ids from data to loss."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import torch


@dataclass(frozen=True)
class Problem:
    """One training or evaluation question, tokenized once at load time."""

    uid: str  # stable id: hash of dataset name + question text (never time or randomness)
    question: str
    gold: str  # normalized gold answer
    prompt_ids: tuple[int, ...]  # chat-templated prompt, as the engine and learner see it


@dataclass
class Sample:
    """One generated response (for RPO: cached prefix + freshly generated suffix)."""

    uid: str
    prompt_ids: list[int]
    response_ids: list[int]  # prefix_ids + generated ids
    behavior_logprobs: list[float]  # logprob of each response token under the policy that produced it
    prefix_len: int = 0  # number of leading response tokens taken from the plan's prefix (RPO: its cache)
    prefix_in_loss: bool = True  # whether those prefix tokens enter the loss (the planner decides)
    finished: bool = True  # False when generation hit the token limit (truncated)
    policy_step: int = 0  # optimizer step of the policy that generated the suffix
    prefix_policy_step: int = 0  # optimizer step of the policy that generated the prefix
    text: str = ""  # decoded response, for the reward only (never re-tokenized)
    rollout_logprobs: Optional[list[float]] = None  # the learner's logprobs under the rollout policy (pi_old, mu > 1)


@dataclass
class RolloutBatch:
    """B groups of G samples, stored group-contiguously: samples[g*G:(g+1)*G] share one prompt."""

    samples: list[Sample]
    group_size: int
    rewards: Optional[list[float]] = None  # total shaped reward per sample
    correct: Optional[list[float]] = None  # 1/0 correctness per sample
    reward_parts: dict[str, list[float]] = field(default_factory=dict)  # each reward term, logged separately
    golds: list[str] = field(default_factory=list)  # gold answer per group

    @property
    def num_groups(self) -> int:
        return len(self.samples) // self.group_size

    def select_groups(self, groups: list[int]) -> "RolloutBatch":
        """A sub-batch made of whole groups (advantages need the whole group)."""
        G = self.group_size
        idx = [g * G + i for g in groups for i in range(G)]
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return RolloutBatch(
            samples=[self.samples[i] for i in idx],
            group_size=G,
            rewards=pick(self.rewards),
            correct=pick(self.correct),
            reward_parts={k: pick(v) for k, v in self.reward_parts.items()},
            golds=[self.golds[g] for g in groups] if self.golds else [],
        )

    @staticmethod
    def concat(batches: list["RolloutBatch"]) -> "RolloutBatch":
        G = batches[0].group_size
        cat = lambda name: (  # noqa: E731
            None if any(getattr(b, name) is None for b in batches) else sum((getattr(b, name) for b in batches), [])
        )
        keys = set().union(*(b.reward_parts for b in batches))
        return RolloutBatch(
            samples=sum((b.samples for b in batches), []),
            group_size=G,
            rewards=cat("rewards"),
            correct=cat("correct"),
            reward_parts={k: sum((b.reward_parts.get(k, []) for b in batches), []) for k in keys},
            golds=sum((b.golds for b in batches), []),
        )


@dataclass(frozen=True)
class RolloutPlan:
    """What to generate for one question: a kept prefix (RPO: of its cached response; empty otherwise) and a budget."""

    prefix_ids: tuple[int, ...] = ()
    prefix_logprobs: tuple[float, ...] = ()
    prefix_policy_step: int = 0
    prefix_in_loss: bool = True  # the prefix tokens enter the loss (RPO: rpo.prefix_in_loss; false: the suffix only)
    budget: int = 0  # max new tokens; 0 = nothing to generate (RPO: m = 0 on a finished cached response)
    finished_without_generation: bool = False  # with budget 0: the prefix itself ended with EOS
    truncated: int = 0  # RPO's m: tokens dropped from the cached response
    cache_hit: bool = False  # RPO: the question had a cache entry


class RolloutPlanner(Protocol):
    """Decides what each question's rollout starts from, and keeps what training taught it. The loop calls it the same
    way whatever it is: full rollouts when RPO is off, partial ones (algorithms.rpo) when it is on."""

    def initialize(self, problems: list[Problem], generate: Callable[[list[Problem]], list[Sample]],
                   batch_size: int, progress: bool, reward: Optional[Callable[[Problem, Sample], float]] = None) -> dict:
        """Before step 1: whatever the planner needs up front (RPO: the cache); returns its cost report ({} if none)."""

    def plan(self, problems: list[Problem], step: int, salt: str = "") -> list[RolloutPlan]:
        """One plan per problem for generation round `salt` of `step` (its randomness derives from both)."""

    def update(self, batch: RolloutBatch, step: int) -> None:
        """After step `step`'s update: remember what this batch taught (RPO: the cache)."""

    def startup_metrics(self) -> dict:
        """For the step-0 row: what the start-up cost (RPO: cache_init_seconds and cache_init_tokens)."""

    def metrics(self) -> dict:
        """For the step's row: what the plans and the update since the last call did, and what the planner holds."""

    def state(self) -> Optional[dict]:
        """What a checkpoint must record to roll the planner back to this step (None: stateless)."""

    def restore(self, step: int, state: Optional[dict]) -> None:
        """Roll back to the state a checkpoint of `step` recorded."""

    def compact(self, oldest_kept_step: int) -> None:
        """Forget history no kept checkpoint can resume to."""

    def close(self) -> None:
        """Release files and connections."""


@dataclass
class StepResult:
    """What one optimizer step of the learner returns."""

    logprobs: torch.Tensor  # [N, T] learner logprobs of the batch's response tokens before the update
    stats: dict[str, float]  # the loss's statistics, combined over micro-batches (means weighted, max/min reduced)
    grad_norm: float  # global gradient norm before clipping (nan when the step was skipped)
    skipped: bool  # True when a non-finite loss made the learner skip the step
    rows_computed: int  # rows forwarded and backpropagated (the others belonged to inert groups, see train_step)
