"""RPO (arXiv 2601.19404): partial rollouts from one cached response per question, around any algorithm.

Per question q with cached response a (token ids + behaviour logprobs):
  m ~ U{0..min(L, |a|)},  prefix = a[:|a| - m],  G suffixes ~ pi(. | q, prefix)
and after the optimizer step the cache entry becomes, epsilon-greedily, the group's best response or a random one.
Token ids go from the cache into the engine unchanged: nothing is decoded and re-tokenized."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms import core
from cache import CacheEntry, TrajectoryCache
from rpo_core.types import Problem, RolloutBatch


@dataclass
class PartialPlan:
    """What to generate for one question: the kept prefix of its cached response and the suffix budget."""

    prefix_ids: list[int]
    prefix_logprobs: list[float]
    prefix_policy_step: int
    truncated: int  # m, tokens dropped from the cached response
    budget: int  # max new tokens for the suffix; 0 = nothing to generate (m = 0 on a finished response)
    cached_finished: bool  # whether the cached response itself ended with EOS
    hit: bool  # False: no cache entry, a full rollout from the prompt


class PartialRollout:
    def __init__(self, cfg, cache: TrajectoryCache, max_new_tokens: int):
        self.cfg, self.cache, self.max_new_tokens = cfg, cache, max_new_tokens

    def plan(self, problems: list[Problem], generator: torch.Generator) -> list[PartialPlan]:
        entries = self.cache.get_many([p.uid for p in problems])
        lengths = torch.tensor([len(entries[p.uid].response_ids) if p.uid in entries else 0 for p in problems])
        if self.cfg.truncate_mode == "fixed":
            L = torch.full_like(lengths, self.cfg.max_truncate)
        else:  # half_min_length: the only response of the group we keep is the cached one, so min = its length
            L = lengths // 2
        m = core.sample_truncation(lengths, L, generator)
        plans = []
        for p, m_q in zip(problems, m.tolist()):
            entry = entries.get(p.uid)
            if entry is None:
                plans.append(PartialPlan([], [], 0, 0, self.max_new_tokens, False, hit=False))
                continue
            keep = len(entry.response_ids) - m_q
            room = self.max_new_tokens - keep  # the whole response stays within the generation limit
            wanted = m_q + self.cfg.suffix_slack if self.cfg.suffix_budget == "truncated" else self.max_new_tokens
            budget = max(0, min(wanted, room))
            if m_q == 0 and entry.finished:
                budget = 0  # the cached response already ended: the G samples are that response itself
            plans.append(PartialPlan(
                prefix_ids=list(entry.response_ids[:keep]),
                prefix_logprobs=list(entry.logprobs[:keep]),
                prefix_policy_step=entry.policy_step,
                truncated=m_q,
                budget=budget,
                cached_finished=entry.finished and m_q == 0,
                hit=True,
            ))
        return plans

    def update(self, batch: RolloutBatch, step: int, generator: torch.Generator) -> int:
        """Epsilon-greedy cache update after an optimizer step; one atomic write for the whole batch."""
        if batch.num_groups == 0:
            return 0
        rewards = torch.tensor(batch.rewards, dtype=torch.float64)
        picks = core.epsilon_greedy_pick(rewards, batch.group_size, self.cfg.epsilon, generator)
        entries = []
        for g, i in enumerate(picks.tolist()):
            sample = batch.samples[g * batch.group_size + i]
            entries.append(CacheEntry.from_sample(sample, reward=batch.rewards[g * batch.group_size + i]))
        self.cache.put_many(entries, version_step=step)
        return len(entries)
