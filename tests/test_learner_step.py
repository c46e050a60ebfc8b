"""One DeepSpeed optimizer step gives the same update however the learner cuts the batch into micro-batches."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import ROOT, child_env, compose, fresh_world_group
from test_learner import _mixed_lengths_batch

pytestmark = pytest.mark.full


def _token_mean_loss(logp, mb):
    """-A * logp averaged over the micro-batch's loss tokens (the learner weights it by its token share)."""
    adv = (mb.rewards - 0.5).unsqueeze(1)
    return -(adv * logp * mb.loss_mask).sum() / mb.loss_mask.sum(), {}


def _row_mean_loss(logp, mb):
    """-A * (each row's mean logp) averaged over the micro-batch's rows (weighted by its row share)."""
    adv = mb.rewards - 0.5
    return -(adv * (logp * mb.loss_mask).sum(1) / mb.loss_mask.sum(1)).mean(), {}


def _learner(model_path, *overrides, world_size=1):
    from rpo_core.learner import DeepSpeedLearner

    fresh_world_group()
    cfg = compose("model=tiny", "learner.optim.lr=1e-3", "learner.optim.grad_clip=0", *overrides)
    return DeepSpeedLearner(model_path, cfg.learner, cfg.learner.optim, temperature=1.0, world_size=world_size)


def _weights(learner):
    return {name: p.detach().clone() for name, p in learner.full_weights()}


def _one_step(model_path, tb, loss_fn, token_level, *overrides):
    learner = _learner(model_path, *overrides)
    return learner.train_step(tb, loss_fn, token_level=token_level), _weights(learner)


def _distance(a, b):
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(a[n] - b[n]) for n in a])).item()


@pytest.mark.parametrize("shared_prefix", [None, "packed", "kv_cache"])
@pytest.mark.parametrize("loss_fn,token_level", [(_token_mean_loss, True), (_row_mean_loss, False)])
def test_token_budget_step_equals_the_whole_batch_step(tiny_model_path, dist, loss_fn, token_level, shared_prefix):
    """Whole batch in one micro-batch of the plain learner vs rows cut by count (2) vs groups sorted by length and cut
    by a token budget (30, 60), each plain or with a shared-prefix forward: same gradient norm, same logprobs, same
    weights after the step. The batch mixes response lengths and rewards, so a micro-batch weighted by the wrong share
    (row share for a token mean, or equal shares) moves the weights differently."""
    tb = _mixed_lengths_batch()
    sp = [f"learner.shared_prefix={shared_prefix is not None}".lower(),
          f"learner.shared_prefix_mode={shared_prefix or 'packed'}"]
    whole, w_whole = _one_step(tiny_model_path, tb, loss_fn, token_level, "learner.micro_batch_size=8")
    assert whole.grad_norm > 1e-3, "the loss gives no gradient: the comparison below would check nothing"
    before = dict(AutoModelForCausalLM.from_pretrained(tiny_model_path).named_parameters())
    moved = _distance(w_whole, before)
    for cut in ("learner.micro_batch_size=2", "learner.micro_batch_tokens=30", "learner.micro_batch_tokens=60"):
        result, weights = _one_step(tiny_model_path, tb, loss_fn, token_level, "learner.micro_batch_size=2", cut, *sp)
        assert result.grad_norm == pytest.approx(whole.grad_norm, rel=1e-4), cut
        assert torch.allclose(result.logprobs, whole.logprobs, atol=1e-5), cut
        # a norm over all weights: Adam's first step is ~lr * sign(g), so a few near-zero gradient entries may flip
        assert _distance(weights, w_whole) < 1e-2 * moved, (cut, _distance(weights, w_whole), moved)


def _advantage_loss(logp, mb):
    """-A * logp averaged over the micro-batch's loss tokens: a group whose advantages are 0 adds exactly nothing."""
    return -(mb.advantages.unsqueeze(1) * logp * mb.loss_mask).sum() / mb.loss_mask.sum(), {}


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_gradient_checkpointing_gives_the_same_step_and_recomputes(tiny_model_path, dist, shared_prefix):
    """learner.gradient_checkpointing=true, plain and with the packed shared prefix: the same gradient norm, logprobs
    and weights after the step as without it, and the decoder layers really ran again in the backward (twice the
    calls of a layer)."""
    tb = _mixed_lengths_batch()
    runs = {}
    for ckpt in (False, True):
        learner = _learner(tiny_model_path, "learner.micro_batch_size=2",
                           f"learner.shared_prefix={str(shared_prefix).lower()}",
                           f"learner.gradient_checkpointing={str(ckpt).lower()}")
        calls = []  # a pre-hook: torch's non-reentrant checkpoint stops its recompute early, before the layer's end
        learner.engine.module.model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
        result = learner.train_step(tb, _token_mean_loss, token_level=True)
        runs[ckpt] = result, _weights(learner), len(calls)
    (plain, w_plain, calls_plain), (ckpt, w_ckpt, calls_ckpt) = runs[False], runs[True]
    assert plain.grad_norm > 1e-3, "the loss gives no gradient: the comparison below would check nothing"
    assert calls_ckpt == 2 * calls_plain, (calls_ckpt, calls_plain)
    assert ckpt.grad_norm == pytest.approx(plain.grad_norm, rel=1e-5)
    assert torch.allclose(ckpt.logprobs, plain.logprobs, atol=1e-6)
    moved = _distance(w_plain, dict(AutoModelForCausalLM.from_pretrained(tiny_model_path).named_parameters()))
    assert _distance(w_ckpt, w_plain) < 1e-3 * moved


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_skipping_inert_groups_gives_the_whole_batch_step(tiny_model_path, dist, shared_prefix):
    """Groups 1 and 3 have zero advantages: leaving them out of the forward and backward (they stay in the token
    normaliser) gives the whole batch's gradient and weights; their logprobs come back NaN. Then a step on a batch
    whose groups are all inert: it must still step (Adam's momentum moves the weights), as the unskipped step does."""
    tb = _mixed_lengths_batch()
    tb.advantages = torch.tensor([1.0, -1.0, 0.0, 0.0, -0.5, 0.5, 0.0, 0.0])
    inert = torch.tensor([False, True, False, True])
    sp = f"learner.shared_prefix={str(shared_prefix).lower()}"
    before = dict(AutoModelForCausalLM.from_pretrained(tiny_model_path).named_parameters())
    results, weights = [], []
    for skip in (None, inert):
        learner = _learner(tiny_model_path, "learner.micro_batch_size=2", sp)
        results.append(learner.train_step(tb, _advantage_loss, token_level=True, inert_groups=skip))
        weights.append(_weights(learner))
        still = replace(tb, advantages=torch.zeros(8))  # every group inert
        learner.train_step(still, _advantage_loss, token_level=True,
                           inert_groups=None if skip is None else torch.ones(4, dtype=torch.bool))
        weights.append(_weights(learner))
    whole, skipped = results
    assert whole.grad_norm > 1e-3
    assert (whole.rows_computed, skipped.rows_computed) == (8, 4)
    assert skipped.grad_norm == pytest.approx(whole.grad_norm, rel=1e-4)
    live = torch.tensor([0, 1, 4, 5])
    assert torch.allclose(skipped.logprobs[live], whole.logprobs[live], atol=1e-5)
    assert skipped.logprobs[[2, 3, 6, 7]].isnan().all()
    moved = _distance(weights[0], before)
    assert _distance(weights[2], weights[0]) < 1e-2 * moved
    momentum = _distance(weights[1], weights[0])  # the all-inert step moved the weights through Adam's momentum
    assert momentum > 0.1 * moved, momentum
    assert _distance(weights[3], weights[1]) < 1e-2 * momentum


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_a_non_finite_loss_on_one_rank_skips_the_step_on_every_rank(tmp_path, tiny_model_path, stage):
    """Two ranks, ZeRO-0/1/2/3: rank 1's loss is non-finite in one step, and its gradient, with a finite loss, in the
    next (ZeRO-0/1: the learner sees it; ZeRO-2/3: DeepSpeed's step does, and the learner must report the skip).
    Neither rank may step (the ranks would hold different weights) and neither may hang (ZeRO-2/3 reduce gradients
    inside each backward, so both must run it).
    The next, clean step must be exactly a fresh learner's first step: nothing of the skipped step may linger."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "tests" / "two_rank_step.py"),
           tiny_model_path, str(stage), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=child_env(OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    # every rank took the same step (gradients reduced over both shards)
    assert ranks[0]["weights_sum"] == ranks[1]["weights_sum"], ranks
    for rank, r in enumerate(ranks):
        assert r["bad_skipped"] and r["bad_grad_skipped"] and not r["good_skipped"], (rank, r)
        assert r["moved_by_reference"] > 1e-4, r  # the clean step moves the weights: a skipped one must not
        assert r["moved_by_bad"] == r["moved_by_bad_grad"] == 0.0, (rank, r)
        assert r["good_grad_norm"] == pytest.approx(r["reference_grad_norm"], rel=1e-5), (rank, r)
        assert r["good_vs_reference"] < 1e-2 * r["moved_by_reference"], (rank, r)


def _rollout(rewards: list[float], seed: int):
    """Groups of 2 samples of mixed lengths, with these rewards."""
    from rpo_core.common.types import RolloutBatch, Sample

    g, samples = torch.Generator().manual_seed(seed), []
    for q in range(len(rewards) // 2):
        prompt = torch.randint(0, 1000, (3 + 2 * q,), generator=g).tolist()
        for i in range(2):
            response = torch.randint(0, 1000, (4 + 3 * q + i,), generator=g).tolist()
            samples.append(Sample(uid=str(q), prompt_ids=prompt, response_ids=response,
                                  behavior_logprobs=[0.0] * len(response)))
    return RolloutBatch(samples, group_size=2, rewards=rewards)


def test_pi_old_is_taken_for_exactly_the_groups_the_update_computes(tiny_model_path, dist):
    """A rollout feeding two GRPO steps (pi_old: the learner's logprobs before the first). The groups the updates will
    skip (equal rewards) get no pi_old (NaN), the others the learner's logprobs; a mini-batch whose groups all have
    equal rewards still computes its first group (the learner steps on it), so no update reads a NaN pi_old."""
    from types import SimpleNamespace

    from algorithms import build_algorithm
    from rpo_core.common.batching import to_train_batch
    from rpo_core.distributed import Placement
    from rpo_core.train import rollout_logp_phase, update_phase

    cfg = compose("model=tiny", "algorithm.mini_batches_per_rollout=2", "learner.micro_batch_size=2")
    learner = _learner(tiny_model_path, "learner.micro_batch_size=2")
    c = SimpleNamespace(cfg=cfg, algorithm=build_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens), learner=learner,
                        reference=None, pad_id=0, placement=Placement())
    minibatches = [_rollout([1.0, 0.0, 1.0, 1.0], seed=0), _rollout([0.0, 0.0, 1.0, 1.0], seed=1)]
    expected = [learner.logprobs(to_train_batch(mb, 0, step=1)) for mb in minibatches]
    rollout_logp_phase(c, minibatches, step=1)
    for mb, logp in zip(minibatches, expected):
        for i, s in enumerate(mb.samples):
            got = torch.tensor(s.rollout_logprobs)
            if i < 2:  # group 0: trained (mini-batch 0: unequal rewards; 1: the first group of an all-inert batch)
                assert torch.allclose(got, logp[i, : len(got)], atol=1e-6) and (got != 0).all(), i
            else:
                assert got.isnan().all(), i
    first, second = update_phase(c, minibatches[0], step=1).metrics, update_phase(c, minibatches[1], step=2).metrics
    assert first["learner_rows_skipped"] == second["learner_rows_skipped"] == 2
    assert first["update_skipped"] == second["update_skipped"] == 0.0
    assert first["grad_norm"] > 1e-3 and second["grad_norm"] == 0.0
