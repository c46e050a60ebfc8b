"""RPO (arXiv 2601.19404) in one place: the rollout planners, their sampling math, statistics and cache.

A planner decides what each question's G samples start from; the loop asks it for plans, hands it the trained batch,
and logs its metrics, whatever it is.
FullRollout (RPO off): every sample is generated from the prompt.
PartialRollout, RPO: one cached response a per question (token ids + behaviour logprobs);
  m ~ U{min_truncate..min(L, |a|)},  prefix = a[:|a| - m],  G suffixes ~ pi(. | q, prefix)
and after the optimizer step the cache entry becomes, epsilon-greedily, the group's best response or a random one
(rpo.cache_update=static: it never changes, the authors' released code in effect).
Token ids go from the cache into the engine unchanged: nothing is decoded and re-tokenized."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from algorithms.core import PREFIX_RATIOS, by_group
from cache import CacheEntry, TrajectoryCache, initialize_cache, model_fingerprint, tokenizer_fingerprint
from cache.store import INIT_VERSION_STEP
from rpo_core.common.checks import ConfigError, between, one_of, opt
from rpo_core.common.types import Problem, RolloutBatch, RolloutPlan, RolloutPlanner, Sample
from rpo_core.common.util import step_generator

TRUNCATE_MODES = ("fixed", "half_length")
TRUNCATE_PER = ("question", "batch")
SUFFIX_BUDGETS = ("truncated", "fixed")
INIT_MODES = ("upfront", "lazy")
CACHE_UPDATES = ("epsilon_greedy", "static")


def build_planner(cfg, model_path: str, tokenizer) -> RolloutPlanner:
    """FullRollout, or (rpo.enabled) PartialRollout on the trajectory cache of this model, tokenizer and dataset."""
    if not cfg.rpo.enabled:
        return FullRollout(cfg.rollout.max_new_tokens)
    fingerprint = {"model": model_fingerprint(model_path), "tokenizer": tokenizer_fingerprint(tokenizer),
                   "dataset": cfg.data.name}
    cache = TrajectoryCache(cfg.cache.path, fingerprint, synchronous=cfg.cache.synchronous)
    return PartialRollout(cfg.rpo, cache, cfg.rollout.max_new_tokens, cfg.rollout.group_size, cfg.seed)


# =====================================================================================================================
# the sampling math (pure tensor functions)
# =====================================================================================================================
def sample_truncation(
    response_lens: Tensor,
    max_truncate: Union[int, Tensor],
    generator: Optional[torch.Generator],
    min_truncate: int = 0,
    per: str = "question",
) -> Tensor:
    """m_b ~ U{lo_b..hi_b}, hi_b = min(L_b, len_b), lo_b = min(min_truncate, hi_b) (integers, both ends included);
    per="batch": one m ~ U{min(min_truncate, L)..L} for the batch, m_b = clamp(m, lo_b, hi_b).

    m is the number of tokens cut from the end of the cached response: the kept prefix is len_b - m_b tokens
    and the engine regenerates the rest. m = 0 keeps the whole cached response (a caller slicing with
    ids[:-m] must special-case it); m = len_b regenerates from scratch, and so does a response shorter than
    min_truncate. The authors draw one m per batch (yhz5613813/RPO: randint(1, 300), i.e. min_truncate=1,
    L=300, per="batch"); per="question" draws independently. L may be one int or a tensor [B] (all equal
    for per="batch"); L = 0 always gives 0. Returns int64 [B]. Pass a seeded generator for reproducible draws.
    """
    lens = torch.as_tensor(response_lens)
    if lens.dim() != 1 or lens.is_floating_point() or lens.dtype == torch.bool:
        raise ValueError(f"response_lens must be a 1-D integer tensor, got {lens.dtype} {tuple(lens.shape)}")
    limit = torch.as_tensor(max_truncate, device=lens.device)
    if limit.is_floating_point() or limit.dtype == torch.bool:
        raise ValueError(f"max_truncate must be an int or an integer tensor, got {limit.dtype}")
    if bool((lens < 0).any()) or bool((limit < 0).any()):
        raise ValueError("response_lens and max_truncate must be >= 0")
    if isinstance(min_truncate, bool) or not isinstance(min_truncate, int) or min_truncate < 0:
        raise ValueError(f"min_truncate must be an int >= 0, got {min_truncate!r}")
    if per not in TRUNCATE_PER:
        raise ValueError(f"unknown truncation sampling per={per!r}; choose one of {TRUNCATE_PER}")
    upper = torch.minimum(lens.long(), limit.long().expand_as(lens))
    lower = upper.clamp(max=min_truncate)
    if per == "batch":
        if limit.numel() > 1 and bool((limit != limit.flatten()[0]).any()):
            raise ValueError('per="batch" draws one m for the batch: max_truncate must be one value')
        L = int(limit.flatten()[0]) if limit.numel() else 0
        u = torch.rand((), generator=generator, dtype=torch.float64, device=lens.device)
        lo = min(min_truncate, L)
        m = lo + min(int(torch.floor(u * (L - lo + 1))), L - lo)
        return torch.clamp(torch.full_like(upper, m), lower, upper)
    u = torch.rand(lens.shape, generator=generator, dtype=torch.float64, device=lens.device)
    # floor(u * (k + 1)) is uniform on 0..k; the clamp guards the one-ulp rounding of u * (k + 1) up to k + 1.
    span = upper - lower
    return lower + torch.minimum(torch.floor(u * (span + 1).double()).long(), span)


def epsilon_greedy_pick(
    rewards: Tensor, group_size: int, epsilon: float, generator: Optional[torch.Generator],
    questions: Optional[Tensor] = None,
) -> Tensor:
    """k_q = argmax_{i in S_q} r_i with probability epsilon, else k_q ~ U(S_q): the sample index to cache per question.

    S_q pools the G samples of every group of question q: `questions` [B] numbers the groups' questions 0..Q-1 (None:
    each group its own question; DAPO's extra rounds can draw a question twice in one step). Ties for the best go to
    the first maximum in batch order. The uniform draw is a uniform group of q, then a uniform member, i.e. uniform
    over S_q; the coin and member draws are taken for every question whatever the coin says, the group draw only for
    questions with several groups, so without repeats the generator advances as for B independent groups.
    Returns int64 [Q] flat indices into `rewards`.
    """
    grouped = by_group(rewards, group_size)
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    n_groups = grouped.shape[0]
    questions = torch.arange(n_groups) if questions is None else torch.as_tensor(questions, dtype=torch.int64)
    n_questions = int(questions.max()) + 1 if n_groups else 0
    if questions.shape != (n_groups,) or (n_groups and (questions.min() < 0 or
                                                         questions.unique().numel() != n_questions)):
        raise ValueError(f"questions must number the {n_groups} groups' questions 0..Q-1, got {questions.tolist()}")
    greedy = torch.rand(n_questions, generator=generator, device=grouped.device) < epsilon
    member = torch.randint(0, group_size, (n_questions,), generator=generator, device=grouped.device)
    picks = []
    for q in range(n_questions):
        groups = (questions == q).nonzero().flatten()
        if bool(greedy[q]):
            best = int(grouped[groups].flatten().argmax())
            g, i = int(groups[best // group_size]), best % group_size
        else:
            which = int(torch.randint(0, len(groups), (1,), generator=generator)) if len(groups) > 1 else 0
            g, i = int(groups[which]), int(member[q])
        picks.append(g * group_size + i)
    return torch.tensor(picks, dtype=torch.int64)


# =====================================================================================================================
# the planners
# =====================================================================================================================
class FullRollout:
    """RPO off: G samples from the prompt, up to the generation limit; nothing to remember between steps."""

    def __init__(self, max_new_tokens: int):
        self.max_new_tokens = max_new_tokens

    def initialize(self, problems, generate, batch_size: int, progress: bool, reward=None) -> dict:
        return {}

    def plan(self, problems: list[Problem], step: int, salt: str = "") -> list[RolloutPlan]:
        return [RolloutPlan(budget=self.max_new_tokens) for _ in problems]

    def update(self, batch: RolloutBatch, step: int) -> None:
        pass

    def startup_metrics(self) -> dict:
        return {}

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
    """RPO: partial rollouts from the trajectory cache. Its randomness comes from (seed, step, purpose): a resumed run
    draws the same m and cache picks as an uninterrupted one."""

    def __init__(self, cfg, cache: TrajectoryCache, max_new_tokens: int, group_size: int = 1, seed: int = 0):
        self.cfg, self.cache, self.max_new_tokens = cfg, cache, max_new_tokens
        self.group_size, self.seed = group_size, seed
        self._init_report: dict = {}  # the cache initialization's cost, for the step-0 row
        self._counts: Counter = Counter()  # what the plans since the last metrics() did
        self._written: Optional[int] = None  # entries the update since the last metrics() wrote (None: no update)

    def initialize(self, problems: list[Problem], generate: Callable[[list[Problem]], list[Sample]],
                   batch_size: int, progress: bool, reward: Optional[Callable[[Problem, Sample], float]] = None) -> dict:
        """rpo.init=upfront: one response per question from the initial policy, before step 1 (timed apart);
        `reward` scores each (its correctness is what `cache_correct_share` reads)."""
        if self.cfg.init == "upfront":
            self._init_report = initialize_cache(self.cache, problems, generate, batch_size=batch_size,
                                                 progress=progress, reward_fn=reward)
        return self._init_report

    def startup_metrics(self) -> dict:
        """The cache initialization's one-off cost, reported apart from training time as the RPO paper does ({} with
        rpo.init=lazy)."""
        if not self._init_report:
            return {}
        return {"cache_init_seconds": self._init_report["seconds"],
                "cache_init_tokens": self._init_report["generated_tokens"]}

    def plan(self, problems: list[Problem], step: int, salt: str = "") -> list[RolloutPlan]:
        """One plan per problem for generation round `salt` of `step`: a cached prefix and the suffix budget."""
        generator = step_generator(self.seed, step, f"truncate:{salt}")
        entries = self.cache.get_many([p.uid for p in problems])
        lengths = torch.tensor([len(entries[p.uid].response_ids) if p.uid in entries else 0 for p in problems])
        if self.cfg.truncate_mode == "fixed":
            L = torch.full_like(lengths, self.cfg.max_truncate)
        else:  # half_length: L = half the cached response's length (the cache keeps one response per question)
            L = lengths // 2
        m = sample_truncation(lengths, L, generator, min_truncate=self.cfg.min_truncate,
                              per=self.cfg.truncate_per if self.cfg.truncate_mode == "fixed" else "question")
        plans = []
        for p, m_q in zip(problems, m.tolist()):
            entry = entries.get(p.uid)
            self._counts["questions"] += 1
            if entry is None:  # rpo.init=lazy and not generated yet: a full rollout from the prompt
                plans.append(RolloutPlan(budget=self.max_new_tokens))
                continue
            keep = len(entry.response_ids) - m_q
            room = self.max_new_tokens - keep  # the whole response stays within the generation limit
            wanted = m_q + self.cfg.suffix_slack if self.cfg.suffix_budget == "truncated" else self.max_new_tokens
            ended = m_q == 0 and entry.finished  # the kept prefix is the whole finished response: nothing to add
            plans.append(RolloutPlan(
                prefix_ids=tuple(entry.response_ids[:keep]),
                prefix_logprobs=tuple(entry.logprobs[:keep]),
                prefix_policy_step=entry.policy_step,
                prefix_in_loss=self.cfg.prefix_in_loss,
                budget=0 if ended else max(0, min(wanted, room)),
                finished_without_generation=ended,
                truncated=m_q,
                cache_hit=True,
            ))
            self._counts.update(hits=1, trained_hits=entry.version_step != INIT_VERSION_STEP, truncated=m_q,
                                kept_whole=m_q == 0, prefix_tokens=keep * self.group_size)
        return plans

    def update(self, batch: RolloutBatch, step: int) -> None:
        """Epsilon-greedy cache update after the optimizer step `step`; one atomic write for the whole batch.
        rpo.cache_update=static writes nothing: the cache keeps its initial responses."""
        self._written = 0
        if batch.num_groups == 0 or self.cfg.cache_update == "static":
            return
        rewards = torch.tensor(batch.rewards, dtype=torch.float64)
        number: dict[str, int] = {}  # a question drawn twice in one step (DAPO's extra rounds) is one cache entry
        questions = [number.setdefault(batch.samples[g * batch.group_size].uid, len(number))
                     for g in range(batch.num_groups)]
        generator = step_generator(self.seed, step, "cache")
        picks = epsilon_greedy_pick(rewards, batch.group_size, self.cfg.epsilon, generator,
                                    questions=torch.tensor(questions))
        entries = [CacheEntry.from_sample(batch.samples[k], reward=batch.rewards[k]) for k in picks.tolist()]
        self.cache.put_many(entries, version_step=step)
        self._written = len(entries)

    def metrics(self) -> dict:
        """What the plans and the update since the last call did, and what the cache holds.

        prefix_tokens: response tokens taken from the cache (G per kept token). When something was planned:
        cache_hit_rate (questions with a cached response) and truncated_tokens (the m summed); over the hits,
        truncate_mean (mean m), truncate_zero_share (m = 0: the whole cached response kept) and cache_trained_share
        (entries a training step's update wrote, not the initialization: the cache is read back; 0 throughout with
        rpo.cache_update=static). cache_written: entries the update wrote. cache_correct_share: share of cache entries
        holding a response with reward > 0 (correct, with binary or signed correctness): a cache locking in wrong
        answers shows here."""
        n, out = self._counts, {"prefix_tokens": self._counts["prefix_tokens"]}
        if n["questions"]:
            out.update(cache_hit_rate=n["hits"] / n["questions"], truncated_tokens=n["truncated"])
        if n["hits"]:
            out.update(truncate_mean=n["truncated"] / n["hits"], truncate_zero_share=n["kept_whole"] / n["hits"],
                       cache_trained_share=n["trained_hits"] / n["hits"])
        if self._written is not None:
            out["cache_written"] = self._written
        out["cache_correct_share"] = self.cache.positive_reward_share()
        self._counts, self._written = Counter(), None
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


# =====================================================================================================================
# config: the `rpo` group's schema (conf/rpo/default.yaml, whose comments say what each option does) and its rules
# =====================================================================================================================
@dataclass
class RPOConfig:
    enabled: bool = False
    max_truncate: int = opt("${data.rpo_max_truncate}", between(0))
    min_truncate: int = opt(1, between(0))
    truncate_per: str = opt("batch", one_of(TRUNCATE_PER))
    truncate_mode: str = opt("fixed", one_of(TRUNCATE_MODES))
    suffix_budget: str = opt("truncated", one_of(SUFFIX_BUDGETS))
    suffix_slack: int = opt("${data.rpo_suffix_slack}", between(0))
    prefix_in_loss: bool = True
    prefix_ratio: str = opt("one", one_of(PREFIX_RATIOS))
    epsilon: float = opt(0.5, between(0.0, 1.0))
    cache_update: str = opt("epsilon_greedy", one_of(CACHE_UPDATES))
    init: str = opt("upfront", one_of(INIT_MODES))
    init_temperature: float = opt("${rollout.temperature}", between(0.0, strict_low=True))


def validate_rpo(cfg) -> None:
    """Raise ConfigError when RPO is on and its options disagree with each other or with the generation limit."""
    rpo, max_new = cfg.rpo, cfg.rollout.max_new_tokens
    if not rpo.enabled:
        return
    if rpo.max_truncate > max_new:
        raise ConfigError(f"rpo.max_truncate={rpo.max_truncate} is larger than the generation limit "
                          f"rollout.max_new_tokens={max_new}")
    if rpo.min_truncate > rpo.max_truncate:
        raise ConfigError(f"rpo.min_truncate={rpo.min_truncate} must be <= rpo.max_truncate={rpo.max_truncate}")
    if rpo.cache_update == "static" and rpo.init != "upfront":
        raise ConfigError(f"rpo.cache_update=static keeps the responses of the cache initialization, which "
                          f"rpo.init={rpo.init} does not run: use rpo.init=upfront")
