"""The learner's log-probabilities: chunked over positions (checkpointed output layer) and trimmed to each micro-batch's
own widths, they equal the plain full-logits computation in value and in gradient."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rpo_core.common.batching import to_train_batch
from rpo_core.common.types import RolloutBatch, Sample
from rpo_core.learner import combine_stats, micro_batches, response_logprobs, shared_prefix_logprobs


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)


def _batch():
    g = torch.Generator().manual_seed(0)
    samples = [Sample(uid=str(i), prompt_ids=torch.randint(0, 1000, (3 + 2 * i,), generator=g).tolist(),
                      response_ids=torch.randint(0, 1000, (4 + 5 * i,), generator=g).tolist(),
                      behavior_logprobs=[0.0] * (4 + 5 * i)) for i in range(4)]
    return to_train_batch(RolloutBatch(samples, group_size=2, rewards=[1.0, 0.0, 1.0, 0.0]), pad_id=0, step=1)


def _value_and_grads(model, tb, chunk):
    model.zero_grad()
    logp = response_logprobs(model, tb, 0.7, chunk)
    weights = torch.arange(1, logp.numel() + 1, dtype=logp.dtype).view_as(logp)  # a loss that reaches every token
    (logp * weights).sum().backward()
    return logp.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_logprobs_equal_the_full_logits_computation(model, chunk):
    tb = _batch()
    full, full_grads = _value_and_grads(model, tb, 0)
    part, part_grads = _value_and_grads(model, tb, chunk)
    assert full.shape == part.shape == (4, 19) and (full != 0).any()
    assert torch.allclose(full, part, atol=1e-6)
    worst = max(((a - b).abs().max() / a.abs().max().clamp(min=1e-12)).item() for a, b in zip(full_grads, part_grads))
    assert worst < 1e-5, f"gradients differ by {worst:.2e} of their largest entry (float summation order only)"


def test_trimmed_micro_batch_matches_the_full_width_rows(model):
    tb = _batch()
    with torch.no_grad():
        wide = response_logprobs(model, tb, 1.0)
        small = tb.rows(0, 2)
        trimmed = micro_batches(tb, 2, shared_prefix=False)[0]  # the learner's cut
        assert trimmed.input_ids.shape == small.trimmed().input_ids.shape
        assert trimmed.input_ids.shape[1] < small.input_ids.shape[1]  # padding to the batch's longest rows is gone
        narrow = response_logprobs(model, trimmed, 1.0)
    assert narrow.shape == (2, trimmed.response_mask.shape[1])
    assert torch.allclose(narrow, wide[:2, : narrow.shape[1]], atol=1e-5)
    assert (wide[:2, narrow.shape[1]:] == 0).all()


def test_combine_stats_reduces_max_with_max():
    parts = [({"ratio_max": 1.5, "ratio_min": 0.9, "pg_loss": 2.0}, 0.25), ({"ratio_max": 1.1, "ratio_min": 0.7,
                                                                           "pg_loss": 4.0}, 0.75)]
    assert combine_stats(parts) == {"ratio_max": 1.5, "ratio_min": 0.7, "pg_loss": 0.25 * 2.0 + 0.75 * 4.0}


def test_a_batch_moves_to_the_learner_device_whole():
    """`TrainBatch.to` is the one place a batch crosses to the learner's device: every tensor field goes (the meta
    device stands in for a GPU here)."""
    from dataclasses import fields

    tb = _batch()
    tb.ref_logp, tb.rollout_logp = torch.zeros_like(tb.behavior_logp), torch.zeros_like(tb.behavior_logp)
    moved = tb.to("meta")
    tensors = [f.name for f in fields(moved) if isinstance(getattr(moved, f.name), torch.Tensor)]
    assert len(tensors) == 13 and all(getattr(moved, name).device.type == "meta" for name in tensors)
    assert moved.group_size == tb.group_size


def test_shared_prefix_forward_is_exact(model):
    """Groups of 3 sharing their prompt (group 0) and, as under RPO, 4 kept response tokens (group 1): forwarding the
    shared tokens once per group gives the padded computation's logprobs and gradients."""
    g = torch.Generator().manual_seed(0)
    samples = []
    for q in range(2):
        prompt = torch.randint(0, 1000, (5 + 3 * q,), generator=g).tolist()
        prefix = torch.randint(0, 1000, (4 * q,), generator=g).tolist()
        for i in range(3):
            response = prefix + torch.randint(0, 1000, (2 + i,), generator=g).tolist()
            samples.append(Sample(uid=str(q), prompt_ids=prompt, response_ids=response,
                                  behavior_logprobs=[0.0] * len(response), prefix_len=len(prefix)))
    tb = to_train_batch(RolloutBatch(samples, group_size=3, rewards=[1.0, 0.0] * 3), pad_id=0, step=1)
    results = []
    for fn in (lambda: response_logprobs(model, tb, 0.7), lambda: shared_prefix_logprobs(model, tb, 0.7, chunk=2)):
        model.zero_grad()
        logp = fn()
        (logp * torch.arange(1, logp.numel() + 1, dtype=logp.dtype).view_as(logp)).sum().backward()
        results.append((logp.detach(), [p.grad.clone() for p in model.parameters()]))
    (plain, plain_grads), (shared, shared_grads) = results
    assert (plain != 0).sum() == tb.response_mask.sum() and torch.allclose(plain, shared, atol=1e-5)
    worst = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(plain_grads, shared_grads))
    assert worst < 1e-5, worst
