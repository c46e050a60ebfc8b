"""The learner's log-probabilities: chunked over positions (checkpointed output layer) and trimmed to each micro-batch's
own widths, they equal the plain full-logits computation in value and in gradient."""
from __future__ import annotations

from typing import Optional, get_type_hints

import pytest
import torch
from transformers import AutoModelForCausalLM

from rpo_core.common.batching import TrainBatch, to_train_batch
from rpo_core.common.types import RolloutBatch, Sample
from conftest import compose
from rpo_core.common.checks import ConfigError
from rpo_core.logprobs import SHARED_PREFIX_MODES, batched_logprobs, check_direct_head, response_logprobs
from rpo_core.packing import combine_stats, micro_batches, packed_lengths


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
        small = tb.select(torch.arange(2))
        trimmed = tb.select(micro_batches(tb, 2, shared_prefix=False)[0]).trimmed()  # the learner's cut
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
    """`TrainBatch.to` is the one place a batch crosses to the learner's device: every field declared a tensor goes,
    the optional ones included once set (the meta device stands in for a GPU here)."""
    declared = [name for name, hint in get_type_hints(TrainBatch).items()
                if hint in (torch.Tensor, Optional[torch.Tensor])]
    tb = _batch()
    for name in declared:
        if getattr(tb, name) is None:  # ref_logp, rollout_logp, ...: what the KL penalty and pi_old add
            setattr(tb, name, torch.zeros_like(tb.behavior_logp))
    moved = tb.to("meta")
    assert {name: getattr(moved, name).device.type for name in declared} == dict.fromkeys(declared, "meta")
    assert moved.group_size == tb.group_size


@pytest.mark.parametrize("mode, chunk", [("packed", 0), ("packed", 2), ("kv_cache", 0), ("kv_cache", 2)])
def test_shared_prefix_forward_is_exact(model, mode, chunk):
    """Groups of 3 sharing their prompt (group 0) and, as under RPO, 4 kept response tokens (group 1): forwarding the
    shared tokens once per group gives the padded computation's logprobs and gradients (output layer in checkpointed
    chunks, or all at once), as one packed row per group or through the shared tokens' cached keys and values."""
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
    shared_fn = SHARED_PREFIX_MODES[mode]
    results = []
    for fn in (lambda: response_logprobs(model, tb, 0.7), lambda: shared_fn(model, tb, 0.7, chunk=chunk)):
        model.zero_grad()
        logp = fn()
        (logp * torch.arange(1, logp.numel() + 1, dtype=logp.dtype).view_as(logp)).sum().backward()
        results.append((logp.detach(), [p.grad.clone() for p in model.parameters()]))
    (plain, plain_grads), (shared, shared_grads) = results
    assert (plain != 0).sum() == tb.response_mask.sum() and torch.allclose(plain, shared, atol=1e-5)
    worst = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(plain_grads, shared_grads))
    assert worst < 1e-5, worst
    # the output layer runs once per kept-prefix token, not once per row: 30 response tokens, 2 x 4 of them repeats.
    # packed: the decoder once, on both groups' packed rows (of 14 and 21 tokens: the first one padded);
    # kv_cache: once on the groups' shared tokens (5 and 12, left-padded), once on the 6 rows' suffixes (2 to 4 tokens)
    seen, decoded = [], []
    hooks = [model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(len(args[0]))),
             model.get_decoder().register_forward_hook(lambda m, args, kwargs, out: decoded.append(kwargs["input_ids"]),
                                                       with_kwargs=True)]
    with torch.no_grad():
        shared_fn(model, tb, 0.7, chunk=chunk)
    for hook in hooks:
        hook.remove()
    assert tb.response_mask.sum() == 30 and sum(seen) == 30 - 2 * 4
    assert [tuple(ids.shape) for ids in decoded] == {"packed": [(2, 21)], "kv_cache": [(2, 12), (6, 4)]}[mode]


def _mixed_lengths_batch():
    """Four groups of 2 whose total lengths (prompt + response) are 28, 7, 21, 14 tokens: rows 0-1, 2-3, 4-5, 6-7."""
    g = torch.Generator().manual_seed(1)
    samples = []
    for q, (p, t) in enumerate([(10, 18), (3, 4), (7, 14), (5, 9)]):
        prompt = torch.randint(0, 1000, (p,), generator=g).tolist()
        for i in range(2):
            response = torch.randint(0, 1000, (t - i,), generator=g).tolist()  # the group's second row one shorter
            samples.append(Sample(uid=str(q), prompt_ids=prompt, response_ids=response,
                                  behavior_logprobs=[0.0] * len(response)))
    return to_train_batch(RolloutBatch(samples, group_size=2, rewards=[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]),
                          pad_id=0, step=1)


def test_token_budget_micro_batches_sort_by_length_and_cut_at_the_budget():
    tb = _mixed_lengths_batch()
    # whole groups by their longest row: 7 (rows 2-3), 14 (6-7), 21 (4-5), 28 (0-1); 2 groups x 2 rows x 14 = 56 fits
    # in 60, 3 x 2 x 21 does not; a group over the budget on its own (2 x 21 = 42 > 30) still gets its micro-batch
    assert [m.tolist() for m in micro_batches(tb, 99, False, tokens=60)] == [[2, 3, 6, 7], [4, 5], [0, 1]]
    assert [m.tolist() for m in micro_batches(tb, 99, False, tokens=30)] == [[2, 3], [6, 7], [4, 5], [0, 1]]
    assert [m.tolist() for m in micro_batches(tb, 99, False, tokens=110)] == [[2, 3, 6, 7], [4, 5], [0, 1]]  # 126, 112
    # shared prefix: each group is one packed row, prompt + both responses: 3+4+3 = 10, 5+9+8 = 22, 7+14+13 = 34,
    # 10+18+17 = 45; the decoder sees groups x the longest: 3 x 34 = 102 fits in 110, 4 x 45 does not
    assert packed_lengths(tb).tolist() == [45, 10, 34, 22]
    assert [m.tolist() for m in micro_batches(tb, 99, True, tokens=110)] == [[2, 3, 6, 7, 4, 5], [0, 1]]
    assert [m.tolist() for m in micro_batches(tb, 99, True, tokens=60)] == [[2, 3, 6, 7], [4, 5], [0, 1]]  # 102, 90
    assert [m.tolist() for m in micro_batches(tb, 99, True, tokens=30)] == [[2, 3], [6, 7], [4, 5], [0, 1]]
    assert [m.tolist() for m in micro_batches(tb, 3, shared_prefix=False)] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [m.tolist() for m in micro_batches(tb, 3, shared_prefix=True)] == [[0, 1], [2, 3], [4, 5], [6, 7]]


@pytest.mark.parametrize("shared_prefix", [None, "packed", "kv_cache"])
def test_token_budget_micro_batches_return_logprobs_in_row_order(model, shared_prefix):
    """Micro-batches cut by token budget (groups sorted by length) give every row its own logprobs, in the batch's
    order, as the row cut and the plain full-batch computation do."""
    tb = _mixed_lengths_batch()
    with torch.no_grad():
        plain = response_logprobs(model, tb, 1.0)
    for tokens in (0, 30, 60, 110):
        cfg = compose("model=tiny", "learner.micro_batch_size=2", f"learner.micro_batch_tokens={tokens}",
                      f"learner.shared_prefix={shared_prefix is not None}".lower(),
                      f"learner.shared_prefix_mode={shared_prefix or 'packed'}")
        assert torch.allclose(batched_logprobs(model, tb, cfg.learner, 1.0), plain, atol=1e-5), tokens


def test_models_that_post_process_their_logits_refuse_the_direct_head_paths():
    """Gemma 2 soft-caps its logits and Cohere/Granite rescale them inside forward(): the chunked and shared-prefix
    paths, which call decoder and output layer themselves, would compute other logprobs than the engine samples from."""
    from types import SimpleNamespace

    direct, plain = compose("model=tiny").learner, compose("model=tiny", "learner.logprob_chunk=0").learner
    for field, value in (("final_logit_softcapping", 30.0), ("logit_scale", 0.0625), ("logits_scaling", 8.0)):
        with pytest.raises(ConfigError, match=field):
            check_direct_head(SimpleNamespace(**{field: value}), direct)
        with pytest.raises(ConfigError, match=field):  # a multimodal config nests the language model's
            check_direct_head(SimpleNamespace(text_config=SimpleNamespace(**{field: value})), direct)
        check_direct_head(SimpleNamespace(**{field: value}), plain)  # the model's own forward: allowed
    check_direct_head(SimpleNamespace(final_logit_softcapping=None, logit_scale=1.0), direct)  # off values
