"""RPO's rollout plan, loss masks, cache update, and token ids going through the real vLLM engine unchanged."""
from __future__ import annotations

import time

import pytest
import torch
from omegaconf import OmegaConf

from algorithms.rpo import PartialRollout
from cache import CacheEntry, TrajectoryCache
from rpo_core.batching import to_train_batch
from rpo_core.types import Problem, RolloutBatch, Sample

EOS = 2


def rpo_cfg(**over):
    base = dict(enabled=True, max_truncate=300, truncate_mode="fixed", suffix_budget="truncated", suffix_slack=4,
                prefix_in_loss=True, epsilon=0.5, init="upfront")
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
    for seed in range(300):
        g = torch.Generator().manual_seed(seed)
        a, b, miss = rollout.plan(problems("a", "b", "zzz"), g)
        assert 0 <= a.truncated <= 8 and 0 <= b.truncated <= 5  # m never exceeds L nor the response
        assert a.prefix_ids == resp[: len(resp) - a.truncated]  # a prefix of the cached ids, as ids
        assert a.prefix_logprobs == [-0.5] * len(a.prefix_ids)
        # truncated budget: m + slack, never past the generation limit for the whole response
        expect = 0 if a.truncated == 0 else min(a.truncated + 4, 24 - len(a.prefix_ids))
        assert a.budget == expect
        assert b.budget == min(b.truncated + 4, 24 - len(b.prefix_ids))  # unfinished: m = 0 still continues
        assert not miss.hit and miss.prefix_ids == [] and miss.budget == 24  # a miss is a full rollout
        seen.add(a.truncated)
    assert seen == set(range(9))  # every m in 0..L occurs


def test_half_min_length_mode_and_fixed_budget(tmp_path):
    cache = make_cache(tmp_path, {"a": (list(range(10, 30)), True)})  # 20 tokens -> L = 10
    rollout = PartialRollout(rpo_cfg(truncate_mode="half_min_length", suffix_budget="fixed"), cache, 64)
    ms = [rollout.plan(problems("a"), torch.Generator().manual_seed(s))[0] for s in range(200)]
    assert max(p.truncated for p in ms) == 10
    assert all(p.budget == (0 if p.truncated == 0 else 64 - (20 - p.truncated)) for p in ms)


def test_prefix_in_loss_masks():
    s = Sample(uid="a", prompt_ids=[1, 2, 3], response_ids=[5, 6, 7, 8, 9], behavior_logprobs=[-1.0] * 5, prefix_len=3)
    t = Sample(uid="a", prompt_ids=[1, 2, 3], response_ids=[5, 6], behavior_logprobs=[-1.0] * 2, prefix_len=0)
    batch = RolloutBatch([s, t], group_size=2, rewards=[1.0, 0.0])
    on = to_train_batch(batch, pad_id=0, step=1, prefix_in_loss=True)
    off = to_train_batch(batch, pad_id=0, step=1, prefix_in_loss=False)
    assert on.loss_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert off.loss_mask.tolist() == [[0, 0, 0, 1, 1], [1, 1, 0, 0, 0]]
    assert on.prefix_mask.tolist() == [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]


def test_prefix_tokens_use_stored_behaviour_logprobs_in_the_ratio():
    from algorithms import build_algorithm
    from conftest import compose

    algo = build_algorithm(compose("algorithm=grpo").algorithm)
    s = Sample(uid="a", prompt_ids=[1], response_ids=[5, 6, 7], behavior_logprobs=[-2.0, -1.0, -1.0], prefix_len=1)
    tb = to_train_batch(RolloutBatch([s], group_size=1, rewards=[1.0]), pad_id=0, step=1)
    logp = torch.tensor([[-1.0, -0.5, -0.25]])
    old = algo.ratio_reference(logp, tb)
    assert old.tolist() == [[-2.0, -0.5, -0.25]]  # prefix: the older policy's logprob; suffix: on-policy


def test_epsilon_one_caches_the_best_and_update_is_one_write(tmp_path):
    cache = make_cache(tmp_path, {})
    rollout = PartialRollout(rpo_cfg(epsilon=1.0), cache, 16)
    samples = [Sample(uid=u, prompt_ids=[1], response_ids=[10 + i], behavior_logprobs=[-0.1], policy_step=3)
               for u in ("a", "b") for i in range(3)]
    batch = RolloutBatch(samples, group_size=3, rewards=[0.0, 1.0, 0.5, 0.2, 0.1, 0.9])
    assert rollout.update(batch, step=4, generator=torch.Generator().manual_seed(0)) == 2
    got = cache.get_many(["a", "b"])
    assert got["a"].response_ids == [11] and got["b"].response_ids == [12]
    assert got["a"].version_step == 4 and got["a"].reward == 1.0


@pytest.fixture(scope="module")
def engine(tiny_model_path, dist):
    from conftest import compose
    from rollout.vllm_engine import VLLMEngine

    return VLLMEngine(tiny_model_path, compose("model=tiny").rollout, seed=0)


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
