"""The small typed records the components exchange. Token ids stay token ids from data to loss."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


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
    prefix_len: int = 0  # number of leading response tokens taken from the RPO cache
    finished: bool = True  # False when generation hit the token limit (truncated)
    policy_step: int = 0  # optimizer step of the policy that generated the suffix
    prefix_policy_step: int = 0  # optimizer step of the policy that generated the prefix
    text: str = ""  # decoded response, for the reward only (never re-tokenized)

    @property
    def generated_len(self) -> int:
        return len(self.response_ids) - self.prefix_len


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

    def group(self, g: int) -> list[Sample]:
        return self.samples[g * self.group_size : (g + 1) * self.group_size]

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
