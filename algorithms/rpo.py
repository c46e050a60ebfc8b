"""Rollout planners: what each question's G samples start from.

FullRollout (RPO off): every sample is generated from the prompt.
PartialRollout, RPO (arXiv 2601.19404): one cached response a per question (token ids + behaviour logprobs);
  m ~ U{min_truncate..min(L, |a|)},  prefix = a[:|a| - m],  G suffixes ~ pi(. | q, prefix)
and after the optimizer step the cache entry becomes, epsilon-greedily, the group's best response or a random one
(rpo.cache_update=static: it never changes, the authors' released code in effect).
Token ids go from the cache into the engine unchanged: nothing is decoded and re-tokenized."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from algorithms import core
from cache import CacheEntry, TrajectoryCache, initialize_cache
from cache.store import INIT_VERSION_STEP
from rpo_core.common.types import Problem, RolloutBatch, RolloutPlan, Sample

TRUNCATE_MODES = ("fixed", "half_length")
SUFFIX_BUDGETS = ("truncated", "fixed")
INIT_MODES = ("upfront", "lazy")
CACHE_UPDATES = ("epsilon_greedy", "static")


class FullRollout:
    """RPO off: G samples from the prompt, up to the generation limit; nothing to remember between steps."""

    def __init__(self, max_new_tokens: int):
        self.max_new_tokens = max_new_tokens

    def initialize(self, problems, generate, batch_size: int, progress: bool, reward=None) -> dict:
        return {}

    def plan(self, problems: list[Problem], generator: torch.Generator) -> list[RolloutPlan]:
        return [RolloutPlan(budget=self.max_new_tokens) for _ in problems]

    def update(self, batch: RolloutBatch, step: int, generator: torch.Generator) -> int:
        return 0

    def metrics(self) -> dict:
        return {}

    def state(self) -> Optional[dict]:
        return None

    def restore(self, step: int, state: Optional[dict]) -> None:
        if state is not None:
            raise ValueError("the checkpoint was written with RPO (a cache state), this run has rpo.enabled=false")

    def compact(self, oldest_kept_step: int) -> None:
        pass

    def close(self) -> None:
        pass


class PartialRollout:
    """RPO: partial rollouts from the trajectory cache."""

    def __init__(self, cfg, cache: TrajectoryCache, max_new_tokens: int):
        self.cfg, self.cache, self.max_new_tokens = cfg, cache, max_new_tokens
        self._hits = self._trained_hits = 0  # plans since the last metrics(): cache hits, and those of trained entries

    def initialize(self, problems: list[Problem], generate: Callable[[list[Problem]], list[Sample]],
                   batch_size: int, progress: bool, reward: Optional[Callable[[Problem, Sample], float]] = None) -> dict:
        """rpo.init=upfront: one response per question from the initial policy, before step 1 (timed apart);
        `reward` scores each (its correctness is what `cache_correct_share` reads)."""
        if self.cfg.init != "upfront":
            return {}
        return initialize_cache(self.cache, problems, generate, batch_size=batch_size, progress=progress,
                                reward_fn=reward)

    def plan(self, problems: list[Problem], generator: torch.Generator) -> list[RolloutPlan]:
        entries = self.cache.get_many([p.uid for p in problems])
        lengths = torch.tensor([len(entries[p.uid].response_ids) if p.uid in entries else 0 for p in problems])
        if self.cfg.truncate_mode == "fixed":
            L = torch.full_like(lengths, self.cfg.max_truncate)
        else:  # half_length: L = half the cached response's length (the cache keeps one response per question)
            L = lengths // 2
        m = core.sample_truncation(lengths, L, generator, min_truncate=self.cfg.min_truncate,
                                   per=self.cfg.truncate_per if self.cfg.truncate_mode == "fixed" else "question")
        plans = []
        for p, m_q in zip(problems, m.tolist()):
            entry = entries.get(p.uid)
            if entry is None:  # rpo.init=lazy and not generated yet: a full rollout from the prompt
                plans.append(RolloutPlan(budget=self.max_new_tokens))
                continue
            self._hits += 1
            self._trained_hits += entry.version_step != INIT_VERSION_STEP
            keep = len(entry.response_ids) - m_q
            room = self.max_new_tokens - keep  # the whole response stays within the generation limit
            wanted = m_q + self.cfg.suffix_slack if self.cfg.suffix_budget == "truncated" else self.max_new_tokens
            ended = m_q == 0 and entry.finished  # the kept prefix is the whole finished response: nothing to add
            plans.append(RolloutPlan(
                prefix_ids=tuple(entry.response_ids[:keep]),
                prefix_logprobs=tuple(entry.logprobs[:keep]),
                prefix_policy_step=entry.policy_step,
                budget=0 if ended else max(0, min(wanted, room)),
                finished_without_generation=ended,
                truncated=m_q,
                cache_hit=True,
            ))
        return plans

    def update(self, batch: RolloutBatch, step: int, generator: torch.Generator) -> int:
        """Epsilon-greedy cache update after an optimizer step; one atomic write for the whole batch.
        rpo.cache_update=static writes nothing: the cache keeps its initial responses."""
        if batch.num_groups == 0 or self.cfg.cache_update == "static":
            return 0
        rewards = torch.tensor(batch.rewards, dtype=torch.float64)
        number: dict[str, int] = {}  # a question drawn twice in one step (DAPO's extra rounds) is one cache entry
        questions = [number.setdefault(batch.samples[g * batch.group_size].uid, len(number))
                     for g in range(batch.num_groups)]
        picks = core.epsilon_greedy_pick(rewards, batch.group_size, self.cfg.epsilon, generator,
                                         questions=torch.tensor(questions))
        entries = [CacheEntry.from_sample(batch.samples[k], reward=batch.rewards[k]) for k in picks.tolist()]
        self.cache.put_many(entries, version_step=step)
        return len(entries)

    def metrics(self) -> dict:
        """cache_correct_share: share of cache entries holding a response with reward > 0 (correct, with binary or
        signed correctness): a cache locking in wrong answers shows here. cache_trained_share: share of the cache hits
        planned since the last call whose entry a training step's update wrote (not cache initialization): the cache
        is read back (0 throughout with rpo.cache_update=static); absent when nothing hit the cache since."""
        out = {"cache_correct_share": self.cache.positive_reward_share()}
        if self._hits:
            out["cache_trained_share"] = self._trained_hits / self._hits
        self._hits = self._trained_hits = 0
        return out

    def state(self) -> Optional[dict]:
        return self.cache.state()

    def restore(self, step: int, state: Optional[dict]) -> None:
        if state is None:
            raise ValueError("the checkpoint was written without RPO, this run has rpo.enabled=true")
        self.cache.restore(step, state)  # checks the recorded state, then drops later versions

    def compact(self, oldest_kept_step: int) -> None:
        self.cache.compact(oldest_kept_step)

    def close(self) -> None:
        self.cache.close()
