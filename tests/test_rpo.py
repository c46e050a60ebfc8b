"""RPO's rollout plan, loss masks, cache update, and token ids going through the real vLLM engine unchanged."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from algorithms.rpo import FullRollout, PartialRollout
from cache import CacheEntry, TrajectoryCache
from rpo_core.common.batching import to_train_batch
from rpo_core.common.types import Problem, RolloutBatch, Sample

EOS = 2


def rpo_cfg(**over):
    base = dict(enabled=True, max_truncate=300, min_truncate=0, truncate_per="question", truncate_mode="fixed",
                suffix_budget="truncated", suffix_slack=4, prefix_in_loss=True, prefix_ratio="one", epsilon=0.5,
                cache_update="epsilon_greedy", init="upfront")
    return OmegaConf.create({**base, **over})


def make_cache(tmp_path, responses: dict[str, tuple[list[int], bool]]) -> TrajectoryCache:
    cache = TrajectoryCache(tmp_path / "c.sqlite", {"model": "m", "tokenizer": "t"})
    cache.put_many([CacheEntry(uid, [1, 2], ids, [-0.5] * len(ids), 1.0, 0, time.time(), finished=fin)
                    for uid, (ids, fin) in responses.items()], version_step=0)
    return cache


def problems(*uids):
    return [Problem(uid=u, question=u, gold="0", prompt_ids=(1, 2)) for u in uids]


def test_plan_bounds_and_budgets(tmp_path):
    resp = list(range(10, 30)) + [EOS]  # 21 tokens, finished
    cache = make_cache(tmp_path, {"a": (resp, True), "b": (list(range(10, 15)), False)})
    rollout = PartialRollout(rpo_cfg(max_truncate=8), cache, max_new_tokens=24)
    seen = set()
    for step in range(300):
        a, b, miss = rollout.plan(problems("a", "b", "zzz"), step)
        assert 0 <= a.truncated <= 8 and 0 <= b.truncated <= 5  # m never exceeds L nor the response
        assert list(a.prefix_ids) == resp[: len(resp) - a.truncated]  # a prefix of the cached ids, as ids
        assert list(a.prefix_logprobs) == [-0.5] * len(a.prefix_ids)
        # truncated budget: m + slack, never past the generation limit for the whole response
        expect = 0 if a.truncated == 0 else min(a.truncated + 4, 24 - len(a.prefix_ids))
        assert a.budget == expect
        assert b.budget == min(b.truncated + 4, 24 - len(b.prefix_ids))  # unfinished: m = 0 still continues
        assert not miss.cache_hit and miss.prefix_ids == () and miss.budget == 24  # a miss is a full rollout
        seen.add(a.truncated)
    assert seen == set(range(9))  # every m in 0..L occurs


def test_authors_defaults_never_make_dead_groups_and_share_one_m(tmp_path):
    """min_truncate=1, truncate_per=batch (yhz5613813/RPO: one randint(1, L) per batch): m >= 1, so a finished cached
    response is never replayed as G identical samples, and every long-enough question drops the same m."""
    cache = make_cache(tmp_path, {u: (list(range(10, 30)) + [EOS], True) for u in "abc"} | {"d": ([10, 11], True)})
    rollout = PartialRollout(rpo_cfg(max_truncate=8, min_truncate=1, truncate_per="batch"), cache, 24)
    seen = set()
    for step in range(200):
        a, b, c, d = rollout.plan(problems("a", "b", "c", "d"), step)
        assert a.truncated == b.truncated == c.truncated and 1 <= a.truncated <= 8
        assert 1 <= d.truncated <= 2 and d.truncated == min(a.truncated, 2)  # a short response: clamped to its length
        assert all(p.budget > 0 and not p.finished_without_generation for p in (a, b, c, d))
        seen.add(a.truncated)
    assert seen == set(range(1, 9))


def test_per_question_m_without_slack_is_the_authors_per_call_budget(tmp_path):
    """truncate_per=question + suffix_slack=0, composed and validated as rpo-train does: every question draws its own m
    and may generate exactly m new tokens (yhz5613813/RPO: one prompt per call, max_tokens = its randint(1, 300))."""
    from conftest import compose
    from rpo_core.config import validate_config

    cfg = compose("rpo.enabled=true", "rpo.max_truncate=8", "rpo.truncate_per=question", "rpo.suffix_slack=0")
    validate_config(cfg)
    cache = make_cache(tmp_path, {u: (list(range(10, 30)) + [EOS], True) for u in "abcd"})
    rollout = PartialRollout(cfg.rpo, cache, cfg.rollout.max_new_tokens)
    distinct = 0
    for step in range(100):
        plans = rollout.plan(problems(*"abcd"), step)
        assert all(1 <= p.truncated <= 8 and p.budget == p.truncated for p in plans)
        distinct += len({p.truncated for p in plans}) > 1
    assert distinct > 90  # one m per batch would never differ between questions


def test_half_length_mode_and_fixed_budget(tmp_path):
    cache = make_cache(tmp_path, {"a": (list(range(10, 30)), True)})  # 20 tokens -> L = 10
    rollout = PartialRollout(rpo_cfg(truncate_mode="half_length", suffix_budget="fixed"), cache, 64)
    ms = [rollout.plan(problems("a"), step)[0] for step in range(200)]
    assert max(p.truncated for p in ms) == 10
    assert all(p.budget == (0 if p.truncated == 0 else 64 - (20 - p.truncated)) for p in ms)


@pytest.mark.parametrize("prefix_in_loss", [True, False])
def test_the_plan_decides_whether_its_prefix_enters_the_loss(tmp_path, prefix_in_loss):
    """rpo.prefix_in_loss travels from the plan through the sample into the batch's loss mask (the loop passes no RPO
    option): false leaves the cached prefix out, a sample without a prefix is trained whole either way."""
    cache = make_cache(tmp_path, {"a": ([5, 6, 7, 8], True)})
    plan = PartialRollout(rpo_cfg(max_truncate=1, min_truncate=1, prefix_in_loss=prefix_in_loss), cache, 16).plan(
        problems("a"), step=1)[0]
    assert plan.prefix_ids == (5, 6, 7) and plan.prefix_in_loss == prefix_in_loss
    s = Sample(uid="a", prompt_ids=[1, 2, 3], response_ids=[*plan.prefix_ids, 8, 9], behavior_logprobs=[-1.0] * 5,
               prefix_len=3, prefix_in_loss=plan.prefix_in_loss)
    t = Sample(uid="a", prompt_ids=[1, 2, 3], response_ids=[5, 6], behavior_logprobs=[-1.0] * 2, prefix_len=0,
               prefix_in_loss=plan.prefix_in_loss)
    tb = to_train_batch(RolloutBatch([s, t], group_size=2, rewards=[1.0, 0.0]), pad_id=0, step=1)
    first = [1, 1, 1, 1, 1] if prefix_in_loss else [0, 0, 0, 1, 1]
    assert tb.loss_mask.tolist() == [first, [1, 1, 0, 0, 0]]
    assert tb.prefix_mask.tolist() == [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]


@pytest.mark.parametrize("prefix_ratio,clipped", [("one", 0.0), ("behavior", 1 / 6)])
def test_prefix_ratio_option_reaches_the_loss(prefix_ratio, clipped):
    """rpo.prefix_ratio=one: the prefix is treated like fresh tokens (ratio 1, nothing clipped); behavior: the ratio to
    the cache's logprobs, exp(-1 - (-2)) = e > 1.2 on the prefix token, clipped where A > 0: 1 of the 6 loss tokens."""
    from algorithms import build_algorithm
    from conftest import compose

    algo = build_algorithm(compose("algorithm=grpo").algorithm, 16, prefix_ratio)
    s = Sample(uid="a", prompt_ids=[1], response_ids=[5, 6, 7], behavior_logprobs=[-2.0, -1.0, -1.0], prefix_len=1)
    t = Sample(uid="a", prompt_ids=[1], response_ids=[5, 8, 9], behavior_logprobs=[-2.0, -1.0, -1.0], prefix_len=1)
    tb = algo.prepare(to_train_batch(RolloutBatch([s, t], group_size=2, rewards=[1.0, 0.0]), pad_id=0, step=1))
    logp = torch.tensor([[-1.0, -0.5, -0.25], [-1.0, -0.5, -0.25]], requires_grad=True)
    _, stats = algo.loss(logp, tb)
    assert stats["clip_frac_high"].item() == pytest.approx(clipped)
    assert stats["suffix_loss_share"].item() == pytest.approx(2 / 3)  # seq-mean-token-mean: 2 of 3 tokens per row


def test_epsilon_one_caches_the_best_and_update_is_one_write(tmp_path):
    cache = make_cache(tmp_path, {})
    rollout = PartialRollout(rpo_cfg(epsilon=1.0), cache, 16)
    samples = [Sample(uid=u, prompt_ids=[1], response_ids=[10 + i], behavior_logprobs=[-0.1], policy_step=3)
               for u in ("a", "b") for i in range(3)]
    batch = RolloutBatch(samples, group_size=3, rewards=[0.0, 1.0, 0.5, 0.2, 0.1, 0.9])
    rollout.update(batch, step=4)
    assert rollout.metrics()["cache_written"] == 2
    got = cache.get_many(["a", "b"])
    assert got["a"].response_ids == [11] and got["b"].response_ids == [12]
    assert got["a"].version_step == 4 and got["a"].reward == 1.0


def test_a_question_drawn_twice_in_a_step_gets_one_entry_picked_from_all_its_samples(tmp_path):
    """DAPO's extra generation rounds (or an epoch boundary) can put one question in two groups of a step: the update
    pools its samples and writes one entry. epsilon=1: the best over both groups (here in the second group)."""
    cache = make_cache(tmp_path, {})
    rollout = PartialRollout(rpo_cfg(epsilon=1.0), cache, 16)
    samples = [Sample(uid=u, prompt_ids=[1], response_ids=[10 * k + i], behavior_logprobs=[-0.1], policy_step=3)
               for k, u in enumerate(("a", "b", "a")) for i in range(2)]
    batch = RolloutBatch(samples, group_size=2, rewards=[0.5, 0.0, 0.2, 0.1, 0.0, 1.0])
    rollout.update(batch, step=4)
    assert rollout.metrics()["cache_written"] == 2
    got = cache.get_many(["a", "b"])
    assert got["a"].response_ids == [21] and got["a"].reward == 1.0 and got["b"].response_ids == [10]


def _drive(rollout: PartialRollout, steps: int) -> list:
    """The loop's order for `steps` steps: plan, generate (here: 2 samples continuing each prefix, distinct rewards),
    update, metrics. Returns each step's metrics."""
    uids, seen = ("a", "b", "c"), []
    for step in range(1, steps + 1):
        plans = rollout.plan(problems(*uids), step)
        samples = [Sample(uid=u, prompt_ids=[1, 2], response_ids=list(p.prefix_ids) + [100 + step, 50 + i, EOS],
                          behavior_logprobs=list(p.prefix_logprobs) + [-0.25] * 3, prefix_len=len(p.prefix_ids),
                          policy_step=step - 1, prefix_policy_step=p.prefix_policy_step)
                   for u, p in zip(uids, plans) for i in range(2)]
        batch = RolloutBatch(samples, group_size=2, rewards=[0.0, 1.0, 1.0, 0.0, 0.5, 0.25])
        rollout.update(batch, step)
        seen.append(rollout.metrics())
    return seen


def _on_disk(path) -> tuple:
    """Every stored row (all versions) and the checkpoint checksum, read through a fresh read-only handle."""
    with TrajectoryCache(path, readonly=True) as ro:
        return list(ro.iter_entries(all_versions=True)), ro.state()


@pytest.mark.parametrize("cache_update", ["static", "epsilon_greedy"])
def test_static_cache_keeps_the_initial_responses_and_epsilon_greedy_reads_back_its_own(tmp_path, cache_update):
    """rpo.cache_update=static (the authors' released code in effect): after four steps of updates the store holds
    exactly the initialization's rows and no plan reads a trained entry. epsilon_greedy (paper): every step rewrites
    the entries, and from step 2 on every plan continues one written by training (cache_trained_share)."""
    cache = make_cache(tmp_path, {u: (list(range(10, 30)) + [EOS], True) for u in "abc"})
    rollout = PartialRollout(rpo_cfg(max_truncate=8, min_truncate=1, cache_update=cache_update), cache, 24)
    initial = _on_disk(cache.path)
    shares = [m["cache_trained_share"] for m in _drive(rollout, steps=4)]
    after = _on_disk(cache.path)
    if cache_update == "static":
        assert after == initial and shares == [0.0] * 4
    else:
        assert after[1]["checksum"] != initial[1]["checksum"] and after[1]["version_step"] == 4
        assert len(after[0]) == 3 * 5  # init + one row per question and step
        assert shares == [0.0, 1.0, 1.0, 1.0]


def test_cache_trained_share_counts_the_plans_since_the_last_report(tmp_path):
    """Half the questions hold a trained entry; a lazy miss is no hit; the count starts again after each report and a
    step without plans (RAPID's later mini-batches) reports none."""
    cache = make_cache(tmp_path, {u: ([10, 11, 12, EOS], True) for u in "ab"})
    cache.put_many([CacheEntry("a", [1, 2], [20, 21, EOS], [-0.5] * 3, 1.0, 0, time.time())], version_step=1)
    rollout = PartialRollout(rpo_cfg(max_truncate=2), cache, 16)
    rollout.plan(problems("a", "b", "miss"), step=1, salt="r1")
    rollout.plan(problems("a"), step=1, salt="r2")  # a second generation round of the same step (DAPO)
    assert rollout.metrics()["cache_trained_share"] == pytest.approx(2 / 3)
    assert "cache_trained_share" not in rollout.metrics()


def test_static_cache_update_needs_the_upfront_initialization():
    from conftest import compose
    from rpo_core.config import ConfigError, validate_config

    on = ["rpo.enabled=true", "rpo.max_truncate=8", "rpo.cache_update=static"]
    validate_config(compose(*on))
    with pytest.raises(ConfigError, match="rpo.cache_update=static keeps the responses of the cache initialization"):
        validate_config(compose(*on, "rpo.init=lazy"))
    with pytest.raises(ConfigError, match="rpo.cache_update='frozen' is not one of: epsilon_greedy, static"):
        validate_config(compose("rpo.enabled=true", "rpo.max_truncate=8", "rpo.cache_update=frozen"))


@pytest.fixture(scope="module")
def engine(tiny_model_path, dist):  # the real vLLM engine: only the full tier's test below uses it
    from conftest import compose
    from rollout.vllm_engine import VLLMEngine

    return VLLMEngine(tiny_model_path, compose("model=tiny").rollout, seed=0)


@pytest.mark.full
def test_ids_survive_the_engine_round_trip(engine, tiny_model_path):
    """A prefix whose ids are not what the tokenizer would produce from its text: vLLM must condition on the ids."""
    from rollout.base import GenerationRequest

    tok = engine.tokenizer
    prompt = tok("Compute 12 + 30.")["input_ids"]
    # "forty" spelled as single characters: decode + re-encode would merge them into different ids
    prefix = [tok.convert_tokens_to_ids(c) for c in ["f", "o", "r", "t", "y"]]
    assert tok(tok.decode(prefix), add_special_tokens=False)["input_ids"] != prefix
    out = engine.generate([GenerationRequest(prompt + prefix, n=2, max_new_tokens=6, seed=1)], temperature=1.0)[0]
    for gen in out:
        # the engine's logprobs of the suffix equal an exact re-scoring of prompt + prefix ids + suffix
        rescored = engine.sequence_logprobs(prompt + prefix, gen.token_ids)
        assert torch.allclose(torch.tensor(gen.logprobs), torch.tensor(rescored), atol=1e-4)
    raw = engine.llm.generate([{"prompt_token_ids": prompt + prefix}], use_tqdm=False)[0]
    assert list(raw.prompt_token_ids) == prompt + prefix


@pytest.mark.parametrize("rollout_dtype,is_on", [("float32", False), ("bfloat16", True)])
def test_rollout_is_auto_turns_on_when_engine_and_learner_dtypes_differ(rollout_dtype, is_on):
    from algorithms import build_algorithm
    from conftest import compose

    cfg = compose(f"rollout.dtype={rollout_dtype}", "learner.dtype=float32")
    algo = build_algorithm(cfg.algorithm, 16, engine_matches_learner=cfg.rollout.dtype == cfg.learner.dtype)
    s = Sample(uid="a", prompt_ids=[1], response_ids=[5, 6], behavior_logprobs=[-1.0, -1.0])
    t = Sample(uid="a", prompt_ids=[1], response_ids=[5, 7], behavior_logprobs=[-1.0, -1.0])
    tb = algo.prepare(to_train_batch(RolloutBatch([s, t], group_size=2, rewards=[1.0, 0.0]), pad_id=0, step=1))
    _, stats = algo.loss(torch.full((2, 2), -0.5, requires_grad=True), tb)
    assert ("rollout_is_mean" in stats) == is_on


def test_full_rollout_planner_is_the_rpo_off_case():
    """RPO off is a planner too: every question starts from its prompt with the whole budget, nothing is remembered,
    and a checkpoint written with a cache cannot be resumed by it."""
    planner = FullRollout(max_new_tokens=24)
    plans = planner.plan(problems("a", "b"), step=1)
    assert [(p.prefix_ids, p.budget, p.cache_hit, p.truncated) for p in plans] == [((), 24, False, 0)] * 2
    batch = RolloutBatch([Sample(uid="a", prompt_ids=[1], response_ids=[2], behavior_logprobs=[-1.0])], 1, rewards=[1.0])
    planner.update(batch, 1)
    assert planner.state() is None and planner.metrics() == {} and planner.startup_metrics() == {}
    with pytest.raises(ValueError, match="written with RPO"):
        planner.restore(3, {"version_step": 3})


def test_the_planner_reports_what_its_plans_and_update_did(tmp_path):
    """The statistics of the step's row, counted by the planner over two generation rounds (4 plans, one a lazy miss)
    with G = 2: hits 3/4, m summed, averaged over the hits and its share of 0 (the whole response kept), G tokens per
    kept prefix token; then the update's writes. A second call reports only what happened since the first."""
    cache = make_cache(tmp_path, {"a": (list(range(10, 30)) + [EOS], True), "b": ([10, EOS], True)})
    rollout = PartialRollout(rpo_cfg(max_truncate=4), cache, 24, group_size=2, seed=2)
    plans = rollout.plan(problems("a", "b", "miss"), step=1) + rollout.plan(problems("a"), step=1, salt="r2")
    hits = [p for p in plans if p.cache_hit]
    m = [p.truncated for p in hits]
    assert len(hits) == 3 and sorted(m) == [0, 1, 4]  # the two rounds drew different m for 'a' (seed 2)
    rollout.update(RolloutBatch([Sample(uid=u, prompt_ids=[1], response_ids=[7], behavior_logprobs=[-0.1])
                                 for u in "aabb"], group_size=2, rewards=[1.0, 0.0, 0.0, 1.0]), step=1)
    got = rollout.metrics()
    assert got == pytest.approx({
        "prefix_tokens": 2 * sum(len(p.prefix_ids) for p in hits), "cache_hit_rate": 3 / 4,
        "truncated_tokens": sum(m), "truncate_mean": sum(m) / 3, "truncate_zero_share": m.count(0) / 3,
        "cache_trained_share": 0.0, "cache_written": 2, "cache_correct_share": got["cache_correct_share"]})
    assert rollout.metrics() == {"prefix_tokens": 0, "cache_correct_share": got["cache_correct_share"]}


@pytest.mark.parametrize("init", ["upfront", "lazy"])
def test_the_cache_initialization_cost_is_the_planners_step0_record(tmp_path, init):
    """rpo.init=upfront: the one-off cost (seconds, generated tokens) goes into the step-0 row, apart from training;
    lazy initializes nothing up front and reports nothing."""
    cache = make_cache(tmp_path, {})
    rollout = PartialRollout(rpo_cfg(init=init), cache, 24)
    generate = lambda ps: [Sample(uid=p.uid, prompt_ids=list(p.prompt_ids), response_ids=[7, 8, EOS],  # noqa: E731
                                  behavior_logprobs=[-0.1] * 3) for p in ps]
    rollout.initialize(problems("a", "b"), generate, batch_size=1, progress=False)
    record = rollout.startup_metrics()
    if init == "upfront":
        assert record.keys() == {"cache_init_seconds", "cache_init_tokens"} and record["cache_init_tokens"] == 6
        assert record["cache_init_seconds"] > 0
    else:
        assert record == {} and cache.missing(["a", "b"]) == ["a", "b"]


def test_the_loop_has_no_rpo_line():
    """RPO lives in algorithms/rpo.py: rpo_core/train.py calls a planner and a placement, whatever they are. Only the
    package name and the program names (setup.py's console scripts) may spell it."""
    root = Path(__file__).resolve().parents[1]
    programs = re.findall(r'"(rpo-[a-z]+)=', (root / "setup.py").read_text())
    allowed = re.compile("|".join(["rpo_core", *programs]))
    lines = [ln for ln in (root / "rpo_core" / "train.py").read_text().splitlines()
             if "rpo" in allowed.sub("", ln).lower()]
    assert "rpo-train" in programs and not lines, lines
